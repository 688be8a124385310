"""Reader for T5X "classic" checkpoints: a flax-msgpack `checkpoint` file plus one zarr folder per big array.

Layout written by t5x's `Checkpointer` (checkpoint version 3):
  {'version': 3, 'optimizer': {'target': <params>, 'state': <optimizer state>}}
Each leaf is either an inline array (msgpack ext type 1: packed (shape, dtype name, C-order bytes); arrays
over 1 GiB split by flax into `{'__msgpack_chunked_array__': True, 'shape': {...}, 'chunks': {...}}`) or a
tensorstore spec dict `{'driver': 'zarr', 'kvstore': {'driver': 'file'|'gfile'|'gcs', 'path': <relative>},
'metadata': {'shape': ...}}` whose path is relative to the checkpoint directory. The single-file variant
(every array inline) is the same msgpack without zarr folders.
"""
from __future__ import annotations

from typing import Any

import ml_dtypes
import msgpack
import numpy as np
import tensorstore as ts

from jaxprompt.checkpoints import common
from jaxprompt.errors import CheckpointError

_NDARRAY, _COMPLEX, _SCALAR = 1, 2, 3  # flax's msgpack ext type codes
_CHUNKED = '__msgpack_chunked_array__'


class _Packed:
  """An undecoded msgpack ext value: only target leaves ever get decoded, never optimizer state."""

  __slots__ = ('code', 'data')

  def __init__(self, code: int, data: bytes):
    self.code, self.data = code, data


def parse_msgpack(data: bytes, where: str) -> dict[str, Any]:
  """Decodes the top-level map of a flax msgpack file (ext values stay packed)."""
  try:
    contents = msgpack.unpackb(data, ext_hook=_Packed, raw=False, strict_map_key=False)
  except Exception as e:  # msgpack raises ExtraData, FormatError, StackError, ValueError...
    raise CheckpointError(f'{where}: not a readable msgpack checkpoint ({type(e).__name__}: {e})') from e
  if not isinstance(contents, dict):
    raise CheckpointError(f'{where}: not a T5X checkpoint (top level is {type(contents).__name__}, not a map)')
  return contents


def target_tree(contents: dict[str, Any], where: str) -> dict[str, Any]:
  """The `target` (parameter) subtree of a decoded checkpoint, any T5X checkpoint version >= 0."""
  version = contents.get('version', 0)
  state = contents.get('optimizer', contents) if version else contents
  if not isinstance(state, dict) or not isinstance(state.get('target'), dict):
    keys = sorted(map(str, state)) if isinstance(state, dict) else []
    raise CheckpointError(f"{where}: no 'target' parameter tree in this msgpack (version {version}, "
                          f'keys {keys})')
  return state['target']


def _decode_ndarray(name: str, packed: _Packed, where: str) -> np.ndarray:
  try:
    shape, dtype_name, buffer = msgpack.unpackb(packed.data, raw=False)
    dtype = ml_dtypes.bfloat16 if dtype_name == 'bfloat16' else np.dtype(dtype_name)
    array = np.frombuffer(buffer, dtype=dtype).reshape(shape)
  except Exception as e:
    raise CheckpointError(f"parameter '{name}': damaged inline array in {where} ({e})") from e
  return array[()] if packed.code == _SCALAR else array


def _decode_inline(name: str, value: Any, where: str) -> np.ndarray:
  if isinstance(value, _Packed):
    if value.code in (_NDARRAY, _SCALAR):
      return _decode_ndarray(name, value, where)
    if value.code == _COMPLEX:
      real, imag = msgpack.unpackb(value.data)
      return np.asarray(complex(real, imag))
    raise CheckpointError(f"parameter '{name}': unknown msgpack ext type {value.code} in {where}")
  if isinstance(value, dict):  # flax-chunked array: flat pieces keyed '0', '1', ...
    try:
      shape = [value['shape'][str(i)] for i in range(len(value['shape']))]
      pieces = [_decode_inline(name, value['chunks'][str(i)], where) for i in range(len(value['chunks']))]
      return np.concatenate(pieces).reshape(shape)
    except (KeyError, ValueError) as e:
      raise CheckpointError(f"parameter '{name}': damaged chunked array in {where} ({e})") from e
  return np.asarray(value)  # python scalars


def _is_ts_spec(value: Any) -> bool:
  return isinstance(value, dict) and 'driver' in value and ('kvstore' in value or 'path' in value)


def spec_source(name: str, stored: dict[str, Any], ckpt_dir: str,
                context: ts.Context | None = None) -> common.TensorStoreSource:
  """Source for a stored tensorstore spec, its relative path resolved against `ckpt_dir` (local or gs://).

  The stored kvstore driver (`file`, `gfile`, or `gcs` with t5x's dummy bucket) only tells how the writer
  reached the folder; the folder is always taken relative to the checkpoint, as t5x does on restore.
  """
  kvstore = stored.get('kvstore')
  relative = kvstore.get('path') if isinstance(kvstore, dict) else None
  relative = relative or stored.get('path')  # tensorstore < 0.1.14 put the path at the top level
  metadata = stored.get('metadata') or {}
  if not relative or 'shape' not in metadata:
    raise CheckpointError(f"parameter '{name}': unusable tensorstore spec in {ckpt_dir}: {stored}")
  if stored.get('dtype') == 'uint16' or metadata.get('dtype') == '<u2':
    raise CheckpointError(f"parameter '{name}' in {ckpt_dir} is stored as uint16 (bfloat16 of T5X checkpoint "
                          'version < 3); re-save it with a recent t5x')
  folder = common.child_kvstore_spec(common.kvstore_spec(ckpt_dir), relative)
  spec = {'driver': stored['driver'], 'kvstore': folder}
  where = f"{ckpt_dir.rstrip('/')}/{relative.strip('/')}"
  return common.TensorStoreSource(name, spec, where, declared_shape=metadata['shape'], context=context)


def target_sources(target: dict[str, Any], ckpt_dir: str, where: str,
                   context: ts.Context | None = None) -> dict[str, common.ArraySource]:
  """Flat {'a/b/c': source} for a decoded `target` tree (`where` names the msgpack file in errors)."""
  sources: dict[str, common.ArraySource] = {}

  def visit(node: dict[str, Any], prefix: str) -> None:
    for key, value in node.items():
      name = f'{prefix}{key}'
      if value is None:  # flax writes None for empty leaves; there is nothing to load
        continue
      if _is_ts_spec(value):
        sources[name] = spec_source(name, value, ckpt_dir, context)
      elif isinstance(value, dict) and _CHUNKED not in value:
        visit(value, name + '/')
      else:
        sources[name] = common.InlineSource(name, _decode_inline(name, value, where), where)

  visit(target, '')
  if not sources:
    raise CheckpointError(f"{where}: the 'target' parameter tree is empty")
  return sources


def read_sources(msgpack_path: str, context: ts.Context | None = None) -> dict[str, common.ArraySource]:
  """Sources for the parameters of a classic checkpoint file (`<ckpt>/checkpoint`) or single msgpack file."""
  path = common.as_path(msgpack_path)
  try:
    data = path.read_bytes()
  except Exception as e:
    raise CheckpointError(f'{msgpack_path}: cannot read checkpoint file ({e})') from e
  target = target_tree(parse_msgpack(data, msgpack_path), msgpack_path)
  return target_sources(target, str(path.parent), msgpack_path, context)
