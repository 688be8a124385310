"""Beam-axis and cache utilities for decoding, and the top-k / top-p logit masks (t5x semantics).

Cache leaves named `cache_index` (a scalar, unless decoding starts from a prefilled cache), `cached_bias`
and `position_embedder_index` have no batch axis and are never expanded, flattened or gathered along beams.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxprompt.errors import ConfigError

PyTree = Any
_NEVER_MAPPED = ('cached_bias', 'position_embedder_index')


def leaf_name(path) -> str:
  last = path[-1] if path else None
  for attr in ('key', 'name', 'idx'):
    if hasattr(last, attr):
      return str(getattr(last, attr))
  return ''


def cache_map(fn: Callable[[jax.Array], jax.Array], cache: PyTree, apply_to_index: bool = False) -> PyTree:
  """Applies `fn` to every cache leaf that has a batch axis (see module docstring), keeping containers."""

  def visit(path, x):
    name = leaf_name(path)
    if name in _NEVER_MAPPED or (name == 'cache_index' and not apply_to_index):
      return x
    return fn(x)

  return jax.tree_util.tree_map_with_path(visit, cache)


def add_beam_dim(x: jax.Array, beam_size: int, offset: int = 0) -> jax.Array:
  """[..., batch, ...] -> [..., batch, beam, ...] by tiling; `offset` is the batch axis."""
  x = jnp.expand_dims(x, axis=offset + 1)
  reps = [1] * x.ndim
  reps[offset + 1] = beam_size
  return jnp.tile(x, reps)


def flatten_beam_dim(x: jax.Array, offset: int = 0) -> jax.Array:
  """[..., batch, beam, ...] -> [..., batch*beam, ...]."""
  shape = list(x.shape)
  return x.reshape(shape[:offset] + [shape[offset] * shape[offset + 1]] + shape[offset + 2:])


def unflatten_beam_dim(x: jax.Array, batch_size: int, beam_size: int, offset: int = 0) -> jax.Array:
  """[..., batch*beam, ...] -> [..., batch, beam, ...]."""
  if x.shape[offset] != batch_size * beam_size:
    raise ConfigError(f'cannot split axis {offset} of shape {x.shape} into batch {batch_size} x beams '
                      f'{beam_size}')
  shape = list(x.shape)
  return x.reshape(shape[:offset] + [batch_size, beam_size] + shape[offset + 1:])


def flat_batch_beam_expand(x: jax.Array, beam_size: int, offset: int = 0) -> jax.Array:
  """[batch, ...] -> [batch*beam, ...], each batch item repeated `beam_size` times in a row."""
  return flatten_beam_dim(add_beam_dim(x, beam_size, offset), offset)


def gather_beams(nested: PyTree, beam_indices: jax.Array, old_beam_size: int, offset: int = 0) -> PyTree:
  """Selects beams: [.., batch, old_beams, ...] -> [.., batch, new_beams, ...]; beam_indices [batch, new_beams].

  Like t5x, a one-hot contraction (shards well under SPMD); HIGHEST precision keeps float gathers exact on TPU.
  """
  one_hot = jax.nn.one_hot(beam_indices, old_beam_size, dtype=jnp.int32)
  spec = 'beo,bo...->be...' if offset == 0 else 'beo,lbo...->lbe...'
  return jax.tree_util.tree_map(lambda x: jnp.einsum(spec, one_hot, x, precision=lax.Precision.HIGHEST).astype(x.dtype),
                                nested)


def cache_gather_beams(cache: PyTree, beam_indices: jax.Array, old_beam_size: int, offset: int = 0,
                       apply_to_index: bool = False) -> PyTree:
  """`gather_beams` over the cache leaves that carry beams."""
  return cache_map(lambda x: gather_beams(x, beam_indices, old_beam_size, offset), cache, apply_to_index)


def gather_topk_beams(nested: PyTree, score: jax.Array, new_beam_size: int) -> PyTree:
  """Keeps the `new_beam_size` best beams by `score` [batch, old_beams], ordered worst first."""
  _, indices = lax.top_k(score, k=new_beam_size)
  return gather_beams(nested, jnp.flip(indices, axis=1), score.shape[1])


# ------------------------------------------------------------------------------------------------------------
# Top-k / top-p masks (same kept set as t5x's binary-search masks).
# ------------------------------------------------------------------------------------------------------------


def topk_mask(logits: jax.Array, k, replace_val) -> jax.Array:
  """Keeps logits >= the k-th largest (ties may keep more); k may be traced; k > vocab keeps all."""
  ordered = -jnp.sort(-logits, axis=-1)
  kth = jnp.take(ordered, jnp.clip(jnp.asarray(k) - 1, 0, logits.shape[-1] - 1), axis=-1)[..., None]
  return jnp.where(logits >= kth, logits, jnp.full_like(logits, replace_val))


def topp_mask(logits: jax.Array, p, replace_val) -> jax.Array:
  """Keeps the smallest most-probable set whose probability mass is >= p (all ties of its last member)."""
  probs = jax.nn.softmax(logits, axis=-1)
  ordered = -jnp.sort(-probs, axis=-1)
  before = jnp.sum(jnp.cumsum(ordered, axis=-1) < p, axis=-1, keepdims=True)
  threshold = jnp.take_along_axis(ordered, jnp.minimum(before, logits.shape[-1] - 1), axis=-1)
  return jnp.where(probs >= threshold, logits, jnp.full_like(logits, replace_val))
