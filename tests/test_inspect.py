"""`jaxprompt inspect`: nearest vocabulary tokens per prompt position, norms, prefix norms and the recorded-model
flag, on the t5x fixture model with the tiny task's SentencePiece vocabulary (conftest.py); the CLI once."""
import json

import gin
import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxprompt.cli.main import main as cli_main
from jaxprompt.commands import configs
from jaxprompt.commands import inspect as inspect_lib
from jaxprompt.errors import CheckpointError, ConfigError
from jaxprompt.formats import fingerprint_files
from jaxprompt.methods import kv_prefix
from jaxprompt.models import fingerprint
from jaxprompt.models.config import get_config

CONFIG = get_config('t5x_tiny')


@pytest.fixture(scope='module')
def checkpoint(fixtures_dir):
  return str(fixtures_dir / 't5x_tiny' / 'classic_checkpoint_0')


@pytest.fixture(scope='module')
def vocab(tiny_files):
  return configs.vocabulary(str(tiny_files['vocab']), 0)


@pytest.fixture(scope='module')
def embedding(checkpoint):
  return inspect_lib.read_token_embedding(checkpoint, CONFIG)


@pytest.fixture(autouse=True)
def _clean_gin():
  yield
  gin.clear_config()  # the CLI run leaves its bindings behind


def _inspect(path, checkpoint, vocab, **kwargs):
  return inspect_lib.inspect(str(path), model_config=CONFIG, initial_checkpoint_path=checkpoint, vocabulary=vocab,
                             **kwargs)


def test_rows_copied_from_the_embedding_are_their_own_nearest_tokens(embedding, checkpoint, vocab, tmp_path):
  ids, scales = [5, 17, 30, 5], np.float32([1.0, 2.0, 0.5, -1.0])
  path = tmp_path / 'prompt.npy'
  np.save(path, embedding[ids] * scales[:, None])
  report = _inspect(path, checkpoint, vocab, top_k=3)
  assert report['method'] == 'PromptTuning' and report['shapes'] == {'prompt': [4, 32]}
  for row, token_id in zip(report['positions'][:3], ids):  # any positive scale: the same direction
    best = row['nearest'][0]
    assert best['id'] == token_id and best['cosine'] == pytest.approx(1.0, abs=1e-5)
    assert best['token'] == vocab.tokenizer.id_to_piece(token_id)
    assert [n['cosine'] for n in row['nearest']] == sorted((n['cosine'] for n in row['nearest']), reverse=True)
  assert report['positions'][3]['nearest'][0]['id'] != 5  # the opposite direction
  norms = np.linalg.norm(embedding[ids], axis=-1) * np.abs(scales)
  np.testing.assert_allclose([p['norm'] for p in report['positions']], norms, rtol=1e-5)
  assert report['norms']['max'] == pytest.approx(norms.max(), rel=1e-5)
  assert report['norms']['mean'] == pytest.approx(norms.mean(), rel=1e-5)
  # Only the vocabulary's ids are tokens: the fixture's table has 128 rows, the tiny vocabulary far fewer.
  assert vocab.vocab_size < 100
  np.save(path, embedding[[100]])
  assert _inspect(path, checkpoint, vocab, top_k=1)['positions'][0]['nearest'][0]['id'] < vocab.vocab_size
  table_norms = np.linalg.norm(embedding[:vocab.vocab_size], axis=-1)
  assert report['norms']['vocabulary_mean'] == pytest.approx(table_norms.mean(), rel=1e-5)


def test_nearest_tokens_skip_zero_rows_and_clamp_top_k():
  table = np.float32([[0, 0], [1, 0], [0, 1], [1, 1], [5, 5]])
  ids, cosines = inspect_lib.nearest_tokens(np.float32([[2, 2], [0, 3]]), table, top_k=10, num_tokens=4)
  assert ids.shape == (2, 4) and ids[0, 0] == 3 and ids[1, 0] == 2
  assert cosines[0, -1] == -np.inf and ids[0, -1] == 0  # the all-zero row, last; row 4 is past the vocabulary


def test_the_recorded_model_flag(embedding, checkpoint, vocab, tmp_path):
  path = tmp_path / 'prompt.npy'
  np.save(path, embedding[:3])
  assert _inspect(path, checkpoint, vocab)['model']['matches'] is None  # no record: reported, not refused
  loaded = fingerprint.model_fingerprint(CONFIG, vocab, embedding)
  fingerprint_files.write(fingerprint_files.sidecar_path(path), loaded)
  model = _inspect(path, checkpoint, vocab)['model']
  assert model['matches'] is True and model['recorded'] == loaded == model['loaded'] and model['differences'] == []
  other = fingerprint.model_fingerprint(CONFIG.replace(relpos_max_distance=64), vocab, embedding)
  fingerprint_files.write(fingerprint_files.sidecar_path(path), other)
  model = _inspect(path, checkpoint, vocab)['model']
  assert model['matches'] is False and model['differences'] == ['relpos_max_distance 64 vs 128']


def test_a_prefix_file_reports_key_and_value_norms_per_kind_and_layer(checkpoint, vocab, tmp_path):
  rng = np.random.default_rng(0)
  rows = {
      kind: (rng.normal(size=(2, 3, 4, 8)).astype(np.float32), rng.normal(size=(2, 3, 4, 8)).astype(np.float32))
      for kind in ('encoder_self', 'decoder_self')
  }
  path = kv_prefix.save_prefix(tmp_path / 'prefix.npz', rows, 'positions')
  report = _inspect(path, checkpoint, vocab)
  assert 'positions' not in report and sorted(report['prefix']) == ['decoder_self', 'encoder_self']
  assert report['shapes']['encoder_self/key'] == [2, 3, 4, 8]
  for kind, (key, value) in rows.items():
    want_key = np.linalg.norm(key.reshape(2, 3, 32), axis=-1).mean(axis=1)
    want_value = np.linalg.norm(value.reshape(2, 3, 32), axis=-1).mean(axis=1)
    assert [r['layer'] for r in report['prefix'][kind]] == [0, 1]
    np.testing.assert_allclose([r['key_norm'] for r in report['prefix'][kind]], want_key, rtol=1e-5)
    np.testing.assert_allclose([r['value_norm'] for r in report['prefix'][kind]], want_value, rtol=1e-5)


def test_a_per_layer_prompts_file_reports_its_input_prompt_and_deeper_blocks(embedding, checkpoint, vocab, tmp_path):
  layers = np.stack([np.full((2, 32), 1.0, np.float32)])  # the fixture's 2-layer encoder: one deeper block
  path = tmp_path / 'per_layer.npz'
  np.savez(path, prompt=embedding[[7, 9]], layers=layers, **{'mode/add': np.zeros((0,), np.int8)})
  report = _inspect(path, checkpoint, vocab, top_k=1)
  assert [p['nearest'][0]['id'] for p in report['positions']] == [7, 9]
  assert report['layers'] == [{
      'stack': 'encoder', 'layer': 1, 'mean': pytest.approx(np.sqrt(32)), 'min': pytest.approx(np.sqrt(32)),
      'max': pytest.approx(np.sqrt(32))
  }]


def test_only_the_embedding_of_an_hf_checkpoint_is_read(embedding, tmp_path):
  save_file({'shared.weight': np.ascontiguousarray(embedding)}, str(tmp_path / 'model.safetensors'))
  np.testing.assert_array_equal(inspect_lib.read_token_embedding(str(tmp_path), CONFIG), embedding)
  with pytest.raises(CheckpointError, match=r'model\.safetensors.*has shape \(128, 32\) but MODEL_CONFIG needs '
                     r'\(128, 64\)'):
    inspect_lib.read_token_embedding(str(tmp_path), CONFIG.replace(emb_dim=64))


def test_bad_inputs_are_named(embedding, checkpoint, vocab, tmp_path):
  path = tmp_path / 'prompt.npy'
  np.save(path, embedding[:2])
  with pytest.raises(ConfigError, match='top_k must be a positive integer, got 0'):
    _inspect(path, checkpoint, vocab, top_k=0)
  with pytest.raises(ConfigError, match='MODEL_CONFIG is not set'):
    inspect_lib.inspect(str(path), initial_checkpoint_path=checkpoint)
  with pytest.raises(CheckpointError, match=r'token embedding has shape \(128, 32\) but MODEL_CONFIG needs'):
    inspect_lib.inspect(str(path), model_config=get_config('t5x_test_tiny'), initial_checkpoint_path=checkpoint,
                        vocabulary=vocab)


def test_cli_inspect_prints_and_writes_the_report(embedding, checkpoint, tiny_files, tmp_path, capsys):
  path, out = tmp_path / 'prompt.npy', tmp_path / 'report' / 'inspect.json'
  np.save(path, embedding[[11, 12]])
  code = cli_main([
      'inspect',
      str(path), '--gin_file=models/t5x_tiny.gin', '--top_k', '2', '--output',
      str(out), f"--gin.VOCABULARY_PATH='{tiny_files['vocab']}'", f"--gin.T5X_TINY_CHECKPOINT='{checkpoint}'"
  ])
  captured = capsys.readouterr()
  assert code == 0, captured.err
  printed = json.loads(captured.out.strip().splitlines()[-1])
  assert printed == json.loads(out.read_text())
  assert [[n['id'] for n in p['nearest']][0] for p in printed['positions']] == [11, 12]
  assert printed['model']['matches'] is None and len(printed['positions'][0]['nearest']) == 2
  assert 'nearest tokens (cosine)' in captured.err and 'no model recorded' in captured.err
