"""The typed places where a tuning method may act on a network, and nothing else.

A network calls these hooks when they are given and is bit-identical to the plain network when they
are not. A method (`jaxprompt.methods`) owns its trainable parameters and turns them into a `Hooks` value for one
forward pass; the network never knows which method made it.

Hooks are pytrees (`flax.struct` dataclasses): their array leaves are traced like any other argument, so they
pass through `jit`, `nn.scan` and `nn.remat`. Per-layer hooks carry a leading `layers` axis on every array
leaf (the same layout as scanned frozen weights); the network hands each layer its own slice, so a layer's hook
only ever sees `[batch, ...]`-shaped data for that layer.

Shapes: b batch, l length, e embed, p prefix rows, h heads, d head dim (kv).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Protocol, runtime_checkable

import jax
from flax import struct

from jaxprompt.errors import ConfigError

Array = jax.Array

Stack = Literal['encoder', 'decoder']
AttentionKind = Literal['encoder_self', 'decoder_self', 'cross']
ATTENTION_KINDS: tuple[str, ...] = ('encoder_self', 'decoder_self', 'cross')
# The stack whose layers ask a per-layer hook for a prefix of each kind (cross-attention lives in the decoder).
STACK_OF_KIND: dict[str, Stack] = {'encoder_self': 'encoder', 'decoder_self': 'decoder', 'cross': 'decoder'}

# How relative-position bias treats prefix keys (T5 self-attention; cross-attention has no relative bias):
#   'none'       zero bias for every prefix key (P-tuning v2's choice for DeBERTa);
#   'positions'  the prefix sits at the p positions just before the sequence: a query at position t sees
#                prefix key j (0 <= j < p) at distance p + t - j, bucketed as the model buckets any distance
#                (what Hugging Face T5 computes when it is given past keys/values).
RELPOS_MODES: tuple[str, ...] = ('none', 'positions')


class KVPrefix(struct.PyTreeNode):
  """Extra key/value rows a method prepends to one attention layer's keys and values.

  key, value [b, p, h, d] (already projected: they bypass the layer's key/value kernels); mask [b, p] bool
  (True = attend). `relpos` is one of RELPOS_MODES. b may be 1 (the same rows for every example); rows of batch
  b at an attention batch of b * n (beams, rank-classification candidates) are repeated n times per example.
  """
  key: Array
  value: Array
  mask: Array
  relpos: str = struct.field(pytree_node=False, default='positions')


@runtime_checkable
class InputHook(Protocol):
  """Acts on a model's embedded input tokens before the first layer of its input stack (Lester et al.'s prompt,
  P-tuning v1): T5's encoder, a causal LM's only stack. A network calls it once per forward pass.

  Called as `hook(embedded [b, l, e], tokens [b, l] int, segment_ids [b, l] | None, valid=[b, l] bool,
  stack=..., deterministic=...)` and returns `(embedded [b, l', e], valid [b, l'] bool)`: l' = l + p when it
  inserts p positions. `valid` marks real tokens (False = padding); a hook reads padding from it, never from
  the token ids (id 0 is a real token in many vocabularies). `stack` names the stack the inputs enter.
  With `segment_ids` (packed rows) l' must equal l: the segment masks still apply position by position, so a
  hook fills positions the data pipeline reserved (`Method.packing_slots`) instead of inserting new ones. In a
  causal LM (stack 'decoder') inserted positions must come first (`combine='prefix'`) and every row's tokens
  start at index l' - l: a row inserting fewer rows than the widest leaves its unused (invalid) slots in front.
  A hook that inserts the same rows in front of every row may say so with `shared_prefix` (`SharedPrefixHook`),
  one that inserts its row's task's rows with `task_prefix` (`TaskPrefixHook`), and one whose rows insert
  different numbers of rows in front of their tokens says where each row's tokens start (`FrontRowsHook`).
  """

  def __call__(self, embedded: Array, tokens: Array, segment_ids: Array | None, *, valid: Array, stack: Stack,
               deterministic: bool) -> tuple[Array, Array]:
    ...


@runtime_checkable
class SharedPrefixHook(InputHook, Protocol):
  """An input hook that may be the same p rows in front of every row of every batch (a prefix prompt).

  In a causal LM such rows attend only to themselves, so their hidden states and keys / values are the same for
  every row: `DecoderOnlyModel` then runs them once per batch (batch 1, positions 0..p-1) and gives the tokens
  their keys / values as a K/V prefix (`jaxprompt.models.prompt_once`), with results equal to inserting them.
  It asks only for unpacked rows (no segment ids) and when no per-layer hook runs; otherwise it calls the hook.
  """

  def shared_prefix(self) -> Array | None:
    """The rows [p, e] the hook inserts in front of every row, or None when they differ by row or go elsewhere
    (then the network calls the hook as usual)."""
    ...


@runtime_checkable
class FrontRowsHook(InputHook, Protocol):
  """An input hook whose rows may put different numbers of rows in front of their tokens (per-row prompts of
  several lengths: a prompt bank, multi-task prompts). Without it a network takes every row's tokens to start at
  l' - l; with it each row's start is the hook's word (`jaxprompt.models.token_rows`), so that a bidirectional
  encoder gives each token its token type and a tagging head reads each row's own token rows.
  """

  def front_rows(self, stack: Stack) -> Array | None:
    """The rows [b] int32 before each row's tokens when they enter `stack` (row i's tokens are its rows
    front_rows[i] .. front_rows[i] + l - 1; a bidirectional stack's unused slots follow them, a causal stream's
    precede its prompt), or None when some prompt goes between or after the tokens (no one start row)."""
    ...


class TaskPrefix(struct.PyTreeNode):
  """Every task's prefix prompt and each row's task: row i takes `rows[task_ids[i], :lengths[task_ids[i]]]`.

  rows [T, P, e] (task t's prompt in its first lengths[t] rows), lengths [T] int32, task_ids [b] int32.
  """
  rows: Array
  lengths: Array
  task_ids: Array


@runtime_checkable
class TaskPrefixHook(InputHook, Protocol):
  """An input hook that puts its row's task's prompt in front of every row (a prompt bank, multi-task prompts).

  As with `SharedPrefixHook`, a causal LM may then run each task's prompt once per batch (batch T, positions
  0..p_t-1) and give every row its task's keys / values as a K/V prefix (`jaxprompt.models.prompt_once`).
  """

  def task_prefix(self) -> TaskPrefix | None:
    """Every task's rows and each row's task, or None when some prompt does not go in front (then the network
    calls the hook as usual)."""
    ...


@runtime_checkable
class LayerHook(Protocol):
  """One layer's view of a per-layer method (prefix tuning, P-tuning v2, per-layer prompts).

  The object given to the network holds every layer's data stacked on a leading `layers` axis; the network
  slices it (`jax.tree.map(lambda a: a[i], hook)`, or as a scanned input) and calls the slice with the layer's
  index `layer` (a Python int when unrolled, a traced int32 under `scan`).
  """

  def attention_prefix(self, layer: int | Array, kind: AttentionKind) -> KVPrefix | None:
    """Extra K/V rows for this layer's attention of `kind`, or None for none."""
    ...

  def hidden_states(self, x: Array, layer: int | Array, stack: Stack) -> Array:
    """The layer's input hidden states [b, l, e] -> [b, l, e] (identity when the method does not act here).

    Cached decoding calls it on each one-token step too (l = 1: a row after everything the prefill wrote).
    """
    ...


def call_input_hook(hook: InputHook, embedded: Array, tokens: Array, segment_ids: Array | None, *, valid: Array,
                    stack: Stack, deterministic: bool) -> tuple[Array, Array]:
  """Runs a network's input hook: (embedded [b, l', e], valid [b, l'] bool); packed rows (segment ids) must keep
  their length l, or one ConfigError says so."""
  length = tokens.shape[1]
  embedded, valid = hook(embedded, tokens, segment_ids, valid=valid, stack=stack, deterministic=deterministic)
  if segment_ids is not None and embedded.shape[1] != length:
    raise ConfigError(f'the input hook changed packed inputs from {length} to {embedded.shape[1]} positions; with '
                      f'segment ids it must fill reserved positions instead')
  return embedded, valid.astype(bool)


class Hooks(struct.PyTreeNode):
  """Everything a method plugs into one forward pass; a None field is not called at all.

  inputs: called on the input stack's embedded tokens. encoder_layers / decoder_layers: per-layer hooks, every
  array leaf with a leading `layers` axis of the stack's depth.
  """
  inputs: InputHook | None = None
  encoder_layers: LayerHook | None = None
  decoder_layers: LayerHook | None = None

  def layers(self, stack: Stack) -> LayerHook | None:
    return self.encoder_layers if stack == 'encoder' else self.decoder_layers

  @classmethod
  def of(cls, inputs: InputHook | None = None, layers: Mapping[Stack, LayerHook | None] | None = None) -> Hooks:
    """Hooks from an input hook and per-layer hooks by stack name (a method names its stacks from the model's
    config, `input_stack` or `STACK_OF_KIND`, never by field)."""
    layers = dict(layers or {})
    unknown = set(layers) - {'encoder', 'decoder'}
    if unknown:
      raise ValueError(f'per-layer hooks go on stacks encoder / decoder, not {sorted(unknown)}')
    return cls(inputs=inputs, encoder_layers=layers.get('encoder'), decoder_layers=layers.get('decoder'))


NO_HOOKS = Hooks()
