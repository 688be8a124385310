"""Packing with prompts: several examples per row, each with its own copy of the prompt in front."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from jaxprompt.checkpoints import load_t5x_checkpoint
from jaxprompt.commands import train as trainer
from jaxprompt.data import buckets
from jaxprompt.data import pipeline as data
from jaxprompt.errors import ConfigError
from jaxprompt.methods.prompt_tuning import PromptTuning, prompt_tuning, segment_positions
from jaxprompt.models import losses
from jaxprompt.models.config import get_config
from jaxprompt.models.families import build_model
from jaxprompt.train import observability
from tests.helpers import assert_close_to_scale, regroup

LENGTHS = {'inputs': 12, 'targets': 6}
PROMPT = 3


def test_segment_positions_restart_at_every_segment():
  ids = jnp.asarray([[1, 1, 1, 2, 2, 3, 0, 0], [1, 2, 2, 2, 2, 2, 2, 0]])
  np.testing.assert_array_equal(segment_positions(ids), [[0, 1, 2, 0, 1, 0, 0, 1], [0, 0, 1, 2, 3, 4, 5, 0]])


def _examples(count=9, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(count):
    inputs = list(rng.integers(2, 128, rng.integers(1, LENGTHS['inputs']))) + [1]
    targets = list(rng.integers(2, 128, rng.integers(1, LENGTHS['targets']))) + [1]
    out.append((np.asarray(inputs, np.int32), np.asarray(targets, np.int32)))
  return out


def _packed(examples):
  ds = tf.data.Dataset.from_generator(
      lambda: ({'inputs': i, 'targets': t} for i, t in examples),
      output_signature={'inputs': tf.TensorSpec([None], tf.int32), 'targets': tf.TensorSpec([None], tf.int32)})
  rows = list(data.convert_features(ds, LENGTHS, pack=True, prompt_slots=PROMPT).as_numpy_iterator())
  return data.as_float_weights({k: np.stack([r[k] for r in rows]) for k in rows[0]})


@pytest.fixture(scope='module')
def fixture_model(fixtures_dir):
  return get_config('t5x_tiny'), load_t5x_checkpoint(str(fixtures_dir / 't5x_tiny' / 'classic_checkpoint_0'))


def test_pipeline_reserves_the_prompt_slots_in_front_of_every_packed_example():
  examples = _examples()
  packed = _packed(examples)
  tokens, segments = packed['encoder_input_tokens'], packed['encoder_segment_ids']
  assert tokens.shape[1] == LENGTHS['inputs'] + PROMPT
  assert int(segments.max(axis=1).sum()) == len(examples) < 2 * tokens.shape[0]  # several per row
  found = []
  for row, seg in zip(tokens, segments):
    for s in range(1, seg.max() + 1):
      ids = row[seg == s]
      np.testing.assert_array_equal(ids[:PROMPT], data.PROMPT_SLOT_ID)
      found.append(tuple(ids[PROMPT:]))
  assert sorted(found) == sorted(tuple(i) for i, _ in examples)
  stats = data.batch_stats(packed)
  assert stats['examples'] == len(examples) and 0.5 < stats['encoder_fill'] <= 1.0


@pytest.mark.slow
def test_packed_batch_gives_each_example_its_unpacked_loss_and_the_same_prompt_gradient(fixture_model):
  cfg, frozen = fixture_model
  model = build_model(cfg, PromptTuning(length=PROMPT, embed_dim=cfg.emb_dim))
  prompt = model.method.init(jax.random.PRNGKey(0), frozen)
  examples = _examples()
  packed = _packed(examples)
  plain = data.to_features([i for i, _ in examples], [t for _, t in examples], LENGTHS)

  def token_scores(p, batch):
    return model.score_batch(frozen, p, batch, return_intermediates=True)

  packed_tokens = np.asarray(jax.jit(token_scores)(prompt, packed))
  per_example = {}
  for row, seg, tgt in zip(packed_tokens, packed['decoder_segment_ids'], packed['decoder_target_tokens']):
    for s in range(1, seg.max() + 1):
      per_example[tuple(tgt[seg == s])] = row[seg == s].sum()
  plain_scores = np.asarray(jax.jit(token_scores)(prompt, plain)).sum(-1)
  for (_, targets), score in zip(examples, plain_scores):
    np.testing.assert_allclose(per_example[tuple(targets)], score, rtol=1e-5)

  def summed_loss(p, batch):
    logits = model.logits(frozen, p, batch)
    return -jnp.sum(losses.token_scores(logits, batch['decoder_target_tokens'], batch['decoder_loss_weights']))

  grad = jax.jit(jax.grad(summed_loss))
  g_packed, g_plain = grad(prompt, packed)['prompt'], grad(prompt, plain)['prompt']
  assert float(jnp.abs(g_plain).max()) > 1e-3
  assert_close_to_scale(g_packed, g_plain, rtol=1e-4)
  # Trimmed by buckets, packed rows still give the same gradient.
  cut = buckets.LengthBuckets.from_spec(4).trim(packed)
  assert_close_to_scale(grad(prompt, cut)['prompt'], g_plain, rtol=1e-4)


@pytest.mark.slow
def test_training_packed_reports_examples_per_step_and_fill(train_kwargs, tmp_path):
  kwargs = regroup(train_kwargs, evaluation=dict(split=None), schedule=dict(checkpoint_period=100, train_steps=2),
                   data=dict(pack=True, task_feature_lengths={'inputs': 64, 'targets': 8}))
  result = trainer.train(str(tmp_path / 'packed'), **kwargs)
  assert result.prompt.shape == (5, 32) and np.all(np.isfinite(result.prompt))
  rows = [json.loads(line) for line in (tmp_path / 'packed' / observability.TRAIN_HISTORY).read_text().splitlines()]
  # 4 rows of 64 + 5 positions hold about two examples of 14-22 tokens (+5 prompt slots) each (unpacked: 4).
  assert all(r['examples'] >= 6 and r['encoder_fill'] > 0.5 for r in rows), rows


def test_packing_a_prompt_that_is_not_in_front_is_refused_before_training(train_kwargs, tmp_path):
  method = lambda config, eos_id: prompt_tuning(config, eos_id, length=5, combine='suffix_after_eos')
  with pytest.raises(ConfigError, match="combine='prefix'"):
    trainer.train(str(tmp_path / 'x'), **regroup(train_kwargs, data=dict(pack=True), method=method))
  assert not (tmp_path / 'x').exists()  # refused before MODEL_DIR is made: nothing trained, nothing written
