"""Prompt tuning (Lester et al. 2021): a learned `[length, embed]` matrix inserted into the model's embedded
inputs (T5's encoder, a causal LM's stream) through the network's input hook.

Its trainable tree is `{'prompt': [length, embed]}` with logical axes ('prompt', 'prompt_embed') (replicated by
the default rules).

Combination modes (where the prompt goes in each example's input sequence of real tokens x_0 .. x_{n-1}):
  prefix             P x_0 .. x_{n-1}                    (Lester et al.; the default)
  prefix_after_bos   x_0 P x_1 .. x_{n-1}                (keeps a leading BOS/task token first)
  suffix_after_eos   x_0 .. x_{n-1} P                    (after the last real token)
  suffix_before_eos  x_0 .. x_{n-2} P x_{n-1}            (before a final EOS; same as after when no EOS)
Padding stays at the end of every row, so the output length is input length + prompt length. A causal LM (its
input stack a decoder: each position attends only to those before it) takes the prompt in front, as PEFT does:
positions 0..P-1, the tokens from P; the other modes are refused for it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxprompt.errors import ConfigError, PromptError
from jaxprompt.formats.keys import PROMPT_FILE, PROMPT_KEY
from jaxprompt.formats.npy_io import write_npy
from jaxprompt.methods import peft_adapters, peft_layouts, registry
from jaxprompt.methods.base import BankRows, Method, Params
from jaxprompt.models.base import ModelConfig
from jaxprompt.models.hooks import Hooks, Stack
from jaxprompt.parallel import host

Array = jax.Array
COMBINATIONS = ('prefix', 'prefix_after_bos', 'suffix_after_eos', 'suffix_before_eos')
PROMPT_AXES = ('prompt', 'prompt_embed')


def uniform_init(scale: float = 0.5) -> Callable[..., Array]:
  """U(-scale, scale), the paper's random initialisation."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)

  return init


def insertion_points(tokens: Array, valid: Array, combine: str, eos_id: int = 1) -> Array:
  """Per-example index at which the prompt starts. tokens, valid [b, l] (right-padded) -> [b] int32."""
  num_real = jnp.sum(valid, axis=-1).astype(jnp.int32)
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
  table = jnp.concatenate([embedded, jnp.broadcast_to(prompt.astype(embedded.dtype), (batch,) + prompt.shape)], axis=1)
  table_valid = jnp.concatenate([valid, jnp.ones((batch, plen), bool)], axis=1)
  pos = jnp.arange(length + plen)[None, :]
  start = start[:, None]
  source = jnp.where(pos < start, pos, jnp.where(pos < start + plen, length + pos - start, pos - plen))
  out = jnp.take_along_axis(table, source[..., None], axis=1)
  out_valid = jnp.take_along_axis(table_valid, source, axis=1)
  return out, out_valid


def causal(stack: Stack) -> bool:
  """Whether inputs entering `stack` attend causally (a decoder: each position sees only those before it)."""
  return stack == 'decoder'


def check_combine(stack: Stack, combine: str) -> str:
  """`combine`, or one PromptError when inputs entering `stack` cannot take it: a causal LM's prompt goes in
  front (pass the model config's `input_stack`)."""
  if combine != 'prefix' and causal(stack):
    raise PromptError(f"a causal LM takes its prompt in front of the tokens (combine='prefix'), as PEFT does; "
                      f'combine={combine!r} is for encoder-decoder models')
  return combine


def segment_positions(segment_ids: Array) -> Array:
  """Each position's offset from the start of its segment. segment_ids [b, l] (contiguous runs) -> [b, l]."""
  index = jnp.arange(segment_ids.shape[-1], dtype=jnp.int32)
  previous = jnp.pad(segment_ids[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  starts = jnp.where(segment_ids != previous, index, 0)
  return index - jax.lax.cummax(starts, axis=1)


def fill_prompt_slots(embedded: Array, segment_ids: Array, prompt: Array) -> tuple[Array, Array]:
  """Packed rows: the first p positions of every segment (reserved by the data pipeline) become the prompt.

  embedded [b, l, e], segment_ids [b, l] (0 = padding), prompt [p, e] -> ([b, l, e], valid [b, l]).
  """
  plen = prompt.shape[0]
  offset = segment_positions(segment_ids)
  slot = (offset < plen) & (segment_ids > 0)
  rows = jnp.take(prompt.astype(embedded.dtype), jnp.minimum(offset, plen - 1), axis=0)
  return jnp.where(slot[..., None], rows, embedded), segment_ids > 0


class PromptInput(struct.PyTreeNode):
  """The input hook: inserts `prompt` [p, e] into the model's embedded inputs (T5: the encoder's).

  Unpacked rows grow by p positions. Packed rows (segment_ids given) keep their length: the pipeline reserved p
  positions in front of each example (`jaxprompt.data.pipeline.convert_features`), which get the prompt.
  """
  prompt: Array
  combine: str = struct.field(pytree_node=False, default='prefix')
  eos_id: int = struct.field(pytree_node=False, default=1)

  def __call__(self, embedded: Array, tokens: Array, segment_ids: Array | None, *, valid: Array, stack: Stack,
               deterministic: bool) -> tuple[Array, Array]:
    """embedded [b, l, e], tokens / valid [b, l] -> (embedded [b, l+p, e] (packed: [b, l, e]), valid)."""
    del deterministic
    check_combine(stack, self.combine)
    if embedded.shape[-1] != self.prompt.shape[-1]:
      raise PromptError(f'prompt embed_dim {self.prompt.shape[-1]} does not match the model embedding '
                        f'{embedded.shape[-1]}')
    prompt = nn.with_logical_constraint(self.prompt.astype(embedded.dtype), PROMPT_AXES)
    if segment_ids is not None:
      if self.combine != 'prefix':
        raise PromptError(f'packed inputs take the prompt in front of each example (combine=prefix); '
                          f'combine={self.combine!r} needs unpacked inputs')
      return fill_prompt_slots(embedded, segment_ids, prompt)
    start = insertion_points(tokens, valid, self.combine, self.eos_id)
    return insert_prompt(embedded, valid, prompt, start)

  def shared_prefix(self) -> Array | None:
    """The prompt [p, e] when it goes in front of every row (combine='prefix'; `models.hooks.SharedPrefixHook`),
    which a causal LM then computes once per batch; None for the modes that place it by each row's tokens."""
    return self.prompt if self.combine == 'prefix' else None


@dataclasses.dataclass(frozen=True)
class PromptTuning(Method):
  """Lester et al.'s soft prompt of `length` rows in front of (or inside) each encoder input.

  `prompt_init` is the default initialiser `(rng, shape, dtype)`; `init` may be given an embedding-aware
  initialiser from `jaxprompt.methods.initializers` instead. `dtype` is the activation dtype the prompt is cast
  to (the model's); `param_dtype` the trainable prompt's.
  """
  length: int
  embed_dim: int
  combine: str = 'prefix'
  prompt_init: Callable[..., Array] = uniform_init(0.5)
  eos_id: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  initializer: Callable[..., Array] | None = None

  def __post_init__(self):
    if self.combine not in COMBINATIONS:
      raise PromptError(f'unknown prompt combination {self.combine!r}; expected one of {", ".join(COMBINATIONS)}')
    if not isinstance(self.length, int) or self.length <= 0:
      raise ConfigError(f'PROMPT_LENGTH must be a positive integer, got {self.length!r}')

  @property
  def shape(self) -> tuple[int, int]:
    return (self.length, self.embed_dim)

  def init(self, rng: Array, frozen: Params) -> Params:
    """{'prompt': [P, d]} from `initializer(rng, shape, embedding)` if set, else `prompt_init(rng, shape)`."""
    if self.initializer is None:
      value = self.prompt_init(rng, self.shape, self.param_dtype)
    else:
      value = self.initializer(rng, self.shape, frozen['token_embedder']['embedding'])
    value = jnp.asarray(value, self.param_dtype)
    if value.shape != self.shape:
      raise ConfigError(f'prompt initializer returned shape {value.shape}, expected {self.shape}')
    return {PROMPT_KEY: value}

  @property
  def packing_slots(self) -> int:
    """Positions to reserve in front of each packed example: one per prompt row (prefix prompts only)."""
    if self.combine != 'prefix':
      raise ConfigError(
          f'packing puts a copy of the prompt in front of each example, so it needs '
          f"combine='prefix' (the method's gin parameter, e.g. jaxprompt.methods.prompt_tuning.combine); got "
          f'{self.combine!r}: set PACK=False')
    return self.length

  def abstract(self, network: Params) -> Params:
    del network
    return {PROMPT_KEY: nn.Partitioned(jax.ShapeDtypeStruct(self.shape, jnp.dtype(self.param_dtype)), PROMPT_AXES)}

  def hooks(self, trainable: Params, *, deterministic: bool = True, rng: Array | None = None,
            task_ids: Array | None = None) -> Hooks:
    del deterministic, rng, task_ids
    prompt = jnp.asarray(trainable[PROMPT_KEY], self.dtype)
    return Hooks(inputs=PromptInput(prompt, self.combine, self.eos_id))

  def numpy_copy(self, trainable: Params) -> dict[str, np.ndarray]:
    return {PROMPT_FILE: prompt_array(trainable)}

  def bank_rows(self, trainable: Params) -> BankRows:
    return BankRows(prompt=prompt_array(trainable), combine=self.combine)

  def from_bank_rows(self, rows: BankRows) -> Params:
    return {PROMPT_KEY: rows.prompt}

  @classmethod
  def from_arrays(cls, arrays: registry.Arrays, context: registry.ReadContext) -> tuple[PromptTuning, Params]:
    """A prompt file's {'prompt': [P, d]} (a .npy, a checkpoint's prompt, a PEFT prompt adapter) as (the plain
    method for `context.config`, with the context's combine, {'prompt': float32 [P, d]})."""
    prompt = np.asarray(arrays[PROMPT_KEY])
    dim = context.config.emb_dim
    if prompt.ndim != 2 or prompt.shape[1] != dim or not np.issubdtype(prompt.dtype, np.floating):
      raise PromptError(f'{context.source} holds a {prompt.dtype} prompt of shape {prompt.shape}; the model needs '
                        f'float [length, {dim}]')
    if context.prompt_length is not None and context.prompt_length != prompt.shape[0]:
      raise PromptError(f'{context.source} holds a prompt of {prompt.shape[0]} virtual tokens but PROMPT_LENGTH is '
                        f'{context.prompt_length}')
    method = cls(length=prompt.shape[0], embed_dim=dim, combine=check_combine(context.config.input_stack,
                                                                              context.combine), eos_id=context.eos_id,
                 dtype=context.config.dtype)
    return method, {PROMPT_KEY: np.asarray(prompt, np.float32)}


def prompt_array(trainable: Mapping[str, Any]) -> np.ndarray:
  """The float32 [P, d] prompt of a trainable tree, on the host (gathered when sharded across hosts)."""
  return np.asarray(host.host_value(trainable[PROMPT_KEY]), np.float32)


def write_prompt_file(arrays: registry.Arrays, path: str) -> str:
  """{'prompt': [P, d]} as a plain float32 .npy (PEFT and NumPy users read it directly: no marker)."""
  return write_npy(np.asarray(arrays[PROMPT_KEY], np.float32), path)


def peft_prompt_writer(peft_type: str) -> registry.PeftWriter:
  """The PEFT export of an input prompt {'prompt': [P, d]} as a `peft_type` (PROMPT_TUNING, P_TUNING) adapter of
  the target model's family (its PEFT task type)."""

  def write(arrays: registry.Arrays, target: registry.PeftTarget) -> tuple[str, list[int]]:
    prompt = np.asarray(arrays[PROMPT_KEY], np.float32)
    if target.sizes.get('emb_dim') not in (None, prompt.shape[1]):
      raise PromptError(f'the prompt of {target.source} has shape {prompt.shape} but the model config has emb_dim '
                        f'{target.sizes["emb_dim"]}: the wrong MODEL_CONFIG for this run?')
    task = peft_layouts.task_of(target.sizes.get('family'), target.task_type)
    peft_adapters.write_prompt(target.output, prompt, peft_type=peft_type, task=task,
                               num_layers=target.sizes.get(task.input_layers), num_heads=target.sizes.get('num_heads'),
                               base_model=target.base_model, fingerprint=target.fingerprint, modules=target.modules)
    return peft_type, list(prompt.shape)

  return write


registry.register(
    registry.FileKind('prompt', PROMPT_FILE, PromptTuning.from_arrays, 'a prompt .npy',
                      holds=lambda arrays: set(arrays) == {PROMPT_KEY} and np.ndim(arrays[PROMPT_KEY]) == 2,
                      suffixes=('.npy',), write=write_prompt_file, peft=peft_prompt_writer('PROMPT_TUNING')))


@gin.configurable(module='jaxprompt.methods')
def prompt_tuning(config: ModelConfig, eos_id: int = 1, *, length: int = 100,
                  initializer: Callable[..., Array] | None = None, combine: str = 'prefix') -> PromptTuning:
  """The method factory gin binds (`METHOD = @jaxprompt.methods.prompt_tuning`, methods/prompt_tuning.gin):
  a `length`-row prompt for `config`'s embedding; `initializer` an embedding-aware initialiser [PROMPT_INIT]
  (None: U(-0.5, 0.5))."""
  return PromptTuning(length=length, embed_dim=config.emb_dim, combine=check_combine(config.input_stack, combine),
                      eos_id=eos_id, dtype=config.dtype, initializer=initializer)
