"""The prompt computed once per batch on a causal LM (issue 23 item 7).

A prompt inserted at the first positions of a causal LM attends only to itself, so its hidden states, keys and
values are the same for every row of a batch; the naive path (the input hook inserting it in front of every row,
as PEFT does) computes them once per row. Here they are computed once: the prompt rows alone go through the same
network (batch 1, positions 0..p-1: rotary keys turned at their own positions, GPT-2's position embeddings added)
as a prefill into a new decoding cache, and the cache's keys / values of every layer become a K/V prefix
(`PromptKV`, batch-1 rows shared by every row) that the tokens attend to. A K/V prefix of p rows starts the tokens
at position p (`causal_lm.py`), where the inserted prompt put them, so logits, scores and decodes equal the naive
path's; the prompt's gradient flows back through the one pass, summed over the rows by autodiff.

`DecoderOnlyModel` takes this path when the method's input hook offers `shared_prefix()`
(`models.hooks.SharedPrefixHook`: prompt tuning and P-tuning v1 with combine='prefix'), the rows are not packed and
no per-layer hook runs; a prompt bank's per-row prompts and the other combine modes keep the naive path. With
dropout on, the prompt's pass draws one dropout mask per batch instead of one per row.
"""
from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import struct

from jaxprompt.errors import PromptError
from jaxprompt.models.causal_lm import CausalTransformer
from jaxprompt.models.hooks import Hooks, KVPrefix, SharedPrefixHook, Stack

Array = jax.Array


class PromptKV(struct.PyTreeNode):
  """The layer hook of a prompt computed once: every layer's keys / values of the prompt rows as its K/V prefix.

  key, value [layers, 1, p, g, d] (g = num_kv_heads): one batch row, which the attention broadcasts to every row.
  """
  key: Array
  value: Array

  def attention_prefix(self, layer: int | Array, kind: str) -> KVPrefix:
    del layer, kind  # a causal LM has one attention per layer; the network hands this slice its own layer
    return KVPrefix(self.key, self.value, jnp.ones(self.key.shape[:2], bool))

  def hidden_states(self, x: Array, layer: int | Array, stack: Stack) -> Array:
    del layer, stack
    return x


class _PromptRows(struct.PyTreeNode):
  """The input hook of the prompt's own pass: its rows [p, e] are the whole (empty) input."""
  rows: Array

  def __call__(self, embedded: Array, tokens: Array, segment_ids: Array | None, *, valid: Array, stack: Stack,
               deterministic: bool) -> tuple[Array, Array]:
    del tokens, segment_ids, valid, stack, deterministic
    if embedded.shape[-1] != self.rows.shape[-1]:
      raise PromptError(f'prompt embed_dim {self.rows.shape[-1]} does not match the model embedding '
                        f'{embedded.shape[-1]}')
    rows = self.rows.astype(embedded.dtype)[None]
    return rows, jnp.ones(rows.shape[:2], bool)


def shared_rows(hooks: Hooks | None, segment_ids: Array | None = None) -> Array | None:
  """The prompt rows [p, e] that may run once for this pass, or None (the naive path): the input hook must offer
  them (`shared_prefix`), the rows must be unpacked and no per-layer hook may run beside it."""
  if hooks is None or segment_ids is not None or hooks.decoder_layers is not None:
    return None
  if not isinstance(hooks.inputs, SharedPrefixHook):
    return None
  return hooks.inputs.shared_prefix()


def prompt_kv(module: CausalTransformer, params: Mapping, rows: Array, rngs: dict | None = None) -> PromptKV:
  """Runs the prompt rows [p, e] alone (batch 1, positions 0..p-1) through `module` with `params`; returns every
  layer's keys / values. `rngs` (a 'dropout' key) turns dropout on, as in the pass it serves."""
  cfg = module.config
  if cfg.remat_policy != 'none':  # one batch row: nothing worth recomputing (and the cache stays outside remat)
    module = CausalTransformer(cfg.replace(remat_policy='none'))
  tokens, valid = jnp.zeros((1, 0), jnp.int32), jnp.zeros((1, 0), bool)
  _, written = module.apply({'params': params}, tokens, valid=valid, hooks=Hooks(inputs=_PromptRows(rows)),
                            enable_dropout=rngs is not None, decode=True, prefill=True, max_decode_length=rows.shape[0],
                            mutable=['cache'], rngs=rngs)
  stack = written['cache']['decoder']
  if cfg.scan_layers:  # the scanned cache is already stacked on its leading layers axis
    attention = stack['layers']['self_attention']
    return PromptKV(attention['cached_key'], attention['cached_value'])
  layers = [stack[f'layers_{i}']['self_attention'] for i in range(cfg.num_layers)]
  return PromptKV(jnp.stack([a['cached_key'] for a in layers]), jnp.stack([a['cached_value'] for a in layers]))


def once_hooks(module: CausalTransformer, params: Mapping, hooks: Hooks | None, segment_ids: Array | None = None,
               rngs: dict | None = None) -> Hooks | None:
  """The hooks the tokens run with: `hooks` themselves (the naive path), or, when their prompt may run once
  (`shared_rows`), its pass's keys / values as a K/V prefix in place of the input hook."""
  rows = shared_rows(hooks, segment_ids)
  if rows is None:
    return hooks
  return Hooks(decoder_layers=prompt_kv(module, params, rows, rngs))
