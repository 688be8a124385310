"""The soft prompt: a learned `[length, embed]` matrix inserted into the encoder's embedded inputs.

Plugged into `Transformer(config, prompt=Prompt(...))`, its parameter lives at `params/prompt/prompt`
with logical axes ('prompt', 'prompt_embed') (replicated by the default rules).

Combination modes (where the prompt goes in each example's input sequence of real tokens x_0 .. x_{n-1}):
  prefix             P x_0 .. x_{n-1}                    (Lester et al.; the default)
  prefix_after_bos   x_0 P x_1 .. x_{n-1}                (keeps a leading BOS/task token first)
  suffix_after_eos   x_0 .. x_{n-1} P                    (after the last real token)
  suffix_before_eos  x_0 .. x_{n-2} P x_{n-1}            (before a final EOS; same as after when no EOS)
Padding stays at the end of every row, so the output length is input length + prompt length.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxprompt.errors import PromptError

Array = jax.Array
COMBINATIONS = ('prefix', 'prefix_after_bos', 'suffix_after_eos', 'suffix_before_eos')
PROMPT_AXES = ('prompt', 'prompt_embed')


def uniform_init(scale: float = 0.5) -> Callable[..., Array]:
  """U(-scale, scale), the paper's random initialisation."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)

  return init


def insertion_points(tokens: Array, combine: str, eos_id: int = 1) -> Array:
  """Per-example index at which the prompt starts. tokens [b, l] (right-padded, pad 0) -> [b] int32."""
  num_real = jnp.sum(tokens > 0, axis=-1).astype(jnp.int32)
  if combine == 'prefix':
    return jnp.zeros_like(num_real)
  if combine == 'prefix_after_bos':
    return jnp.minimum(num_real, 1)
  if combine == 'suffix_after_eos':
    return num_real
  if combine == 'suffix_before_eos':
    last = jnp.take_along_axis(tokens, jnp.maximum(num_real - 1, 0)[:, None], axis=-1)[:, 0]
    return jnp.where((num_real > 0) & (last == eos_id), num_real - 1, num_real)
  raise PromptError(f'unknown prompt combination {combine!r}; expected one of {", ".join(COMBINATIONS)}')


def insert_prompt(embedded: Array, valid: Array, prompt: Array, start: Array) -> tuple[Array, Array]:
  """Inserts `prompt` into each row at `start`.

  embedded [b, l, e], valid [b, l] bool, prompt [p, e], start [b] -> ([b, l+p, e], [b, l+p] bool).
  One gather over the concatenation [inputs; prompt] serves every combination mode.
  """
  batch, length, _ = embedded.shape
  plen = prompt.shape[0]
  table = jnp.concatenate([embedded, jnp.broadcast_to(prompt.astype(embedded.dtype), (batch,) + prompt.shape)],
                          axis=1)
  table_valid = jnp.concatenate([valid, jnp.ones((batch, plen), bool)], axis=1)
  pos = jnp.arange(length + plen)[None, :]
  start = start[:, None]
  source = jnp.where(pos < start, pos, jnp.where(pos < start + plen, length + pos - start, pos - plen))
  out = jnp.take_along_axis(table, source[..., None], axis=1)
  out_valid = jnp.take_along_axis(table_valid, source, axis=1)
  return out, out_valid


class Prompt(nn.Module):
  """Encoder-input hook adding a soft prompt. Used as `Transformer(config, prompt=Prompt(length, embed))`."""
  length: int
  embed_dim: int
  combine: str = 'prefix'
  prompt_init: Callable[..., Array] = uniform_init(0.5)
  eos_id: int = 1
  dtype: Any = jnp.float32  # Activation dtype the prompt is cast to (the model's).
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, embedded: Array, input_tokens: Array, segment_ids: Array | None = None, *,
               deterministic: bool = True) -> tuple[Array, Array]:
    """embedded [b, l, e], tokens [b, l] -> (embedded [b, l+p, e], valid [b, l+p])."""
    del deterministic
    if segment_ids is not None:
      raise PromptError('packed encoder inputs (encoder_segment_ids) are not supported with a prompt: the prompt '
                        'would be shared across packed examples; use an unpacked feature converter (pack=False)')
    if self.combine not in COMBINATIONS:
      raise PromptError(f'unknown prompt combination {self.combine!r}; expected one of {", ".join(COMBINATIONS)}')
    if embedded.shape[-1] != self.embed_dim:
      raise PromptError(f'prompt embed_dim {self.embed_dim} does not match the model embedding {embedded.shape[-1]}')
    prompt = self.param('prompt', nn.with_logical_partitioning(self.prompt_init, PROMPT_AXES),
                        (self.length, self.embed_dim), self.param_dtype)
    prompt = nn.with_logical_constraint(jnp.asarray(prompt, self.dtype), PROMPT_AXES)
    start = insertion_points(input_tokens, self.combine, self.eos_id)
    return insert_prompt(embedded.astype(self.dtype), input_tokens > 0, prompt, start)
