"""Per-row prompts: each example of a batch gets its own input prompt, of its own length and combination mode.

The input hook of every method that serves several tasks at once (`jaxprompt.methods.prompt_bank`, the
multi-task methods of `jaxprompt.methods.multitask`): rows gather their task's prompt before the network runs,
so one forward pass serves a batch that mixes tasks. Shorter prompts than the batch's widest leave padding
positions at the end of the row (never attended), so every real position sees exactly the relative distances
it sees when its task runs alone.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from jaxprompt.errors import ConfigError, PromptError
from jaxprompt.methods.prompt_tuning import COMBINATIONS, insertion_points
from jaxprompt.models.hooks import Stack

Array = jax.Array


def combine_code(combine: str) -> int:
  """The integer a combination mode is carried as per row (its index in `COMBINATIONS`)."""
  if combine not in COMBINATIONS:
    raise PromptError(f'unknown prompt combination {combine!r}; expected one of {", ".join(COMBINATIONS)}')
  return COMBINATIONS.index(combine)


def row_insertion_points(tokens: Array, valid: Array, codes: Array, eos_id: int = 1) -> Array:
  """Each row's prompt start under its own combination mode. tokens, valid [b, l], codes [b] int -> [b] int32."""
  starts = jnp.stack([insertion_points(tokens, valid, c, eos_id) for c in COMBINATIONS], axis=-1)  # [b, modes]
  return jnp.take_along_axis(starts, codes[:, None].astype(jnp.int32), axis=-1)[:, 0]


def insert_row_prompts(embedded: Array, valid: Array, prompts: Array, lengths: Array,
                       start: Array) -> tuple[Array, Array]:
  """Inserts row i's first `lengths[i]` prompt rows at `start[i]`.

  embedded [b, l, e], valid [b, l] bool, prompts [b, p, e], lengths [b] (<= p), start [b] ->
  ([b, l + p, e], [b, l + p] bool). A row with a shorter prompt ends in p - lengths[i] invalid positions.
  """
  batch, length, _ = embedded.shape
  plen = prompts.shape[1]
  table = jnp.concatenate([embedded, prompts.astype(embedded.dtype)], axis=1)
  table_valid = jnp.concatenate([valid, jnp.arange(plen)[None, :] < lengths[:, None]], axis=1)
  pos = jnp.arange(length + plen)[None, :]
  start, rows = start[:, None], lengths[:, None]
  after = pos - rows  # positions after the prompt come from the inputs, shifted by this row's prompt length
  after = jnp.where(after < length, after, length + rows)  # past the inputs: an unused (invalid) prompt slot
  source = jnp.where(pos < start, pos, jnp.where(pos < start + rows, length + pos - start, after))
  source = jnp.minimum(source, length + plen - 1)
  out = jnp.take_along_axis(table, source[..., None], axis=1)
  out_valid = jnp.take_along_axis(table_valid, source, axis=1)
  return out, out_valid


class RowPrompts(struct.PyTreeNode):
  """The input hook of a mixed-task batch: row i's prompt `prompts[i, :lengths[i]]` [p, e], inserted by the
  combination mode `codes[i]` (`combine_code`). The decoder is untouched; packed rows are refused (each packed
  row holds several examples, and a per-row prompt belongs to one)."""
  prompts: Array  # [b, p, e]
  lengths: Array  # [b] int32
  codes: Array  # [b] int32
  eos_id: int = struct.field(pytree_node=False, default=1)

  def __call__(self, embedded: Array, tokens: Array, segment_ids: Array | None, *, valid: Array, stack: Stack,
               deterministic: bool) -> tuple[Array, Array]:
    """embedded [b, l, e], tokens / valid [b, l] -> (embedded [b, l + p, e], valid [b, l + p])."""
    del deterministic, stack
    if segment_ids is not None:
      raise PromptError('per-row prompts (prompt banks, multi-task prompts) need unpacked inputs: set PACK=False')
    if embedded.shape[-1] != self.prompts.shape[-1] or embedded.shape[0] != self.prompts.shape[0]:
      raise PromptError(f'per-row prompts {self.prompts.shape} do not fit embedded inputs {embedded.shape} '
                        '([batch, length, embed])')
    start = row_insertion_points(tokens, valid, self.codes, self.eos_id)
    return insert_row_prompts(embedded, valid, self.prompts, self.lengths, start)


def task_ids_or_error(task_ids: Array | None, method: Any) -> Array:
  """The rows' task ids [b] as int32, or one ConfigError naming the multi-task method's tasks."""
  if task_ids is None:
    raise ConfigError(f"{type(method).__name__} needs each row's task id (tasks {list(method.task_names)})")
  return jnp.asarray(task_ids, jnp.int32)


def gather_rows(table: Array, task_ids: Array, lengths: Sequence[int], combines: Sequence[str], *, eos_id: int = 1,
                dtype: Any = jnp.float32) -> RowPrompts:
  """The input hook of rows choosing among tasks: row i gets `table[task_ids[i]]`'s first `lengths[t]` rows
  (capped at the table's width, which may be cut to a batch's widest prompt), inserted by `combines[t]`.

  table [T, P, e] (task t's prompt, zero-padded), task_ids [b] int, lengths / combines: one per task.
  """
  prompts = jnp.take(jnp.asarray(table, dtype), task_ids, axis=0)  # [b, P, e]
  rows = jnp.minimum(jnp.asarray(lengths, jnp.int32)[task_ids], prompts.shape[1])
  codes = jnp.asarray([combine_code(c) for c in combines], jnp.int32)[task_ids]
  return RowPrompts(prompts, rows, codes, eos_id)
