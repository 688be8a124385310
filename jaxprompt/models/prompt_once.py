"""The prompt computed once per batch on a causal LM (issue 23 item 7).

A prompt inserted at the first positions of a causal LM attends only to itself, so its hidden states, keys and
values are the same for every row of a batch; the naive path (the input hook inserting it in front of every row,
as PEFT does) computes them once per row. Here they are computed once: the prompt rows alone go through the same
network (batch 1, positions 0..p-1: rotary keys turned at their own positions, GPT-2's position embeddings added)
as a prefill into a new decoding cache, and the cache's keys / values of every layer become a K/V prefix
(`PromptKV`, batch-1 rows shared by every row) that the tokens attend to. A K/V prefix of p rows starts the tokens
at position p (`causal_lm.py`), where the inserted prompt put them, so logits, scores and decodes equal the naive
path's; the prompt's gradient flows back through the one pass, summed over the rows by autodiff.

A mixed-task batch (a prompt bank, multi-task prompts: `models.hooks.TaskPrefixHook`) runs every task's prompt
once instead: the T prompts go through the network as one batch of T rows, each right-aligned behind
P - p_t masked slots so that it sits at positions 0..p_t-1 as it does alone, and each row gathers its task's
keys / values with that mask. The mask tells `causal_lm.py` where the row's tokens start (p_t), so shorter
prompts number their tokens as on the naive path (`methods.row_prompts.front_row_prompts`, the same layout).

`DecoderOnlyModel` takes this path when the method's input hook offers `shared_prefix()` or `task_prefix()`
(prompt tuning and P-tuning v1 with combine='prefix'; banks and multi-task prompts whose prompts all go in
front), the rows are not packed and no per-layer hook runs; a bank holding K/V prefixes keeps the naive path.
With dropout on, the prompt's pass draws one dropout mask per batch (per task) instead of one per row.
"""
from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import struct

from jaxprompt.errors import PromptError
from jaxprompt.models.causal_lm import CausalTransformer
from jaxprompt.models.hooks import Hooks, KVPrefix, SharedPrefixHook, Stack, TaskPrefix, TaskPrefixHook

Array = jax.Array


class PromptKV(struct.PyTreeNode):
  """The layer hook of a prompt computed once: every layer's keys / values of the prompt rows as its K/V prefix.

  key, value [layers, n, p, g, d] (g = num_kv_heads): n = 1 (one prompt, broadcast to every row) or the batch
  (each row its task's rows). mask [layers, n, p] bool (None: every row real); a shorter prompt's rows are
  right-aligned behind masked slots.
  """
  key: Array
  value: Array
  mask: Array | None = None

  def attention_prefix(self, layer: int | Array, kind: str) -> KVPrefix:
    del layer, kind  # a causal LM has one attention per layer; the network hands this slice its own layer
    return KVPrefix(self.key, self.value, jnp.ones(self.key.shape[:2], bool) if self.mask is None else self.mask)

  def hidden_states(self, x: Array, layer: int | Array, stack: Stack) -> Array:
    del layer, stack
    return x


class _PromptRows(struct.PyTreeNode):
  """The input hook of the prompts' own pass: their rows [n, p, e] (valid [n, p]) are the whole (empty) input."""
  rows: Array
  valid: Array

  def __call__(self, embedded: Array, tokens: Array, segment_ids: Array | None, *, valid: Array, stack: Stack,
               deterministic: bool) -> tuple[Array, Array]:
    del tokens, segment_ids, valid, stack, deterministic
    if embedded.shape[-1] != self.rows.shape[-1]:
      raise PromptError(f'prompt embed_dim {self.rows.shape[-1]} does not match the model embedding '
                        f'{embedded.shape[-1]}')
    return self.rows.astype(embedded.dtype), self.valid


def right_aligned(prompts: Array, lengths: Array) -> tuple[Array, Array]:
  """Row i's first `lengths[i]` prompt rows moved to the end, behind p - lengths[i] unused slots.

  prompts [n, p, e], lengths [n] -> (rows [n, p, e], valid [n, p] bool); an unused slot holds a copy of row 0.
  """
  plen = prompts.shape[1]
  source = jnp.arange(plen)[None, :] - (plen - lengths)[:, None]  # [n, p]: the prompt row each slot holds
  rows = jnp.take_along_axis(prompts, jnp.maximum(source, 0)[..., None], axis=1)
  return rows, source >= 0


def shared_rows(hooks: Hooks | None, segment_ids: Array | None = None) -> Array | TaskPrefix | None:
  """What may run once for this pass: one prompt's rows [p, e], every task's prompts (`TaskPrefix`), or None
  (the naive path). The input hook must offer them (`shared_prefix` / `task_prefix`), the rows must be unpacked
  and no per-layer hook may run beside it."""
  if hooks is None or segment_ids is not None or hooks.decoder_layers is not None:
    return None
  if isinstance(hooks.inputs, SharedPrefixHook):
    return hooks.inputs.shared_prefix()
  if isinstance(hooks.inputs, TaskPrefixHook):
    return hooks.inputs.task_prefix()
  return None


def _pass(module: CausalTransformer, params: Mapping, rows: Array, valid: Array,
          rngs: dict | None) -> tuple[Array, Array]:
  """Every layer's keys and values [layers, n, p, g, d] of the prompt rows [n, p, e] (valid [n, p]) run alone."""
  cfg = module.config
  if cfg.remat_policy != 'none':  # a few rows: nothing worth recomputing (and the cache stays outside remat)
    module = CausalTransformer(cfg.replace(remat_policy='none'))
  tokens = jnp.zeros((rows.shape[0], 0), jnp.int32)
  _, written = module.apply({'params': params}, tokens, valid=tokens > 0, hooks=Hooks(inputs=_PromptRows(rows, valid)),
                            enable_dropout=rngs is not None, decode=True, prefill=True, max_decode_length=rows.shape[1],
                            mutable=['cache'], rngs=rngs)
  stack = written['cache']['decoder']
  if cfg.scan_layers:  # the scanned cache is already stacked on its leading layers axis
    attention = stack['layers']['self_attention']
    return attention['cached_key'], attention['cached_value']
  layers = [stack[f'layers_{i}']['self_attention'] for i in range(cfg.num_layers)]
  return jnp.stack([a['cached_key'] for a in layers]), jnp.stack([a['cached_value'] for a in layers])


def prompt_kv(module: CausalTransformer, params: Mapping, rows: Array, rngs: dict | None = None) -> PromptKV:
  """Runs the prompt rows [p, e] alone (batch 1, positions 0..p-1) through `module` with `params`; returns every
  layer's keys / values. `rngs` (a 'dropout' key) turns dropout on, as in the pass it serves."""
  return PromptKV(*_pass(module, params, rows[None], jnp.ones((1, rows.shape[0]), bool), rngs))


def task_kv(module: CausalTransformer, params: Mapping, prefix: TaskPrefix, rngs: dict | None = None) -> PromptKV:
  """Runs every task's prompt once (batch T, task t at positions 0..p_t-1) and gives each row its task's keys /
  values [layers, b, P, g, d] with their mask [layers, b, P]."""
  lengths = jnp.minimum(jnp.asarray(prefix.lengths, jnp.int32), prefix.rows.shape[1])
  rows, valid = right_aligned(prefix.rows, lengths)
  key, value = _pass(module, params, rows, valid, rngs)
  ids = jnp.asarray(prefix.task_ids, jnp.int32)
  mask = jnp.broadcast_to(valid[ids], (key.shape[0],) + ids.shape + valid.shape[1:])
  return PromptKV(jnp.take(key, ids, axis=1), jnp.take(value, ids, axis=1), mask)


def once_hooks(module: CausalTransformer, params: Mapping, hooks: Hooks | None, segment_ids: Array | None = None,
               rngs: dict | None = None) -> Hooks | None:
  """The hooks the tokens run with: `hooks` themselves (the naive path), or, when their prompts may run once
  (`shared_rows`), their pass's keys / values as a K/V prefix in place of the input hook."""
  rows = shared_rows(hooks, segment_ids)
  if rows is None:
    return hooks
  if isinstance(rows, TaskPrefix):
    return Hooks(decoder_layers=task_kv(module, params, rows, rngs))
  return Hooks(decoder_layers=prompt_kv(module, params, rows, rngs))
