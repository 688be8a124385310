"""A T5X-compatible T5 encoder-decoder (T5 1.0, T5 1.1 / LM-adapted, mT5) in Flax linen.

Parameter tree (unscanned) = t5x's minimal T5:
  token_embedder/embedding                          [vocab, embed]
  encoder/relpos_bias/rel_embedding                 [heads, buckets]
  encoder/layers_N/{pre_attention_layer_norm, attention/{query,key,value,out}, pre_mlp_layer_norm, mlp/...}
  encoder/encoder_norm/scale
  decoder/relpos_bias/rel_embedding
  decoder/layers_N/{pre_self_attention_layer_norm, self_attention, pre_cross_attention_layer_norm,
                    encoder_decoder_attention, pre_mlp_layer_norm, mlp}
  decoder/decoder_norm/scale
  decoder/logits_dense/kernel                       [embed, vocab]   (absent when logits_via_embedding)
With `scan_layers=True` the `layers_N` subtrees become one `layers` subtree with a leading `layers` axis
(see `jaxprompt.models.scan.stack_layers`).

Tuning methods plug in only through `hooks=Hooks(...)` (`jaxprompt.models.hooks`): an input hook on each
stack's embedded inputs (the encoder's may add positions, e.g. a prompt), and per-layer hooks that act on each
layer's input hidden states and prepend K/V rows to its attentions. The network has no parameters of theirs.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxprompt.errors import ConfigError
from jaxprompt.models import attention, layers
from jaxprompt.models.config import T5Config
from jaxprompt.models.hooks import NO_HOOKS, Hooks, KVPrefix, LayerHook, call_input_hook
from jaxprompt.models.stack import run_stack

Array = jax.Array


class EncoderLayer(nn.Module):
  """Pre-norm self-attention + MLP block of the encoder."""
  config: T5Config
  deterministic: bool = True

  @nn.compact
  def __call__(self, inputs: Array, mask: Array, bias: Array, relpos_table: Array | None = None,
               hook: LayerHook | None = None, layer: int | Array | None = None) -> Array:
    """[b, l, embed], mask [b, 1, l, l], bias [1, h, l, l] -> [b, l, embed].

    hook: this layer's slice of the stack's LayerHook, called with index `layer`; relpos_table [h, buckets]
    biases its prefix keys.
    """
    cfg = self.config
    prefix = prefix_bias = None
    if hook is not None:
      inputs = hook.hidden_states(inputs, layer, 'encoder')
      prefix = hook.attention_prefix(layer, 'encoder_self')
      prefix_bias = _prefix_bias(cfg, prefix, relpos_table, bias.shape[-2], bidirectional=True)
    x = layers.RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, cfg.param_dtype, name='pre_attention_layer_norm')(inputs)
    x = layers.constrain(x, ('batch', 'length', 'embed'))
    x = _attention(cfg, 'attention')(x, x, mask, bias, prefix=prefix, prefix_bias=prefix_bias,
                                     deterministic=self.deterministic)
    x = _dropout(cfg, x, self.deterministic) + inputs
    y = layers.RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, cfg.param_dtype, name='pre_mlp_layer_norm')(x)
    y = _mlp(cfg)(y, deterministic=self.deterministic)
    return layers.constrain(_dropout(cfg, y, self.deterministic) + x, ('batch', 'length', 'embed'))


class DecoderLayer(nn.Module):
  """Pre-norm causal self-attention + cross-attention + MLP block of the decoder."""
  config: T5Config
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, inputs: Array, encoded: Array, decoder_mask: Array | None, encoder_decoder_mask: Array,
               bias: Array, relpos_table: Array | None = None, hook: LayerHook | None = None,
               layer: int | Array | None = None) -> Array:
    """[b, l, embed], encoded [b, le, embed] -> [b, l, embed]. Hook arguments as `EncoderLayer`'s."""
    cfg, det = self.config, self.deterministic
    self_prefix = cross_prefix = self_bias = None
    if hook is not None:
      inputs = hook.hidden_states(inputs, layer, 'decoder')
      self_prefix = hook.attention_prefix(layer, 'decoder_self')
      cross_prefix = hook.attention_prefix(layer, 'cross')  # T5 cross-attention has no relative bias.
      self_bias = _prefix_bias(cfg, self_prefix, relpos_table, bias.shape[-2], bidirectional=False)
    x = layers.RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, cfg.param_dtype, name='pre_self_attention_layer_norm')(inputs)
    x = layers.constrain(x, ('batch', 'length', 'embed'))
    x = _attention(cfg, 'self_attention')(x, x, decoder_mask, bias, prefix=self_prefix, prefix_bias=self_bias,
                                          decode=self.decode, deterministic=det)
    x = _dropout(cfg, x, det) + inputs
    y = layers.RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, cfg.param_dtype, name='pre_cross_attention_layer_norm')(x)
    y = _attention(cfg, 'encoder_decoder_attention')(y, encoded, encoder_decoder_mask, prefix=cross_prefix,
                                                     cache_prefix=self.decode, deterministic=det)
    y = _dropout(cfg, y, det) + x
    z = layers.RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, cfg.param_dtype, name='pre_mlp_layer_norm')(y)
    z = _mlp(cfg)(z, deterministic=det)
    return layers.constrain(_dropout(cfg, z, det) + y, ('batch', 'length', 'embed'))


def _prefix_bias(cfg: T5Config, prefix: KVPrefix | None, table: Array | None, qlen: int,
                 bidirectional: bool) -> Array | None:
  """Relative-position bias [1, h, qlen, p] of a prefix's keys, or None (zero) for relpos 'none'."""
  if prefix is None or prefix.relpos == 'none':
    return None
  attention.check_prefix(prefix)
  buckets = layers.relative_position_buckets(qlen, prefix.key.shape[1], bidirectional, cfg.relpos_num_buckets,
                                             cfg.relpos_max_distance, key_offset=-prefix.key.shape[1])
  return layers.bucket_biases(table, buckets, cfg.dtype)


def _attention(cfg: T5Config, name: str) -> attention.MultiHeadDotProductAttention:
  return attention.MultiHeadDotProductAttention(num_heads=cfg.num_heads, head_dim=cfg.head_dim, dtype=cfg.dtype,
                                                param_dtype=cfg.param_dtype, dropout_rate=cfg.dropout_rate,
                                                float32_logits=cfg.float32_attention_logits, name=name)


def _mlp(cfg: T5Config) -> layers.MlpBlock:
  return layers.MlpBlock(intermediate_dim=cfg.mlp_dim, activations=cfg.mlp_activations,
                         intermediate_dropout_rate=cfg.dropout_rate, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                         name='mlp')


def _dropout(cfg: T5Config, x: Array, deterministic: bool) -> Array:
  return nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)


def _relpos(cfg: T5Config) -> layers.RelativePositionBiases:
  return layers.RelativePositionBiases(num_buckets=cfg.relpos_num_buckets, max_distance=cfg.relpos_max_distance,
                                       num_heads=cfg.num_heads, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                                       name='relpos_bias')


class Encoder(nn.Module):
  """The encoder stack over already-embedded inputs (the embedding is shared and lives on Transformer)."""
  config: T5Config

  @nn.compact
  def __call__(self, embedded: Array, encoder_mask: Array, *, layer_hook: LayerHook | None = None,
               deterministic: bool = True) -> Array:
    """[b, l, embed], mask [b, 1, l, l] -> encoded [b, l, embed]. layer_hook: leaves [layers, ...]."""
    cfg = self.config
    x = _dropout(cfg, embedded, deterministic).astype(cfg.dtype)
    length = x.shape[-2]
    relpos = _relpos(cfg)
    bias = relpos(length, length, True)
    table = relpos.table if layer_hook is not None else None
    x = run_stack(cfg, EncoderLayer, cfg.num_encoder_layers, x, (encoder_mask, bias), layer_hook, table,
                  deterministic=deterministic)
    x = layers.RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, cfg.param_dtype, name='encoder_norm')(x)
    return _dropout(cfg, x, deterministic)


class Decoder(nn.Module):
  """The decoder stack and output layer."""
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoded: Array, decoder_input_tokens: Array, decoder_mask: Array | None,
               encoder_decoder_mask: Array, *, hooks: Hooks | None = None, deterministic: bool = True,
               decode: bool = False, max_decode_length: int | None = None) -> Array:
    """encoded [b, le, embed], tokens [b, l] -> logits [b, l, vocab] (float32 unless tied)."""
    cfg = self.config
    hooks = NO_HOOKS if hooks is None else hooks
    if decode and cfg.scan_layers:
      raise ConfigError('incremental decoding needs scan_layers=False (unstack the params with '
                        'jaxprompt.models.scan.unstack_layers)')
    y = self.shared_embedding(decoder_input_tokens.astype(jnp.int32))
    y = _dropout(cfg, y, deterministic).astype(cfg.dtype)
    length = max_decode_length if decode and max_decode_length else y.shape[-2]
    relpos = _relpos(cfg)
    bias = relpos(length, length, False)
    layer_hook = hooks.decoder_layers
    table = relpos.table if layer_hook is not None else None
    y = run_stack(cfg, DecoderLayer, cfg.num_decoder_layers, y, (encoded, decoder_mask, encoder_decoder_mask, bias),
                  layer_hook, table, deterministic=deterministic, decode=decode)
    y = layers.RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, cfg.param_dtype, name='decoder_norm')(y)
    y = _dropout(cfg, y, deterministic)
    if cfg.logits_via_embedding:
      logits = self.shared_embedding.attend(y) / jnp.sqrt(y.shape[-1]).astype(cfg.dtype)
    else:
      logits = layers.DenseGeneral(cfg.vocab_size, dtype=jnp.float32, param_dtype=cfg.param_dtype,
                                   kernel_axes=('embed', 'vocab'), name='logits_dense')(y)
    return layers.constrain(logits, ('batch', 'length', 'vocab'))


class Transformer(nn.Module):
  """T5 encoder-decoder. A tuning method acts on it only through `hooks` (`jaxprompt.models.hooks.Hooks`);
  with none (or all fields None) it is the plain network, bit for bit."""
  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(num_embeddings=cfg.vocab_size, features=cfg.emb_dim, dtype=cfg.dtype,
                                       param_dtype=cfg.param_dtype, one_hot=layers.use_one_hot(cfg.one_hot_embedding))
    self.encoder = Encoder(cfg)
    self.decoder = Decoder(cfg, shared_embedding=self.token_embedder)

  def encode(self, encoder_input_tokens: Array, encoder_segment_ids: Array | None = None, *, hooks: Hooks | None = None,
             enable_dropout: bool = True) -> tuple[Array, Array]:
    """tokens [b, l] -> (encoded [b, l', embed], valid [b, l'] bool); l' = l unless an input hook adds
    positions."""
    cfg = self.config
    hooks = NO_HOOKS if hooks is None else hooks
    embedded = self.token_embedder(encoder_input_tokens.astype(jnp.int32))
    valid = encoder_input_tokens > 0
    if hooks.inputs is not None:
      embedded, valid = call_input_hook(hooks.inputs, embedded, encoder_input_tokens, encoder_segment_ids, valid=valid,
                                        stack='encoder', deterministic=not enable_dropout)
    mask = layers.make_attention_mask(valid, valid, dtype=cfg.dtype)
    if encoder_segment_ids is not None:
      mask = layers.combine_masks(
          mask, layers.make_attention_mask(encoder_segment_ids, encoder_segment_ids, jnp.equal, dtype=cfg.dtype),
          dtype=cfg.dtype)
    return self.encoder(embedded, mask, layer_hook=hooks.encoder_layers, deterministic=not enable_dropout), valid

  def decode(self, encoded: Array, encoder_valid: Array, decoder_input_tokens: Array, decoder_target_tokens: Array,
             encoder_segment_ids: Array | None = None, decoder_segment_ids: Array | None = None, *,
             hooks: Hooks | None = None, enable_dropout: bool = True, decode: bool = False,
             max_decode_length: int | None = None) -> Array:
    """Decoder logits [b, l, vocab] given the encoder output and its validity mask [b, le].

    decode=True: one step of incremental decoding on tokens [b, 1] with the `cache` collection (the first,
    initialising call takes the full length and creates the cache).
    """
    cfg = self.config
    if decode:
      decoder_mask = None
      encoder_decoder_mask = layers.make_attention_mask(jnp.ones_like(decoder_target_tokens), encoder_valid,
                                                        dtype=cfg.dtype)
    else:
      decoder_mask = layers.combine_masks(
          layers.make_causal_mask(decoder_target_tokens, dtype=cfg.dtype),
          layers.make_attention_mask(decoder_target_tokens > 0, decoder_target_tokens > 0, dtype=cfg.dtype),
          dtype=cfg.dtype)
      encoder_decoder_mask = layers.make_attention_mask(decoder_target_tokens > 0, encoder_valid, dtype=cfg.dtype)
      if decoder_segment_ids is not None:
        decoder_mask = layers.combine_masks(
            decoder_mask,
            layers.make_attention_mask(decoder_segment_ids, decoder_segment_ids, jnp.equal, dtype=cfg.dtype),
            dtype=cfg.dtype)
        if encoder_segment_ids is not None:
          encoder_decoder_mask = layers.combine_masks(
              encoder_decoder_mask,
              layers.make_attention_mask(decoder_segment_ids, encoder_segment_ids, jnp.equal, dtype=cfg.dtype),
              dtype=cfg.dtype)
    return self.decoder(encoded, decoder_input_tokens, decoder_mask, encoder_decoder_mask, hooks=hooks,
                        deterministic=not enable_dropout, decode=decode, max_decode_length=max_decode_length)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array, decoder_target_tokens: Array,
               encoder_segment_ids: Array | None = None, decoder_segment_ids: Array | None = None,
               encoder_positions: Array | None = None, decoder_positions: Array | None = None, *,
               hooks: Hooks | None = None, enable_dropout: bool = True, decode: bool = False) -> Array:
    """Teacher-forced logits [b, ld, vocab] (t5x's `Transformer.__call__`; positions are unused by T5)."""
    del encoder_positions, decoder_positions
    encoded, valid = self.encode(encoder_input_tokens, encoder_segment_ids, hooks=hooks, enable_dropout=enable_dropout)
    return self.decode(encoded, valid, decoder_input_tokens, decoder_target_tokens, encoder_segment_ids,
                       decoder_segment_ids, hooks=hooks, enable_dropout=enable_dropout, decode=decode)
