"""Prefix tuning (Li & Liang 2021) and P-tuning v2 (Liu et al. 2022): learned key/value rows prepended inside
the attentions of a frozen model, through the network's per-layer hooks (`jaxprompt.methods.kv_prefix`).

One class, `PrefixTuning`, serves both; the gin factories `prefix_tuning` and `p_tuning_v2` differ only in
defaults. For each attention kind it tunes (among the model's `attention_kinds`: T5's `encoder_self`,
`decoder_self`, `cross`, a causal LM's `decoder_self`; each kind has its own, independent parameters, as in Li &
Liang's BART setup) it holds either

  plain rows (projection=False)   {kind: {'key', 'value': [layers, P, heads, head_dim]}}
  an MLP (projection=True)        {kind: {'embedding': [P, emb],
                                          'hidden': {'kernel': [emb, hidden], 'bias': [hidden]},
                                          'key' / 'value': {'kernel': [hidden, layers, heads, head_dim],
                                                            'bias': [layers, heads, head_dim]}}}
                                  rows = tanh(embedding @ hidden + b) @ key|value + b: Li & Liang's
                                  Linear(emb, hidden) -> tanh -> Linear(hidden, layers * 2 * heads * head_dim),
                                  its output kernel kept with named axes (and split into key / value halves).

`inference()` collapses the MLP to plain rows (for export, evaluation and decoding). `heads` is the model's
key/value heads (`num_kv_heads`: fewer than its query heads with grouped-query attention, as PEFT stores a Llama
prefix), and the rows use heads x head_dim, never emb_dim (T5 1.0 3B / 11B have heads x head_dim != emb_dim).
On a causal LM the tokens' positions start after the prefix, and its keys are never rotated (module
`jaxprompt.models.causal_lm`: transformers' past keys/values).

Sharding: the row tensors and the output kernels carry ('layers', 'prompt'|'prompt_embed', 'heads', 'kv') ('kv_heads'
for grouped-query attention, as the attention's own keys): the
standard rules put 'heads' on the 'model' mesh axis (as the frozen attention's own heads), so each device holds
and computes only its heads' rows, which arrive sharded as the attention expects them ('batch', 'length', 'heads',
'kv'). The MLP's hidden axis uses 'prompt_embed' (replicated: 512 wide, small), not 'mlp': 'mlp' also maps to
'model', and one kernel cannot use a mesh axis twice, so ('mlp', ..., 'heads', ...) would leave the big heads axis
unsharded and need an all-reduce of every row. The input embedding is ('prompt', 'embed').

Initialisation ('sampled_vocab', the default): plain rows are the keys / values the frozen layer itself computes
for P common token embeddings (`jaxprompt.methods.prefix_init`): rows of the scale the layer is used to. With the
MLP, the embedding is those RMS-normalised token embeddings and the kernels are N(0, 1/fan_in) with zero biases.
'normal' draws N(0, 1) rows / embedding (torch's nn.Embedding default, what the reference implementations start
from).

Dropout (`dropout` > 0, only when `hooks(..., deterministic=False, rng=...)`) drops entries of the computed K/V
rows, like the references' dropout on past_key_values; the mask is drawn once per step and shared by the batch's
examples, because the rows reach the network as one batch-1 prefix.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from jaxprompt.errors import ConfigError, PromptError
from jaxprompt.methods import kv_prefix, peft_adapters, peft_layouts, prefix_init, registry
from jaxprompt.methods.base import BankRows, Method, Params
from jaxprompt.models.base import ModelConfig
from jaxprompt.models.hooks import ATTENTION_KINDS, RELPOS_MODES, STACK_OF_KIND, Hooks
from jaxprompt.parallel import host

Array = jax.Array
PREFIX_FILE = 'prefix.npz'
INITIALIZERS = ('sampled_vocab', 'normal')
SELF_KINDS = ('encoder_self', 'decoder_self')  # the self-attentions P-tuning v2 prefixes by default


@dataclasses.dataclass(frozen=True)
class PrefixTuning(Method):
  """Learned K/V prefixes of `length` rows for each attention kind in `kinds` (see the module docstring).

  `dtype` is the network's activation dtype (the rows are cast to it); `param_dtype` the parameters'. The MLP runs
  in float32 (it is small; its rows are then cast), so the collapsed rows match the training form closely.
  """
  length: int
  num_heads: int  # the rows' heads: the model's key/value heads (`num_kv_heads`)
  head_dim: int
  emb_dim: int
  kind_layers: kv_prefix.KindLayers  # the model's attention kinds, each with its stack's depth
  kinds: tuple[str, ...] | None = None  # None: every kind of the model
  projection: bool = True
  hidden: int = 512
  dropout: float = 0.0
  relpos: str = 'positions'
  initializer: str = 'sampled_vocab'
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  grouped: bool = False  # fewer key/value heads than query heads: the rows' head axis is 'kv_heads'
  relative_bias: bool = True  # the model's `relative_position_bias` (T5's; a causal LM has none)

  def __post_init__(self):
    object.__setattr__(self, 'kind_layers', tuple((str(k), int(n)) for k, n in self.kind_layers))
    model_kinds = tuple(k for k, _ in self.kind_layers)
    kinds = model_kinds if self.kinds is None else (self.kinds,) if isinstance(self.kinds, str) else tuple(self.kinds)
    unknown = [k for k in kinds if k not in ATTENTION_KINDS]
    if unknown or not kinds or len(set(kinds)) != len(kinds):
      raise ConfigError(f'prefix kinds must be distinct names among {ATTENTION_KINDS}, got {kinds!r}')
    kv_prefix.check_kinds(kinds, model_kinds, 'PREFIX_KINDS')
    # Canonical order, so equal configurations are equal (hashable) methods whatever order gin gave.
    object.__setattr__(self, 'kinds', tuple(k for k in ATTENTION_KINDS if k in kinds))
    if not isinstance(self.length, int) or self.length < 0:
      raise ConfigError(f'PREFIX_LENGTH must be an integer >= 0, got {self.length!r}')
    if self.projection and (not isinstance(self.hidden, int) or self.hidden <= 0):
      raise ConfigError(f'the prefix MLP hidden size must be a positive integer, got {self.hidden!r}')
    if not 0.0 <= self.dropout < 1.0:
      raise ConfigError(f'prefix dropout must be in [0, 1), got {self.dropout!r}')
    if self.relpos not in RELPOS_MODES:
      raise ConfigError(f'prefix relpos must be one of {RELPOS_MODES}, got {self.relpos!r}')
    if self.initializer not in INITIALIZERS:
      raise ConfigError(f'prefix initializer must be one of {INITIALIZERS}, got {self.initializer!r}')

  @classmethod
  def for_config(cls, config: ModelConfig, **kwargs: Any) -> PrefixTuning:
    """The method for `config`'s sizes and dtypes; `kwargs` are the other fields."""
    return cls(num_heads=config.num_kv_heads, head_dim=config.head_dim, emb_dim=config.emb_dim,
               kind_layers=kv_prefix.kind_layers(config), dtype=config.dtype, param_dtype=config.param_dtype,
               grouped=config.num_kv_heads != config.num_heads, relative_bias=config.relative_position_bias, **kwargs)

  def layers(self, kind: str) -> int:
    return dict(self.kind_layers)[kind]

  @property
  def row_axes(self) -> tuple[str, ...]:
    """Logical axes of a [layers, P, heads, head_dim] row tensor: the attention's own key/value head axis."""
    return kv_prefix.row_axes(self.grouped)

  def rows_shape(self, kind: str) -> tuple[int, int, int, int]:
    """[layers, P, kv heads, head_dim] of one kind's key (and value) rows."""
    return (self.layers(kind), self.length, self.num_heads, self.head_dim)

  # -- parameters -----------------------------------------------------------------------------------------
  def _shapes(self) -> dict[str, Any]:
    """{kind: tree of (shape, logical axes)} of the trainable parameters."""
    out = {}
    for kind in self.kinds:
      if not self.projection:
        rows = (self.rows_shape(kind), self.row_axes)
        out[kind] = {'key': rows, 'value': rows}
        continue
      layers, heads, depth = self.layers(kind), self.num_heads, self.head_dim
      out_axes = ('layers', self.row_axes[2], 'kv')  # [layers, heads, head_dim] of each output row
      half = {
          'kernel': ((self.hidden, layers, heads, depth), ('prompt_embed',) + out_axes),
          'bias': ((layers, heads, depth), out_axes)
      }
      out[kind] = {
          'embedding': ((self.length, self.emb_dim), ('prompt', 'embed')), 'hidden': {
              'kernel': ((self.emb_dim, self.hidden), ('embed', 'prompt_embed')),
              'bias': ((self.hidden,), ('prompt_embed',))
          }, 'key': half, 'value': dict(half)
      }
    return out

  def abstract(self, network: Params) -> Params:
    del network
    dtype = jnp.dtype(self.param_dtype)
    return jax.tree.map(lambda s: nn.Partitioned(jax.ShapeDtypeStruct(s[0], dtype), s[1]), self._shapes(),
                        is_leaf=lambda x: isinstance(x, tuple) and isinstance(x[1], tuple))

  def init(self, rng: Array, frozen: Params) -> Params:
    """Initial parameters (see the module docstring). A kind's draw depends only on `rng` and the kind, so
    switching other kinds on or off leaves it unchanged."""
    out = {}
    for kind in self.kinds:
      key = jax.random.fold_in(rng, ATTENTION_KINDS.index(kind))
      out[kind] = self._init_projection(key, kind, frozen) if self.projection else self._init_rows(key, kind, frozen)
    return jax.tree.map(lambda x: jnp.asarray(x, self.param_dtype), out)

  def _init_rows(self, rng: Array, kind: str, frozen: Params) -> dict[str, Array]:
    shape = self.rows_shape(kind)
    if self.initializer == 'normal':
      k, v = jax.random.split(rng)
      return {'key': jax.random.normal(k, shape), 'value': jax.random.normal(v, shape)}
    x = prefix_init.vocab_embeddings(rng, frozen, self.length)  # [P, emb], unit RMS
    return {part: rows.reshape(shape) for part, rows in prefix_init.frozen_rows(x, frozen, kind, shape[0]).items()}

  def _init_projection(self, rng: Array, kind: str, frozen: Params) -> dict[str, Any]:
    emb, first, k_out, v_out = jax.random.split(rng, 4)
    if self.initializer == 'normal':
      embedding = jax.random.normal(emb, (self.length, self.emb_dim))
    else:
      embedding = prefix_init.vocab_embeddings(emb, frozen, self.length)

    def half(key: Array) -> dict[str, Array]:
      shape = (self.hidden, self.layers(kind), self.num_heads, self.head_dim)
      return {'kernel': jax.random.normal(key, shape) / math.sqrt(self.hidden), 'bias': jnp.zeros(shape[1:])}

    return {
        'embedding': embedding, 'hidden': {
            'kernel': jax.random.normal(first, (self.emb_dim, self.hidden)) / math.sqrt(self.emb_dim),
            'bias': jnp.zeros((self.hidden,))
        }, 'key': half(k_out), 'value': half(v_out)
    }

  # -- the forward pass -----------------------------------------------------------------------------------
  def computed_rows(self, trainable: Params) -> dict[str, tuple[Array, Array]]:
    """{kind: (key, value)} float32 [layers, P, heads, head_dim]: the plain rows, or the MLP's output."""
    out = {}
    for kind in self.kinds:
      p = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), trainable[kind])
      if self.projection:
        h = jnp.tanh(p['embedding'] @ p['hidden']['kernel'] + p['hidden']['bias'])  # [P, hidden]
        out[kind] = tuple(
            jnp.einsum('ph,hlnd->lpnd', h, p[part]['kernel']) + p[part]['bias'][:, None] for part in ('key', 'value'))
      else:
        out[kind] = (p['key'], p['value'])
    return out

  def hooks(self, trainable: Params, *, deterministic: bool = True, rng: Array | None = None,
            task_ids: Array | None = None) -> Hooks:
    """The rows of every tuned kind as per-layer K/V prefixes; dropout on them when training with `rng`."""
    del task_ids
    rows = {}
    for i, (kind, pair) in enumerate(self.computed_rows(trainable).items()):
      pair = tuple(nn.with_logical_constraint(x.astype(self.dtype), self.row_axes) for x in pair)
      if not deterministic and self.dropout > 0.0:
        if rng is None:
          raise ConfigError('prefix dropout is on (deterministic=False) but no rng was given')
        pair = tuple(_dropout(jax.random.fold_in(rng, 2 * i + j), x, self.dropout) for j, x in enumerate(pair))
      rows[kind] = pair
    return kv_prefix.prefix_hooks(rows, self.relpos)

  @property
  def packing_slots(self) -> int:
    """No input positions. Packing puts several examples after one prefix: every segment attends to all of it.
    On a model with relative-position bias (T5), 'positions' self-attention prefixes measure distances from the
    row start, which packing moves for every example after a row's first, so that combination is refused. A
    causal LM has no such bias: each packed example's positions restart after the prefix, as in its own row."""
    if self.relative_bias and self.relpos == 'positions' and any(k != 'cross' for k in self.kinds):
      raise ConfigError("packed rows put several examples after one prefix, so relpos='positions' would give "
                        "later examples other distances to it under this model's relative-position bias: set "
                        "PACK=False, or use relpos='none' or kinds=('cross',)")
    return 0

  # -- evaluation and export -------------------------------------------------------------------------------
  def inference(self, trainable: Params) -> tuple[PrefixTuning, Params]:
    """The plain method holding the MLP's computed rows (itself when already plain)."""
    if not self.projection:
      return self, trainable
    plain = dataclasses.replace(self, projection=False)
    rows = {
        kind: {'key': jnp.asarray(k, self.param_dtype), 'value': jnp.asarray(v, self.param_dtype)}
        for kind, (k, v) in self.computed_rows(trainable).items()
    }
    return plain, rows

  def numpy_copy(self, trainable: Params) -> dict[str, dict[str, np.ndarray]]:
    """{'prefix.npz': the plain rows in the prefix file format (`kv_prefix`)}; gathers sharded leaves first."""
    local = jax.tree.map(host.host_value, trainable)
    return {PREFIX_FILE: kv_prefix.file_arrays(self.computed_rows(local), self.relpos)}

  def bank_rows(self, trainable: Params) -> BankRows:
    rows = {
        k: (np.asarray(v[0], np.float32), np.asarray(v[1], np.float32))
        for k, v in self.computed_rows(trainable).items()
    }
    return BankRows(kv=rows, relpos=self.relpos)

  def from_bank_rows(self, rows: BankRows) -> Params:
    return {kind: {'key': key, 'value': value} for kind, (key, value) in rows.kv.items()}

  @classmethod
  def from_arrays(cls, arrays: registry.Arrays, context: registry.ReadContext) -> tuple[PrefixTuning, Params]:
    """A prefix file's arrays (`kv_prefix` format: .npz, .safetensors, a PEFT PREFIX_TUNING adapter) as (plain
    PrefixTuning for `context.config`, its trainable tree), checked against the config."""
    rows, relpos = kv_prefix.check_prefix(arrays, context.config, context.source)
    length = next(iter(rows.values()))[0].shape[1]
    method = cls.for_config(context.config, length=length, kinds=tuple(rows), projection=False, relpos=relpos)
    trainable = {
        kind: {'key': jnp.asarray(k, method.param_dtype), 'value': jnp.asarray(v, method.param_dtype)}
        for kind, (k, v) in rows.items()
    }
    return method, trainable


def _dropout(rng: Array, x: Array, rate: float) -> Array:
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros_like(x))


# ----------------------------------------------------------------------------------------- prefix files


def write_prefix_file(path: str | os.PathLike, method: PrefixTuning, trainable: Params) -> str:
  """Writes the method's (collapsed) rows as a prefix file: `.safetensors` by extension, else `.npz`."""
  local = jax.tree.map(host.host_value, trainable)
  return kv_prefix.save_prefix(path, method.computed_rows(local), method.relpos)


def read_prefix_file(path: str | os.PathLike, config: ModelConfig) -> tuple[PrefixTuning, Params]:
  """A prefix file as (plain PrefixTuning for `config`, its trainable tree); checked against the config."""
  rows, relpos = kv_prefix.load_prefix(path, config)
  arrays = kv_prefix.file_arrays(rows, relpos)
  return PrefixTuning.from_arrays(arrays, registry.ReadContext(config, source=os.fspath(path)))


def write_peft_prefix(arrays: registry.Arrays, target: registry.PeftTarget) -> tuple[str, list[int]]:
  """A prefix file's rows of the kind PEFT gives the target's task (T5 / causal: decoder_self; an encoder's head
  task: encoder_self) as a PREFIX_TUNING adapter, checked against the model sizes known; any other attention kind
  or relpos is refused by `peft_adapters.write_prefix`, naming what PEFT cannot represent."""
  rows, relpos = kv_prefix.file_rows(arrays)
  sizes = target.sizes
  task = peft_layouts.task_of(sizes.get('family'), target.task_type)
  kind = task.prefix_kind
  if kind in rows:
    shape = rows[kind][0].shape
    heads = 'num_kv_heads' if 'num_kv_heads' in sizes else 'num_heads'
    depth = f'num_{STACK_OF_KIND[kind]}_layers'
    for axis, name in ((0, depth), (2, heads), (3, 'head_dim')):
      if sizes.get(name) not in (None, shape[axis]):
        raise PromptError(f'{target.source}: {kind}/key has shape {tuple(shape)} [layers, P, heads, head_dim] '
                          f'but the model config has {name} {sizes[name]}: the wrong MODEL_CONFIG for this run?')
  peft_adapters.write_prefix(target.output, rows, relpos, task=task, base_model=target.base_model,
                             fingerprint=target.fingerprint, source=target.source, modules=target.modules)
  return peft_adapters.PREFIX_TYPE, list(rows[kind][0].shape)


registry.register(
    registry.FileKind(kv_prefix.FILE_KIND, PREFIX_FILE, PrefixTuning.from_arrays, 'a prefix .npz / .safetensors',
                      holds=kv_prefix.holds_prefix, suffixes=('.npz', '.safetensors'), write=kv_prefix.write_file,
                      peft=write_peft_prefix))

# ----------------------------------------------------------------------------------------- gin factories


@gin.configurable(module='jaxprompt.methods')
def prefix_tuning(config: ModelConfig, eos_id: int = 1, *, length: int = 100, kinds: Any = None,
                  projection: bool = True, hidden: int = 512, dropout: float = 0.0, relpos: str = 'positions',
                  initializer: str = 'sampled_vocab') -> PrefixTuning:
  """Li & Liang's prefix tuning (`METHOD = @jaxprompt.methods.prefix_tuning`, methods/prefix_tuning.gin):
  `length` K/V rows on each of `kinds` (None: every attention of the model: T5's three, a causal LM's
  decoder_self), produced while training by a per-kind MLP of width `hidden`."""
  del eos_id
  return PrefixTuning.for_config(config, length=length, kinds=kinds, projection=projection, hidden=hidden,
                                 dropout=dropout, relpos=relpos, initializer=initializer)


@gin.configurable(module='jaxprompt.methods')
def p_tuning_v2(config: ModelConfig, eos_id: int = 1, *, length: int = 8, kinds: Any = None, projection: bool = False,
                hidden: int = 512, dropout: float | None = None, relpos: str = 'positions',
                initializer: str = 'sampled_vocab') -> PrefixTuning:
  """P-tuning v2's deep prompts (`METHOD = @jaxprompt.methods.p_tuning_v2`, methods/p_tuning_v2.gin): plain K/V
  rows at every layer's self-attention (`kinds` None: every self-attention of the model, T5's encoder_self and
  decoder_self, a causal LM's decoder_self; THUDM prefix every self-attention layer of their encoder-only /
  decoder-only models; cross-attention has no counterpart there). `dropout` None = the model's dropout_rate, as
  their prefix dropout is the model's hidden dropout."""
  del eos_id
  dropout = config.dropout_rate if dropout is None else dropout
  if kinds is None:
    kinds = tuple(k for k in config.attention_kinds if k in SELF_KINDS)
  return PrefixTuning.for_config(config, length=length, kinds=kinds, projection=projection, hidden=hidden,
                                 dropout=dropout, relpos=relpos, initializer=initializer)
