"""Writes a parameter tree as a T5X checkpoint that T5X (and `load_t5x_checkpoint`) can read.

Layouts (the two T5X itself produces without Orbax):
  'classic'   MODEL_DIR/checkpoint_<step>/checkpoint (flax msgpack) + one zarr v2 folder per array, named by
              its dotted path (`target.encoder.layers_0.mlp.wi_0.kernel/`), gzip chunks, as t5x's
              `Checkpointer` writes them; the msgpack holds a tensorstore spec in place of each array.
  'msgpack'   one msgpack file with every array inline (T5X's single-file test checkpoints). Named
              `MODEL_DIR/checkpoint_<step>/checkpoint`, it is also a classic checkpoint dir whose arrays are all
              inline, as T5X stores the arrays it does not partition (no zarr folders, no dot-files).
The msgpack content is `{'version': 3, 'optimizer': {'target': <params>, 'state': {'step': int32 []}}}`: the
parameters plus a minimal optimizer state (no per-parameter moments: a restore into a T5X optimizer must
start its moments from scratch, e.g. `RestoreCheckpointConfig(fallback_to_scratch=True)`).
"""
from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorstore as ts
from flax import serialization

from jaxprompt.checkpoints import common
from jaxprompt.errors import CheckpointError

VERSION = 3  # T5X checkpoint version: bfloat16 stored natively in tensorstore
LAYOUTS = ('classic', 'msgpack')
# t5x caps zarr chunks at 64 MiB; smaller arrays are one chunk.
_CHUNK_BYTES = 64 * 1024 * 1024
_GZIP = {'id': 'gzip', 'level': 1}


def chunk_shape(shape: tuple[int, ...], itemsize: int, max_bytes: int = _CHUNK_BYTES) -> list[int]:
  """A chunk that tiles `shape` exactly with at most `max_bytes`: t5x's greedy rule, which repeatedly
  lowers the currently largest chunk dimension to its next smaller divisor of the array dimension."""
  chunk = list(shape) or []
  target = max(1, max_bytes // max(itemsize, 1))

  def size() -> int:
    return int(np.prod(chunk)) if chunk else 1

  while size() > target:
    dim = max(range(len(chunk)), key=lambda i: chunk[i])
    divisors = [d for d in range(chunk[dim] - 1, 0, -1) if shape[dim] % d == 0]
    chunk[dim] = divisors[0] if divisors else 1
  return chunk


def _dtype_name(array: np.ndarray) -> str:
  return 'bfloat16' if array.dtype.name == 'bfloat16' else np.dtype(array.dtype).name


def _host_arrays(params: Mapping[str, Any], dtype: Any) -> dict[str, np.ndarray]:
  """Flat {'a/b': numpy array}, floating arrays cast to `dtype` if given."""
  flat = common.flatten_params(params)
  if not flat:
    raise CheckpointError('cannot write a T5X checkpoint of an empty parameter tree')
  out = {}
  for name, value in flat.items():
    array = np.asarray(value)
    floating = np.issubdtype(array.dtype, np.floating) or array.dtype.name == 'bfloat16'
    if dtype is not None and floating:
      array = array.astype(dtype)
    if array.dtype == object:
      raise CheckpointError(f"parameter '{name}' is not a numeric array (got {type(value).__name__})")
    out[name] = array
  return out


def _write_zarr(array: np.ndarray, ckpt_dir: str, relative: str) -> dict[str, Any]:
  """Writes one array as a zarr folder under `ckpt_dir`; returns the relative spec the msgpack stores."""
  metadata = {
      'chunks': chunk_shape(array.shape, array.dtype.itemsize), 'compressor': dict(_GZIP), 'shape': list(array.shape)
  }
  spec = {
      'driver': 'zarr', 'dtype': _dtype_name(array),
      'kvstore': common.child_kvstore_spec(common.kvstore_spec(ckpt_dir),
                                           relative), 'metadata': dict(metadata, dimension_separator='.')
  }
  try:
    store = ts.open(spec, create=True, delete_existing=True).result()
    store.write(array).result()
  except Exception as e:  # tensorstore raises ValueError / RuntimeError for unwritable paths
    raise CheckpointError(f'cannot write {ckpt_dir}/{relative}: {common.short_error(e)}') from e
  return {
      'driver': 'zarr', 'dtype': _dtype_name(array), 'kvstore': {'driver': 'file', 'path': relative + '/'},
      'metadata': metadata
  }


def _tree(flat: Mapping[str, Any]) -> dict[str, Any]:
  return common.unflatten_params(flat)


def checkpoint_bytes(params: Mapping[str, Any], step: int, *, dtype: Any = None) -> bytes:
  """The single-file ('msgpack' layout) checkpoint as bytes: every array inline."""
  arrays = _host_arrays(params, dtype)
  return serialization.msgpack_serialize(_contents(_tree(arrays), step))


def _contents(target: dict[str, Any], step: int) -> dict[str, Any]:
  return {'version': VERSION, 'optimizer': {'target': target, 'state': {'step': np.asarray(step, np.int32)}}}


def save_t5x_checkpoint(params: Mapping[str, Any], path: str | os.PathLike, step: int = 0, *, layout: str = 'classic',
                        dtype: Any = None, overwrite: bool = False) -> str:
  """Writes `params` (a nested dict of arrays with T5X names) as a T5X checkpoint; returns its path.

  Args:
    params: e.g. {'token_embedder': {'embedding': [vocab, embed]}, 'encoder': ..., 'decoder': ...}.
    path: 'classic': the model dir; the checkpoint goes to `path/checkpoint_<step>/` (written to a temporary
      dir, then renamed, so a reader never sees half a checkpoint). 'msgpack': the file to write.
    step: the training step recorded in the name and in `state/step`.
    layout: 'classic' (msgpack + zarr folders) or 'msgpack' (one file).
    dtype: cast floating-point parameters to this dtype (T5X saves float32 by default).
    overwrite: replace an existing checkpoint of that step / file.
  """
  if layout not in LAYOUTS:
    raise CheckpointError(f'unknown T5X checkpoint layout {layout!r}; expected one of {LAYOUTS}')
  if isinstance(step, bool) or int(step) != step or step < 0:
    raise CheckpointError(f'checkpoint step must be a non-negative integer, got {step!r}')
  path = os.fspath(path)
  if layout == 'msgpack':
    return _save_single_file(params, path, int(step), dtype, overwrite)
  final = os.path.join(path, f'checkpoint_{int(step)}')
  if os.path.exists(final) and not overwrite:
    raise CheckpointError(f'{final} already exists (pass overwrite=True to replace it)')
  arrays = _host_arrays(params, dtype)
  tmp = f'{final}.tmp-{int(time.time())}-{os.getpid()}'
  try:
    os.makedirs(tmp)
  except OSError as e:
    raise CheckpointError(f'cannot create the checkpoint directory {tmp}: {e}') from e
  try:
    specs = {name: _write_zarr(array, tmp, 'target.' + name.replace('/', '.')) for name, array in arrays.items()}
    with open(os.path.join(tmp, 'checkpoint'), 'wb') as f:
      f.write(serialization.msgpack_serialize(_contents(_tree(specs), int(step))))
    if os.path.exists(final):
      shutil.rmtree(final)
    os.rename(tmp, final)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return final


def _save_single_file(params: Mapping[str, Any], path: str, step: int, dtype: Any, overwrite: bool) -> str:
  if os.path.exists(path) and not overwrite:
    raise CheckpointError(f'{path} already exists (pass overwrite=True to replace it)')
  data = checkpoint_bytes(params, step, dtype=dtype)
  parent = os.path.dirname(os.path.abspath(path))
  tmp = f'{path}.tmp-{os.getpid()}'
  try:
    os.makedirs(parent, exist_ok=True)
    with open(tmp, 'wb') as f:
      f.write(data)
    os.replace(tmp, path)
  except OSError as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise CheckpointError(f'cannot write the T5X checkpoint file {path}: {e}') from e
  return path
