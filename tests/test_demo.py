"""The demo: the generated skills, the shipped demo model, pretraining end to end (a few steps) and
`jaxprompt demo` meeting its quality bar on a small budget."""
import json
import os
import pathlib

import jax
import numpy as np
import pytest

from jaxprompt.checkpoints import load_t5x_checkpoint
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
  from jaxprompt.models.families import build_model
  from jaxprompt.runtime.runtime import network_abstract
  expected = network_abstract(build_model(config, None), {'inputs': 8, 'targets': 4})
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


def test_pretrain_vocabulary_is_reproducible_and_a_model_is_never_overwritten(tmp_path):
  """The recipe's cheap parts in the inner loop; the slow test below runs it end to end."""
  from jaxprompt.demo import pretrain, vocabularies
  vocab = tmp_path / 'vocab.model'
  assert vocabularies.train_sentencepiece(0, str(vocab))['type'] == 'sentencepiece'
  assert vocab.read_bytes() == (ASSET / 'vocab.model').read_bytes()  # same seed, same vocab
  (tmp_path / demo_model.CONFIG_FILE).write_text('{}')
  assert pretrain.main(['--output', str(tmp_path), '--steps', '1']) == 2  # one error line, nothing replaced
  assert (tmp_path / demo_model.CONFIG_FILE).read_text() == '{}'


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
  code = run.main([
      '--output',
      str(tmp_path), '--steps', '40', '--baseline_steps', '20', '--eval_period', '40', '--eval_examples', '100'
  ])
  out = capsys.readouterr().out
  assert code == 0, out
  summary = json.loads((tmp_path / run.SUMMARY_FILE).read_text())
  assert summary['meets_quality_bar'] is True, out
  assert summary['prompt_accuracy'] >= 0.9 * summary['model_accuracy']
  assert summary['prompt_accuracy'] >= summary['frozen_accuracy'] + 40
  assert 'quality bar MET' in out and 'frozen model, no prompt' in out
  prompt = np.load(tmp_path / 'prompt.npy')
  assert prompt.shape == (20, demo_model.DEMO_CONFIG.emb_dim) and prompt.dtype == np.float32
  recorded = json.loads((tmp_path / 'prompt.npy.fingerprint.json').read_text())  # the model it belongs to
  assert recorded['config']['emb_dim'] == demo_model.DEMO_CONFIG.emb_dim and len(recorded['id']) == 16
  assert (tmp_path / run.CURVE_FILE).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert (tmp_path / 'prompt_tuning' / 'training_curves.png').exists()


def test_demo_bad_model_dir(tmp_path, capsys):
  from jaxprompt.demo import run
  assert run.main(['--output', str(tmp_path), '--model', str(tmp_path / 'nope')]) == 2
  assert 'nope' in capsys.readouterr().err
