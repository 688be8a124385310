"""The demo: the T5X checkpoint writer, the generated skills, the shipped demo model, full-parameter training,
pretraining end to end (a few steps) and `jaxprompt demo` meeting its quality bar on a small budget."""
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import pytest

from jaxprompt.checkpoints import load_t5x_checkpoint, t5x_writer
from jaxprompt.checkpoints.t5x import detect_format
from jaxprompt.demo import data
from jaxprompt.demo import model as demo_model
from jaxprompt.errors import CheckpointError, ConfigError

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
ASSET = pathlib.Path(demo_model.asset_dir())


@pytest.fixture(autouse=True)
def _clean_gin():
  """The demo parses gin files into gin's global config: leave none behind for other tests."""
  yield
  import gin
  gin.clear_config()


def _leaves_equal(a, b):
  fa, fb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in fa] == [p for p, _ in fb]
  for (path, x), (_, y) in zip(fa, fb):
    assert x.dtype == y.dtype and np.array_equal(x, y), jax.tree_util.keystr(path)


# ------------------------------------------------------------------------------------------ writer


def test_writer_classic_matches_t5x_layout(fixtures_dir, tmp_path):
  reference = fixtures_dir / 't5x_tiny' / 'classic_checkpoint_0'
  params = load_t5x_checkpoint(reference)
  path = t5x_writer.save_t5x_checkpoint(params, tmp_path, step=42)
  assert path == str(tmp_path / 'checkpoint_42') and detect_format(path) == 'classic'
  assert not [p for p in os.listdir(tmp_path) if '.tmp-' in p]
  _leaves_equal(load_t5x_checkpoint(tmp_path), params)
  # Same zarr folders and metadata as t5x's Checkpointer wrote for the target tree.
  ours = sorted(p for p in os.listdir(path) if p != 'checkpoint')
  assert ours == sorted(p for p in os.listdir(reference) if p.startswith('target.'))
  for folder in ours:
    assert json.loads((pathlib.Path(path) / folder / '.zarray').read_text()) == json.loads(
        (reference / folder / '.zarray').read_text()), folder
  mine = msgpack.unpackb((pathlib.Path(path) / 'checkpoint').read_bytes(), raw=False, strict_map_key=False)
  theirs = msgpack.unpackb((reference / 'checkpoint').read_bytes(), raw=False, strict_map_key=False)
  assert mine['version'] == theirs['version'] == 3
  assert mine['optimizer']['target'] == theirs['optimizer']['target']  # the tensorstore specs, verbatim
  step = msgpack.unpackb(mine['optimizer']['state']['step'].data)
  assert step[1] == 'int32' and np.frombuffer(step[2], np.int32)[0] == 42


def test_writer_single_file_and_bfloat16(fixtures_dir, tmp_path):
  params = load_t5x_checkpoint(fixtures_dir / 't5x_test_t5_tiny.checkpoint_0')
  path = t5x_writer.save_t5x_checkpoint(params, tmp_path / 'ckpt.msgpack', step=3, layout='msgpack')
  assert detect_format(path) == 'msgpack_file'
  _leaves_equal(load_t5x_checkpoint(path), params)
  half = t5x_writer.save_t5x_checkpoint(params, tmp_path / 'bf16', dtype=jnp.bfloat16)
  loaded = load_t5x_checkpoint(half)
  assert {x.dtype.name for x in jax.tree.leaves(loaded)} == {'bfloat16'}
  np.testing.assert_allclose(np.asarray(loaded['token_embedder']['embedding'], np.float32),
                             params['token_embedder']['embedding'], rtol=1e-2, atol=1e-2)


def test_writer_errors(tmp_path):
  params = {'token_embedder': {'embedding': np.ones((4, 2), np.float32)}}
  t5x_writer.save_t5x_checkpoint(params, tmp_path, step=1)
  with pytest.raises(CheckpointError, match='checkpoint_1 already exists'):
    t5x_writer.save_t5x_checkpoint(params, tmp_path, step=1)
  t5x_writer.save_t5x_checkpoint({'token_embedder': {'embedding': np.zeros((4, 2), np.float32)}}, tmp_path,
                                 step=1, overwrite=True)
  assert np.all(load_t5x_checkpoint(tmp_path / 'checkpoint_1')['token_embedder']['embedding'] == 0)
  with pytest.raises(CheckpointError, match="layout 'zip'"):
    t5x_writer.save_t5x_checkpoint(params, tmp_path, layout='zip')
  with pytest.raises(CheckpointError, match='non-negative integer, got -2'):
    t5x_writer.save_t5x_checkpoint(params, tmp_path, step=-2)
  with pytest.raises(CheckpointError, match='empty parameter tree'):
    t5x_writer.save_t5x_checkpoint({}, tmp_path / 'empty')
  with pytest.raises(CheckpointError, match="parameter 'a/b' is not a numeric array"):
    t5x_writer.save_t5x_checkpoint({'a': {'b': object()}}, tmp_path / 'bad')
  (tmp_path / 'file').write_text('x')
  with pytest.raises(CheckpointError, match='cannot create the checkpoint directory'):
    t5x_writer.save_t5x_checkpoint(params, tmp_path / 'file', step=0)


def test_chunk_shape_tiles_the_array():
  assert t5x_writer.chunk_shape((768, 128), 4) == [768, 128]
  chunk = t5x_writer.chunk_shape((6, 10), 4, max_bytes=40)
  assert np.prod(chunk) * 4 <= 40 and all(d % c == 0 for d, c in zip((6, 10), chunk))


# ------------------------------------------------------------------------------------------ data


def test_skills_are_deterministic_and_well_formed():
  for skill in data.SKILLS:
    first = data.skill_examples(skill, 50, seed=3)
    assert first == data.skill_examples(skill, 50, seed=3)
    assert first != data.skill_examples(skill, 50, seed=4)
    assert first != data.skill_examples(skill, 50, seed=3, split='validation')
    assert all(inputs and targets for inputs, targets in first)
  for inputs, target in data.skill_examples('topic', 200, seed=0):
    words = [w.strip('.,!') for w in inputs.split()]
    assert inputs.startswith('topic: ') and any(n in words for n in data.TOPICS[target])
  for inputs, target in data.skill_examples('bigger', 50, seed=0):
    a, b = (int(v) for v in inputs[len('bigger: '):].split(' or '))
    assert a != b and target == str(max(a, b))
  with pytest.raises(ConfigError, match="unknown demo skill 'poetry'"):
    data.skill_examples('poetry', 1, 0)


def test_heldout_formulation_has_no_instruction_and_balanced_labels():
  examples = data.heldout_examples('topic', 500, seed=1, split='validation')
  assert examples == data.heldout_examples('topic', 500, seed=1, split='validation')
  labels = [t for _, t in examples]
  assert {labels.count(label) for label in data.TOPIC_LABELS} == {100}
  assert not any(':' in inputs for inputs, _ in examples)
  with pytest.raises(ConfigError, match="got 'parity'"):
    data.heldout_examples('parity', 1, 0)


# ------------------------------------------------------------------------------------------ shipped model


def info_checkpoint() -> str:
  return demo_model.read_model_info()['checkpoint']


def test_shipped_model_loads_and_fits_the_budget():
  config = demo_model.model_config()
  assert config == demo_model.DEMO_CONFIG  # pretraining wrote the registry's architecture
  assert config.mlp_activations == ('gelu', 'linear') and not config.logits_via_embedding  # T5 1.1
  from jaxprompt.models.wrapper import PromptModel
  from jaxprompt.train.runtime import frozen_abstract
  expected = frozen_abstract(PromptModel(config, None), {'inputs': 8, 'targets': 4})
  params = load_t5x_checkpoint(demo_model.checkpoint_path(), expected_shapes=expected)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
  files = [f for f in ASSET.rglob('*') if f.is_file()]
  size = sum(f.stat().st_size for f in files)
  assert size <= 20 * 2**20, f'{ASSET} is {size / 2**20:.1f} MiB'
  # setuptools leaves dot-files (zarr's .zarray) out of wheels: the shipped model must not need any.
  assert not [f for f in files if f.name.startswith('.')]
  assert detect_format(str(ASSET / info_checkpoint())) == 'classic'
  vocab = demo_model.vocabulary()
  assert vocab.vocab_size == config.vocab_size and vocab.eos_id == 1 and vocab.pad_id == 0
  assert vocab.decode(vocab.encode('topic: the soup was lovely.')) == 'topic: the soup was lovely.'
  info = demo_model.read_model_info()
  assert info['validation']['demo_topic/accuracy'] >= 95.0  # it knows the skill the demo elicits


def test_demo_model_errors(tmp_path):
  with pytest.raises(CheckpointError, match=f'{tmp_path}/config.json does not exist'):
    demo_model.model_config(str(tmp_path))
  with pytest.raises(CheckpointError, match='demo vocabulary .* does not exist'):
    demo_model.vocabulary(str(tmp_path))
  (tmp_path / 'config.json').write_text(json.dumps({'model_config': {'vocab_size': 8, 'emb_size': 3}}))
  with pytest.raises(ConfigError, match=r"unknown fields \['emb_size'\]"):
    demo_model.model_config(str(tmp_path))


# ------------------------------------------------------------------------------------------ training


def test_model_train_step_trains_every_weight():
  from jaxprompt.models.config import get_config
  from jaxprompt.models.wrapper import PromptModel
  from jaxprompt.train import model_tuning
  from jaxprompt.train.optim import adam, make_optimizer
  config = get_config('test_tiny')
  model = PromptModel(config, None)
  optimizer = make_optimizer(adam, 1e-2)
  params = model_tuning.init_params(config, seed=0)
  rng = np.random.default_rng(0)
  targets = rng.integers(2, config.vocab_size, (4, 5)).astype(np.int32)
  batch = {'encoder_input_tokens': rng.integers(2, config.vocab_size, (4, 7)).astype(np.int32),
           'decoder_target_tokens': targets, 'decoder_input_tokens': np.pad(targets[:, :-1], ((0, 0), (1, 0))),
           'decoder_loss_weights': np.ones((4, 5), np.float32)}
  step = jax.jit(lambda s, b: model_tuning.model_train_step(model, optimizer, s, b))
  state = model_tuning.init_model_state(params, optimizer, jax.random.PRNGKey(0))
  losses = []
  for _ in range(30):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  assert losses[-1] < 0.2 * losses[0] and int(state.step) == 30
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), params, jax.device_get(state.params))
  assert all(jax.tree.leaves(changed))  # every weight moved, not just a prompt
  poisoned = dict(batch, decoder_loss_weights=np.full((4, 5), np.nan, np.float32))
  after, metrics = step(state, poisoned)
  assert not bool(metrics['finite']) and int(after.step) == 30
  _leaves_equal(jax.device_get(after.params), jax.device_get(state.params))
  with pytest.raises(ConfigError, match='without a prompt'):
    from jaxprompt.methods.prompt_tuning import Prompt
    model_tuning.model_train_step(PromptModel(config, Prompt(2, config.emb_dim)), optimizer, state, batch)


def test_train_model_bad_config(tmp_path):
  from jaxprompt.errors import DataError
  from jaxprompt.train.model_tuning import train_model
  lengths = {'inputs': 8, 'targets': 4}
  with pytest.raises(ConfigError, match='MODEL_DIR is not set'):
    train_model(None, model_config=demo_model.DEMO_CONFIG)
  with pytest.raises(ConfigError, match="must be a T5Config .* got 'demo'"):
    train_model(str(tmp_path), model_config='demo', mixture_or_task_name='x', task_feature_lengths=lengths,
                train_steps=1)
  with pytest.raises(ConfigError, match='TRAIN_STEPS must be a positive integer, got 0'):
    train_model(str(tmp_path), model_config=demo_model.DEMO_CONFIG, mixture_or_task_name='demo_heldout_topic',
                task_feature_lengths=lengths, train_steps=0)
  with pytest.raises(DataError, match="unknown task or mixture 'demo_heldout_topix'"):
    train_model(str(tmp_path), model_config=demo_model.DEMO_CONFIG, mixture_or_task_name='demo_heldout_topix',
                task_feature_lengths=lengths, train_steps=1)


@pytest.mark.slow
def test_pretrain_end_to_end(tmp_path):
  from jaxprompt.demo import pretrain
  out = tmp_path / 'model'
  info = pretrain.pretrain(str(out), seed=0, steps=4, log_dir=str(tmp_path / 'logs'), eval_examples=2)
  assert (out / 'vocab.model').read_bytes() == (ASSET / 'vocab.model').read_bytes()  # same seed, same vocab
  assert info['pretraining']['steps'] == 4 and info['checkpoint'] == 'checkpoint_4'
  params = load_t5x_checkpoint(out)
  shipped = load_t5x_checkpoint(demo_model.checkpoint_path())
  assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, shipped)
  assert demo_model.model_config(str(out)) == demo_model.DEMO_CONFIG
  assert {k.split('/')[0] for k in info['validation']} == {f'demo_{s}' for s in data.SKILLS}
  with pytest.raises(ConfigError, match='already holds a demo model'):
    pretrain.pretrain(str(out), steps=1)
  assert pretrain.main(['--output', str(out), '--steps', '1']) == 2
  from jaxprompt.demo import tasks
  tasks.register_demo_tasks()  # back to the shipped vocabulary for the other tests


# ------------------------------------------------------------------------------------------ the demo


@pytest.mark.slow
def test_demo_meets_the_quality_bar_on_a_small_budget(tmp_path, capsys):
  from jaxprompt.demo import run
  code = run.main(['--output', str(tmp_path), '--steps', '70', '--baseline_steps', '30', '--eval_period', '35',
                   '--eval_examples', '200'])
  out = capsys.readouterr().out
  assert code == 0, out
  summary = json.loads((tmp_path / run.SUMMARY_FILE).read_text())
  assert summary['meets_quality_bar'] is True, out
  assert summary['prompt_accuracy'] >= 0.9 * summary['model_accuracy']
  assert summary['prompt_accuracy'] >= summary['frozen_accuracy'] + 40
  assert 'quality bar MET' in out and 'frozen model, no prompt' in out
  prompt = np.load(tmp_path / 'prompt.npy')
  assert prompt.shape == (20, demo_model.DEMO_CONFIG.emb_dim) and prompt.dtype == np.float32
  assert (tmp_path / run.CURVE_FILE).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert (tmp_path / 'prompt_tuning' / 'training_curves.png').exists()


def test_demo_bad_model_dir(tmp_path, capsys):
  from jaxprompt.demo import run
  assert run.main(['--output', str(tmp_path), '--model', str(tmp_path / 'nope')]) == 2
  assert 'nope' in capsys.readouterr().err
