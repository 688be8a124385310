"""Length buckets: batches cut to the smallest bucket that holds their longest row change no result."""
import json
import logging

import jax
import numpy as np
import pytest

from jaxprompt.checkpoints import load_t5x_checkpoint
from jaxprompt.commands import train as trainer
from jaxprompt.data import buckets, causal
from jaxprompt.data import pipeline as data
from jaxprompt.errors import ConfigError
from jaxprompt.methods.prompt_tuning import PromptTuning
from jaxprompt.models.config import get_config
from jaxprompt.models.families import build_model
from jaxprompt.runtime import step as step_lib
from jaxprompt.train import observability
from tests.helpers import assert_close_to_scale, assert_trained_close, regroup


def _features(inputs, targets, lengths):
  return data.to_features([np.asarray(r, np.int32) for r in inputs], [np.asarray(r, np.int32) for r in targets],
                          lengths)


@pytest.mark.parametrize('spec, inputs, targets', [
    (64, 64, 64),
    ([128, 32, 64], (32, 64, 128), (32, 64, 128)),
    ({'inputs': 16}, 16, None),
    ({'inputs': [8, 24], 'targets': 4}, (8, 24), 4),
    (None, None, None),
])
def test_specs(spec, inputs, targets):
  b = buckets.LengthBuckets.from_spec(spec)
  assert (b.inputs, b.targets) == (inputs, targets)
  assert b.fixed == (spec is None)


@pytest.mark.parametrize('spec, message', [
    (0, 'step must be positive'),
    (True, 'positive step'),
    ('64', 'positive step'),
    ([], 'positive integer'),
    ([16, -8], 'positive integer'),
    ([16, 2.5], 'positive integer'),
    ({'input': 16}, "unknown \\['input'\\]"),
    ({'targets': 'x'}, "LENGTH_BUCKETS\\['targets'\\]"),
])
def test_bad_specs_are_named(spec, message):
  with pytest.raises(ConfigError, match=message):
    buckets.LengthBuckets.from_spec(spec)


def test_lengths_always_end_with_the_width_and_buckets_hold_the_longest_row():
  b = buckets.LengthBuckets.from_spec({'inputs': 64, 'targets': [4, 100]})
  assert b.lengths('inputs', 512) == (64, 128, 192, 256, 320, 384, 448, 512)
  assert b.lengths('inputs', 130) == (64, 128, 130)
  assert b.lengths('targets', 16) == (4, 16)
  assert [b.bucket('inputs', n, 512) for n in (0, 1, 64, 65, 500)] == [64, 64, 64, 128, 512]


def test_trim_cuts_each_group_to_its_bucket_and_agrees_across_hosts():
  lengths = {'inputs': 16, 'targets': 8}
  batch = _features([[5, 6, 7, 1], [9, 1]], [[3, 1], [4, 4, 1]], lengths)
  b = buckets.LengthBuckets.from_spec(4)
  out = b.trim(batch)
  assert {k: v.shape for k, v in out.items()} == {
      'encoder_input_tokens': (2, 4), 'decoder_input_tokens': (2, 4), 'decoder_target_tokens': (2, 4),
      'decoder_loss_weights': (2, 4)
  }
  for k, v in out.items():
    np.testing.assert_array_equal(v, batch[k][:, :4])
    assert not np.any(batch[k][:, 4:])  # only padding was cut
  # Another host's longer rows decide the shape for everyone.
  agreed = b.trim(batch, longest={'inputs': 9, 'targets': 3})
  assert agreed['encoder_input_tokens'].shape == (2, 12) and agreed['decoder_target_tokens'].shape == (2, 4)
  # Only the groups asked for (decoding keeps the targets width: the maximum decode length).
  assert b.trim(batch, groups=('inputs',))['decoder_target_tokens'].shape == (2, 8)
  assert buckets.LengthBuckets.from_spec(None).trim(batch)['encoder_input_tokens'].shape == (2, 16)


def test_a_causal_prompt_is_cut_from_the_left_and_keeps_its_decode_length():
  lengths = {'inputs': 16, 'targets': 8}
  batch = data.inference_features([[5, 0, 7, 2], [9, 2]], lengths, 'decoder_only', causal.StreamTokens(1, 2))
  assert batch['decoder_input_tokens'].shape == (2, 17)  # [BOS] + inputs, left-padded
  out = buckets.LengthBuckets.from_spec(4).trim(batch, groups=buckets.INFERENCE_GROUPS)
  assert out['decoder_input_tokens'].shape == (2, 4) and out['decoder_target_tokens'].shape == (2, 8)
  np.testing.assert_array_equal(out['decoder_input_tokens'], [[1, 5, 0, 7], [0, 0, 1, 9]])  # id 0 is a token
  np.testing.assert_array_equal(out['decoder_input_mask'], [[1, 1, 1, 1], [0, 0, 1, 1]])
  t5 = data.inference_features([[5, 6, 1]], lengths)
  cut = buckets.LengthBuckets.from_spec(4).trim(t5, groups=buckets.INFERENCE_GROUPS)
  assert cut['encoder_input_tokens'].shape == (1, 4) and cut['decoder_target_tokens'].shape == (1, 8)


def test_each_new_shape_is_logged_once_with_the_bound(caplog):
  lengths = {'inputs': 16, 'targets': 8}
  stream = [_features([[5] * n + [1]], [[3, 1]], lengths) for n in (2, 3, 9, 2)]
  seen = []
  with caplog.at_level(logging.INFO, logger='jaxprompt'):
    for batch in buckets.bucketed(iter(stream), buckets.LengthBuckets.from_spec(4), name='train step',
                                  agree=lambda longest: seen.append(dict(longest)) or longest):
      assert batch['encoder_input_tokens'].shape[1] in (4, 12)
  assert seen == [{'inputs': 3, 'targets': 2}, {'inputs': 4, 'targets': 2}, {'inputs': 10, 'targets': 2},
                  {'inputs': 3, 'targets': 2}]
  lines = [r.getMessage() for r in caplog.records if 'new batch shape' in r.getMessage()]
  assert lines == [
      'train step: new batch shape inputs=4 targets=4 (1 of at most 8 with these length buckets)',
      'train step: new batch shape inputs=12 targets=4 (2 of at most 8 with these length buckets)'
  ]


@pytest.fixture(scope='module')
def fixture_model(fixtures_dir):
  return get_config('t5x_tiny'), load_t5x_checkpoint(str(fixtures_dir / 't5x_tiny' / 'classic_checkpoint_0'))


@pytest.mark.parametrize('combine', ['prefix', pytest.param('suffix_before_eos', marks=pytest.mark.slow)])
def test_cut_batch_gives_the_padded_batch_loss_gradients_and_scores(fixture_model, combine):
  cfg, frozen = fixture_model
  model = build_model(cfg, PromptTuning(length=3, embed_dim=cfg.emb_dim, combine=combine))
  prompt = model.method.init(jax.random.PRNGKey(0), frozen)
  rng = np.random.default_rng(0)
  inputs = [list(rng.integers(2, 128, n)) + [1] for n in (3, 7, 5, 1)]
  targets = [list(rng.integers(2, 128, n)) + [1] for n in (2, 1, 3, 2)]
  padded = _features(inputs, targets, {'inputs': 32, 'targets': 16})
  cut = buckets.LengthBuckets.from_spec(8).trim(padded)
  assert cut['encoder_input_tokens'].shape == (4, 8) and cut['decoder_target_tokens'].shape == (4, 8)
  grads = jax.jit(lambda b: step_lib.compute_gradients(model, frozen, prompt, b, None))
  (loss_a, metrics_a, grad_a), (loss_b, metrics_b, grad_b) = grads(padded)[:3], grads(cut)[:3]
  np.testing.assert_allclose(loss_b, loss_a, rtol=1e-6)
  np.testing.assert_allclose(metrics_b['weight_sum'], metrics_a['weight_sum'])
  # Same sums, other float32 summation order (matmul blocking depends on the shape): ~1e-6 of the scale.
  assert_close_to_scale(grad_b['prompt'], grad_a['prompt'], rtol=1e-5)
  score = jax.jit(lambda b: model.score_batch(frozen, prompt, b))
  np.testing.assert_allclose(score(cut), score(padded), rtol=1e-6)


@pytest.mark.slow
def test_training_with_buckets_matches_fixed_length_batches(train_kwargs, fixture_model, tmp_path):
  # Inputs of 14-22 tokens in rows of 32: cut to 16, 20 or 24 columns.
  kwargs = regroup(train_kwargs, evaluation=dict(split=None), schedule=dict(checkpoint_period=100, train_steps=3),
                   data=dict(task_feature_lengths={'inputs': 32, 'targets': 8}))
  fixed = trainer.train(str(tmp_path / 'fixed'), **regroup(kwargs, data=dict(length_buckets=None)))
  cut = trainer.train(str(tmp_path / 'cut'), **regroup(kwargs, data=dict(length_buckets=4)))
  cfg, frozen = fixture_model
  init_rng, _ = jax.random.split(jax.random.PRNGKey(0))  # what loop.initial_state draws for seed 0
  start = train_kwargs['method'](cfg).init(init_rng, frozen)['prompt']
  assert_trained_close(cut.prompt, fixed.prompt, start, steps=3)  # float32 summation order
  one = trainer.train(str(tmp_path / 'one'), **regroup(kwargs, schedule=dict(train_steps=1),
                                                       data=dict(length_buckets=4)))
  assert not np.array_equal(cut.prompt, one.prompt)
  rows = [json.loads(line) for line in (tmp_path / 'cut' / observability.TRAIN_HISTORY).read_text().splitlines()]
  # 4 unpacked examples per step; cut rows are mostly tokens, fixed 16-wide rows mostly padding.
  assert [r['examples'] for r in rows] == [4.0, 4.0, 4.0]
  fixed_rows = [
      json.loads(line) for line in (tmp_path / 'fixed' / observability.TRAIN_HISTORY).read_text().splitlines()
  ]
  assert all(c['encoder_fill'] > f['encoder_fill'] for c, f in zip(rows, fixed_rows))


def test_multiple_choice_batches_are_cut_on_their_last_axis():
  """[b, choices, l] rows (an encoder's multiple choice): the columns are the last axis, every choice cut alike."""
  tokens = np.zeros((2, 3, 40), np.int32)
  tokens[0, 2, :9] = 5  # the longest row of any example and choice: 9 columns
  tokens[1, 0, :4] = 5
  batch = {
      'encoder_input_tokens': tokens, 'encoder_input_mask': (tokens > 0).astype(np.int32), 'labels': np.array([2, 0],
                                                                                                              np.int32)
  }
  cut = buckets.LengthBuckets(inputs=16).trim(batch)
  assert cut['encoder_input_tokens'].shape == cut['encoder_input_mask'].shape == (2, 3, 16)
  np.testing.assert_array_equal(cut['encoder_input_tokens'], tokens[..., :16])
  assert cut['labels'].tolist() == [2, 0] and buckets.last_real_column(tokens) == 9
