"""Per-row prompts: each example of a batch gets its own input prompt, of its own length and combination mode.

The input hook of every method that serves several tasks at once (`jaxprompt.methods.prompt_bank`, the
multi-task methods of `jaxprompt.methods.multitask`): rows gather their task's prompt before the network runs,
so one forward pass serves a batch that mixes tasks. Shorter prompts than the batch's widest leave padding
positions (never attended) at the end of the row, so every real position sees exactly the relative distances
it sees when its task runs alone; in a causal LM's stream they go in front of the prompt instead, so that every
row's tokens start at the same index (the model drops the first P logits) and count their positions from the
row's own prompt length. Both hooks say where each row's tokens start (`front_rows`,
`jaxprompt.models.hooks.FrontRowsHook`), so that a network may place per-token features and read token rows
there. `gather_rows` keeps the table beside the task ids (`TaskRows`), so that a causal LM may
run each task's prompt once per batch instead of once per row (`jaxprompt.models.prompt_once`).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from jaxprompt.errors import ConfigError, PromptError
from jaxprompt.methods.prompt_tuning import COMBINATIONS, causal, check_combine, insertion_points
from jaxprompt.models.hooks import Stack, TaskPrefix
from jaxprompt.models.prompt_once import right_aligned

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


def front_row_prompts(embedded: Array, valid: Array, prompts: Array, lengths: Array) -> tuple[Array, Array]:
  """A causal stream's row prompts: row i's first `lengths[i]` prompt rows right-aligned in front of its tokens,
  behind p - lengths[i] unused (invalid) slots. embedded [b, l, e], valid [b, l], prompts [b, p, e], lengths [b]
  -> ([b, p + l, e], [b, p + l] bool)."""
  rows, used = right_aligned(prompts.astype(embedded.dtype), lengths)
  return jnp.concatenate([rows, embedded], axis=1), jnp.concatenate([used, valid], axis=1)


class RowPrompts(struct.PyTreeNode):
  """The input hook of a mixed-task batch: row i's prompt `prompts[i, :lengths[i]]` [p, e], inserted by the
  combination mode `codes[i]` (`combine_code`; a causal stream takes every prompt in front, `front_row_prompts`).
  Packed rows are refused (each packed row holds several examples, and a per-row prompt belongs to one)."""
  prompts: Array  # [b, p, e]
  lengths: Array  # [b] int32
  codes: Array  # [b] int32
  eos_id: int = struct.field(pytree_node=False, default=1)
  combines: tuple[str, ...] = struct.field(pytree_node=False, default=())  # the modes `codes` may name

  def __call__(self, embedded: Array, tokens: Array, segment_ids: Array | None, *, valid: Array, stack: Stack,
               deterministic: bool) -> tuple[Array, Array]:
    """embedded [b, l, e], tokens / valid [b, l] -> (embedded [b, l + p, e], valid [b, l + p])."""
    del deterministic
    if segment_ids is not None:
      raise PromptError('per-row prompts (prompt banks, multi-task prompts) need unpacked inputs: set PACK=False')
    if embedded.shape[-1] != self.prompts.shape[-1] or embedded.shape[0] != self.prompts.shape[0]:
      raise PromptError(f'per-row prompts {self.prompts.shape} do not fit embedded inputs {embedded.shape} '
                        '([batch, length, embed])')
    if causal(stack):
      for combine in self.combines:
        check_combine(stack, combine)
      return front_row_prompts(embedded, valid, self.prompts, self.lengths)
    start = row_insertion_points(tokens, valid, self.codes, self.eos_id)
    return insert_row_prompts(embedded, valid, self.prompts, self.lengths, start)

  def front_rows(self, stack: Stack) -> Array | None:
    """The rows [b] in front of each row's tokens (`models.hooks.FrontRowsHook`): its own prompt's length, the
    widest in a causal stream (unused slots go in front there); None when some prompt may go elsewhere."""
    if causal(stack):
      return jnp.full(self.lengths.shape, self.prompts.shape[1], jnp.int32)
    return self.lengths if all(c == 'prefix' for c in self.combines) else None


def task_ids_or_error(task_ids: Array | None, method: Any) -> Array:
  """The rows' task ids [b] as int32, or one ConfigError naming the multi-task method's tasks."""
  if task_ids is None:
    raise ConfigError(f"{type(method).__name__} needs each row's task id (tasks {list(method.task_names)})")
  return jnp.asarray(task_ids, jnp.int32)


class TaskRows(struct.PyTreeNode):
  """The input hook of rows choosing among tasks, before the gather: task t's prompt `table[t, :lengths[t]]`,
  inserted by `combines[codes[t]]`; row i takes task `task_ids[i]`'s (`RowPrompts`). When every prompt goes in
  front it offers the table (`task_prefix`: `models.hooks.TaskPrefixHook`), so that a causal LM may run each
  task's prompt once per batch instead of once per row."""
  table: Array  # [T, P, e]
  lengths: Array  # [T] int32, <= P
  codes: Array  # [T] int32
  task_ids: Array  # [b] int32
  eos_id: int = struct.field(pytree_node=False, default=1)
  combines: tuple[str, ...] = struct.field(pytree_node=False, default=())

  @property
  def prompts(self) -> Array:
    """Each row's task's prompt [b, P, e]."""
    return jnp.take(self.table, self.task_ids, axis=0)

  def rows(self) -> RowPrompts:
    """Each row's own prompt (the naive path's hook)."""
    ids = self.task_ids
    return RowPrompts(self.prompts, self.lengths[ids], self.codes[ids], self.eos_id, self.combines)

  def __call__(self, embedded: Array, tokens: Array, segment_ids: Array | None, *, valid: Array, stack: Stack,
               deterministic: bool) -> tuple[Array, Array]:
    return self.rows()(embedded, tokens, segment_ids, valid=valid, stack=stack, deterministic=deterministic)

  def front_rows(self, stack: Stack) -> Array | None:
    return self.rows().front_rows(stack)

  def task_prefix(self) -> TaskPrefix | None:
    """Every task's prompt and each row's task when every prompt goes in front (combine 'prefix'), else None."""
    if any(c != 'prefix' for c in self.combines):
      return None
    return TaskPrefix(self.table, self.lengths, self.task_ids)


def gather_rows(table: Array, task_ids: Array, lengths: Sequence[int], combines: Sequence[str], *, eos_id: int = 1,
                dtype: Any = jnp.float32) -> TaskRows:
  """The input hook of rows choosing among tasks: row i gets `table[task_ids[i]]`'s first `lengths[t]` rows
  (capped at the table's width, which may be cut to a batch's widest prompt), inserted by `combines[t]`.

  table [T, P, e] (task t's prompt, zero-padded), task_ids [b] int, lengths / combines: one per task.
  """
  table = jnp.asarray(table, dtype)
  rows = jnp.minimum(jnp.asarray(lengths, jnp.int32), table.shape[1])
  codes = jnp.asarray([combine_code(c) for c in combines], jnp.int32)
  return TaskRows(table, rows, codes, jnp.asarray(task_ids, jnp.int32), eos_id, tuple(dict.fromkeys(combines)))
