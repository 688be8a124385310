"""A post-LayerNorm bidirectional encoder (BERT / RoBERTa) in Flax linen, on the shared layers and hooks.

Parameter tree (unscanned), t5x style:
  token_embedder/embedding                     [vocab, embed]
  position_embedder/embedding                  [max_positions, embed]
  token_type_embedder/embedding                [type_vocab_size, embed]
  embedder_norm/{scale,bias}
  encoder/layers_N/{attention/{query,key,value,out}/{kernel,bias}, attention_layer_norm/{scale,bias},
                    mlp/{wi,wo}/{kernel,bias}, mlp_layer_norm/{scale,bias}}
  pooler/{kernel,bias}                         [embed, embed]   (config.pooler)
With `scan_layers=True` the `layers_N` subtrees become one `layers` subtree with a leading `layers` axis.

Padding comes from `valid`, never from the token ids; a padded key is masked for every query. Positions default to
cumsum(valid) - 1 (what BERT's arange and RoBERTa's count of non-pad ids give right-padded rows), looked up at row
`position_offset + position` of the table.

Prompts and prefixes (PEFT's and P-tuning v2's semantics, both what transformers computes):
- An input hook acts on the token embeddings, before positions, token types and the embedding LayerNorm. Rows it
  inserts in front are positions 0..p-1 with token type 0, and the tokens follow from p: transformers given
  `inputs_embeds` (PEFT's prompt tuning / P-tuning for BERT) numbers them so. Per-row prompts of several lengths
  (a prompt bank) say where each row's tokens start (`hooks.FrontRowsHook`), and each token keeps its type there.
- A K/V prefix of p rows (per-layer hook, kind 'encoder_self') joins every layer's keys and values. Its rows are
  used as given; the tokens then sit at positions p.. (`kv_prefix_shifts_positions`, default): transformers' BERT
  and RoBERTa offset `position_ids` by the cache length when given `past_key_values`, in 4.11 (THUDM's P-tuning v2)
  as in 5.x. A row counts the prefix rows it attends (layer 0's mask), so a shorter prefix right-aligned in a mixed
  batch numbers its tokens as it would alone.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxprompt.errors import ConfigError
from jaxprompt.models import layers, token_rows
from jaxprompt.models.attention import MultiHeadDotProductAttention
from jaxprompt.models.causal_lm import default_positions
from jaxprompt.models.encoder_config import EncoderConfig
from jaxprompt.models.hooks import NO_HOOKS, Hooks, LayerHook, call_input_hook
from jaxprompt.models.stack import run_stack

Array = jax.Array


def _norm(cfg: EncoderConfig, name: str) -> nn.Module:
  return layers.LayerNorm(cfg.norm_epsilon, cfg.dtype, cfg.param_dtype, name=name)


def _dropout(cfg: EncoderConfig, x: Array, deterministic: bool) -> Array:
  return nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)


def _table(cfg: EncoderConfig, rows: int, name: str) -> layers.Embed:
  """A learned table looked up by small ids (positions, token types): replicated like t5x's position buckets."""
  return layers.Embed(num_embeddings=rows, features=cfg.emb_dim, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                      one_hot=layers.use_one_hot(cfg.one_hot_embedding), axes=('abspos_buckets', 'embed'), name=name)


class EncoderLayer(nn.Module):
  """Post-LayerNorm bidirectional self-attention + MLP block."""
  config: EncoderConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, inputs: Array, mask: Array, hook_context: Array | None = None, hook: LayerHook | None = None,
               layer: int | Array | None = None) -> Array:
    """[b, l, embed], mask [b, 1, l, l] -> [b, l, embed]. hook: this layer's slice."""
    del hook_context  # absolute positions: no relative-position table to hand the hook
    cfg, det = self.config, self.deterministic
    prefix = None
    if hook is not None:
      inputs = hook.hidden_states(inputs, layer, 'encoder')
      prefix = hook.attention_prefix(layer, 'encoder_self')
    attention = MultiHeadDotProductAttention(num_heads=cfg.num_heads, head_dim=cfg.head_dim, dtype=cfg.dtype,
                                             param_dtype=cfg.param_dtype, dropout_rate=cfg.dropout_rate,
                                             float32_logits=cfg.float32_attention_logits, qkv_bias=True, out_bias=True,
                                             scale_queries=True, name='attention')
    x = attention(inputs, inputs, mask, prefix=prefix, deterministic=det)
    x = _norm(cfg, 'attention_layer_norm')(_dropout(cfg, x, det) + inputs)
    x = layers.constrain(x, ('batch', 'length', 'embed'))
    y = layers.MlpBlock(intermediate_dim=cfg.mlp_dim, activations=(cfg.activation,), dtype=cfg.dtype,
                        param_dtype=cfg.param_dtype, use_bias=True, name='mlp')(x, deterministic=det)
    y = _norm(cfg, 'mlp_layer_norm')(_dropout(cfg, y, det) + x)
    return layers.constrain(y, ('batch', 'length', 'embed'))


class EncoderStack(nn.Module):
  """The layer stack (`encoder/layers_N`); post-LayerNorm layers need no final norm."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, x: Array, mask: Array, *, layer_hook: LayerHook | None, deterministic: bool) -> Array:
    return run_stack(self.config, EncoderLayer, self.config.num_layers, x, (mask,), layer_hook,
                     deterministic=deterministic)


def prefix_rows(hook: LayerHook | None, batch: int) -> tuple[Array | int, int]:
  """(the K/V prefix rows each row attends at layer 0 [batch, 1] int32, the prefix's width); (0, 0) without one."""
  if hook is None:
    return 0, 0
  prefix = jax.tree.map(lambda a: a[0], hook).attention_prefix(0, 'encoder_self')
  if prefix is None:
    return 0, 0
  rows = jnp.sum(prefix.mask.astype(jnp.int32), axis=-1)  # [1 | b]
  return jnp.broadcast_to(rows[:, None], (batch, 1)), prefix.mask.shape[-1]


def _positions(valid: Array, positions: Array | None, starts: token_rows.Starts, shift: Array | int) -> Array:
  """Each row's positions [b, l'] (before `position_offset`): inserted rows first, then the tokens, all after
  `shift` K/V prefix rows; given token positions [b, l] count from 0 at the first token."""
  if positions is None:
    return default_positions(valid) + shift
  return token_rows.positions_from(positions, starts, valid.shape[1]) + shift


class BertEncoder(nn.Module):
  """BERT / RoBERTa encoder. A tuning method acts on it only through `hooks` (`jaxprompt.models.hooks.Hooks`):
  `inputs` and `encoder_layers`; with none it is the plain network."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, tokens: Array, *, valid: Array | None = None, token_types: Array | None = None,
               positions: Array | None = None, segment_ids: Array | None = None, hooks: Hooks | None = None,
               enable_dropout: bool = True) -> tuple[Array, Array | None]:
    """tokens [b, l] -> (hidden states [b, l', embed], pooled [b, embed] or None without a pooler).

    l' = l + the rows an input hook inserts in front; the pooler reads row 0 of the output. valid [b, l] bool
    (None: every row real); token_types [b, l] (None: all 0); positions [b, l] (None: from `valid`);
    segment_ids [b, l] for packed rows (attention stays within a segment; give their positions).
    """
    cfg = self.config
    hooks = NO_HOOKS if hooks is None else hooks
    deterministic = not enable_dropout
    tokens = tokens.astype(jnp.int32)
    length = tokens.shape[1]
    valid = jnp.ones(tokens.shape, bool) if valid is None else valid.astype(bool)
    token_types = jnp.zeros(tokens.shape, jnp.int32) if token_types is None else token_types.astype(jnp.int32)
    x = layers.Embed(num_embeddings=cfg.vocab_size, features=cfg.emb_dim, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                     one_hot=layers.use_one_hot(cfg.one_hot_embedding), name='token_embedder')(tokens)
    if hooks.inputs is not None:
      x, valid = call_input_hook(hooks.inputs, x, tokens, segment_ids, valid=valid, stack='encoder',
                                 deterministic=deterministic)
    starts = token_rows.token_starts(hooks.inputs, length, x.shape[1], 'encoder')
    token_types = token_rows.place(token_types, starts, x.shape[1])
    shift, width = prefix_rows(hooks.encoder_layers, x.shape[0])
    if not cfg.kv_prefix_shifts_positions:
      shift, width = 0, 0
    if x.shape[1] + width > cfg.max_length:
      raise ConfigError(f'rows of {x.shape[1]} positions after {width} K/V prefix rows exceed the {cfg.max_length} '
                        f'positions the model numbers (max_positions={cfg.max_positions}): shorten the inputs')
    positions = _positions(valid, positions, starts, shift)
    x = x + _table(cfg, cfg.max_positions, 'position_embedder')(positions + cfg.position_offset)
    x = x + _table(cfg, cfg.type_vocab_size, 'token_type_embedder')(token_types)
    x = _dropout(cfg, _norm(cfg, 'embedder_norm')(x), deterministic).astype(cfg.dtype)
    mask = layers.make_attention_mask(jnp.ones_like(valid), valid, dtype=cfg.dtype)
    if segment_ids is not None:
      mask = mask * layers.make_attention_mask(segment_ids, segment_ids, jnp.equal, dtype=cfg.dtype)
    x = EncoderStack(cfg, name='encoder')(x, mask, layer_hook=hooks.encoder_layers, deterministic=deterministic)
    if not cfg.pooler:
      return x, None
    # [embed, embed], its output axis named 'mlp': one partition spec may not name 'embed' twice.
    pooled = layers.DenseGeneral(cfg.emb_dim, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                                 kernel_axes=('embed', 'mlp'), use_bias=True, name='pooler')(x[:, 0])
    return x, jnp.tanh(pooled)
