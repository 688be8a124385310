"""Per-layer key/value prefixes for T5's three attention kinds: the network hook and the prefix file format.

The hook (`PrefixRows`) holds, for each attention kind it acts on, key and value rows of shape
`[layers, P, heads, head_dim]` (already projected: they bypass the frozen key/value kernels). The network slices
the leading `layers` axis and asks each layer for its prefix; every prefix row is always attended (mask all
True: prefix positions are never masked), and its relative-position treatment is the hook's `relpos`
(`jaxprompt.models.hooks.RELPOS_MODES`).

Prefix file format (written by `jaxprompt.methods.prefix_tuning.write_prefix_file`, checkpoints' `prefix.npz`):

  .npz (numpy, no pickles)
    <kind>/key, <kind>/value   float32 [layers, P, heads, head_dim], for each kind present, kind one of
                               encoder_self (layers = encoder layers), decoder_self, cross (decoder layers)
    relpos/<mode>              int8 [0], exactly one: mode 'positions' or 'none' (a marker: the key carries it,
                               since a string array would need a pickle)
    method/prefix              int8 [0], the method registry's marker (`registry.marker`; files written before
                               it existed are recognised by their keys)
  .safetensors
    the same <kind>/key and <kind>/value tensors; metadata {'relpos': <mode>, 'layout': LAYOUT, 'method': 'prefix'}

Every kind present has both tensors, and all share P. Reading checks each tensor against the model config
(layers, heads, head_dim) and raises one `PromptError` naming the file, the key, the shape found and the shape
expected. Reading never unpickles (`npy_io.read_npz` refuses object arrays; safetensors has no pickles).
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxprompt.errors import PromptError
from jaxprompt.formats import npy_io
from jaxprompt.methods import registry
from jaxprompt.models.base import ModelConfig
from jaxprompt.models.hooks import ATTENTION_KINDS, RELPOS_MODES, Hooks, KVPrefix, Stack

Array = jax.Array
Rows = Mapping[str, tuple[Array, Array]]  # kind -> (key, value), each [layers, P, heads, head_dim]

ENCODER_KINDS = ('encoder_self',)
DECODER_KINDS = ('decoder_self', 'cross')
ROW_AXES = ('layers', 'prompt', 'heads', 'kv')  # logical axes of a [layers, P, heads, head_dim] row tensor
LAYOUT = 'layers,prefix,heads,head_dim'
RELPOS_KEY = 'relpos'
LAYOUT_KEY = 'layout'
_TENSOR_NAMES = {(kind, part) for kind in ATTENTION_KINDS for part in ('key', 'value')}
WHAT = 'prefix file'
FILE_KIND = 'prefix'  # the registry's name for a prefix file (prefix tuning and P-tuning v2 write one)


def stack_of(kind: str) -> Stack:
  """The stack whose layers hold attention `kind`: cross-attention lives in the decoder."""
  return 'encoder' if kind in ENCODER_KINDS else 'decoder'


def num_layers(config: ModelConfig, kind: str) -> int:
  """Depth of the stack holding attention `kind`."""
  return config.num_encoder_layers if stack_of(kind) == 'encoder' else config.num_decoder_layers


class PrefixRows(struct.PyTreeNode):
  """A `LayerHook`: each kind's K/V rows, `keys[kind]` / `values[kind]` [layers, P, h, d] (the network hands a
  layer its slice [P, h, d]). Kinds absent from `keys` get no prefix; hidden states pass through unchanged.

  Per-example rows (a mixed-task batch): keys / values [layers, b, P, h, d] with `masks[kind]` [layers, b, P]
  (False = a row's unused slot: rows with shorter prefixes are right-aligned in P, so with relpos 'positions'
  each one sits at the distances it has alone).
  """
  keys: dict
  values: dict
  relpos: str = struct.field(pytree_node=False, default='positions')
  masks: dict | None = None

  def attention_prefix(self, layer: int | Array, kind: str) -> KVPrefix | None:
    """This layer's rows as a KVPrefix: batch 1 (`[1, P, h, d]`, shared by every example, beam and candidate),
    or the batch's own rows `[b, P, h, d]` with their masks."""
    del layer  # already sliced by the network
    if kind not in self.keys:
      return None
    key, value = self.keys[kind], self.values[kind]
    if self.masks is not None:
      return KVPrefix(key, value, self.masks[kind], self.relpos)
    mask = jnp.ones((1, key.shape[0]), bool)  # prefix positions are never masked
    return KVPrefix(key[None], value[None], mask, self.relpos)

  def hidden_states(self, x: Array, layer: int | Array, stack: Stack) -> Array:
    del layer, stack
    return x


def prefix_hooks(rows: Rows, relpos: str) -> Hooks:
  """Hooks putting `rows` ({kind: (key, value)}) into their stacks' attentions; a stack with none gets None."""

  def hook(kinds: tuple[str, ...]) -> PrefixRows | None:
    present = [k for k in kinds if k in rows]
    if not present:
      return None
    return PrefixRows({k: rows[k][0] for k in present}, {k: rows[k][1] for k in present}, relpos)

  return Hooks(encoder_layers=hook(ENCODER_KINDS), decoder_layers=hook(DECODER_KINDS))


# ----------------------------------------------------------------------------------------- the file format


def file_arrays(rows: Rows, relpos: str) -> dict[str, np.ndarray]:
  """The named arrays of a prefix .npz: float32 `<kind>/key|value` plus the `relpos/<mode>` and method markers."""
  if relpos not in RELPOS_MODES:
    raise PromptError(f'relpos must be one of {RELPOS_MODES}, got {relpos!r}')
  out = {}
  for kind in ATTENTION_KINDS:
    if kind in rows:
      out[f'{kind}/key'] = np.asarray(rows[kind][0], np.float32)
      out[f'{kind}/value'] = np.asarray(rows[kind][1], np.float32)
  out[f'{RELPOS_KEY}/{relpos}'] = np.zeros((0,), np.int8)
  return {**out, **registry.marker(FILE_KIND)}


def file_rows(arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str]:
  """A prefix file's arrays as ({kind: (key, value)}, relpos), as they are (`check_prefix` checks them)."""
  relpos = next(k.split('/', 1)[1] for k in arrays if k.startswith(RELPOS_KEY + '/'))
  return {k[:-len('/key')]: (v, arrays[k[:-len('key')] + 'value']) for k, v in arrays.items() if k.endswith('/key')
         }, relpos


def save_prefix(path: str | os.PathLike, rows: Rows, relpos: str) -> str:
  """Writes `rows` as a prefix file; `.safetensors` by extension, else `.npz`. Returns the path."""
  path = os.fspath(path)
  arrays = file_arrays(rows, relpos)
  if not path.endswith('.safetensors'):
    return npy_io.write_npz(arrays, path, what=WHAT)
  tensors = {k: np.ascontiguousarray(v) for k, v in arrays.items() if k.partition('/')[::2] in _TENSOR_NAMES}
  try:
    if os.path.dirname(path):
      os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(tensors, path, metadata={RELPOS_KEY: relpos, LAYOUT_KEY: LAYOUT, registry.MARKER_KEY: FILE_KIND})
  except Exception as e:  # OSError, or safetensors refusing a tensor
    raise PromptError(f'cannot write {WHAT} {path}: {e}') from e
  return path


def write_file(arrays: Mapping[str, np.ndarray], path: str) -> str:
  """Writes a prefix file's arrays to `path` (`.safetensors` by extension, else `.npz`); returns the path."""
  return save_prefix(path, *file_rows(arrays))


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  """The tensors of a .safetensors prefix file, with its relpos metadata turned into the npz marker key."""
  if not os.path.exists(path):
    raise PromptError(f'{WHAT} {path} does not exist')
  try:
    with safe_open(path, framework='np') as f:
      metadata = f.metadata() or {}
      arrays = {k: f.get_tensor(k) for k in f.keys()}
  except Exception as e:  # not a safetensors file, or damaged
    raise PromptError(f'cannot load {WHAT} {path} as .safetensors ({e})') from e
  if RELPOS_KEY not in metadata:
    raise PromptError(f"{WHAT} {path}: its metadata has no '{RELPOS_KEY}' entry (expected one of {RELPOS_MODES})")
  arrays[f'{RELPOS_KEY}/{metadata[RELPOS_KEY]}'] = np.zeros((0,), np.int8)
  return arrays


def load_prefix(path: str | os.PathLike, config: ModelConfig) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str]:
  """Reads and checks a prefix file against `config`: ({kind: (key, value)} float32 [layers, P, h, d], relpos).

  The format is chosen by the `.safetensors` extension, else `.npz`. Every problem is one PromptError naming the
  file and the offending key.
  """
  path = os.fspath(path)
  arrays = _read_safetensors(path) if path.endswith('.safetensors') else npy_io.read_npz(path, what=WHAT)
  return check_prefix(arrays, config, path)


def holds_prefix(arrays: Mapping[str, np.ndarray]) -> bool:
  """True for a prefix file's arrays: a relpos marker or a '<kind>/key' / '<kind>/value' tensor."""
  return any(k.startswith(RELPOS_KEY + '/') or k.partition('/')[::2] in _TENSOR_NAMES for k in arrays)


def check_prefix(arrays: Mapping[str, np.ndarray], config: ModelConfig,
                 path: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str]:
  """A prefix file's named arrays checked against `config` (`load_prefix`); `path` names the file in errors."""
  # The safetensors form's 'layout' metadata entry arrives as a 'layout/<axes>' marker: informational only; the
  # method marker says what `holds_prefix` says.
  arrays = {k: v for k, v in registry.unmarked(arrays).items() if not k.startswith(LAYOUT_KEY + '/')}
  modes = [k.split('/', 1)[1] for k in arrays if k.startswith(RELPOS_KEY + '/')]
  expected_keys = (f'<kind>/key and <kind>/value for kinds {", ".join(ATTENTION_KINDS)}, and one '
                   f'{RELPOS_KEY}/<mode> for modes {", ".join(RELPOS_MODES)}')
  if len(modes) != 1 or modes[0] not in RELPOS_MODES:
    raise PromptError(f'{WHAT} {path}: needs exactly one relpos marker {RELPOS_KEY}/<mode> with mode one of '
                      f'{RELPOS_MODES}; found {[f"{RELPOS_KEY}/{m}" for m in modes] or "none"}')
  tensors = {k: v for k, v in arrays.items() if not k.startswith(RELPOS_KEY + '/')}
  for name in sorted(tensors):
    kind, _, part = name.partition('/')
    if kind not in ATTENTION_KINDS or part not in ('key', 'value'):
      raise PromptError(f'{WHAT} {path}: unknown key {name!r}; expected {expected_keys}')
  kinds = [k for k in ATTENTION_KINDS if f'{k}/key' in tensors or f'{k}/value' in tensors]
  if not kinds:
    raise PromptError(f'{WHAT} {path}: holds no prefix tensors; expected {expected_keys}')
  rows, length = {}, None
  for kind in kinds:
    pair = []
    for part in ('key', 'value'):
      name = f'{kind}/{part}'
      if name not in tensors:
        raise PromptError(f'{WHAT} {path}: missing key {name!r} (every kind present needs both {kind}/key and '
                          f'{kind}/value)')
      array = tensors[name]
      if not np.issubdtype(array.dtype, np.floating):
        raise PromptError(f'{WHAT} {path}: key {name!r} has dtype {array.dtype}; expected a float array')
      want = (num_layers(config, kind), length, config.num_heads, config.head_dim)
      fits = array.ndim == 4 and all(w is None or s == w for s, w in zip(array.shape, want))
      if not fits:
        shown = '(' + ', '.join('P' if w is None else str(w) for w in want) + ')'
        where = '' if length is None else f' (P = {length} from the tensors before it)'
        raise PromptError(f'{WHAT} {path}: key {name!r} has shape {tuple(array.shape)} but the model needs '
                          f'{shown} [layers, P, heads, head_dim]{where}')
      if not np.isfinite(array).all():
        raise PromptError(f'{WHAT} {path}: key {name!r} holds {int((~np.isfinite(array)).sum())} non-finite values')
      length = array.shape[1]
      pair.append(np.asarray(array, np.float32))
    rows[kind] = (pair[0], pair[1])
  return rows, modes[0]
