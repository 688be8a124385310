"""The decoder-only family's model: loss positions, rank classification from the prompt + inputs cache, and
cached decoding, each against recomputing the whole stream (no cache) on a tiny random Llama-style model."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprompt.errors import ConfigError
from jaxprompt.methods.prompt_tuning import PromptTuning
from jaxprompt.models import families
from jaxprompt.models.decoder_config import get_decoder_config
from jaxprompt.models.decoder_only import DecoderOnlyModel, right_align

CFG = get_decoder_config('causal_test_tiny')
EOS = 5
# Right-padded inputs (0 is a real token id in these vocabularies: the mask says what is padding).
INPUTS = np.array([[7, 0, 12, 40, 3], [9, 22, 0, 0, 0]], np.int32)
MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], np.int32)
CANDIDATES = np.array([[17, EOS, 0], [30, 31, EOS], [0, 0, 0]], np.int32)


@pytest.fixture(scope='module')
def setup():
  model = families.build_model(CFG, PromptTuning(length=3, embed_dim=CFG.emb_dim), eos_id=EOS)
  assert isinstance(model, DecoderOnlyModel)
  frozen = model.init_params(jax.random.PRNGKey(0))
  prompt = model.method.init(jax.random.PRNGKey(1), frozen)
  return model, frozen, prompt


def _stream(inputs, mask, continuation):
  """Features of each row's real inputs followed by `continuation` [b, t] (loss on the continuation)."""
  rows, weights = [], []
  for tokens, valid, cont in zip(inputs, mask, continuation):
    real = list(tokens[valid > 0])
    rows.append(real + list(cont))
    weights.append([0.0] * (len(real) - 1) + [1.0] * len(cont))
  width = max(len(r) for r in rows)
  batch = {k: np.zeros((len(rows), width - 1), np.int32) for k in ('decoder_input_tokens', 'decoder_target_tokens')}
  batch['decoder_input_mask'] = np.zeros((len(rows), width - 1), np.int32)
  batch['decoder_loss_weights'] = np.zeros((len(rows), width - 1), np.float32)
  for i, (row, w) in enumerate(zip(rows, weights)):
    n = len(row) - 1
    batch['decoder_input_tokens'][i, :n] = row[:-1]
    batch['decoder_target_tokens'][i, :n] = row[1:]
    batch['decoder_input_mask'][i, :n] = 1
    batch['decoder_loss_weights'][i, :n] = w
  return batch


def test_right_align_moves_real_tokens_to_the_end_in_order():
  tokens, valid = right_align(jnp.asarray(INPUTS), jnp.asarray(MASK) > 0)
  np.testing.assert_array_equal(tokens, [[7, 0, 12, 40, 3], [0, 0, 0, 9, 22]])
  np.testing.assert_array_equal(valid, [[1, 1, 1, 1, 1], [0, 0, 0, 1, 1]])
  again, _ = right_align(tokens, valid)
  np.testing.assert_array_equal(again, tokens)


def test_the_loss_sits_on_the_targets_and_the_mask_is_required(setup):
  model, frozen, prompt = setup
  batch = _stream(INPUTS, MASK, np.array([[17, EOS], [30, EOS]]))
  logits = jax.jit(model.logits)(frozen, prompt, batch)
  assert logits.shape == batch['decoder_input_tokens'].shape + (CFG.vocab_size,)
  loss, metrics = jax.jit(model.loss_fn)(frozen, prompt, batch)
  assert np.isfinite(loss) and float(metrics['weight_sum']) == 4.0
  with pytest.raises(ConfigError, match='decoder_input_mask'):
    model.logits(frozen, prompt, {k: v for k, v in batch.items() if k != 'decoder_input_mask'})


def test_rank_classification_equals_scoring_each_whole_stream(setup):
  model, frozen, prompt = setup
  batch = {'decoder_input_tokens': INPUTS, 'decoder_input_mask': MASK}
  ranked = np.asarray(jax.jit(model.rank_classify)(frozen, prompt, batch, CANDIDATES))
  score = jax.jit(model.score_batch)
  for c, cand in enumerate(CANDIDATES[:2]):
    cut = cand[:list(cand).index(EOS) + 1]
    want = score(frozen, prompt, _stream(INPUTS, MASK, np.tile(cut, (2, 1))))
    np.testing.assert_allclose(ranked[:, c], want, atol=1e-4, rtol=1e-5)
  np.testing.assert_array_equal(ranked[:, 2], 0.0)  # a padding candidate (no EOS) scores nothing
  left = dict(
      zip(('decoder_input_tokens', 'decoder_input_mask'), right_align(jnp.asarray(INPUTS),
                                                                      jnp.asarray(MASK) > 0)))
  np.testing.assert_allclose(jax.jit(model.rank_classify)(frozen, prompt, left, CANDIDATES), ranked, atol=1e-5)


def _greedy_by_recomputation(model, frozen, prompt, steps):
  """Greedy continuation computed with a whole forward pass per token (no cache)."""
  out = np.zeros((len(INPUTS), 0), np.int32)
  logits_fn = jax.jit(model.logits)
  for _ in range(steps):
    batch = _stream(INPUTS, MASK, np.concatenate([out, np.zeros((len(INPUTS), 1), np.int32)], axis=1))
    logits = np.asarray(logits_fn(frozen, prompt, batch))
    last = batch['decoder_input_mask'].sum(1) - 1
    out = np.concatenate([out, logits[np.arange(len(INPUTS)), last].argmax(-1)[:, None]], axis=1)
  return out


@pytest.mark.slow
def test_cached_greedy_decoding_equals_recomputation(setup):
  model, frozen, prompt = setup
  steps = 4
  batch = {'decoder_input_tokens': INPUTS, 'decoder_input_mask': MASK, 'decoder_target_tokens': np.zeros((2, steps))}
  decodes, _ = model.predict_batch(frozen, prompt, batch, method='sample', temperature=0.0)
  want = _greedy_by_recomputation(model, frozen, prompt, steps)
  for got, row in zip(np.asarray(decodes), want):  # after an EOS both stop (decodes pad with 0)
    n = list(row).index(EOS) + 1 if EOS in row else steps
    np.testing.assert_array_equal(got[:n], row[:n])


def test_beam_scores_are_the_log_likelihoods_of_their_decodes(setup):
  """t5x's beam search (alpha 0: raw log-probabilities) from the cache scores each beam as a whole-stream
  recomputation scores it."""
  model, frozen, prompt = setup
  batch = {'decoder_input_tokens': INPUTS, 'decoder_input_mask': MASK, 'decoder_target_tokens': np.zeros((2, 4))}
  decodes, scores = model.predict_batch(frozen, prompt, batch, method='beam', num_decodes=3, alpha=0.0,
                                        return_all_decodes=True)
  score = jax.jit(model.score_batch)
  assert np.all(np.asarray(scores[:, -1]) > -1e6)  # the best beam of each example is real
  for beam in range(3):
    rows = [list(r[:list(r).index(EOS) + 1]) if EOS in r else list(r) for r in np.asarray(decodes[:, beam])]
    for i, row in enumerate(rows):
      if scores[i, beam] < -1e6:  # an empty finished slot (fewer finished beams than asked for)
        continue
      want = score(frozen, prompt, _stream(INPUTS[i:i + 1], MASK[i:i + 1], np.array([row])))
      np.testing.assert_allclose(scores[i, beam], want[0], atol=1e-4, rtol=1e-5)
