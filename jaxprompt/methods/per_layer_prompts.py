"""Per-layer prompts (google-research/prompt-tuning, `prompt_tuning/extended/train/per_layer.py`): a learned
`[P, d]` block per encoder layer that replaces, or is added to, that layer's *input* hidden states at the P
prompt positions. Attention is untouched (the prompt rows are projected to queries, keys and values by the
frozen weights like any position) and positions get the ordinary relative-position bias over the full length.

Which layers. In the reference every encoder layer is a `PromptEncoderLayer` that combines its own block into
its input, and the prompt positions themselves come from an input prompt in front of the embedded tokens. At
layer 0 the two coincide: with 'replace' the input prompt is overwritten before anything reads it, with 'add'
layer 0's block and the input prompt are only ever summed. So here the input prompt *is* layer 0's block (the
existing `PromptInput` hook, prefix combine) and the layer hook acts on encoder layers 1 .. L-1, each with its
own block: the same function as the reference with no dead or redundant parameters.

  trainable   {'prompt': [P, d], 'layers': [L-1, P, d]}   row i of 'layers' acts at encoder layer i + 1
  'replace'   x[:, :P] = layers[i]     (the reference's `replace_prompt`)
  'add'       x[:, :P] += layers[i]    (its `add_prompt`: learned deltas, Qin & Eisner 2021); all-zero blocks
                                       are exactly prompt tuning with the same input prompt

Decoder layers: not supported. The reference's `PromptDecoderLayer` would combine its block into the first P
*decoder* positions, but in T5's encoder-decoder those are the shifted targets (BOS and the first target
tokens), not prompt positions: a decoder input hook must keep the decoder length (targets are
position-aligned), so there is nowhere to put decoder prompt rows. `decoder=True` is a ConfigError.

Packing: not supported. Packed rows hold a prompt in front of every example, but `LayerHook.hidden_states`
sees no segment ids, so it cannot find those positions; `packing_slots` says so (set PACK=False).

The hook's data carries a leading `layers` axis of the full encoder depth L (the network slices it per layer,
also under `nn.scan`): `hooks()` puts a zero block in front for layer 0, where the hook leaves x unchanged.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxprompt.errors import ConfigError, PromptError
from jaxprompt.formats import npy_io
from jaxprompt.formats.keys import PROMPT_KEY
from jaxprompt.methods import registry
from jaxprompt.methods.base import Method, Params
from jaxprompt.methods.prompt_tuning import PromptTuning, uniform_init
from jaxprompt.models.base import ModelConfig
from jaxprompt.models.hooks import Hooks, KVPrefix, Stack
from jaxprompt.parallel import host

Array = jax.Array
MODES = ('replace', 'add')
LAYERS_KEY = 'layers'
LAYER_AXES = ('layers', 'prompt', 'prompt_embed')
NUMPY_FILE = 'per_layer_prompts.npz'
FILE_KIND = 'per_layer_prompts'  # its marker in the registry (`registry.marker`)
MODE_KEY = 'mode'  # the file's `mode/<replace|add>` marker, int8 [0] (a string array would need a pickle)


class LayerPrompts(struct.PyTreeNode):
  """The encoder `LayerHook`: puts one `[P, e]` block into a layer's input hidden states at positions 0..P-1.

  `blocks` is [L, P, e] as given to the network (row 0 a placeholder: layer 0 is left alone, its prompt is the
  input prompt); the network hands each layer its slice [P, e] and the layer index (a Python int unrolled, a
  traced int32 under `nn.scan`).
  """
  blocks: Array
  mode: str = struct.field(pytree_node=False, default='replace')

  def attention_prefix(self, layer: int | Array, kind: str) -> KVPrefix | None:
    del layer, kind
    return None  # attention is untouched: the prompt rows are ordinary positions

  def hidden_states(self, x: Array, layer: int | Array, stack: Stack) -> Array:
    """x [b, l, e] -> [b, l, e] with rows 0..P-1 replaced by / added to this layer's block (layers >= 1)."""
    if stack != 'encoder' or (isinstance(layer, int) and layer == 0):
      return x
    block = self.blocks.astype(x.dtype)  # [P, e]
    plen = block.shape[0]
    if x.shape[1] < plen:
      raise ConfigError(f'per-layer prompts of {plen} rows need at least {plen} encoder positions, got {x.shape[1]}')
    head = jnp.broadcast_to(block, (x.shape[0],) + block.shape)
    if self.mode == 'add':
      head = x[:, :plen] + head
    combined = jnp.concatenate([head, x[:, plen:]], axis=1)
    if isinstance(layer, int):
      return combined
    return jnp.where(layer > 0, combined, x)  # under scan the index is traced: layer 0 keeps its input


@dataclasses.dataclass(frozen=True)
class PerLayerPrompts(Method):
  """Per-layer prompts on a T5 encoder of `num_layers` layers (module docstring).

  `initializer(rng, shape, embedding)` initialises the input prompt (layer 0), any `jaxprompt.methods`
  initialiser (None: U(-0.5, 0.5), as prompt tuning). `layer_initializer` initialises each deeper block with its
  own rng; None means zeros for 'add' (training starts at plain prompt tuning) and the input prompt's
  initialiser for 'replace' (the reference builds every layer's prompt with the same factory).
  """
  length: int
  embed_dim: int
  num_layers: int
  mode: str = 'replace'
  eos_id: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  initializer: Callable[..., Array] | None = None
  layer_initializer: Callable[..., Array] | None = None

  def __post_init__(self):
    if self.mode not in MODES:
      raise ConfigError(f'per-layer prompt mode must be one of {", ".join(MODES)}, got {self.mode!r}')
    if not isinstance(self.num_layers, int) or self.num_layers < 1:
      raise ConfigError(f'per-layer prompts need an encoder with at least one layer, got {self.num_layers!r}')
    self.input_prompt()  # validates the length

  def input_prompt(self) -> PromptTuning:
    """Layer 0's prompt: plain prefix prompt tuning (its init, checks and input hook are reused as they are)."""
    return PromptTuning(length=self.length, embed_dim=self.embed_dim, combine='prefix', eos_id=self.eos_id,
                        dtype=self.dtype, param_dtype=self.param_dtype, initializer=self.initializer)

  @property
  def layers_shape(self) -> tuple[int, int, int]:
    return (self.num_layers - 1, self.length, self.embed_dim)

  def init(self, rng: Array, frozen: Params) -> Params:
    """{'prompt': [P, d], 'layers': [L-1, P, d]}."""
    prompt_rng, layers_rng = jax.random.split(rng)
    trainable = dict(self.input_prompt().init(prompt_rng, frozen))
    init = self.layer_initializer
    if init is None and self.mode == 'add':
      trainable[LAYERS_KEY] = jnp.zeros(self.layers_shape, self.param_dtype)
      return trainable
    init = self.initializer if init is None else init
    shape = self.layers_shape[1:]
    if init is None:  # prompt tuning's default, U(-0.5, 0.5), for every block
      value = uniform_init(0.5)(layers_rng, self.layers_shape, self.param_dtype)
    else:
      embedding = frozen['token_embedder']['embedding']
      blocks = [
          jnp.asarray(init(key, shape, embedding), self.param_dtype)
          for key in jax.random.split(layers_rng, self.num_layers - 1)
      ]
      value = jnp.stack(blocks) if blocks else jnp.zeros(self.layers_shape, self.param_dtype)
    value = jnp.asarray(value, self.param_dtype)
    if value.shape != self.layers_shape:
      raise ConfigError(f'per-layer prompt initializer gave {value.shape}, expected {self.layers_shape}')
    trainable[LAYERS_KEY] = value
    return trainable

  def abstract(self, network: Params) -> Params:
    tree = dict(self.input_prompt().abstract(network))
    tree[LAYERS_KEY] = nn.Partitioned(jax.ShapeDtypeStruct(self.layers_shape, jnp.dtype(self.param_dtype)), LAYER_AXES)
    return tree

  @property
  def packing_slots(self) -> int:
    raise ConfigError('per-layer prompts act on the first PROMPT_LENGTH positions of each row; packed rows put '
                      "a prompt in front of every example, which the layer hook cannot locate: set PACK=False")

  def hooks(self, trainable: Params, *, deterministic: bool = True, rng: Array | None = None,
            task_ids: Array | None = None) -> Hooks:
    del deterministic, rng, task_ids
    inputs = self.input_prompt().hooks({PROMPT_KEY: trainable[PROMPT_KEY]}).inputs
    deeper = jnp.asarray(trainable[LAYERS_KEY], self.dtype)
    # Layer 0's slot: a placeholder the hook never reads (its prompt is the input prompt), so that every hook
    # leaf has the encoder's depth as its leading axis, as the network requires.
    blocks = jnp.concatenate([jnp.zeros((1,) + deeper.shape[1:], deeper.dtype), deeper], axis=0)
    return Hooks(inputs=inputs, encoder_layers=LayerPrompts(blocks, self.mode))

  def numpy_copy(self, trainable: Params) -> dict[str, dict[str, np.ndarray]]:
    """{'per_layer_prompts.npz': {'prompt': float32 [P, d], 'layers': float32 [L-1, P, d], 'mode/<mode>'}}."""
    arrays = {k: np.asarray(host.host_value(trainable[k]), np.float32) for k in (PROMPT_KEY, LAYERS_KEY)}
    return {NUMPY_FILE: {**arrays, f'{MODE_KEY}/{self.mode}': np.zeros((0,), np.int8), **registry.marker(FILE_KIND)}}

  @classmethod
  def from_arrays(cls, arrays: registry.Arrays,
                  context: registry.ReadContext) -> tuple[PerLayerPrompts, dict[str, np.ndarray]]:
    """A per-layer prompts file's arrays as (the method it was trained with, for `context.config`; its trainable
    tree). The file's `mode/<mode>` marker (written by `numpy_copy`) says 'replace' or 'add'."""
    path, config, arrays = context.source, context.config, registry.unmarked(arrays)
    modes = [k.split('/', 1)[1] for k in arrays if k.startswith(MODE_KEY + '/')]
    if len(modes) != 1 or modes[0] not in MODES:
      raise PromptError(f'per-layer prompts file {path}: needs exactly one {MODE_KEY}/<mode> marker with mode one '
                        f'of {MODES}; found {[f"{MODE_KEY}/{m}" for m in modes] or "none"}')
    arrays = _check({k: v for k, v in arrays.items() if not k.startswith(MODE_KEY + '/')}, config, None, path)
    method = cls(length=arrays[PROMPT_KEY].shape[0], embed_dim=config.emb_dim, num_layers=config.num_encoder_layers,
                 mode=modes[0], eos_id=context.eos_id, dtype=config.dtype)
    return method, arrays


def expected_shapes(config: ModelConfig, length: int) -> dict[str, tuple[int, ...]]:
  """The arrays of a per-layer prompts file for `config` and a `length`-row prompt."""
  return {PROMPT_KEY: (length, config.emb_dim), LAYERS_KEY: (config.num_encoder_layers - 1, length, config.emb_dim)}


def _check(arrays: Mapping[str, Any], config: ModelConfig, length: int | None, path: str) -> dict[str, np.ndarray]:
  """The arrays as float32, or one PromptError naming every mismatch against `config`."""
  if length is None:
    prompt = arrays.get(PROMPT_KEY)
    length = int(np.shape(prompt)[0]) if prompt is not None and np.ndim(prompt) == 2 else -1
  want = expected_shapes(config, length)
  got = {k: tuple(np.shape(v)) for k, v in arrays.items()}
  if got != want or length <= 0:
    raise PromptError(f'per-layer prompts file {path} holds {got or "nothing"}, but a {config.num_encoder_layers}-'
                      f'layer encoder with embed {config.emb_dim} and prompt length {length} needs {want} '
                      f"('prompt' = layer 0's input prompt, 'layers' = encoder layers 1..L-1)")
  out = {k: np.asarray(v, np.float32) for k, v in arrays.items()}
  bad = [k for k, v in out.items() if not np.isfinite(v).all()]
  if bad:
    raise PromptError(f'per-layer prompts file {path}: {", ".join(bad)} hold non-finite values (NaN/inf)')
  return out


def read_per_layer_file(path: str | os.PathLike, config: ModelConfig, *,
                        eos_id: int = 1) -> tuple[PerLayerPrompts, dict[str, np.ndarray]]:
  """A per-layer prompts file as (the method it was trained with, for `config`; its trainable tree)."""
  path = os.fspath(path)
  arrays = npy_io.read_npz(path, what='per-layer prompts file')
  return PerLayerPrompts.from_arrays(arrays, registry.ReadContext(config, eos_id=eos_id, source=path))


registry.register(
    registry.FileKind(
        FILE_KIND, NUMPY_FILE, PerLayerPrompts.from_arrays, 'a per_layer_prompts .npz',
        holds=lambda arrays: np.ndim(arrays.get(LAYERS_KEY)) == 3 or any(k.startswith(MODE_KEY + '/') for k in arrays),
        peft='PEFT has no per-layer prompt type (its prompt-learning adapters are an input prompt or past '
        'keys/values); use --format file'))


@gin.configurable(module='jaxprompt.methods')
def per_layer_prompts(config: ModelConfig, eos_id: int = 1, *, length: int = 100, mode: str = 'replace',
                      initializer: Callable[..., Array] | None = None,
                      layer_initializer: Callable[..., Array] | None = None, decoder: bool = False) -> PerLayerPrompts:
  """The method factory gin binds (`METHOD = @jaxprompt.methods.per_layer_prompts`, methods/per_layer_prompts.gin).

  length: prompt rows P (every encoder layer's block). mode: 'replace' or 'add'. initializer: the input
  prompt's [PROMPT_INIT] (None: U(-0.5, 0.5)); layer_initializer: the deeper blocks' (see PerLayerPrompts).
  decoder: per-layer prompts on the decoder are not supported (module docstring) and raise a ConfigError.
  """
  if decoder:
    raise ConfigError('per-layer prompts act on encoder layers only: T5 decoder positions are the shifted targets, '
                      'not prompt positions, and a decoder input hook cannot add positions (decoder=False)')
  return PerLayerPrompts(length=length, embed_dim=config.emb_dim, num_layers=config.num_encoder_layers, mode=mode,
                         eos_id=eos_id, dtype=config.dtype, param_dtype=config.param_dtype, initializer=initializer,
                         layer_initializer=layer_initializer)
