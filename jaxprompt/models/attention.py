"""T5X-compatible multi-head attention: the projections, the autoregressive cache and K/V prefixes.

Parameter names and layout are t5x's (`query/key/value/out`, 2-D kernels over `joined_kv`). A `KVPrefix`
(`jaxprompt.models.hooks`) adds already-projected key/value rows in front of the keys: they bypass the key/value
kernels, their mask is prepended to the key side of the attention mask and their relative-position bias comes
from the caller (`prefix_bias`, or zero).

Decoder-only models (`causal_lm.py`) switch on what T5 does not use: grouped-query attention (`num_kv_heads`),
projection biases, queries scaled by head_dim ** -0.5 at run time, and rotary positions applied to the fresh
queries and keys before the cache (prefix keys are never rotated: they arrive already projected).
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxprompt.errors import ConfigError
from jaxprompt.models.hooks import RELPOS_MODES, KVPrefix
from jaxprompt.models.layers import DenseGeneral, Dtype, ParamInit, constrain, default_kernel_init
from jaxprompt.models.rotary import Rotary

Array = jax.Array

MASK_BIAS = -1e10  # t5x's additive bias for masked attention positions.
KV_AXES = ('batch', 'length', 'heads', 'kv')
GQA_KV_AXES = ('batch', 'length', 'kv_heads', 'kv')  # fewer key/value heads than query heads
_PREFIX_CACHE = ('cached_prefix_key', 'cached_prefix_value', 'cached_prefix_mask')


def dot_product_attention(query: Array, key: Array, value: Array, bias: Array | None, *,
                          dropout_rng: Array | None = None, dropout_rate: float = 0.0, deterministic: bool = True,
                          dtype: Dtype = jnp.float32, float32_logits: bool = False) -> Array:
  """Attention weights softmax(q·k + bias) applied to values. q [b, q, h, d], k/v [b, k, g, d] -> [b, q, h, d].

  g = h, or g < h (grouped-query attention: query head j reads key/value head j // (h / g)). No 1/sqrt(d)
  here: T5 folds it into the query kernel's initialisation, decoder-only models scale the queries first.
  """
  if float32_logits:
    query, key = jnp.asarray(query, jnp.float32), jnp.asarray(key, jnp.float32)
  batch, qlen, heads, depth = query.shape
  kv_heads = key.shape[2]
  if kv_heads == heads:
    logits = jnp.einsum('bqhd,bkhd->bhqk', query, key)
  else:  # each kv head serves h / g query heads without being copied
    grouped = query.reshape(batch, qlen, kv_heads, heads // kv_heads, depth)
    logits = jnp.einsum('bqkgd,bskd->bkgqs', grouped, key).reshape(batch, heads, qlen, key.shape[1])
  if bias is not None:
    logits = logits + jnp.asarray(bias, logits.dtype)
  weights = jax.nn.softmax(logits.astype(jnp.float32)).astype(dtype)
  if not deterministic and dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
    weights = weights * (keep.astype(dtype) / jnp.asarray(1.0 - dropout_rate, dtype))
  if kv_heads == heads:
    return jnp.einsum('bhqk,bkhd->bqhd', weights, value)
  weights = weights.reshape(batch, kv_heads, heads // kv_heads, qlen, key.shape[1])
  return jnp.einsum('bkgqs,bskd->bqkgd', weights, value).reshape(batch, qlen, heads, depth)


def mask_to_bias(mask: Array | None, dtype: Dtype) -> Array | None:
  """Boolean/0-1 attention mask `[b, 1, q, k]` -> additive bias (0 or -1e10)."""
  if mask is None:
    return None
  return lax.select(mask > 0, jnp.zeros(mask.shape, dtype), jnp.full(mask.shape, MASK_BIAS, dtype))


def check_prefix(prefix: KVPrefix) -> None:
  """Rejects a prefix whose shapes or relpos mode the attention cannot use."""
  if prefix.relpos not in RELPOS_MODES:
    raise ConfigError(f'KVPrefix.relpos must be one of {RELPOS_MODES}, got {prefix.relpos!r}')
  if prefix.key.ndim != 4 or prefix.value.shape != prefix.key.shape or prefix.mask.shape != prefix.key.shape[:2]:
    raise ConfigError(f'KVPrefix needs key/value [b, p, h, d] and mask [b, p]; got key {prefix.key.shape}, '
                      f'value {prefix.value.shape}, mask {prefix.mask.shape}')


def _group_queries(query: Array, mask: Array | None, bias: Array | None,
                   groups: int) -> tuple[Array, Array | None, Array | None]:
  """Folds n query rows per key row into one row of n times the positions.

  Queries [b*n, q, h, d] (example-major, as `jnp.repeat` lays them out) -> [b, n*q, h, d]; mask [b*n, 1, q, k] ->
  [b, 1, n*q, k]; bias [1, h, q, k] -> [1, h, n*q, k]. Each query still sees exactly its own mask row, so the
  result, reshaped back, equals attention over keys repeated n times, without projecting or copying them n times.
  """
  rows, qlen = query.shape[0] // groups, query.shape[1]
  query = query.reshape((rows, groups * qlen) + query.shape[2:])
  if mask is not None:
    mask = jnp.broadcast_to(mask, (rows * groups,) + mask.shape[1:])
    mask = mask.reshape((rows, groups) + mask.shape[1:]).swapaxes(1, 2).reshape(rows, mask.shape[1], groups * qlen,
                                                                                mask.shape[-1])
  if bias is not None:
    bias = jnp.tile(bias, (1, 1, groups, 1))
  return query, mask, bias


class MultiHeadDotProductAttention(nn.Module):
  """Multi-head attention with t5x parameter layout (`query/key/value/out`, 2-D kernels, `joined_kv`).

  With `decode=True` it keeps an autoregressive key/value cache (`cached_key`, `cached_value`, `cache_index`
  in the `cache` collection) and takes one query position per call. A K/V prefix in decoding (`decode` or
  `cache_prefix`) has its own batch-leading cache leaves (`cached_prefix_key/value/mask`), so the token cache
  and `cache_index` (tokens decoded so far) keep their plain layout; its bias row follows `cache_index`.
  `prefill=True` (with decode) writes a whole [b, q] block at positions 0..q-1 and leaves a per-example
  `cache_index` [b] = q, the layout `jaxprompt.models.decoding` continues from (`initial_index`).
  """
  num_heads: int
  head_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  dropout_rate: float = 0.0
  kernel_init: ParamInit = default_kernel_init
  float32_logits: bool = False
  num_kv_heads: int | None = None  # None: num_heads
  qkv_bias: bool = False
  out_bias: bool = False
  scale_queries: bool = False  # multiply queries by head_dim ** -0.5 at run time (instead of in their init)
  rotary: Rotary | None = None  # rotate queries and keys to `positions`

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, mask: Array | None = None, bias: Array | None = None, *,
               prefix: KVPrefix | None = None, prefix_bias: Array | None = None, decode: bool = False,
               cache_prefix: bool = False, deterministic: bool = True, positions: Array | None = None,
               prefill: bool = False, cache_length: int | None = None) -> Array:
    """inputs [b, q, embed], [b, k, embed]; mask [b, 1, q, k]; bias [1, h, q, k] -> [b, q, embed].

    prefix: K/V rows [b|1, p, g, d] (g = num_kv_heads) put in front of the keys; prefix_bias [1, h, q, p]
    their relative-position bias (None: zero), with q the full query length (decoding slices the current step's
    row). positions [b, q]: the rotary positions of self-attention's rows. cache_length: the cache's rows when
    the initialising decode call creates it (default: this call's key length).
    """
    kv_heads = self.num_kv_heads or self.num_heads
    projection = functools.partial(DenseGeneral, axis=-1, kernel_axes=('embed', 'joined_kv'), dtype=self.dtype,
                                   param_dtype=self.param_dtype, use_bias=self.qkv_bias)
    depth_scaling = jnp.sqrt(self.head_dim).astype(jnp.float32)

    def query_init(*args):
      return self.kernel_init(*args) / depth_scaling

    query = projection(features=(self.num_heads, self.head_dim),
                       kernel_init=self.kernel_init if self.scale_queries else query_init, name='query')(inputs_q)
    key = projection(features=(kv_heads, self.head_dim), kernel_init=self.kernel_init, name='key')(inputs_kv)
    value = projection(features=(kv_heads, self.head_dim), kernel_init=self.kernel_init, name='value')(inputs_kv)
    kv_axes = KV_AXES if kv_heads == self.num_heads else GQA_KV_AXES
    query = constrain(query, ('batch', 'length', 'heads', 'kv'))
    key = constrain(key, kv_axes)
    value = constrain(value, kv_axes)
    if self.rotary is not None:
      if positions is None:
        raise ConfigError('rotary attention needs the positions [batch, length] of its rows')
      query, key = self.rotary(query, positions), self.rotary(key, positions)
    if self.scale_queries:
      query = query * jnp.asarray(self.head_dim**-0.5, query.dtype)

    row = None
    if decode:
      key, value, mask, bias, row = self._update_cache(query, key, value, mask, bias, prefill, cache_length)
    if prefix is not None:
      key, value, mask, bias = self._prepend_prefix(prefix, prefix_bias, row, query.shape[1], key, value, mask, bias,
                                                    cache=decode or cache_prefix, kv_axes=kv_axes)

    groups = query.shape[0] // key.shape[0]
    if groups > 1:  # Several query rows per key row (rank-classification candidates): no copy of k / v.
      if decode or query.shape[0] % key.shape[0]:
        raise ConfigError(f'attention over {key.shape[0]} key rows needs a multiple of them as query rows and no '
                          f'cache; got {query.shape[0]} query rows (decode={decode})')
      query, mask, bias = _group_queries(query, mask, bias, groups)
    attention_bias = mask_to_bias(mask, self.dtype)
    if bias is not None:
      attention_bias = bias if attention_bias is None else attention_bias + bias
    dropout_rng = None
    if not deterministic and self.dropout_rate > 0.0:
      dropout_rng = self.make_rng('dropout')
    x = dot_product_attention(query, key, value, attention_bias, dropout_rng=dropout_rng,
                              dropout_rate=self.dropout_rate, deterministic=deterministic, dtype=self.dtype,
                              float32_logits=self.float32_logits)
    if groups > 1:
      x = x.reshape((x.shape[0] * groups, -1) + x.shape[2:])
    out = DenseGeneral(features=inputs_q.shape[-1], axis=(-2, -1), kernel_init=self.kernel_init,
                       kernel_axes=('joined_kv', 'embed'), dtype=self.dtype, param_dtype=self.param_dtype,
                       use_bias=self.out_bias, name='out')(x)
    return out

  def _update_cache(self, query, key, value, mask, bias, prefill=False, cache_length=None):
    """Writes this step's key/value at `cache_index`; returns the full cached k/v with a causal mask/bias and
    the step's query position (None on the initialising call and on prefill).

    On the first (initialising) call the cache is created ([b, cache_length or k, g, d]) and the inputs pass
    through unchanged. A prefill (creating the cache if there is none) writes the whole block at 0 and attends
    over it as given. A step's `cache_index` is a scalar (decoding from scratch) or [b] (after a prefill; each
    row writes at its own).
    """
    initialized = self.has_variable('cache', 'cached_key')
    shape = key.shape[:1] + (cache_length or key.shape[1],) + key.shape[2:]
    cached_key = self.variable('cache', 'cached_key', jnp.zeros, shape, key.dtype)
    cached_value = self.variable('cache', 'cached_value', jnp.zeros, shape, value.dtype)
    cache_index = self.variable('cache', 'cache_index', lambda: jnp.array(0, dtype=jnp.int32))
    if not initialized and not prefill:
      return key, value, mask, bias, None
    batch, length, heads, depth = cached_key.value.shape
    if prefill:
      if key.shape[0] != batch or key.shape[1] > length:
        raise ConfigError(f'a prefill of {key.shape[:2]} [batch, length] does not fit the cache of {(batch, length)}; '
                          f'initialise the cache with max_decode_length >= the prefilled length')
      cached_key.value = lax.dynamic_update_slice(cached_key.value, key.astype(cached_key.value.dtype), (0, 0, 0, 0))
      cached_value.value = lax.dynamic_update_slice(cached_value.value, value.astype(cached_value.value.dtype),
                                                    (0, 0, 0, 0))
      cache_index.value = jnp.full((batch,), key.shape[1], jnp.int32)
      return key, value, mask, bias, None
    if query.shape[:2] != (batch, 1) or key.shape[2:] != (heads, depth):
      raise ValueError(f'autoregressive cache expects one query row per example and keys of {heads} heads x {depth}; '
                       f'got queries {query.shape}, keys {key.shape}')
    index = cache_index.value
    if jnp.ndim(index) == 0:
      key = lax.dynamic_update_slice(cached_key.value, key.astype(cached_key.value.dtype), (0, index, 0, 0))
      value = lax.dynamic_update_slice(cached_value.value, value.astype(cached_value.value.dtype), (0, index, 0, 0))
      causal = jnp.broadcast_to(jnp.arange(length) <= index, (batch, 1, 1, length))
    else:
      if bias is not None:
        raise ConfigError('a per-example cache_index (after a prefill) cannot slice a relative-position bias')
      slot = (jnp.arange(length)[None, :] == index[:, None])[:, :, None, None]
      key = jnp.where(slot, key.astype(cached_key.value.dtype), cached_key.value)
      value = jnp.where(slot, value.astype(cached_value.value.dtype), cached_value.value)
      causal = (jnp.arange(length)[None, :] <= index[:, None])[:, None, None, :]
    cached_key.value, cached_value.value = key, value
    cache_index.value = index + 1
    mask = causal if mask is None else jnp.logical_and(mask, causal)
    if bias is not None:
      bias = lax.dynamic_slice_in_dim(bias, index, 1, axis=-2)
    return key, value, mask, bias, index

  def _prefix_rows(self, prefix: KVPrefix, batch: int, dtype: Dtype, cache: bool) -> tuple[Array, Array, Array]:
    """The prefix's key/value [b, p, h, d] and mask [b, p] bool at this call's batch size.

    Rows of batch 1 serve every example; rows of batch b at batch b * n are repeated n times per example, the
    flat layout in which decoding expands beams and rank classification candidates (`jnp.repeat`). Decoding
    keeps them in the cache (`cached_prefix_*`, batch-leading so beam search expands and gathers them):
    written when the cache is created and rewritten at every step, so a zero-initialised cache works too.
    """
    check_prefix(prefix)
    rows_batch = prefix.key.shape[0]
    if batch % rows_batch:
      raise ConfigError(f'KVPrefix rows of batch {rows_batch} do not divide the attention batch {batch}')

    def fit(a):
      if rows_batch == 1:
        return jnp.broadcast_to(a, (batch,) + a.shape[1:])
      return jnp.repeat(a, batch // rows_batch, axis=0) if rows_batch != batch else a

    rows = (fit(prefix.key.astype(dtype)), fit(prefix.value.astype(dtype)), fit(prefix.mask.astype(bool)))
    if cache:
      for name, r in zip(_PREFIX_CACHE, rows):
        self.variable('cache', name, lambda r=r: r).value = r
    return rows

  def _prepend_prefix(self, prefix, prefix_bias, row, qlen, key, value, mask, bias, cache, kv_axes=KV_AXES):
    """Puts the prefix's rows in front of key/value [b, k, g, d], mask [b, 1, q, k] and bias [1, h, q, k]."""
    batch, klen = key.shape[0], key.shape[1]
    if prefix.key.ndim == 4 and prefix.key.shape[2:] != key.shape[2:]:
      raise ConfigError(f'KVPrefix rows carry {prefix.key.shape[2]} heads x {prefix.key.shape[3]} but this attention '
                        f'has {key.shape[2]} key/value heads x {key.shape[3]} (a grouped-query model stores its '
                        f'prefix per key/value head)')
    pkey, pvalue, pmask = self._prefix_rows(prefix, batch, key.dtype, cache)
    plen = pkey.shape[1]
    key = constrain(jnp.concatenate([pkey, key], axis=1), kv_axes)
    value = constrain(jnp.concatenate([pvalue, value], axis=1), kv_axes)
    if mask is None:  # The prefix mask still applies where the sequence itself is unmasked.
      mask = jnp.ones((batch, 1, qlen, klen), bool)
    if mask.shape[0] != batch:  # query rows grouped over key rows (rank candidates): each sees its example's
      pmask = jnp.repeat(pmask, mask.shape[0] // batch, axis=0)
    pmask = jnp.broadcast_to(pmask[:, None, None, :], mask.shape[:-1] + (plen,)).astype(mask.dtype)
    mask = jnp.concatenate([pmask, mask], axis=-1)
    if prefix_bias is not None and row is not None:  # One decoding step: the current query's row.
      prefix_bias = lax.dynamic_slice_in_dim(prefix_bias, row, 1, axis=-2)
    if bias is not None or prefix_bias is not None:
      if prefix_bias is None:
        prefix_bias = jnp.zeros(bias.shape[:-1] + (plen,), bias.dtype)
      if bias is None:
        bias = jnp.zeros(prefix_bias.shape[:-1] + (klen,), prefix_bias.dtype)
      bias = jnp.concatenate([prefix_bias.astype(bias.dtype), bias], axis=-1)
    return key, value, mask, bias
