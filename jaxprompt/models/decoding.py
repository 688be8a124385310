"""Autoregressive decoding with the semantics of t5x's `decoding.py`: temperature sampling and beam search.

Both decoders drive a `tokens_to_logits(DecodingState) -> (logits [batch * beams, vocab], new_cache)` callback
inside a `lax.while_loop`. `inputs` [batch, length] is the right-shifted decoder prompt: position 0 is the BOS
token (0), non-zero tokens after it are teacher-forced, zeros are generated. Returned candidates are ordered
worst first, best last. Tokens after EOS are 0.

Cache leaves named `cache_index` (a scalar, unless decoding starts from a prefilled cache), `cached_bias`
and `position_embedder_index` have no batch axis and are never expanded, flattened or gathered along beams.

Deliberate differences from t5x (none affects the default paths): per-example temperatures draw each row with
its own key (t5x reuses one, so the copies of an example come out identical); a traced topp of 0 keeps the
whole vocabulary (t5x masks it all); beam search from a prefilled cache keeps the per-example cache_index
flattened and gathered with the beams (t5x hands the model a [batch, beams] index); top-k is one `lax.top_k`
(t5x's two-stage variant is a TPU speed-up with the same result).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from jaxprompt.errors import ConfigError
from jaxprompt.models.beam_utils import (  # noqa: F401  (re-exported: part of the decoding API)
    add_beam_dim, cache_gather_beams, cache_map, flat_batch_beam_expand, flatten_beam_dim, gather_beams, leaf_name,
    gather_topk_beams, topk_mask, topp_mask, unflatten_beam_dim)

PyTree = Any
# t5x's "effective -inf" for masked candidates and empty beam slots. A float64 numpy scalar on purpose: jax
# canonicalises it to a (non-weak) float32, exactly as in t5x, which fixes the dtype promotion of the scores.
NEG_INF = np.array(-1.0e7)
# Temperatures at or below this take the exact greedy (argmax) branch.
MIN_TEMPERATURE = np.array(1e-4)


@flax.struct.dataclass
class DecodingState:
  """What `tokens_to_logits` sees. cur_index: [batch*beams] (sampling) or scalar (beam search);
  sequences: [batch*beams, length]; cur_token: [batch*beams, 1]; cache: the model's cache pytree."""
  cur_index: jax.Array
  sequences: jax.Array
  cur_token: jax.Array
  cache: PyTree


@flax.struct.dataclass
class SamplingLoopState:
  """Loop carry of `temperature_sample` (given to `state_callback_fn` / `logit_callback_fn`)."""
  step: jax.Array  # scalar
  cur_index: jax.Array  # [batch*decodes]
  sequences: jax.Array  # [batch*decodes, length + 2]
  cache: PyTree
  cur_token: jax.Array  # [batch*decodes, 1]
  ended: jax.Array  # [batch*decodes, 1] bool
  rng: jax.Array
  log_prob: jax.Array  # [batch*decodes]


@flax.struct.dataclass
class BeamState:
  """Loop carry of `beam_search`; every array has leading [batch, beams]."""
  cur_index: jax.Array  # scalar
  live_logprobs: jax.Array  # [batch, beams]
  finished_scores: jax.Array  # [batch, beams]
  live_seqs: jax.Array  # [batch, beams, max_decode_len + 1]
  finished_seqs: jax.Array  # [batch, beams, max_decode_len + 1]
  finished_flags: jax.Array  # [batch, beams] bool: slot holds a real finished sequence
  cache: PyTree


def brevity_penalty(alpha: float, length) -> jax.Array:
  """((5 + length) / 6) ** alpha, the GNMT length normaliser."""
  return jnp.power(((5.0 + length) / 6.0), alpha)


def _like(new_cache: PyTree, old_cache: PyTree) -> PyTree:
  """Gives the returned cache the (Frozen)Dict-ness of the carried one, so the loop carry type is stable."""
  if isinstance(old_cache, flax.core.FrozenDict) and not isinstance(new_cache, flax.core.FrozenDict):
    return flax.core.freeze(new_cache)
  if isinstance(new_cache, flax.core.FrozenDict) and not isinstance(old_cache, flax.core.FrozenDict):
    return flax.core.unfreeze(new_cache)
  return new_cache


def _is_tracer(x) -> bool:
  return isinstance(x, jax.core.Tracer)


# ------------------------------------------------------------------------------------------------------------
# Temperature sampling.
# ------------------------------------------------------------------------------------------------------------


def _sample(logits, temperature, rng, topk, topp, rescale_log_probs, known_positive):
  """Draws one token per row of logits [n, vocab]; returns (tokens [n] int32, log probs [n]).

  known_positive: whether a scalar temperature known before tracing exceeds MIN_TEMPERATURE (else None).
  """
  def nonzero_temperature(logits, temperature, rng=rng):
    scaled = logits / jnp.maximum(temperature, MIN_TEMPERATURE)
    if _is_tracer(topk) or topk:
      scaled = jnp.where(topk > 0, topk_mask(scaled, topk, NEG_INF), scaled)
    if _is_tracer(topp) or topp:
      # t5x masks everything for a traced topp of 0; "no nucleus" is what that value means, so keep all.
      scaled = jnp.where(topp > 0, topp_mask(scaled, topp, NEG_INF), scaled)
    token = jax.random.categorical(rng, scaled).astype(jnp.int32)
    log_probs = jax.nn.log_softmax(scaled if rescale_log_probs else logits)
    return token, jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]

  def zero_temperature(logits, temperature):
    del temperature
    token = jnp.argmax(logits, -1).astype(jnp.int32)
    if rescale_log_probs:  # greedy is certain under the rescaled (zero-temperature) distribution
      return token, jnp.zeros_like(token, dtype=jnp.float32)
    log_probs = jax.nn.log_softmax(logits)
    return token, jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]

  if temperature.ndim == 1:
    # One temperature per row. t5x reuses one key for every row here, which makes the num_decodes copies of
    # an example identical; each row gets its own key instead.
    def per_row(row, t, key):
      return lax.cond(t > MIN_TEMPERATURE, functools.partial(nonzero_temperature, rng=key), zero_temperature,
                      row[None], t)
    keys = jax.random.split(rng, logits.shape[0])
    token, log_prob = jax.vmap(per_row)(logits, temperature, keys)
    return token[:, 0], log_prob[:, 0]
  if known_positive is not None:  # a known temperature: compile only the branch lax.cond would take
    return (nonzero_temperature if known_positive else zero_temperature)(logits, temperature)
  return lax.cond(temperature > MIN_TEMPERATURE, nonzero_temperature, zero_temperature, logits, temperature)


def temperature_sample(inputs: jax.Array, cache: PyTree, tokens_to_logits: Callable, eos_id: int,
                       decode_rng: jax.Array | None = None, num_decodes: int = 1, temperature=1.0,
                       topk: int = 1, topp: float = 0.0, cache_offset: int = 0,
                       initial_index: jax.Array | None = None, max_decode_steps=None,
                       max_decode_steps_hard_limit: int | None = None, rescale_log_probs: bool = True,
                       state_callback_fn: Callable | None = None,
                       logit_callback_fn: Callable | None = None) -> tuple[jax.Array, jax.Array]:
  """Samples `num_decodes` continuations per prompt (t5x defaults: topk=1; temperature 0.0 = argmax).

  inputs [batch, length]; `temperature` a scalar or [batch]; at most one of topk / topp non-zero.
  `initial_index` [batch]: start from a prefilled cache at these positions (its `cache_index` is then a
  [batch] vector). `max_decode_steps` counts tokens after the prompt. With `rescale_log_probs` the scores
  use the temperature/top-k/top-p distribution, else the raw logits.
  Returns (sequences [batch, num_decodes, length], log_probs [batch, num_decodes]), best last.
  """
  _check_inputs(inputs, num_decodes)
  if not (_is_tracer(topk) or _is_tracer(topp)) and topk and topp:
    raise ConfigError(f'at most one of topk ({topk}) and topp ({topp}) may be non-zero')
  batch_size, length = inputs.shape
  known_positive = None
  if not _is_tracer(temperature) and np.ndim(temperature) == 0:
    known_positive = bool(np.asarray(temperature) > MIN_TEMPERATURE)
  temperature = jnp.asarray(temperature)
  if temperature.ndim > 1 or (temperature.ndim == 1 and temperature.shape[0] != batch_size):
    raise ConfigError(f'temperature must be a scalar or [batch={batch_size}], got shape {temperature.shape}')
  if decode_rng is None:
    decode_rng = jax.random.PRNGKey(0)
  if max_decode_steps is not None and max_decode_steps_hard_limit is not None and max_decode_steps_hard_limit > 0:
    cap = min if not _is_tracer(max_decode_steps) else jnp.minimum  # stay checkable below when known
    max_decode_steps = cap(max_decode_steps, max_decode_steps_hard_limit)
  if max_decode_steps is not None and not _is_tracer(max_decode_steps) and max_decode_steps > length:
    raise ConfigError(f'max_decode_steps={max_decode_steps} exceeds the decode length {length} '
                      f'(inputs shape {inputs.shape})')
  if initial_index is not None:
    _check_prefilled(cache, initial_index, batch_size)
  if num_decodes > 1:
    # With a prefilled cache the cache_index is a per-example vector, so it is expanded too.
    cache = cache_map(functools.partial(flat_batch_beam_expand, beam_size=num_decodes, offset=cache_offset),
                      cache, apply_to_index=initial_index is not None)
    inputs = flat_batch_beam_expand(inputs, num_decodes)
    if initial_index is not None:
      initial_index = flat_batch_beam_expand(initial_index, num_decodes)
  sample = functools.partial(_sample, topk=topk, topp=topp, rescale_log_probs=rescale_log_probs,
                             known_positive=known_positive)
  sequences, log_prob = _sample_loop(
      inputs, cache, tokens_to_logits, eos_id, decode_rng, num_decodes, temperature, sample, initial_index,
      max_decode_steps, state_callback_fn, logit_callback_fn)
  sequences = unflatten_beam_dim(sequences, batch_size, num_decodes)
  log_prob = unflatten_beam_dim(log_prob, batch_size, num_decodes)
  order = jnp.argsort(log_prob, axis=-1)
  return (jnp.take_along_axis(sequences, order[..., None], axis=1),
          jnp.take_along_axis(log_prob, order, axis=-1))


def _sample_loop(inputs, cache, tokens_to_logits, eos_id, rng, num_decodes, temperature, sample,
                 initial_index, max_decode_steps, state_callback_fn, logit_callback_fn):
  """The sampling while-loop over flat rows. Returns (sequences [n, length], log_prob [n])."""
  n, length = inputs.shape
  max_len = length
  if max_decode_steps is not None:  # per row: prompt tokens + allowed steps, capped at the length
    max_len = jnp.minimum(length, jnp.sum(inputs != 0, axis=1) + max_decode_steps)
  # Two spare columns: the position after the last real one, and a garbage slot that rows which finished
  # early (started from a later initial_index) keep overwriting while others catch up.
  sequences0 = jnp.concatenate([inputs, jnp.zeros((n, 2), inputs.dtype)], axis=1)
  if initial_index is None:
    index0, token0 = jnp.zeros((n,), jnp.int32), jnp.zeros((n, 1), jnp.int32)
  else:
    index0, token0 = initial_index, jnp.take_along_axis(sequences0, initial_index[:, None], axis=1)
  # A prompt may already contain EOS: a row ends when it gains one more EOS than it started with.
  initial_eos = jnp.sum(sequences0 == eos_id, axis=-1, keepdims=True)
  state0 = SamplingLoopState(jnp.zeros((), jnp.int32), index0, sequences0, cache, token0,
                             jnp.zeros((n, 1), jnp.bool_), rng, jnp.zeros((n,), jnp.float32))

  def body(state: SamplingLoopState) -> SamplingLoopState:
    if state_callback_fn is not None:
      state = state_callback_fn(state)
    rng_now, rng_next = jax.random.split(state.rng)
    logits, new_cache = tokens_to_logits(DecodingState(
        cur_index=state.cur_index, sequences=state.sequences[:, :-2], cur_token=state.cur_token,
        cache=state.cache))
    _check_logits(logits, n)
    if logit_callback_fn is not None:
      logits = logit_callback_fn(logits, state)
    token, token_log_prob = sample(logits, jnp.repeat(temperature, num_decodes)
                                   if temperature.ndim == 1 else temperature, rng_now)
    i = jnp.minimum(state.cur_index, max_len)
    forced = jnp.take_along_axis(state.sequences, (i + 1)[:, None], axis=1)[:, 0]
    out_of_prompt = forced == 0
    token = token * out_of_prompt + forced * ~out_of_prompt
    log_prob = state.log_prob + (token_log_prob * out_of_prompt) * (~state.ended[:, 0]).astype(jnp.int32)
    token = token[:, None] * ~state.ended
    one_hot = jax.nn.one_hot(i + 1, state.sequences.shape[1], dtype=state.sequences.dtype)
    sequences = state.sequences * (1 - one_hot) + token * one_hot
    ended = (state.ended | (jnp.sum(sequences == eos_id, axis=-1, keepdims=True) > initial_eos)
             | (i >= max_len - 1)[:, None])
    return SamplingLoopState(state.step + 1, i + 1, sequences, _like(new_cache, state.cache), token, ended,
                             rng_next, log_prob)

  final = lax.while_loop(lambda s: ~jnp.all(s.ended), body, state0)
  if state_callback_fn is not None:
    final = state_callback_fn(final)
  return final.sequences[:, 1:-1], final.log_prob


def _check_inputs(inputs, num_decodes):
  if inputs.ndim != 2:
    raise ConfigError(f'decoder inputs must be [batch, length], got shape {inputs.shape}')
  if not isinstance(num_decodes, (int, np.integer)) or num_decodes < 1:
    raise ConfigError(f'num_decodes must be a positive int, got {num_decodes!r}')


def _check_prefilled(cache, initial_index, batch_size):
  if jnp.shape(initial_index) != (batch_size,):
    raise ConfigError(f'initial_index must be [batch={batch_size}], got shape {jnp.shape(initial_index)}')
  for path, leaf in jax.tree_util.tree_leaves_with_path(cache):
    if leaf_name(path) == 'cache_index' and jnp.ndim(leaf) == 0:
      raise ConfigError(f'decoding from a prefilled cache (initial_index given) needs a per-example '
                        f'[batch] cache_index, but {jax.tree_util.keystr(path)} is a scalar')


def _check_logits(logits, rows):
  if logits.ndim != 2 or logits.shape[0] != rows:
    raise ConfigError(f'tokens_to_logits must return logits [batch*beams={rows}, vocab], got {logits.shape}')


# ------------------------------------------------------------------------------------------------------------
# Beam search.
# ------------------------------------------------------------------------------------------------------------


def _shift_rows(x: jax.Array, shift: jax.Array) -> jax.Array:
  """Row r of x [n, length] moved right by shift[r] (left when negative), zero filled."""
  src = jnp.arange(x.shape[1])[None, :] - shift[:, None]
  valid = (src >= 0) & (src < x.shape[1])
  return jnp.where(valid, jnp.take_along_axis(x, jnp.clip(src, 0, x.shape[1] - 1), axis=1), 0)


def _right_align(x: jax.Array) -> jax.Array:
  """Moves each row's last non-zero token to the last column."""
  last = jnp.argmax((x != 0) * jnp.arange(x.shape[1])[None, :], axis=1)
  return _shift_rows(x, x.shape[1] - 1 - last)


def _left_align(x: jax.Array) -> jax.Array:
  """Moves each row's first non-zero token to column 0 (all-zero rows stay)."""
  first = jnp.argmax(x != 0, axis=1)
  return _shift_rows(x, -first)


def beam_search(inputs: jax.Array, cache: PyTree, tokens_to_logits: Callable, eos_id: int, num_decodes: int = 4,
                alpha: float = 0.6, max_decode_len: int | None = None, decode_rng: jax.Array | None = None,
                cache_offset: int = 0, initial_index: jax.Array | None = None, *, max_decode_step: int = -1,
                min_log_prob: float = -1.0e7) -> tuple[jax.Array, jax.Array]:
  """t5x beam search with `num_decodes` beams and brevity penalty `alpha`.

  inputs [batch, length]; `max_decode_len` defaults to length. A finished beam (EOS written at 1-based
  output position L) scores logprob / brevity_penalty(alpha, L). If an example finished no beam, its live
  beams are returned with raw log probs. `initial_index` [batch]: continue from a prefilled cache after
  that many prompt tokens (cache_index then a [batch] vector). `max_decode_step` > 0 caps the loop steps;
  the search stops early once no live beam's raw log prob beats `min_log_prob`. `decode_rng` is unused.
  Returns (beams [batch, num_decodes, max_decode_len], scores [batch, num_decodes]), best last.
  """
  del decode_rng
  _check_inputs(inputs, num_decodes)
  beams = num_decodes
  batch_size, length = inputs.shape
  max_decode_len = (length if max_decode_len is None else max_decode_len) + 1  # + the BOS slot
  prefilled = initial_index is not None
  right_aligned = None
  live_seqs0 = jnp.zeros((batch_size, beams, max_decode_len), jnp.int32)
  if prefilled:
    _check_prefilled(cache, initial_index, batch_size)
    # The prompt is already in the cache: feed only its last token, then generate from position 1.
    right_aligned = _right_align(inputs)
    last_token = right_aligned[:, -1:].astype(jnp.int32)
    inputs = jnp.pad(last_token, ((0, 0), (0, length - 1)))
    live_seqs0 = jnp.broadcast_to(jnp.pad(last_token, ((0, 0), (0, max_decode_len - 1)))[:, None],
                                  live_seqs0.shape)
  else:
    initial_index = jnp.zeros((batch_size,), jnp.int32)
  # The scalar cache_index broadcasts over beams; a prefilled per-example one must follow them.
  state0 = BeamState(
      cur_index=jnp.array(0),
      live_logprobs=jnp.tile(jnp.array([0.0] + [NEG_INF] * (beams - 1)), [batch_size, 1]),
      finished_scores=jnp.ones((batch_size, beams)) * NEG_INF,
      live_seqs=live_seqs0,
      finished_seqs=jnp.zeros((batch_size, beams, max_decode_len), jnp.int32),
      finished_flags=jnp.zeros((batch_size, beams), jnp.bool_),
      cache=cache_map(lambda x: add_beam_dim(x, beams, cache_offset), cache, apply_to_index=prefilled))
  cond = functools.partial(_beam_cond, alpha=alpha, max_decode_len=max_decode_len,
                           min_index=jnp.min(initial_index), max_decode_step=max_decode_step,
                           min_log_prob=min_log_prob)
  body = functools.partial(_beam_body, inputs=inputs, tokens_to_logits=tokens_to_logits, eos_id=eos_id,
                           alpha=alpha, cache_offset=cache_offset, prompt_lengths=initial_index,
                           prefilled=prefilled)
  final = lax.while_loop(cond, body, state0)

  any_finished = jnp.any(final.finished_flags, axis=1)
  seqs = jnp.where(any_finished[:, None, None], final.finished_seqs, final.live_seqs)
  scores = jnp.where(any_finished[:, None], final.finished_scores, final.live_logprobs)
  if right_aligned is None:
    return seqs[:, :, 1:], scores
  # Re-attach the prompt: [right-aligned prompt | continuation without its first (prompt) token], then
  # left-align and cut to the requested length.
  full = jnp.concatenate([jnp.broadcast_to(right_aligned[:, None, :], (batch_size, beams, length)),
                          seqs[:, :, 1:]], axis=-1)
  full = _left_align(full.reshape(batch_size * beams, -1)).reshape(full.shape)
  return full[:, :, :max_decode_len - 1], scores


def _beam_cond(state: BeamState, *, alpha, max_decode_len, min_index, max_decode_step, min_log_prob):
  """Continue while there is room, a live beam could still beat the worst finished one, and limits allow."""
  not_at_end = state.cur_index + min_index < max_decode_len - 1
  step_limit_hit = (max_decode_step > 0) & jnp.all(state.cur_index >= max_decode_step)
  # The best a live beam can still reach: its log prob can only fall, the penalty divides by at most this.
  min_penalty = brevity_penalty(alpha, max_decode_len)
  best_live = state.live_logprobs[:, -1:] / min_penalty
  worst_finished = jnp.min(state.finished_scores, axis=1, keepdims=True)
  worst_finished = jnp.where(state.finished_flags, worst_finished, NEG_INF)
  no_improvement = jnp.all(worst_finished > best_live)
  below_min = jnp.all(best_live < min_log_prob / min_penalty) & (state.cur_index > 0)
  return not_at_end & ~no_improvement & ~below_min & ~step_limit_hit


def _beam_body(state: BeamState, *, inputs, tokens_to_logits, eos_id, alpha, cache_offset, prompt_lengths,
               prefilled) -> BeamState:
  """One step: extend every live beam by every token, keep 2*beams candidates, split live / finished."""
  batch_size, beams, _ = state.live_seqs.shape
  keep = 2 * beams  # even if `beams` candidates finish at once, `beams` remain to continue
  flat_token = flatten_beam_dim(lax.dynamic_slice_in_dim(state.live_seqs, state.cur_index, 1, axis=2))
  flat_cache = cache_map(functools.partial(flatten_beam_dim, offset=cache_offset), state.cache, prefilled)
  flat_logits, new_flat_cache = tokens_to_logits(DecodingState(
      cur_index=state.cur_index, sequences=flatten_beam_dim(state.live_seqs), cur_token=flat_token,
      cache=flat_cache))
  _check_logits(flat_logits, batch_size * beams)
  new_cache = cache_map(lambda x: unflatten_beam_dim(x, batch_size, beams, cache_offset),
                        _like(new_flat_cache, flat_cache), prefilled)
  log_probs = (jax.nn.log_softmax(unflatten_beam_dim(flat_logits, batch_size, beams))
               + state.live_logprobs[:, :, None])
  vocab = log_probs.shape[-1]
  topk_log_probs, topk_indices = lax.top_k(log_probs.reshape(batch_size, beams * vocab), k=keep)
  topk_ids = topk_indices % vocab
  topk_beam = topk_indices // vocab

  # Teacher forcing: inside the prompt only the best candidate survives (log prob 0) with the forced token.
  # Past the end of `inputs` the index clamps to its last column, as jnp indexing does in t5x.
  forced = lax.dynamic_index_in_dim(inputs.astype(jnp.int32), state.cur_index + 1, axis=1)  # [batch, 1]
  out_of_prompt = forced == 0
  inside_log_probs = jnp.concatenate(
      [jnp.zeros((batch_size, 1), topk_log_probs.dtype), jnp.full_like(topk_log_probs[:, 1:], NEG_INF)], axis=1)
  topk_log_probs = topk_log_probs * out_of_prompt + inside_log_probs * ~out_of_prompt
  topk_ids = topk_ids * out_of_prompt + forced * ~out_of_prompt

  topk_seq = gather_beams(state.live_seqs, topk_beam, beams)
  topk_seq = lax.dynamic_update_slice(topk_seq, topk_ids[:, :, None], (0, 0, state.cur_index + 1))
  newly_finished = topk_seq[:, :, state.cur_index + 1] == eos_id

  # Live set: the best `beams` candidates that did not just emit EOS.
  new_log_probs = topk_log_probs + newly_finished * NEG_INF
  _, alive = lax.top_k(new_log_probs, k=beams)
  alive = jnp.flip(alive, axis=1)
  live_seqs, live_logprobs = gather_beams([topk_seq, new_log_probs], alive, keep)
  parent = gather_beams(topk_beam, alive, keep)
  live_cache = cache_gather_beams(new_cache, parent, beams, cache_offset, prefilled)

  # Finished set: merge the new EOS candidates into the old finished ones by penalised score.
  lengths = prompt_lengths[:, None] + (state.cur_index + 1)
  new_scores = topk_log_probs / brevity_penalty(alpha, lengths)
  new_scores += (~newly_finished) * NEG_INF
  finished_seqs, finished_scores, finished_flags = gather_topk_beams(
      [jnp.concatenate([state.finished_seqs, topk_seq], axis=1),
       jnp.concatenate([state.finished_scores, new_scores], axis=1),
       jnp.concatenate([state.finished_flags, newly_finished], axis=1)],
      jnp.concatenate([state.finished_scores, new_scores], axis=1), beams)
  return BeamState(cur_index=state.cur_index + 1, live_logprobs=live_logprobs, finished_scores=finished_scores,
                   live_seqs=live_seqs, finished_seqs=finished_seqs, finished_flags=finished_flags,
                   cache=_like(live_cache, state.cache))
