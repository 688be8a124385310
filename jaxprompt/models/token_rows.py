"""Where each row's tokens sit after an input hook, and per-token values moved to and from those rows.

An input hook turns [b, l] token rows into [b, l'] rows (`jaxprompt.models.hooks.InputHook`). One that inserts the
same p rows in front of every row leaves every row's tokens at p = l' - l. Per-row prompts of several lengths
(`FrontRowsHook`: a prompt bank, multi-task prompts) put row i's tokens right behind its own prompt and its unused
slots at the row's end, so that each row keeps the positions it has alone. The encoder-only family places token
types and given positions by these starts (`place`), and a tagging head reads each row's token rows (`take`).

A start is a Python int when every row shares it (then `place` and `take` are a pad and a slice, as before any hook
reported starts), else [b] int32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxprompt.errors import ConfigError
from jaxprompt.models.hooks import FrontRowsHook, InputHook, Stack

Array = jax.Array
Starts = int | Array


def token_starts(hook: InputHook | None, length: int, width: int, stack: Stack) -> Starts:
  """Where each row's `length` tokens start among the hooked inputs' `width` rows entering `stack`: the hook's
  `front_rows` when it reports them, else width - length for every row (no hook, or the same rows in front)."""
  if not isinstance(hook, FrontRowsHook):
    return width - length
  starts = hook.front_rows(stack)
  if starts is None:
    raise ConfigError(f'{type(hook).__name__} puts some prompt between or after the tokens, so its rows have no '
                      "token start row: give every prompt combine='prefix'")
  return jnp.asarray(starts, jnp.int32)


def _column(starts: Starts) -> Starts:
  """`starts` broadcast against [b, width] rows."""
  return starts if isinstance(starts, int) else starts[:, None]


def place(values: Array, starts: Starts, width: int, fill: int = 0) -> Array:
  """Per-token values [b, l] at their rows of the hooked inputs: [b, width], `fill` in front and in unused slots."""
  length = values.shape[1]
  if isinstance(starts, int):
    return jnp.pad(values, ((0, 0), (starts, width - length - starts)), constant_values=fill)
  held = jnp.arange(width)[None] - _column(starts)  # [b, width]: the token each row holds
  taken = jnp.take_along_axis(values, jnp.clip(held, 0, length - 1), axis=1)
  return jnp.where((held >= 0) & (held < length), taken, fill)


def take(hidden: Array, starts: Starts, length: int) -> Array:
  """Each row's `length` token rows of the hooked rows: hidden [b, width, ...] -> [b, length, ...]."""
  if isinstance(starts, int):
    return hidden[:, starts:starts + length]
  index = _column(starts) + jnp.arange(length)[None]  # [b, length]
  return jnp.take_along_axis(hidden, index.reshape(index.shape + (1,) * (hidden.ndim - 2)), axis=1)


def positions_from(positions: Array, starts: Starts, width: int) -> Array:
  """Given token positions [b, l] (from 0 at the first token) as the hooked rows' [b, width]: the rows in front
  count 0.., each token follows its row's front rows."""
  front = jnp.arange(width, dtype=jnp.int32)[None]
  tokens = place(positions.astype(jnp.int32) + _column(starts), starts, width)
  return jnp.where(front < _column(starts), front, tokens)
