"""P-tuning v1 (Liu et al. 2021, "GPT understands, too"): the encoder's input prompt `[P, d]` is the output of
a small trainable *prompt encoder* run over P learned input vectors, instead of a free matrix.

Two encoders (all shapes unbatched: the prompt is one sequence shared by every example):

  'lstm'  THUDM/P-tuning's (LAMA/p_tuning/prompt_encoder.py): embeddings [P, d] -> `lstm_layers` (2) layers of
          a bidirectional LSTM whose two directions are `hidden // 2` wide each (concatenated: [P, hidden]) ->
          Linear(hidden, hidden) -> ReLU -> Linear(hidden, d). THUDM fixes hidden = d (the default here);
          PEFT's LSTM variant with `encoder_hidden_size=h` is this encoder with hidden = 2h.
  'mlp'   PEFT's MLP variant (src/peft/tuners/p_tuning/model.py): embeddings [P, d] -> Linear(d, hidden) -> ReLU
          -> Linear(hidden, hidden) -> ReLU -> Linear(hidden, d).

Both references are PyTorch; the initial values follow PyTorch's defaults so a run starts where theirs does:
embeddings N(0, 1) (nn.Embedding; or any `jaxprompt.methods` initialiser), Linear kernels and biases
U(-1/sqrt(fan_in), 1/sqrt(fan_in)), LSTM weights U(-1/sqrt(h), 1/sqrt(h)) with h the per-direction width. PyTorch's
LSTM has two bias vectors per gate block (input and hidden) that are only ever summed; we keep their sum as one
vector and draw it as the sum of two such uniforms, so the forward function and its initial distribution match.
LSTM gate order is PyTorch's (input, forget, cell, output). Dropout `dropout` (THUDM's `lstm_dropout`, default
0) acts between LSTM layers only, as PyTorch's `nn.LSTM(dropout=...)`.

The encoder is a plain function of a parameter tree (no Flax module): it runs once per step inside `hooks()`,
the result feeds the existing `PromptInput` hook of prompt tuning, so combination modes and packing work
unchanged. It computes in `param_dtype` (float32 by default; it is tiny next to the network and an LSTM
recurrence in bfloat16 loses precision); the prompt is handed to the network in `dtype`, the model's.

After training, the encoder is not needed: `inference()` gives plain prompt tuning holding the computed
prompt, and `numpy_copy()` writes it as `prompt.npy`, so `--prompt_file`, eval and infer work unchanged.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from jaxprompt.errors import ConfigError
from jaxprompt.formats.keys import PROMPT_FILE, PROMPT_KEY
from jaxprompt.methods import initializers, registry
from jaxprompt.methods.base import Method, Params
from jaxprompt.methods.prompt_tuning import (
    COMBINATIONS,
    PromptInput,
    PromptTuning,
    peft_prompt_writer,
    write_prompt_file,
)
from jaxprompt.models.base import ModelConfig
from jaxprompt.models.hooks import Hooks
from jaxprompt.parallel import host

Array = jax.Array
ENCODERS = ('lstm', 'mlp')
# Logical axes: `prompt` / `prompt_embed` are the prompt rules' (replicated by default); `prompt_hidden` names
# the output columns of the encoder's inner kernels and has no rule, so it is replicated too unless a run adds
# one, e.g. ('prompt_hidden', 'model') to split a large LSTM column-wise (an inner kernel's input axis is left
# unnamed, so one array never names the same logical axis twice).
HIDDEN_AXIS = 'prompt_hidden'


@dataclasses.dataclass(frozen=True)
class _Leaf:
  """One parameter of the encoder: its shape, logical axes and PyTorch-default uniform bound (0 = special)."""
  shape: tuple[int, ...]
  axes: tuple[str | None, ...]
  bound: float = 0.0
  summed: bool = False  # an LSTM bias: the sum of two U(-bound, bound) draws (PyTorch's b_ih + b_hh)


def _dense(fan_in: int, fan_out: int, in_axis: str | None, out_axis: str) -> dict[str, _Leaf]:
  bound = 1.0 / math.sqrt(fan_in)
  return {'kernel': _Leaf((fan_in, fan_out), (in_axis, out_axis), bound), 'bias': _Leaf((fan_out,), (out_axis,), bound)}


@dataclasses.dataclass(frozen=True)
class PTuning(Method):
  """P-tuning v1: a `length`-row prompt produced by an LSTM or MLP prompt encoder (module docstring).

  Trainable tree: {'embedding': [P, d], 'lstm': {'layer_<i>': {'forward'|'backward': {'kernel_in' [in, 4h],
  'kernel_hidden' [h, 4h], 'bias' [4h]}}} (lstm only), 'mlp': {'dense_<j>': {'kernel', 'bias'}}}, with
  h = hidden // 2 and in = d for the first LSTM layer, hidden after it.
  """
  length: int
  embed_dim: int
  encoder: str = 'lstm'
  hidden: int | None = None  # None: embed_dim (THUDM's LSTM; PEFT's MLP default)
  lstm_layers: int = 2
  dropout: float = 0.0
  combine: str = 'prefix'
  eos_id: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  initializer: Callable[..., Array] | None = None  # of the input embeddings [P, d]; None: N(0, 1)

  def __post_init__(self):
    if self.encoder not in ENCODERS:
      raise ConfigError(f'P-tuning encoder must be one of {", ".join(ENCODERS)}, got {self.encoder!r}')
    if self.combine not in COMBINATIONS:
      raise ConfigError(f'unknown prompt combination {self.combine!r}; expected one of {", ".join(COMBINATIONS)}')
    if not isinstance(self.length, int) or self.length <= 0:
      raise ConfigError(f'PROMPT_LENGTH must be a positive integer, got {self.length!r}')
    if not isinstance(self.width, int) or self.width <= 0:
      raise ConfigError(f'P-tuning hidden size must be a positive integer, got {self.hidden!r}')
    if self.encoder == 'lstm':
      if self.width % 2:
        raise ConfigError(f'the bidirectional LSTM splits hidden={self.width} into two directions: it must be even')
      if not isinstance(self.lstm_layers, int) or self.lstm_layers < 1:
        raise ConfigError(f'lstm_layers must be a positive integer, got {self.lstm_layers!r}')
    if not 0.0 <= self.dropout < 1.0:
      raise ConfigError(f'P-tuning dropout must be in [0, 1), got {self.dropout!r}')

  @property
  def width(self) -> int:
    """The encoder's inner width (`hidden`, defaulting to the embedding size)."""
    return self.embed_dim if self.hidden is None else self.hidden

  # -- parameters -------------------------------------------------------------------------------------------
  def layout(self) -> dict[str, Any]:
    """The trainable tree's structure as `_Leaf`s (shape, logical axes, initial bound): the one description
    `init` and `abstract` share."""
    d, w, emb = self.embed_dim, self.width, 'prompt_embed'
    tree: dict[str, Any] = {'embedding': _Leaf((self.length, d), ('prompt', emb))}
    if self.encoder == 'lstm':
      h = w // 2
      bound = 1.0 / math.sqrt(h)
      lstm = {}
      for i in range(self.lstm_layers):
        fan_in, in_axis = (d, emb) if i == 0 else (w, None)
        direction = {
            'kernel_in': _Leaf((fan_in, 4 * h), (in_axis, HIDDEN_AXIS), bound), 'kernel_hidden': _Leaf(
                (h, 4 * h), (None, HIDDEN_AXIS), bound), 'bias': _Leaf((4 * h,), (HIDDEN_AXIS,), bound, summed=True)
        }
        lstm[f'layer_{i}'] = {'forward': direction, 'backward': dict(direction)}
      tree['lstm'] = lstm
      tree['mlp'] = {'dense_0': _dense(w, w, None, HIDDEN_AXIS), 'dense_1': _dense(w, d, None, emb)}
    else:
      tree['mlp'] = {
          'dense_0': _dense(d, w, emb, HIDDEN_AXIS), 'dense_1': _dense(w, w, None, HIDDEN_AXIS),
          'dense_2': _dense(w, d, None, emb)
      }
    return tree

  def init(self, rng: Array, frozen: Params) -> Params:
    """Initial trainable tree (PyTorch's default initial distributions; module docstring)."""
    leaves, treedef = jax.tree.flatten(self.layout(), is_leaf=lambda x: isinstance(x, _Leaf))
    keys = jax.random.split(rng, len(leaves))
    values = []
    for key, leaf in zip(keys, leaves):
      if leaf.bound == 0.0:  # the input embeddings
        init = self.initializer if self.initializer is not None else initializers.normal(1.0)
        embedding = None if self.initializer is None else frozen['token_embedder']['embedding']
        value = init(key, leaf.shape, embedding)
      elif leaf.summed:
        k1, k2 = jax.random.split(key)
        value = sum(jax.random.uniform(k, leaf.shape, jnp.float32, -leaf.bound, leaf.bound) for k in (k1, k2))
      else:
        value = jax.random.uniform(key, leaf.shape, jnp.float32, -leaf.bound, leaf.bound)
      value = jnp.asarray(value, self.param_dtype)
      if value.shape != leaf.shape:
        raise ConfigError(f'P-tuning initializer returned shape {value.shape}, expected {leaf.shape}')
      values.append(value)
    return jax.tree.unflatten(treedef, values)

  def abstract(self, network: Params) -> Params:
    del network
    dtype = jnp.dtype(self.param_dtype)
    return jax.tree.map(lambda leaf: nn.Partitioned(jax.ShapeDtypeStruct(leaf.shape, dtype), leaf.axes), self.layout(),
                        is_leaf=lambda x: isinstance(x, _Leaf))

  @property
  def packing_slots(self) -> int:
    return self.plain().packing_slots  # one slot per prompt row; prefix prompts only (same check)

  # -- the prompt -------------------------------------------------------------------------------------------
  def prompt(self, trainable: Params, *, deterministic: bool = True, rng: Array | None = None) -> Array:
    """The encoder's output: the prompt [P, d] in `param_dtype`."""
    x = jnp.asarray(trainable['embedding'], self.param_dtype)
    mlp = trainable['mlp']
    if self.encoder == 'lstm':
      for i in range(self.lstm_layers):
        if i and self.dropout > 0.0 and not deterministic:
          if rng is None:
            raise ConfigError('P-tuning dropout needs an rng when not deterministic')
          rng, key = jax.random.split(rng)
          keep = jax.random.bernoulli(key, 1.0 - self.dropout, x.shape)
          x = jnp.where(keep, x / (1.0 - self.dropout), 0.0).astype(x.dtype)
        layer = trainable['lstm'][f'layer_{i}']
        forward = _lstm_direction(layer['forward'], x)
        backward = _lstm_direction(layer['backward'], x[::-1])[::-1]  # reads the sequence right to left
        x = jnp.concatenate([forward, backward], axis=-1)  # [P, hidden]
      x = _linear(mlp['dense_1'], jax.nn.relu(_linear(mlp['dense_0'], x)))
    else:
      x = jax.nn.relu(_linear(mlp['dense_0'], x))
      x = _linear(mlp['dense_2'], jax.nn.relu(_linear(mlp['dense_1'], x)))
    return x

  def hooks(self, trainable: Params, *, deterministic: bool = True, rng: Array | None = None,
            task_ids: Array | None = None) -> Hooks:
    del task_ids
    prompt = self.prompt(trainable, deterministic=deterministic, rng=rng).astype(self.dtype)
    return Hooks(inputs=PromptInput(prompt, self.combine, self.eos_id))

  # -- after training ---------------------------------------------------------------------------------------
  def plain(self) -> PromptTuning:
    """Prompt tuning with this method's length, embedding, combination and dtypes (no encoder)."""
    return PromptTuning(length=self.length, embed_dim=self.embed_dim, combine=self.combine, eos_id=self.eos_id,
                        dtype=self.dtype, param_dtype=self.param_dtype)

  def inference(self, trainable: Params) -> tuple[Method, Params]:
    """(PromptTuning, {'prompt': [P, d]}): the computed prompt, deterministic (no dropout)."""
    return self.plain(), {PROMPT_KEY: self.prompt(trainable).astype(self.param_dtype)}

  def numpy_copy(self, trainable: Params) -> dict[str, np.ndarray]:
    """{'prompt.npy': float32 [P, d]}: the computed prompt, the same file prompt tuning writes."""
    local = jax.tree.map(host.host_value, trainable)  # gathers sharded leaves: every process calls this
    return {PROMPT_FILE: np.asarray(jax.device_get(self.prompt(local)), np.float32)}


def _linear(params: Mapping[str, Array], x: Array) -> Array:
  """x [..., in] -> [..., out]."""
  return x @ params['kernel'].astype(x.dtype) + params['bias'].astype(x.dtype)


def _lstm_direction(params: Mapping[str, Array], x: Array) -> Array:
  """One direction of one LSTM layer, left to right. x [P, in] -> hidden states [P, h] (zero initial state)."""
  h = params['kernel_hidden'].shape[0]
  # The input projection of every position is one matmul; only the recurrence is sequential.
  projected = x @ params['kernel_in'].astype(x.dtype) + params['bias'].astype(x.dtype)  # [P, 4h]
  kernel_hidden = params['kernel_hidden'].astype(x.dtype)

  def step(carry, gates_in):
    hidden, cell = carry
    gates = gates_in + hidden @ kernel_hidden
    i, f, g, o = jnp.split(gates, 4, axis=-1)  # PyTorch's gate order
    cell = jax.nn.sigmoid(f) * cell + jax.nn.sigmoid(i) * jnp.tanh(g)
    hidden = jax.nn.sigmoid(o) * jnp.tanh(cell)
    return (hidden, cell), hidden

  zeros = jnp.zeros((h,), x.dtype)
  _, outputs = jax.lax.scan(step, (zeros, zeros), projected)
  return outputs


# A run's config.gin naming P-tuning as its method (what tells a run apart when its orbax state is gone).
_CONFIG_GIN = re.compile(r'^\s*(METHOD|(jaxprompt\.)?train\.method)\s*=\s*@(jaxprompt\.methods\.)?p_tuning\b', re.M)


def trained_p_tuning(run: registry.TrainedRun) -> bool:
  """Whether a run's prompt.npy is P-tuning's computed prompt: its trainable tree holds the prompt encoder
  ('embedding' and 'mlp'); without the state, its config.gin names p_tuning."""
  if run.trainable:
    return {'embedding', 'mlp'} <= run.trainable
  return bool(_CONFIG_GIN.search(run.config_gin))


# P-tuning leaves prompt tuning's prompt.npy (read back as plain prompt tuning); only its PEFT type differs.
registry.register(
    registry.FileKind('p_tuning', PROMPT_FILE, PromptTuning.from_arrays, "P-tuning's computed prompt .npy",
                      suffixes=('.npy',), write=write_prompt_file, peft=peft_prompt_writer('P_TUNING'),
                      made_by=trained_p_tuning))


@gin.configurable(module='jaxprompt.methods')
def p_tuning(config: ModelConfig, eos_id: int = 1, *, length: int = 9, encoder: str = 'lstm', hidden: int | None = None,
             lstm_layers: int = 2, dropout: float = 0.0, combine: str = 'prefix',
             initializer: Callable[..., Array] | None = None) -> PTuning:
  """The method factory gin binds (`METHOD = @jaxprompt.methods.p_tuning`, methods/p_tuning.gin).

  length: prompt rows P (9: THUDM's LAMA template (3, 3, 3)). encoder: 'lstm' (THUDM) or 'mlp' (PEFT).
  hidden: the encoder's inner width (None: the model's embedding size). initializer: of the encoder's input
  embeddings, any `jaxprompt.methods` initialiser (None: N(0, 1)).
  """
  return PTuning(length=length, embed_dim=config.emb_dim, encoder=encoder, hidden=hidden, lstm_layers=lstm_layers,
                 dropout=dropout, combine=combine, eos_id=eos_id, dtype=config.dtype, param_dtype=config.param_dtype,
                 initializer=initializer)
