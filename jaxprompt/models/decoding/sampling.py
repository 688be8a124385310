"""Temperature sampling (t5x's `temperature_sample`), with top-k / top-p and per-example temperatures."""
from __future__ import annotations

import functools
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxprompt.errors import ConfigError
from jaxprompt.models.beam_utils import cache_map, flat_batch_beam_expand, topk_mask, topp_mask, unflatten_beam_dim
from jaxprompt.models.decoding.common import (
    NEG_INF,
    DecodingState,
    PyTree,
    check_inputs,
    check_logits,
    check_prefilled,
    match_frozen,
)

# Temperatures at or below this take the exact greedy (argmax) branch.
MIN_TEMPERATURE = np.array(1e-4)


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


def _is_tracer(x) -> bool:
  return isinstance(x, jax.core.Tracer)


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
      return lax.cond(t > MIN_TEMPERATURE, functools.partial(nonzero_temperature, rng=key), zero_temperature, row[None],
                      t)

    keys = jax.random.split(rng, logits.shape[0])
    token, log_prob = jax.vmap(per_row)(logits, temperature, keys)
    return token[:, 0], log_prob[:, 0]
  if known_positive is not None:  # a known temperature: compile only the branch lax.cond would take
    return (nonzero_temperature if known_positive else zero_temperature)(logits, temperature)
  return lax.cond(temperature > MIN_TEMPERATURE, nonzero_temperature, zero_temperature, logits, temperature)


def temperature_sample(inputs: jax.Array, cache: PyTree, tokens_to_logits: Callable, eos_id: int,
                       decode_rng: jax.Array | None = None, num_decodes: int = 1, temperature=1.0, topk: int = 1,
                       topp: float = 0.0, cache_offset: int = 0, initial_index: jax.Array | None = None,
                       max_decode_steps=None, max_decode_steps_hard_limit: int | None = None,
                       rescale_log_probs: bool = True, state_callback_fn: Callable | None = None,
                       logit_callback_fn: Callable | None = None) -> tuple[jax.Array, jax.Array]:
  """Samples `num_decodes` continuations per prompt (t5x defaults: topk=1; temperature 0.0 = argmax).

  inputs [batch, length]; `temperature` a scalar or [batch]; at most one of topk / topp non-zero.
  `initial_index` [batch]: start from a prefilled cache at these positions (its `cache_index` is then a
  [batch] vector). `max_decode_steps` counts tokens after the prompt. With `rescale_log_probs` the scores
  use the temperature/top-k/top-p distribution, else the raw logits.
  Returns (sequences [batch, num_decodes, length], log_probs [batch, num_decodes]), best last.
  """
  check_inputs(inputs, num_decodes)
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
    check_prefilled(cache, initial_index, batch_size)
  if num_decodes > 1:
    # With a prefilled cache the cache_index is a per-example vector, so it is expanded too.
    cache = cache_map(functools.partial(flat_batch_beam_expand, beam_size=num_decodes, offset=cache_offset), cache,
                      apply_to_index=initial_index is not None)
    inputs = flat_batch_beam_expand(inputs, num_decodes)
    if initial_index is not None:
      initial_index = flat_batch_beam_expand(initial_index, num_decodes)
  sample = functools.partial(_sample, topk=topk, topp=topp, rescale_log_probs=rescale_log_probs,
                             known_positive=known_positive)
  sequences, log_prob = _sample_loop(inputs, cache, tokens_to_logits, eos_id, decode_rng, num_decodes, temperature,
                                     sample, initial_index, max_decode_steps, state_callback_fn, logit_callback_fn)
  sequences = unflatten_beam_dim(sequences, batch_size, num_decodes)
  log_prob = unflatten_beam_dim(log_prob, batch_size, num_decodes)
  order = jnp.argsort(log_prob, axis=-1)
  return (jnp.take_along_axis(sequences, order[..., None], axis=1), jnp.take_along_axis(log_prob, order, axis=-1))


def _sample_loop(inputs, cache, tokens_to_logits, eos_id, rng, num_decodes, temperature, sample, initial_index,
                 max_decode_steps, state_callback_fn, logit_callback_fn):
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
  state0 = SamplingLoopState(jnp.zeros((), jnp.int32), index0, sequences0, cache, token0, jnp.zeros((n, 1), jnp.bool_),
                             rng, jnp.zeros((n,), jnp.float32))

  def body(state: SamplingLoopState) -> SamplingLoopState:
    if state_callback_fn is not None:
      state = state_callback_fn(state)
    rng_now, rng_next = jax.random.split(state.rng)
    logits, new_cache = tokens_to_logits(
        DecodingState(cur_index=state.cur_index, sequences=state.sequences[:, :-2], cur_token=state.cur_token,
                      cache=state.cache))
    check_logits(logits, n)
    if logit_callback_fn is not None:
      logits = logit_callback_fn(logits, state)
    token, token_log_prob = sample(logits,
                                   jnp.repeat(temperature, num_decodes) if temperature.ndim == 1 else temperature,
                                   rng_now)
    i = jnp.minimum(state.cur_index, max_len)
    forced = jnp.take_along_axis(state.sequences, (i + 1)[:, None], axis=1)[:, 0]
    out_of_prompt = forced == 0
    token = token * out_of_prompt + forced * ~out_of_prompt
    log_prob = state.log_prob + (token_log_prob * out_of_prompt) * (~state.ended[:, 0]).astype(jnp.int32)
    token = token[:, None] * ~state.ended
    one_hot = jax.nn.one_hot(i + 1, state.sequences.shape[1], dtype=state.sequences.dtype)
    sequences = state.sequences * (1 - one_hot) + token * one_hot
    ended = (state.ended | (jnp.sum(sequences == eos_id, axis=-1, keepdims=True) > initial_eos) |
             (i >= max_len - 1)[:, None])
    return SamplingLoopState(state.step + 1, i + 1, sequences, match_frozen(new_cache, state.cache), token, ended,
                             rng_next, log_prob)

  final = lax.while_loop(lambda s: ~jnp.all(s.ended), body, state0)
  if state_callback_fn is not None:
    final = state_callback_fn(final)
  return final.sequences[:, 1:-1], final.log_prob
