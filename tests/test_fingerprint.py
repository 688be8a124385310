"""Prompts that know their frozen model: the fingerprint itself, what a training run records (every checkpoint
step, every final file), loading onto another model refused (or allowed deliberately), resuming on another
model refused. On the t5x fixture model and the tiny TSV task (conftest.py)."""
import logging
import re
import types

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jaxprompt.checkpoints import load_t5x_checkpoint
from jaxprompt.commands import configs, model_check
from jaxprompt.commands import train as trainer
from jaxprompt.commands.inspect import inspect
from jaxprompt.errors import CheckpointError, ConfigError, PromptError
from jaxprompt.formats import fingerprint_files
from jaxprompt.methods.model_tuning import model_tuning
from jaxprompt.models import fingerprint
from jaxprompt.models.config import get_config
from jaxprompt.train.checkpoints import StateCheckpointer
from tests.helpers import prompt_copy, prompt_state, regroup

CONFIG = get_config('t5x_tiny')


@pytest.fixture(scope='module')
def frozen(fixtures_dir):
  return load_t5x_checkpoint(str(fixtures_dir / 't5x_tiny' / 'classic_checkpoint_0'))


@pytest.fixture(scope='module')
def vocab(tiny_files):
  return configs.vocabulary(str(tiny_files['vocab']), 0)


def _embedding(frozen):
  return np.asarray(frozen['token_embedder']['embedding'])


def _with_embedding(frozen, embedding):
  return {**frozen, 'token_embedder': {'embedding': embedding}}


def _perturbed(frozen):
  embedding = _embedding(frozen).copy()
  embedding[3] += 0.5  # well past bfloat16's precision, which the hash rounds to
  return _with_embedding(frozen, embedding)


def _files(root):
  return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


# ------------------------------------------------------------------------------------ the fingerprint


def test_fingerprint_is_stable_and_changes_with_config_embedding_and_vocabulary(frozen, vocab, tiny_files):
  embedding = _embedding(frozen)
  base = fingerprint.model_fingerprint(CONFIG, vocab, embedding)
  assert fingerprint.model_fingerprint(CONFIG, vocab, embedding.copy()) == base
  assert re.fullmatch(r'[0-9a-f]{16}', base['id'])
  assert fingerprint_files.from_json(fingerprint_files.to_json(base), 'here') == base
  # One checkpoint loaded as float32 (CPU), bfloat16 (param_dtype on TPU) or onto a device: one model.
  for same in (embedding.astype(ml_dtypes.bfloat16), jnp.asarray(embedding)):
    assert fingerprint.model_fingerprint(CONFIG, vocab, same) == base
  assert fingerprint.model_fingerprint(CONFIG.replace(dropout_rate=0.1), vocab, embedding) == base  # not structural

  others = {
      'relpos_max_distance 128 vs 64': (CONFIG.replace(relpos_max_distance=64), vocab, embedding),
      'embedding table': (CONFIG, vocab, _embedding(_perturbed(frozen))),
      'vocabulary': (CONFIG, configs.vocabulary(str(tiny_files['vocab']), 2), embedding),  # + 2 extra ids
  }
  for difference, args in others.items():
    other = fingerprint.model_fingerprint(*args)
    assert other['id'] != base['id'] and fingerprint.matches(other, base) is False
    assert fingerprint.differences(base, other) == [difference]
  assert fingerprint.matches(None, base) is None
  with pytest.raises(PromptError, match=r'token embedding table \[vocab, embed\], got shape \(32,\)'):
    fingerprint.model_fingerprint(CONFIG, vocab, embedding[0])


def test_fingerprint_files_are_atomic_and_bad_ones_are_named(tmp_path):
  record = {'id': '0123456789abcdef', 'config': {'emb_dim': 32}}
  path = fingerprint_files.write(tmp_path / 'new' / 'fingerprint.json', record)
  assert fingerprint_files.read(path) == record and [p.name for p in (tmp_path / 'new').iterdir()
                                                    ] == ['fingerprint.json']
  assert fingerprint_files.read(tmp_path / 'absent.json') is None
  (tmp_path / 'bad.json').write_text('{"id": ')
  with pytest.raises(PromptError, match=r'bad\.json: not a fingerprint JSON'):
    fingerprint_files.read(tmp_path / 'bad.json')
  (tmp_path / 'no_id.json').write_text('{"config": {}}')
  with pytest.raises(PromptError, match=r"no_id\.json: a fingerprint needs an 'id' field"):
    fingerprint_files.read(tmp_path / 'no_id.json')
  (tmp_path / 'file').write_text('x')
  with pytest.raises(CheckpointError, match=r'cannot write fingerprint file .*file/fingerprint\.json'):
    fingerprint_files.write(tmp_path / 'file' / 'fingerprint.json', record, error=CheckpointError)


# ------------------------------------------------------------------------------------ checking at load


def test_loading_onto_another_model_is_refused_unless_allowed(frozen, vocab, tmp_path, caplog):
  prompt = tmp_path / 'prompt.npy'
  np.save(prompt, np.ones((5, 32), np.float32))
  recorded = fingerprint.model_fingerprint(CONFIG, vocab, _embedding(frozen))
  fingerprint_files.write(fingerprint_files.sidecar_path(prompt), recorded)
  assert model_check.check_prompt_source(prompt, None, CONFIG, vocab, frozen, allow_other_model=False) is True

  other = fingerprint.model_fingerprint(CONFIG, vocab, _embedding(_perturbed(frozen)))
  with pytest.raises(PromptError) as refused:
    model_check.check_prompt_source(prompt, None, CONFIG, vocab, _perturbed(frozen), allow_other_model=False)
  message = str(refused.value)
  assert str(prompt) in message and recorded['id'] in message and other['id'] in message
  assert 'differs in: embedding table' in message and '--allow_other_model' in message
  with pytest.raises(PromptError, match=r'differs in: relpos_max_distance 128 vs 64'):
    model_check.check_prompt_source(prompt, None, CONFIG.replace(relpos_max_distance=64), vocab, frozen,
                                    allow_other_model=False)
  with caplog.at_level(logging.WARNING, logger='jaxprompt'):
    assert model_check.check_prompt_source(prompt, None, CONFIG, vocab, _perturbed(frozen),
                                           allow_other_model=True) is False
  assert 'loading it anyway (allow_other_model)' in caplog.text and other['id'] in caplog.text

  bare = tmp_path / 'bare.npy'  # no record (an older release's file, a hand-made array): warned, loads
  np.save(bare, np.ones((5, 32), np.float32))
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger='jaxprompt'):
    assert model_check.check_prompt_source(bare, None, CONFIG, vocab, frozen, allow_other_model=False) is None
  assert f'prompt {bare} records no frozen-model fingerprint' in caplog.text
  with pytest.raises(ConfigError, match=r'frozen_params has no token_embedder/embedding'):
    model_check.check_prompt_source(bare, None, CONFIG, vocab, {'encoder': {}}, allow_other_model=False)


# ------------------------------------------------------------------------------------ recording in checkpoints


def test_checkpointer_records_the_model_per_step_and_refuses_another(tmp_path, caplog):
  model_a, model_b = {'id': 'a' * 16, 'config': {'emb_dim': 16}}, {'id': 'b' * 16, 'config': {'emb_dim': 8}}
  state = prompt_state(4, 16)
  with StateCheckpointer(str(tmp_path), keep=2, numpy_copy=prompt_copy) as ckpt:
    ckpt.use_model(model_a)  # a new MODEL_DIR: nothing to compare with
    for step in (1, 2, 3):
      ckpt.save(step, state, data_position=step)
    ckpt.wait_until_finished()
  steps = sorted(p.name for p in (tmp_path / 'numpy_checkpoints').iterdir())
  assert steps == ['checkpoint_2', 'checkpoint_3']  # the record goes with its step's retention
  for name in steps:
    assert fingerprint_files.read(tmp_path / 'numpy_checkpoints' / name / fingerprint_files.STEP_FILE) == model_a
  before = _files(tmp_path)
  with StateCheckpointer(str(tmp_path), numpy_copy=prompt_copy) as ckpt:
    with pytest.raises(ConfigError) as refused:
      ckpt.use_model(model_b)
    ckpt.use_model(model_a)  # the same model resumes
    ckpt.use_model(None)  # model tuning records nothing and checks nothing
  message = str(refused.value)
  assert f'MODEL_DIR {tmp_path} was trained (step 3' in message and 'nothing changed' in message
  assert f'model {"a" * 16} (emb_dim=16)' in message and f'model {"b" * 16} (emb_dim=8)' in message
  assert _files(tmp_path) == before
  # An unreadable record must not block resuming: warned, and treated as none.
  (tmp_path / 'numpy_checkpoints' / 'checkpoint_3' / fingerprint_files.STEP_FILE).write_text('{"id"')
  with caplog.at_level(logging.WARNING, logger='jaxprompt'), StateCheckpointer(str(tmp_path)) as ckpt:
    ckpt.use_model(model_b)
  assert 'Ignoring the model record of step 3' in caplog.text


def test_model_tuning_records_no_fingerprint(vocab):
  runtime = types.SimpleNamespace(method=model_tuning(CONFIG, 1), config=CONFIG, network=None)
  assert trainer.model_fingerprint(runtime, vocab) is None


# ------------------------------------------------------------------------------------ a training run


@pytest.fixture(scope='module')
def trained(train_kwargs, tmp_path_factory):
  model_dir = tmp_path_factory.mktemp('fingerprint_run') / 'run'
  result = trainer.train(
      str(model_dir),
      **regroup(train_kwargs, schedule=dict(train_steps=4, checkpoint_period=2), evaluation=dict(split=None)))
  return model_dir, result


@pytest.mark.slow
def test_a_run_records_its_model_in_every_step_and_final_file(trained, frozen, vocab, fixtures_dir):
  model_dir, result = trained
  expected = fingerprint.model_fingerprint(CONFIG, vocab, _embedding(frozen))
  for step in (2, 4):
    step_dir = model_dir / 'numpy_checkpoints' / f'checkpoint_{step}'
    assert sorted(p.name for p in step_dir.iterdir()) == ['fingerprint.json', 'prompt.npy']
    assert fingerprint_files.read(step_dir / fingerprint_files.STEP_FILE) == expected
  assert result.exported == str(model_dir / trainer.FINAL_PROMPT)
  assert fingerprint_files.read(fingerprint_files.sidecar_path(result.exported)) == expected
  # Every way of naming the trained prompt checks out against the model it was trained on.
  for source, step in ((result.exported, None), (model_dir, None), (model_dir, 2),
                       (model_dir / 'numpy_checkpoints' / 'checkpoint_2', None)):
    assert model_check.check_prompt_source(source, step, CONFIG, vocab, frozen, allow_other_model=False) is True
  with pytest.raises(PromptError, match='differs in: embedding table'):
    model_check.check_prompt_source(model_dir, 2, CONFIG, vocab, _perturbed(frozen), allow_other_model=False)
  # inspect reads only the checkpoint's embedding, and finds the same model.
  report = inspect(str(model_dir), top_k=1, model_config=CONFIG, vocabulary=vocab,
                   initial_checkpoint_path=str(fixtures_dir / 't5x_tiny' / 'classic_checkpoint_0'))
  assert report['model']['matches'] is True and report['model']['recorded'] == expected


@pytest.mark.slow
def test_resuming_on_another_model_is_refused_and_changes_nothing(trained, train_kwargs):
  model_dir, _ = trained
  before = _files(model_dir)
  other = CONFIG.replace(relpos_max_distance=64)  # the same weights load; the network differs
  with pytest.raises(ConfigError) as refused:
    trainer.train(
        str(model_dir),
        **regroup(train_kwargs, model=dict(config=other), schedule=dict(checkpoint_period=2),
                  evaluation=dict(split=None)))
  message = str(refused.value)
  assert f'MODEL_DIR {model_dir} was trained (step 4' in message and 'relpos_max_distance 128 vs 64' in message
  recorded = fingerprint_files.read(model_dir / 'numpy_checkpoints' / 'checkpoint_4' / fingerprint_files.STEP_FILE)
  assert recorded['id'] in message and re.search(r'not on this model [0-9a-f]{16}', message)
  assert _files(model_dir) == before
