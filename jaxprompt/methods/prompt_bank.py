"""A prompt bank: many trained prompts over one frozen model, each example of a batch using its own.

Entries are what the trained methods leave for inference: input prompts (prompt tuning, P-tuning's computed
prompt) with their combination mode, and per-layer K/V prefixes (prefix tuning, P-tuning v2). Every batch
carries `task_ids` [b] (the entry of each row); `hooks` gathers each row's prompt and prefix rows, so one
forward pass, one rank classification and one decode serve a batch that mixes tasks, prompt lengths and
combination modes. On a causal LM whose bank holds input prompts only, every task's prompt runs once per batch
and each row takes its task's keys / values (`jaxprompt.models.prompt_once.task_kv`).

Stored tree (not trained; `trainable` only by the Method interface):
  'prompts'            [T, P, d]                   input prompts, zero-padded to the longest P
  'kv'/<kind>/'key'    [layers, T, Q, heads, dim]  prefix rows right-aligned in the longest Q (value alike)
Rows shorter than the widest are padding that no position attends: a row's input prompt keeps its own
positions (padding goes to the end of the row; the hook says where each row's tokens start, `front_rows`, so that
an encoder's token types and tagging heads find them), and a right-aligned prefix sits at the distances it has
alone under relpos 'positions'. So each row's result equals its task run alone, up to float summation order.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxprompt.errors import ConfigError, PromptError
from jaxprompt.methods import kv_prefix
from jaxprompt.methods.base import BankRows, Method, Params
from jaxprompt.methods.row_prompts import gather_rows, task_ids_or_error
from jaxprompt.models.base import ModelConfig
from jaxprompt.models.hooks import ATTENTION_KINDS, Hooks

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Entry:
  """One task's prompt in a bank: its input prompt length and combination mode (0: none), its prefix length
  per attention kind (absent: none), and the (inference-form) method it came from, which runs it alone."""
  name: str
  input_length: int = 0
  combine: str = 'prefix'
  prefix_lengths: tuple[tuple[str, int], ...] = ()
  method: Method | None = None

  def prefix_length(self, kind: str) -> int:
    return dict(self.prefix_lengths).get(kind, 0)


@dataclasses.dataclass(frozen=True)
class PromptBank(Method):
  """Several tasks' trained prompts (`entries`, in task-id order) served together over one frozen model."""
  entries: tuple[Entry, ...]
  embed_dim: int
  num_heads: int  # the prefix rows' heads: the model's key/value heads
  head_dim: int
  kind_layers: kv_prefix.KindLayers  # the model's attention kinds, each with its stack's depth
  relpos: str = 'positions'
  eos_id: int = 1
  dtype: Any = jnp.float32
  grouped: bool = False  # fewer key/value heads than query heads (the rows' head axis is 'kv_heads')

  def __post_init__(self):
    names = [e.name for e in self.entries]
    if not names:
      raise ConfigError('a prompt bank needs at least one prompt')
    if len(set(names)) != len(names):
      raise ConfigError(f'prompt bank names must be unique, got {names}')

  @property
  def task_names(self) -> tuple[str, ...]:
    return tuple(e.name for e in self.entries)

  @property
  def input_length(self) -> int:
    """The widest input prompt (0: no entry has one)."""
    return max(e.input_length for e in self.entries)

  @property
  def kinds(self) -> tuple[str, ...]:
    """The attention kinds any entry puts a prefix on."""
    return tuple(k for k in ATTENTION_KINDS if any(e.prefix_length(k) for e in self.entries))

  def prefix_length(self, kind: str) -> int:
    return max(e.prefix_length(kind) for e in self.entries)

  def _layers(self, kind: str) -> int:
    return dict(self.kind_layers)[kind]

  # -- the Method interface --------------------------------------------------------------------------------
  def init(self, rng: Array, frozen: Params) -> Params:
    raise ConfigError('a prompt bank holds trained prompts (`build_bank`); it is served, not trained')

  def abstract(self, network: Params) -> Params:
    del network
    out: dict[str, Any] = {}
    if self.input_length:
      shape = (len(self.entries), self.input_length, self.embed_dim)
      out['prompts'] = nn.Partitioned(jax.ShapeDtypeStruct(shape, jnp.float32), (None, 'prompt', 'prompt_embed'))
    if self.kinds:
      rows = kv_prefix.row_axes(self.grouped)
      axes = rows[:1] + (None,) + rows[1:]  # [layers, T, Q, heads, head_dim]
      out['kv'] = {}
      for kind in self.kinds:
        shape = (self._layers(kind), len(self.entries), self.prefix_length(kind), self.num_heads, self.head_dim)
        leaf = nn.Partitioned(jax.ShapeDtypeStruct(shape, jnp.float32), axes)
        out['kv'][kind] = {'key': leaf, 'value': leaf}
    return out

  def hooks(self, trainable: Params, *, deterministic: bool = True, rng: Array | None = None,
            task_ids: Array | None = None) -> Hooks:
    """Each row's prompt and prefix rows, gathered by its task id [b]."""
    del deterministic, rng
    ids = task_ids_or_error(task_ids, self)
    inputs = None
    if self.input_length:  # the table may be cut to a batch's widest prompt (`eval.banks.batch_view`)
      inputs = gather_rows(trainable['prompts'], ids, [e.input_length for e in self.entries],
                           [e.combine for e in self.entries], eos_id=self.eos_id, dtype=self.dtype)
    keys, values, masks = {}, {}, {}
    for kind in self.kinds:
      width = self.prefix_length(kind)
      used = np.asarray([[j >= width - e.prefix_length(kind) for j in range(width)] for e in self.entries])
      rows = trainable['kv'][kind]
      keys[kind] = jnp.take(jnp.asarray(rows['key'], self.dtype), ids, axis=1)  # [layers, b, Q, h, d]
      values[kind] = jnp.take(jnp.asarray(rows['value'], self.dtype), ids, axis=1)
      masks[kind] = jnp.broadcast_to(jnp.asarray(used)[ids], (self._layers(kind),) + ids.shape + (width,))
    return Hooks.of(inputs, kv_prefix.layer_hooks(keys, values, self.relpos, masks))


# ------------------------------------------------------------------------------------ building a bank


def _entry_rows(name: str, method: Method, params: Params) -> tuple[Method, BankRows]:
  """(inference-form method, its bank rows) of one trained method, after its `inference` collapse (P-tuning's
  encoder, prefix tuning's MLP)."""
  method, params = method.inference(params)
  rows = method.bank_rows(params)
  if rows is None:
    raise PromptError(f'prompt {name!r}: a prompt bank holds input prompts (prompt tuning, P-tuning) and K/V '
                      f'prefixes (prefix tuning, P-tuning v2); {type(method).__name__} is neither')
  return method, rows


def build_bank(methods: Mapping[str, tuple[Method, Params]], config: ModelConfig,
               eos_id: int = 1) -> tuple[PromptBank, dict[str, Any]]:
  """(bank, its stored tree) from named trained methods `{name: (method, params)}` (task ids in this order)."""
  entries, prompts, rows, relpos = [], {}, {}, {}
  for name, (method, params) in methods.items():
    method, found = _entry_rows(name, method, params)
    prompt, combine, kv, mode = found.prompt, found.combine, dict(found.kv), found.relpos
    if prompt is not None:
      if prompt.shape[-1] != config.emb_dim:
        raise PromptError(f'prompt {name!r} has embed dim {prompt.shape[-1]}; the model has {config.emb_dim}')
      prompts[name] = prompt
    if mode is not None:
      relpos[name] = mode
    rows[name] = kv
    entries.append(
        Entry(name, 0 if prompt is None else prompt.shape[0], combine, tuple((k, v[0].shape[1]) for k, v in kv.items()),
              method))
  if len(set(relpos.values())) > 1:
    raise PromptError(f'a prompt bank serves its prefixes with one relative-position mode; these differ: '
                      f'{dict(sorted(relpos.items()))}')
  bank = PromptBank(tuple(entries), config.emb_dim, config.num_kv_heads, config.head_dim, kv_prefix.kind_layers(config),
                    next(iter(relpos.values()), 'positions'), eos_id, config.dtype, config.num_kv_heads
                    != config.num_heads)
  tree: dict[str, Any] = {}
  if bank.input_length:
    table = np.zeros((len(entries), bank.input_length, config.emb_dim), np.float32)
    for i, e in enumerate(entries):
      if e.name in prompts:
        table[i, :e.input_length] = prompts[e.name]
    tree['prompts'] = table
  if bank.kinds:
    tree['kv'] = {}
    for kind in bank.kinds:
      width = bank.prefix_length(kind)
      shape = (bank._layers(kind), len(entries), width, config.num_kv_heads, config.head_dim)  # pylint: disable=protected-access
      pair = {'key': np.zeros(shape, np.float32), 'value': np.zeros(shape, np.float32)}
      for i, e in enumerate(entries):
        if kind in rows[e.name]:
          q = e.prefix_length(kind)
          for part, array in zip(('key', 'value'), rows[e.name][kind]):
            pair[part][:, i, width - q:] = array  # right-aligned: the distances it has alone
      tree['kv'][kind] = pair
  return bank, tree


def single(bank: PromptBank, tree: Mapping[str, Any], name: str) -> tuple[Method, Params]:
  """The one-task method of entry `name` and its parameters (the method it came from), to run a task alone."""
  index = bank.task_names.index(name)
  entry = bank.entries[index]
  if entry.method is None:
    raise PromptError(f'prompt bank entry {name!r} records no method to run it alone (not made by `build_bank`)')
  prompt = np.asarray(tree['prompts'][index, :entry.input_length]) if entry.input_length else None
  kv = {}
  for k, q in entry.prefix_lengths:
    kv[k] = tuple(np.asarray(tree['kv'][k][p][:, index, -q:]) for p in ('key', 'value'))
  rows = BankRows(prompt=prompt, combine=entry.combine, kv=kv, relpos=bank.relpos if kv else None)
  return entry.method, entry.method.from_bank_rows(rows)
