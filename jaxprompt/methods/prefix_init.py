"""Prefix rows of the scale a frozen layer is used to: the keys / values it computes itself for common tokens
(prefix tuning's 'sampled_vocab' initialisation, `jaxprompt.methods.prefix_tuning`).

P token embeddings are drawn from the commonest vocabulary ids and RMS-normalised; each layer then puts them
through its own pre-attention norm (its scale; a LayerNorm's mean subtraction and bias too, GPT-2; for T5's
cross-attention the encoder's final norm, as its keys come from the encoder output) and its key / value
projections (with their biases, Qwen2 / GPT-2). Read by t5x parameter names, which every family's tree uses
(`decoder/layers_N/self_attention/{key,value}` on T5's decoder and on a causal LM alike); a post-norm layer (BERT)
reads the norm that ends the layer before it. Rotary keys stay
un-rotated, as the network uses prefix keys: each row looks like a key at position 0.
"""
from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from jaxprompt.errors import ConfigError
from jaxprompt.methods.base import Params
from jaxprompt.models.hooks import STACK_OF_KIND

Array = jax.Array
VOCAB_POPULATION = 5000  # SentencePiece (T5) and BPE vocabularies number their commonest pieces first
_EPS = 1e-6

# Per kind: (attention module, pre-attention norm module or None for the encoder's final norm).
_FROZEN_NAMES = {
    'encoder_self': ('attention', 'pre_attention_layer_norm'),
    'decoder_self': ('self_attention', 'pre_self_attention_layer_norm'),
    'cross': ('encoder_decoder_attention', None),
}


def vocab_embeddings(rng: Array, frozen: Params, length: int) -> Array:
  """`length` frozen token embeddings of distinct common ids, RMS-normalised. [P, emb]"""
  table = (frozen.get('token_embedder') or {}).get('embedding') if isinstance(frozen, Mapping) else None
  if table is None:
    raise ConfigError("prefix initializer 'sampled_vocab' needs the frozen model's token_embedder/embedding; "
                      "use initializer='normal' without one")
  population = min(VOCAB_POPULATION, table.shape[0])
  ids = jax.random.choice(rng, population, (length,), replace=length > population)
  x = jnp.take(jnp.asarray(table), ids, axis=0).astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + _EPS)


def frozen_rows(x: Array, frozen: Params, kind: str, layers: int) -> dict[str, Array]:
  """{'key', 'value': [layers, P, heads * head_dim]}: what each layer's attention of `kind` computes for x."""
  attention, norm = _FROZEN_NAMES[kind]
  stack = STACK_OF_KIND[kind]
  params = [_layer(frozen, stack, i) for i in range(layers)]
  inputs = [
      _normed(x,
              _cross_norm(frozen) if norm is None else _input_norm(frozen, stack, i, norm)) for i in range(layers)
  ]  # each [P, emb]
  return {
      part: jnp.stack([_project(h, p[attention][part]) for h, p in zip(inputs, params)]) for part in ('key', 'value')
  }


def _layer(frozen: Params, stack: str, index: int) -> Params:
  """Layer `index` of a stack's frozen params, unscanned (`layers_N`) or scanned (`layers`, leading axis)."""
  tree = frozen[stack]
  if 'layers' in tree:
    return jax.tree.map(lambda a: a[index], tree['layers'])
  return tree[f'layers_{index}']


def _input_norm(frozen: Params, stack: str, index: int, norm: str) -> Params:
  """The norm whose output layer `index`'s attention reads: its own pre-attention norm (pre-norm layers), or for a
  post-norm layer (BERT: `attention_layer_norm` after the attention) the norm ending the layer before it, the
  embeddings' for the first (`embedder_norm`)."""
  layer = _layer(frozen, stack, index)
  if norm in layer:
    return layer[norm]
  return frozen['embedder_norm'] if index == 0 else _layer(frozen, stack, index - 1)['mlp_layer_norm']


def _cross_norm(frozen: Params) -> Params:
  """The norm ahead of cross-attention's keys: the encoder's final norm (t5x names)."""
  return frozen['encoder']['encoder_norm']


def _normed(x: Array, norm: Params) -> Array:
  """x [P, emb] of unit RMS through a frozen pre-attention norm: RMSNorm's scale, or (a `bias` beside it)
  LayerNorm's mean subtraction, scale and bias."""
  scale = jnp.asarray(norm['scale'], jnp.float32)
  if 'bias' not in norm:
    return x * scale
  centred = x - jnp.mean(x, axis=-1, keepdims=True)
  centred = centred * jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=-1, keepdims=True) + _EPS)
  return centred * scale + jnp.asarray(norm['bias'], jnp.float32)


def _project(x: Array, dense: Params) -> Array:
  """x [P, emb] through a frozen key / value projection (kernel [emb, heads * kv], and its bias if any)."""
  out = x @ jnp.asarray(dense['kernel'], jnp.float32)
  return out + jnp.asarray(dense['bias'], jnp.float32) if 'bias' in dense else out
