"""T5X-compatible building blocks: dense, embedding, RMSNorm / LayerNorm, relative position biases, MLP, masks.

Parameter names, shapes and logical axes are those of t5x's minimal T5 (`t5x/examples/t5/layers.py`), so a
T5X checkpoint maps onto these modules with no renaming: every kernel is stored 2-D (`[in, out]`, heads joined)
and reshaped at run time. Biases (off by default; GPT-2 / Qwen2 / Llama with attention_bias use them) are 1-D
over the kernel's output axis. Attention lives in `jaxprompt.models.attention`.
"""
from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
Dtype = Any
ParamInit = Callable[..., Array]

default_kernel_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')


def constrain(x: Array, axes: Sequence[str | None]) -> Array:
  """Logical sharding constraint (a no-op without an active mesh and logical axis rules)."""
  return nn.with_logical_constraint(x, tuple(axes))


def logical_param(module: nn.Module, name: str, init: ParamInit, shape: Sequence[int], dtype: Dtype,
                  axes: Sequence[str | None]) -> Array:
  """Declares a parameter annotated with t5x logical axis names (readable with `nn.get_partition_spec`)."""
  return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape), dtype)


class DenseGeneral(nn.Module):
  """Dense layer over one or more input axes; the kernel is stored 2-D `[prod(in), prod(out)]`.

  `use_bias` adds a `bias` [prod(out)] on the kernel's output axis (bias-free by default, as in T5).
  """
  features: int | Sequence[int]
  axis: int | Sequence[int] = -1
  kernel_axes: Sequence[str] = ()
  kernel_init: ParamInit = default_kernel_init
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  use_bias: bool = False

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    axis = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
    axis = tuple(a % inputs.ndim for a in axis)
    in_shape = tuple(inputs.shape[a] for a in axis)
    flat_shape = (int(np.prod(in_shape)), int(np.prod(features)))
    kernel = logical_param(self, 'kernel', _reshaped_init(self.kernel_init, in_shape + features), flat_shape,
                           self.param_dtype, self.kernel_axes)
    kernel = jnp.asarray(kernel, self.dtype).reshape(in_shape + features)
    inputs = jnp.asarray(inputs, self.dtype)
    contract = (axis, tuple(range(len(axis))))
    out = lax.dot_general(inputs, kernel, (contract, ((), ())))
    if not self.use_bias:
      return out
    bias = logical_param(self, 'bias', nn.initializers.zeros, (flat_shape[1],), self.param_dtype,
                         tuple(self.kernel_axes)[-1:])
    return out + jnp.asarray(bias, self.dtype).reshape(features)


def _reshaped_init(init: ParamInit, true_shape: tuple) -> ParamInit:
  """Initialises with fan-in/out of the multi-axis kernel (as t5x does), then flattens to 2-D."""

  def flat_init(key, shape, dtype=jnp.float32):
    return jnp.reshape(init(key, true_shape, dtype), shape)

  return flat_init


def use_one_hot(setting: bool | None) -> bool:
  """A config's `one_hot_embedding`: unset means one-hot on TPU (where gathers are slow), gather elsewhere."""
  if setting is None:
    return jax.default_backend() == 'tpu'
  return bool(setting)


class Embed(nn.Module):
  """Token embedding `[vocab, embed]`; lookup by one-hot matmul (t5x's TPU-friendly default).

  `axes` names the table's logical axes (a learned position table is `('abspos_buckets', 'embed')`).
  """
  num_embeddings: int
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  one_hot: bool = True
  embedding_init: ParamInit = nn.initializers.normal(stddev=1.0)
  axes: tuple[str, str] = ('vocab', 'embed')

  def setup(self):
    self.embedding = logical_param(self, 'embedding', self.embedding_init, (self.num_embeddings, self.features),
                                   self.param_dtype, self.axes)

  def __call__(self, inputs: Array) -> Array:
    """[batch, length] int -> [batch, length, embed]."""
    if self.one_hot:
      one_hot = jnp.asarray(inputs[..., None] == jnp.arange(self.num_embeddings, dtype=jnp.int32), self.dtype)
      output = jnp.dot(one_hot, jnp.asarray(self.embedding, self.dtype))
    else:
      output = jnp.asarray(self.embedding, self.dtype)[inputs]
    return constrain(output, ('batch', 'length', 'embed'))

  def attend(self, query: Array) -> Array:
    """[..., embed] -> [..., vocab] logits against the embedding table (tied output layer)."""
    return jnp.dot(jnp.asarray(query, self.dtype), jnp.asarray(self.embedding, self.dtype).T)


class RMSNorm(nn.Module):
  """T5 layer norm: scale only, no mean subtraction, computed in float32."""
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.asarray(x, jnp.float32)
    mean2 = jnp.mean(lax.square(x), axis=-1, keepdims=True)
    y = jnp.asarray(x * lax.rsqrt(mean2 + self.epsilon), self.dtype)
    scale = logical_param(self, 'scale', nn.initializers.ones, (x.shape[-1],), self.param_dtype, ('embed',))
    return y * jnp.asarray(scale, self.dtype)


class LayerNorm(nn.Module):
  """LayerNorm with `scale` and `bias` (GPT-2): mean and variance over the last axis in float32."""
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.asarray(x, jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(lax.square(x - mean), axis=-1, keepdims=True)
    y = jnp.asarray((x - mean) * lax.rsqrt(var + self.epsilon), self.dtype)
    scale = logical_param(self, 'scale', nn.initializers.ones, (x.shape[-1],), self.param_dtype, ('embed',))
    bias = logical_param(self, 'bias', nn.initializers.zeros, (x.shape[-1],), self.param_dtype, ('embed',))
    return y * jnp.asarray(scale, self.dtype) + jnp.asarray(bias, self.dtype)


def relative_position_bucket(relative_position: np.ndarray, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> np.ndarray:
  """Maps key-minus-query offsets to T5's log-spaced buckets (exact for small offsets, log beyond)."""
  n = -relative_position
  bucket = np.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    bucket += (n < 0).astype(np.int32) * num_buckets
    n = np.abs(n)
  else:
    n = np.maximum(n, 0)
  max_exact = num_buckets // 2
  eps = np.finfo(np.float32).eps
  large = max_exact + (np.log(n.astype(np.float32) / max_exact + eps) / np.log(max_distance / max_exact) *
                       (num_buckets - max_exact)).astype(np.int32)
  large = np.minimum(large, num_buckets - 1)
  return bucket + np.where(n < max_exact, n, large)


def relative_position_buckets(qlen: int, klen: int, bidirectional: bool, num_buckets: int, max_distance: int,
                              key_offset: int = 0) -> np.ndarray:
  """Buckets [qlen, klen] of queries at 0..qlen-1 against keys at key_offset..key_offset+klen-1.

  A K/V prefix of p rows sits at key_offset = -p: the positions just before the sequence.
  """
  context = np.arange(qlen, dtype=np.int32)[:, None]
  memory = np.arange(klen, dtype=np.int32)[None, :] + key_offset
  return relative_position_bucket(memory - context, bidirectional, num_buckets, max_distance)


def bucket_biases(table: Array, buckets: np.ndarray, dtype: Dtype) -> Array:
  """Looks buckets [q, k] up in a bias table [heads, num_buckets] -> [1, heads, q, k] (one-hot matmul)."""
  table = jnp.asarray(table, dtype)
  one_hot = jnp.asarray(buckets[None] == np.arange(table.shape[-1])[:, None, None], dtype)
  values = lax.dot_general(table, one_hot, (((1,), (0,)), ((), ())))
  return values[None]


class RelativePositionBiases(nn.Module):
  """Per-head additive attention biases from bucketed relative positions; one table `[heads, buckets]`.

  `table` is exposed so that layers can bias K/V prefix columns from the same parameter (`bucket_biases`).
  """
  num_buckets: int
  max_distance: int
  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  embedding_init: ParamInit = nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform')

  def setup(self):
    self.table = logical_param(self, 'rel_embedding', self.embedding_init, (self.num_heads, self.num_buckets),
                               self.param_dtype, ('heads', 'relpos_buckets'))

  def __call__(self, qlen: int, klen: int, bidirectional: bool = True) -> Array:
    """Returns biases `[1, heads, qlen, klen]`."""
    buckets = relative_position_buckets(qlen, klen, bidirectional, self.num_buckets, self.max_distance)
    return bucket_biases(self.table, buckets, self.dtype)


# 'gelu' is the tanh approximation (HF's gelu_new / gelu_pytorch_tanh), 'gelu_exact' the erf form (HF's gelu).
_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    'gelu': functools.partial(nn.gelu, approximate=True),
    'gelu_exact': functools.partial(nn.gelu, approximate=False),
    'relu': nn.relu,
    'silu': nn.silu,
    'linear': lambda x: x,
}
ACTIVATION_NAMES = frozenset(_ACTIVATIONS)


def activation(name: str) -> Callable[[Array], Array]:
  """The activation function called `name` (one of ACTIVATION_NAMES)."""
  return _ACTIVATIONS[name]


class MlpBlock(nn.Module):
  """Feed-forward block: one `wi` per activation (`wi_0`, `wi_1` when gated), multiplied, then `wo`."""
  intermediate_dim: int
  activations: Sequence[str] = ('relu',)
  kernel_init: ParamInit = default_kernel_init
  intermediate_dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  use_bias: bool = False

  @nn.compact
  def __call__(self, inputs: Array, deterministic: bool = True) -> Array:
    """[b, l, embed] -> [b, l, embed]."""
    hidden = []
    for idx, act in enumerate(self.activations):
      name = f'wi_{idx}' if len(self.activations) > 1 else 'wi'
      x = DenseGeneral(self.intermediate_dim, kernel_init=self.kernel_init, kernel_axes=('embed', 'mlp'),
                       dtype=self.dtype, param_dtype=self.param_dtype, use_bias=self.use_bias, name=name)(inputs)
      hidden.append(_ACTIVATIONS[act](x))
    x = functools.reduce(operator.mul, hidden)
    x = nn.Dropout(rate=self.intermediate_dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
    x = constrain(x, ('batch', 'length', 'mlp'))
    return DenseGeneral(inputs.shape[-1], kernel_init=self.kernel_init, kernel_axes=('mlp', 'embed'), dtype=self.dtype,
                        param_dtype=self.param_dtype, use_bias=self.use_bias, name='wo')(x)


def make_attention_mask(query_valid: Array, key_valid: Array, pairwise_fn=jnp.multiply,
                        dtype: Dtype = jnp.float32) -> Array:
  """[b, q], [b, k] -> mask [b, 1, q, k]."""
  mask = pairwise_fn(query_valid[..., :, None], key_valid[..., None, :])
  return mask[..., None, :, :].astype(dtype)


def make_causal_mask(x: Array, dtype: Dtype = jnp.float32) -> Array:
  """[b, l] -> lower-triangular mask [b, 1, l, l]."""
  idx = jnp.broadcast_to(jnp.arange(x.shape[-1], dtype=jnp.int32), x.shape)
  return make_attention_mask(idx, idx, jnp.greater_equal, dtype=dtype)


def combine_masks(*masks: Array | None, dtype: Dtype = jnp.float32) -> Array | None:
  """Logical AND of the given masks (None entries ignored)."""
  masks = [m for m in masks if m is not None]
  if not masks:
    return None
  out = masks[0]
  for m in masks[1:]:
    out = jnp.logical_and(out, m)
  return out.astype(dtype)
