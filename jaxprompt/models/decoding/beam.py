"""Beam search (t5x's `beam_search`): `num_decodes` beams ranked by the GNMT brevity penalty."""
from __future__ import annotations

import functools
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
from jax import lax

from jaxprompt.models.beam_utils import (
    add_beam_dim,
    cache_gather_beams,
    cache_map,
    flatten_beam_dim,
    gather_beams,
    gather_topk_beams,
    unflatten_beam_dim,
)
from jaxprompt.models.decoding.common import (
    NEG_INF,
    DecodingState,
    PyTree,
    check_inputs,
    check_logits,
    check_prefilled,
    match_frozen,
)


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
  check_inputs(inputs, num_decodes)
  beams = num_decodes
  batch_size, length = inputs.shape
  max_decode_len = (length if max_decode_len is None else max_decode_len) + 1  # + the BOS slot
  prefilled = initial_index is not None
  right_aligned = None
  live_seqs0 = jnp.zeros((batch_size, beams, max_decode_len), jnp.int32)
  if prefilled:
    check_prefilled(cache, initial_index, batch_size)
    # The prompt is already in the cache: feed only its last token, then generate from position 1.
    right_aligned = _right_align(inputs)
    last_token = right_aligned[:, -1:].astype(jnp.int32)
    inputs = jnp.pad(last_token, ((0, 0), (0, length - 1)))
    live_seqs0 = jnp.broadcast_to(jnp.pad(last_token, ((0, 0), (0, max_decode_len - 1)))[:, None], live_seqs0.shape)
  else:
    initial_index = jnp.zeros((batch_size,), jnp.int32)
  # The scalar cache_index broadcasts over beams; a prefilled per-example one must follow them.
  state0 = BeamState(cur_index=jnp.array(0), live_logprobs=jnp.tile(
      jnp.array([0.0] + [NEG_INF] * (beams - 1)), [batch_size, 1]), finished_scores=jnp.ones(
          (batch_size, beams)) * NEG_INF, live_seqs=live_seqs0, finished_seqs=jnp.zeros(
              (batch_size, beams, max_decode_len), jnp.int32), finished_flags=jnp.zeros((batch_size, beams), jnp.bool_),
                     cache=cache_map(lambda x: add_beam_dim(x, beams, cache_offset), cache, apply_to_index=prefilled))
  cond = functools.partial(_beam_cond, alpha=alpha, max_decode_len=max_decode_len, min_index=jnp.min(initial_index),
                           max_decode_step=max_decode_step, min_log_prob=min_log_prob)
  body = functools.partial(_beam_body, inputs=inputs, tokens_to_logits=tokens_to_logits, eos_id=eos_id, alpha=alpha,
                           cache_offset=cache_offset, prompt_lengths=initial_index, prefilled=prefilled)
  final = lax.while_loop(cond, body, state0)

  any_finished = jnp.any(final.finished_flags, axis=1)
  seqs = jnp.where(any_finished[:, None, None], final.finished_seqs, final.live_seqs)
  scores = jnp.where(any_finished[:, None], final.finished_scores, final.live_logprobs)
  if right_aligned is None:
    return seqs[:, :, 1:], scores
  # Re-attach the prompt: [right-aligned prompt | continuation without its first (prompt) token], then
  # left-align and cut to the requested length.
  full = jnp.concatenate([jnp.broadcast_to(right_aligned[:, None, :], (batch_size, beams, length)), seqs[:, :, 1:]],
                         axis=-1)
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
  flat_logits, new_flat_cache = tokens_to_logits(
      DecodingState(cur_index=state.cur_index, sequences=flatten_beam_dim(state.live_seqs), cur_token=flat_token,
                    cache=flat_cache))
  check_logits(flat_logits, batch_size * beams)
  new_cache = cache_map(lambda x: unflatten_beam_dim(x, batch_size, beams, cache_offset),
                        match_frozen(new_flat_cache, flat_cache), prefilled)
  log_probs = (jax.nn.log_softmax(unflatten_beam_dim(flat_logits, batch_size, beams)) + state.live_logprobs[:, :, None])
  vocab = log_probs.shape[-1]
  topk_log_probs, topk_indices = lax.top_k(log_probs.reshape(batch_size, beams * vocab), k=keep)
  topk_ids = topk_indices % vocab
  topk_beam = topk_indices // vocab

  # Teacher forcing: inside the prompt only the best candidate survives (log prob 0) with the forced token.
  # Past the end of `inputs` the index clamps to its last column, as jnp indexing does in t5x.
  forced = lax.dynamic_index_in_dim(inputs.astype(jnp.int32), state.cur_index + 1, axis=1)  # [batch, 1]
  out_of_prompt = forced == 0
  inside_log_probs = jnp.concatenate(
      [jnp.zeros((batch_size, 1), topk_log_probs.dtype),
       jnp.full_like(topk_log_probs[:, 1:], NEG_INF)], axis=1)
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
  finished_seqs, finished_scores, finished_flags = gather_topk_beams([
      jnp.concatenate([state.finished_seqs, topk_seq], axis=1),
      jnp.concatenate([state.finished_scores, new_scores], axis=1),
      jnp.concatenate([state.finished_flags, newly_finished], axis=1)
  ], jnp.concatenate([state.finished_scores, new_scores], axis=1), beams)
  return BeamState(cur_index=state.cur_index + 1, live_logprobs=live_logprobs, finished_scores=finished_scores,
                   live_seqs=live_seqs, finished_seqs=finished_seqs, finished_flags=finished_flags,
                   cache=match_frozen(live_cache, state.cache))
