"""Load the parameters (`target` tree) of checkpoints written by T5X, with the exact T5X parameter names.

Formats (see `detect_format`):
  'classic'      directory with a flax-msgpack `checkpoint` file + zarr folders (t5x `Checkpointer`)
  'msgpack_file' one msgpack file holding every array inline (or a classic dir's `checkpoint` file itself)
  'orbax'        directory written by t5x's Orbax checkpoint manager (`state/` item, OCDBT)
A model directory resolves to its latest `checkpoint_<step>` subdirectory. Paths may be local or `gs://`.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import tensorstore as ts

from jaxprompt.checkpoints import common, t5x_classic, t5x_orbax
from jaxprompt.errors import CheckpointError

_STEP_RE = re.compile(r'checkpoint_(\d+)')
_MSGPACK_MAP_BYTES = set(range(0x80, 0x90)) | {0xDE, 0xDF}  # fixmap, map16, map32
_ORBAX_MARKERS = ('_CHECKPOINT_METADATA', 'state/_METADATA', 'state/manifest.ocdbt', '_METADATA')


def _format_or_none(path: str) -> str | None:
  """Format of an existing path, or None if it is a directory that is not itself a checkpoint."""
  p = common.as_path(path)
  if not p.is_dir():
    with p.open('rb') as f:
      head = f.read(1)
    if not head or head[0] not in _MSGPACK_MAP_BYTES:
      raise CheckpointError(f'{path}: not a T5X checkpoint (a file, but not a msgpack map)')
    return 'msgpack_file'
  if (p / 'checkpoint').exists() and not (p / 'checkpoint').is_dir():
    return 'classic'
  if any((p / marker).exists() for marker in _ORBAX_MARKERS):
    return 'orbax'
  return None


def _require_exists(path: str) -> None:
  if not common.as_path(path).exists():
    raise CheckpointError(f'{path}: checkpoint path does not exist')


def detect_format(path: str | os.PathLike) -> str:
  """'classic' | 'msgpack_file' | 'orbax' for a checkpoint itself (not a model dir: see latest_checkpoint)."""
  path = os.fspath(path)
  _require_exists(path)
  fmt = _format_or_none(path)
  if fmt is None:
    raise CheckpointError(f'{path}: not a T5X checkpoint (no msgpack `checkpoint` file, no orbax '
                          '`_CHECKPOINT_METADATA` or `state/` item; for a model dir use latest_checkpoint)')
  return fmt


def t5x_checkpoint_step(path: str | os.PathLike) -> int | None:
  """The step in a T5X checkpoint name (`.../checkpoint_1000[/checkpoint]` -> 1000), None if unnamed."""
  parts = os.fspath(path).rstrip('/').split('/')
  name = parts[-2] if parts[-1] == 'checkpoint' and len(parts) > 1 else parts[-1]
  m = re.search(r'checkpoint_(\d+)$', name)
  return int(m.group(1)) if m else None


def latest_checkpoint(path: str | os.PathLike) -> str:
  """`path` if it is a checkpoint, else its `checkpoint_<step>` subdirectory with the largest step.

  Subdirectories that hold no checkpoint (t5x/orbax temporary dirs, empty dirs) are skipped.
  """
  path = os.fspath(path)
  _require_exists(path)
  if _format_or_none(path) is not None:
    return path
  steps = {}
  for child in common.as_path(path).iterdir():
    m = _STEP_RE.fullmatch(child.name)
    if m and child.is_dir() and _format_or_none(str(child)) is not None:
      steps[int(m.group(1))] = str(child)
  if not steps:
    raise CheckpointError(f'{path}: not a T5X checkpoint and contains no checkpoint_<step> checkpoint')
  return steps[max(steps)]


def t5x_sources(ckpt: str, context: ts.Context | None = None) -> dict[str, common.ArraySource]:
  """Unread parameter arrays {'a/b/c': source} of a checkpoint (not a model dir)."""
  context = context or ts.Context()
  fmt = detect_format(ckpt)
  if fmt == 'orbax':
    return t5x_orbax.read_sources(ckpt, context)
  msgpack_file = str(common.as_path(ckpt) / 'checkpoint') if fmt == 'classic' else ckpt
  return t5x_classic.read_sources(msgpack_file, context)


def load_t5x_checkpoint(path: str | os.PathLike, *, dtype=None, shardings: common.ShardingsArg = None,
                        expected_shapes: Mapping[str, Any] | None = None, scan_layers: bool = False) -> dict[str, Any]:
  """Loads the `target` parameter tree of a T5X checkpoint (any format) or of a model dir's latest one.

  Args:
    path: checkpoint directory, msgpack file, or model dir holding `checkpoint_<step>` dirs (local/gs://).
    dtype: cast floating-point parameters to this dtype (e.g. jnp.bfloat16).
    shardings: None (numpy leaves on the host), one Sharding for all, a tree of Shardings matching the
      parameters (extra entries are ignored) or a callable 'a/b/c' -> Sharding | None. Sharded parameters
      are read shard by shard (only this process's shards) and returned as global jax.Arrays.
    expected_shapes: optional tree of shapes or ShapeDtypeStructs; every parameter must be present with
      that shape, none may be extra (checked before any data is read).
    scan_layers: return each stack's `layers_N` as one `layers` subtree with a leading layer axis (the
      layout of `T5Config(scan_layers=True)`); shards are still read slice by slice.

  Returns:
    Nested dict with T5X names, e.g. {'token_embedder': {'embedding': [vocab, embed]}, 'encoder': ...}.
  """
  ckpt = latest_checkpoint(path)
  sources = t5x_sources(ckpt)
  if scan_layers:
    sources = common.stack_layer_sources(sources)
  return common.materialize(sources, dtype=dtype, shardings=shardings, expected_shapes=expected_shapes, ckpt=ckpt)
