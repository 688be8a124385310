"""A decoder-only causal LM (Llama / Mistral / Qwen2 / GPT-2) in Flax linen, on T5's layers and hooks.

Parameter tree (unscanned), t5x DecoderOnly style:
  token_embedder/embedding                          [vocab, embed]
  position_embedder/embedding                       [max_positions, embed]   (positions='learned': GPT-2)
  decoder/layers_N/{pre_self_attention_layer_norm, self_attention/{query,key,value,out}, pre_mlp_layer_norm,
                    mlp/{wi_0,wi_1,wo} or mlp/{wi,wo}}   (+ `bias` leaves where the config asks for them)
  decoder/decoder_norm/{scale[,bias]}
  decoder/logits_dense/kernel                       [embed, vocab]   (absent when tie_word_embeddings)
With `scan_layers=True` the `layers_N` subtrees become one `layers` subtree with a leading `layers` axis.

Padding comes from `valid`, never from the token ids (id 0 is a real token in Llama 3, GPT-2 and Qwen2).
Positions default to cumsum(valid) - 1 (clipped at 0), so left-padded rows number their tokens from 0.

Prompts and prefixes (PEFT's semantics for causal LMs):
- An input hook may insert p rows in front; they are positions 0..p-1 and the tokens follow from p. Rotary
  models rotate the inserted rows like tokens; GPT-2 adds its position embeddings to them.
- A K/V prefix of p rows (per-layer hook) shifts a row's token positions by the p rows it attends (layer 0's
  prefix mask: a shorter prefix right-aligned behind masked slots counts its own rows). Its
  keys are used as given, never rotated: what transformers does with `past_key_values`, whose keys were
  rotated (or not) when they were made. A grouped-query model's prefix carries num_kv_heads heads.

Decoding (`decode=True`, the `cache` collection): the first call creates the cache (max_decode_length rows, or
the call's length) and is otherwise a plain forward; `prefill=True` (which creates the cache too when there is
none) writes a whole left-padded prompt [b, L0] (cache_index then [b] = L0 + inserted rows); each later call is
one token [b, 1] (unscanned layers only; a prefill also runs scanned, its cache leaves then [layers, b, ...]).
The input hook is not called on one-token steps: whatever it inserted was written by the prefill. Besides each
attention's keys and values the cache holds `cached_valid` [b, cache rows] (which rows are real, for the mask and
the next position) and a top-level `cache_index`, both laid out as `jaxprompt.models.decoding` expects.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxprompt.errors import ConfigError
from jaxprompt.models import layers
from jaxprompt.models.attention import MultiHeadDotProductAttention
from jaxprompt.models.decoder_config import DecoderConfig
from jaxprompt.models.hooks import NO_HOOKS, Hooks, LayerHook, call_input_hook
from jaxprompt.models.rotary import Rotary
from jaxprompt.models.stack import run_stack

Array = jax.Array


def _norm(cfg: DecoderConfig, name: str) -> nn.Module:
  norm = layers.RMSNorm if cfg.norm == 'rms' else layers.LayerNorm
  return norm(cfg.norm_epsilon, cfg.dtype, cfg.param_dtype, name=name)


def _dropout(cfg: DecoderConfig, x: Array, deterministic: bool) -> Array:
  return nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)


class CausalLayer(nn.Module):
  """Pre-norm causal self-attention + MLP block."""
  config: DecoderConfig
  deterministic: bool = True
  decode: bool = False
  prefill: bool = False
  cache_length: int | None = None

  @nn.compact
  def __call__(self, inputs: Array, mask: Array, positions: Array, hook_context: Array | None = None,
               hook: LayerHook | None = None, layer: int | Array | None = None) -> Array:
    """[b, l, embed], mask [b, 1, l, k], positions [b, l] -> [b, l, embed]. hook: this layer's slice."""
    del hook_context  # causal models have no relative-position table to hand the hook
    cfg, det = self.config, self.deterministic
    prefix = None
    if hook is not None:
      inputs = hook.hidden_states(inputs, layer, 'decoder')
      prefix = hook.attention_prefix(layer, 'decoder_self')
    x = _norm(cfg, 'pre_self_attention_layer_norm')(inputs)
    x = layers.constrain(x, ('batch', 'length', 'embed'))
    rotary = Rotary(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling) if cfg.positions == 'rotary' else None
    attention = MultiHeadDotProductAttention(
        num_heads=cfg.num_heads, head_dim=cfg.head_dim, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        dropout_rate=cfg.dropout_rate, float32_logits=cfg.float32_attention_logits, num_kv_heads=cfg.num_kv_heads,
        qkv_bias=cfg.qkv_bias, out_bias=cfg.out_bias, scale_queries=True, rotary=rotary, name='self_attention')
    x = attention(x, x, mask, prefix=prefix, decode=self.decode, deterministic=det, positions=positions,
                  prefill=self.prefill, cache_length=self.cache_length)
    x = _dropout(cfg, x, det) + inputs
    y = _norm(cfg, 'pre_mlp_layer_norm')(x)
    y = layers.MlpBlock(intermediate_dim=cfg.mlp_dim, activations=cfg.mlp_activations,
                        intermediate_dropout_rate=cfg.dropout_rate, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                        use_bias=cfg.mlp_bias, name='mlp')(y, deterministic=det)
    return layers.constrain(_dropout(cfg, y, det) + x, ('batch', 'length', 'embed'))


class CausalDecoder(nn.Module):
  """The layer stack, the final norm and the output layer (tied to `shared_embedding` or its own)."""
  config: DecoderConfig
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, x: Array, mask: Array, positions: Array, *, layer_hook: LayerHook | None, deterministic: bool,
               decode: bool, prefill: bool, cache_length: int | None) -> Array:
    """Embedded inputs [b, l, embed] -> logits [b, l, vocab] float32."""
    cfg = self.config
    x = run_stack(cfg, CausalLayer, cfg.num_layers, x, (mask, positions), layer_hook, deterministic=deterministic,
                  decode=decode, prefill=prefill, cache_length=cache_length)
    x = _dropout(cfg, _norm(cfg, 'decoder_norm')(x), deterministic)
    if cfg.tie_word_embeddings:
      logits = self.shared_embedding.attend(x).astype(jnp.float32)
    else:
      logits = layers.DenseGeneral(cfg.vocab_size, dtype=jnp.float32, param_dtype=cfg.param_dtype,
                                   kernel_axes=('embed', 'vocab'), name='logits_dense')(x)
    return layers.constrain(logits, ('batch', 'length', 'vocab'))


def _prefix_offset(hook: LayerHook | None, batch: int) -> Array | int:
  """Each row's K/V prefix rows, where its token positions start: [batch, 1] int32 (0 without a prefix).

  A row counts the prefix rows it attends (layer 0's mask): rows of a shorter prefix in a mixed batch (a prompt
  bank, right-aligned behind masked slots) number their tokens as they would alone.
  """
  if hook is None:
    return 0
  prefix = jax.tree.map(lambda a: a[0], hook).attention_prefix(0, 'decoder_self')
  if prefix is None:
    return 0
  rows = jnp.sum(prefix.mask.astype(jnp.int32), axis=-1)  # [1 | b | b / n]
  if rows.shape[0] not in (1, batch):  # prefix rows of b examples at a batch of b * n (candidates, beams)
    rows = jnp.repeat(rows, batch // rows.shape[0], axis=0)
  return jnp.broadcast_to(rows[:, None], (batch, 1))


def default_positions(valid: Array) -> Array:
  """valid [b, l] bool -> positions [b, l]: each real row's count of real rows before it (pads repeat)."""
  return jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=1) - 1, 0)


def causal_mask(valid: Array, segment_ids: Array | None, dtype) -> Array:
  """[b, l] -> mask [b, 1, l, l]: earlier-or-same real rows (of the same segment when packed)."""
  idx = jnp.arange(valid.shape[1])
  mask = (idx[:, None] >= idx[None, :])[None, None] & valid[:, None, None, :]
  if segment_ids is not None:
    mask = mask & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
  return mask.astype(dtype)


class CausalTransformer(nn.Module):
  """Decoder-only causal LM. A tuning method acts on it only through `hooks` (`jaxprompt.models.hooks.Hooks`):
  `inputs` and `decoder_layers`; with none it is the plain network."""
  config: DecoderConfig

  @nn.compact
  def __call__(self, tokens: Array, *, valid: Array | None = None, positions: Array | None = None,
               segment_ids: Array | None = None, hooks: Hooks | None = None, enable_dropout: bool = True,
               decode: bool = False, max_decode_length: int | None = None, prefill: bool = False) -> Array:
    """tokens [b, l] -> logits [b, l', vocab] float32; l' = l + the rows an input hook inserts in front.

    valid [b, l] bool (None: every row real); positions [b, l] (None: from `valid`); segment_ids [b, l] for
    packed rows (given positions, a segment-equality mask; an input hook must keep their length).
    """
    cfg = self.config
    hooks = NO_HOOKS if hooks is None else hooks
    deterministic = not enable_dropout
    if prefill and not decode:
      raise ConfigError('prefill=True writes the decoding cache: pass decode=True too')
    if decode and segment_ids is not None:
      raise ConfigError('decoding takes one sequence per row: segment_ids (packed rows) are for training only')
    tokens = tokens.astype(jnp.int32)
    length = tokens.shape[1]
    valid = jnp.ones(tokens.shape, bool) if valid is None else valid.astype(bool)
    embedder = layers.Embed(num_embeddings=cfg.vocab_size, features=cfg.emb_dim, dtype=cfg.dtype,
                            param_dtype=cfg.param_dtype, one_hot=layers.use_one_hot(cfg.one_hot_embedding),
                            name='token_embedder')
    x = embedder(tokens)
    if decode and not prefill and cfg.scan_layers:  # a one-call prefill (e.g. a prompt's pass) runs scanned
      raise ConfigError('incremental decoding needs scan_layers=False (unstack the params with '
                        'jaxprompt.models.scan.unstack_layers)')
    step = decode and not prefill and self.has_variable('cache', 'cached_valid')
    if hooks.inputs is not None and not step:
      x, valid = call_input_hook(hooks.inputs, x, tokens, segment_ids, valid=valid, stack='decoder',
                                 deterministic=deterministic)
    inserted = x.shape[1] - length
    offset = _prefix_offset(hooks.decoder_layers, x.shape[0])
    if positions is not None:
      positions = positions.astype(jnp.int32) + offset + inserted
      if inserted:  # the inserted rows sit in front, at offset .. offset + inserted - 1
        front = jnp.broadcast_to(jnp.arange(inserted, dtype=jnp.int32)[None] + offset, (x.shape[0], inserted))
        positions = jnp.concatenate([front, positions], axis=1)
    if step:
      mask, positions = self._step(valid, positions, offset)
    else:
      if decode:
        self._write_valid(valid, max_decode_length, prefill)
      if positions is None:
        positions = default_positions(valid) + offset
      mask = causal_mask(valid, segment_ids, cfg.dtype)
    if cfg.positions == 'learned':
      x = x + layers.Embed(num_embeddings=cfg.max_positions, features=cfg.emb_dim, dtype=cfg.dtype,
                           param_dtype=cfg.param_dtype, one_hot=layers.use_one_hot(cfg.one_hot_embedding),
                           axes=('abspos_buckets', 'embed'), name='position_embedder')(positions)
    x = _dropout(cfg, x, deterministic).astype(cfg.dtype)
    decoder = CausalDecoder(cfg, shared_embedding=embedder, name='decoder')
    return decoder(x, mask, positions, layer_hook=hooks.decoder_layers, deterministic=deterministic, decode=decode,
                   prefill=prefill, cache_length=max_decode_length)

  def _write_valid(self, valid: Array, max_decode_length: int | None, prefill: bool) -> None:
    """Creates the top-level cache (first decode call) and writes a prefill's validity at rows 0..l'-1."""
    rows = max_decode_length or valid.shape[1]
    if rows < valid.shape[1]:
      raise ConfigError(f'max_decode_length={rows} is shorter than the {valid.shape[1]} rows of this call')
    cached = self.variable('cache', 'cached_valid', jnp.zeros, (valid.shape[0], rows), bool)
    index = self.variable('cache', 'cache_index', lambda: jnp.array(0, jnp.int32))
    if prefill:
      if valid.shape[1] > cached.value.shape[1]:
        raise ConfigError(f'a prefill of {valid.shape[1]} rows does not fit the cache of {cached.value.shape[1]}; '
                          f'initialise it with max_decode_length >= the prefilled length')
      cached.value = lax.dynamic_update_slice(cached.value, valid, (0, 0))
      index.value = jnp.full((valid.shape[0],), valid.shape[1], jnp.int32)

  def _step(self, valid: Array, positions: Array | None, offset: Array | int) -> tuple[Array, Array]:
    """One decoding step's key mask [b, 1, 1, rows] and positions [b, 1]; records the step in the cache."""
    if valid.shape[1] != 1:
      raise ConfigError(f'after the cache is created (and prefilled) decoding takes one token per row, got '
                        f'{valid.shape[1]}')
    cached = self.variable('cache', 'cached_valid', jnp.zeros, (valid.shape[0], 1), bool)
    index = self.variable('cache', 'cache_index', lambda: jnp.array(0, jnp.int32))
    if positions is None:
      positions = jnp.sum(cached.value, axis=1, dtype=jnp.int32)[:, None] + offset
    rows = jnp.arange(cached.value.shape[1])[None, :]
    slot = rows == jnp.reshape(index.value, (-1, 1))
    cached.value = jnp.where(slot, valid, cached.value)
    index.value = index.value + 1
    return cached.value[:, None, None, :].astype(self.config.dtype), positions
