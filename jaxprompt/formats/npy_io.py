"""Safe `.npy` and `.npz` files: read without ever unpickling, shape from the header alone, atomic writes.

Paths are local or anything `tf.io.gfile` opens (gs://, ram://, ...). Local paths use plain file calls, so
TensorFlow is imported only for remote ones. Every failure is one error of the caller's type (`error`,
PromptError by default) naming the file as `<what> <path>`.
"""
from __future__ import annotations

import io
import os
import uuid
from collections.abc import Mapping
from typing import IO, Any

import numpy as np

from jaxprompt.errors import PromptError
from jaxprompt.formats import files

_MAGIC = b'\x93NUMPY'
_ZIP_MAGIC = b'PK'


def _exists(path: str) -> bool:
  try:
    return files.exists(path)
  except Exception:  # pylint: disable=broad-except  (e.g. no access to the bucket: the read says why)
    return True


def _reason(e: Exception) -> str:
  """The useful part of an OSError / tf OpError, without repeating the path."""
  return getattr(e, 'message', None) or getattr(e, 'strerror', None) or str(e)


def _not_npy(data: bytes, what: str, path: str, error: type[Exception]) -> Exception:
  """The error for bytes that do not start like a .npy file."""
  kind = 'an .npz archive' if data.startswith(_ZIP_MAGIC) else 'not a .npy file (pickle or another format?)'
  return error(f'{what} {path} is {kind}; expected one array saved with np.save')


def _read_header(f: IO[bytes]) -> tuple[int, ...]:
  """The shape of an open .npy file's header (the file's first bytes are the magic)."""
  f.seek(0)
  version = np.lib.format.read_magic(f)
  if version == (1, 0):
    shape, _, _ = np.lib.format.read_array_header_1_0(f)
  elif version == (2, 0):
    shape, _, _ = np.lib.format.read_array_header_2_0(f)
  else:  # 3.0 differs only in utf-8 field names, which a prompt never has
    raise ValueError(f'unsupported .npy format version {version}')
  return shape


def read_bytes(path: str | os.PathLike, *, what: str = 'prompt file', error: type[Exception] = PromptError) -> bytes:
  """The whole content of a local or remote (gs://) file; one `error` naming it when missing or unreadable."""
  path = os.fspath(path)
  if not _exists(path):
    raise error(f'{what} {path} does not exist')
  try:
    with files.open_file(path, 'rb') as f:
      return f.read()
  except Exception as e:  # OSError locally, tf.errors.OpError remotely
    raise error(f'cannot read {what} {path}: {_reason(e)}') from e


def read_npy(path: str | os.PathLike, *, what: str = 'prompt file', error: type[Exception] = PromptError) -> np.ndarray:
  """The array in a `.npy` file; object (pickled) arrays are refused, never loaded."""
  path = os.fspath(path)
  data = read_bytes(path, what=what, error=error)
  if not data.startswith(_MAGIC):
    raise _not_npy(data, what, path, error)
  try:
    return np.load(io.BytesIO(data), allow_pickle=False)
  except ValueError as e:  # object (pickled) arrays are refused here, as are damaged headers/data
    raise error(f'cannot load {what} {path} without unpickling or it is damaged: {e}') from e


def npy_shape(path: str | os.PathLike, *, what: str = 'prompt file',
              error: type[Exception] = PromptError) -> tuple[int, ...]:
  """The shape in a `.npy` header, read without loading (or unpickling) the data."""
  path = os.fspath(path)
  if not _exists(path):
    raise error(f'{what} {path} does not exist')
  try:
    with files.open_file(path, 'rb') as f:
      start = f.read(len(_MAGIC))
      shape = _read_header(f) if start == _MAGIC else None
  except Exception as e:  # a damaged header, or OSError / tf OpError while reading it
    raise error(f'{what} {path} has an unreadable .npy header: {_reason(e)}') from e
  if shape is None:
    raise _not_npy(start, what, path, error)
  return tuple(int(d) for d in shape)


def write_npy(array: Any, path: str | os.PathLike, *, what: str = 'prompt file',
              error: type[Exception] = PromptError) -> str:
  """Writes `array` (no pickles) to `path`, creating its parents; returns the path (atomically: `_write`)."""
  path = os.fspath(path)
  buffer = io.BytesIO()
  try:
    np.save(buffer, np.asarray(array), allow_pickle=False)
  except ValueError as e:  # object arrays would need a pickle
    raise error(f'cannot write {what} {path}: {e}') from e
  return _write(buffer.getvalue(), path, what, error)


def write_npz(arrays: Mapping[str, Any], path: str | os.PathLike, *, what: str = 'prefix file',
              error: type[Exception] = PromptError) -> str:
  """Writes named arrays (no pickles) as an uncompressed `.npz` to `path`; returns the path (atomically)."""
  path = os.fspath(path)
  buffer = io.BytesIO()
  try:
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
  except ValueError as e:
    raise error(f'cannot write {what} {path}: {e}') from e
  return _write(buffer.getvalue(), path, what, error)


def read_npz(path: str | os.PathLike, *, what: str = 'prefix file',
             error: type[Exception] = PromptError) -> dict[str, np.ndarray]:
  """The named arrays of a `.npz` file; object (pickled) arrays are refused, never loaded."""
  path = os.fspath(path)
  data = read_bytes(path, what=what, error=error)
  try:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
      return {k: npz[k] for k in npz.files}
  except Exception as e:  # pickled members (numpy names allow_pickle), or not a whole zip: truncated, damaged
    if isinstance(e, ValueError) and 'allow_pickle' in str(e):
      raise error(f'cannot load {what} {path} without unpickling: it holds object arrays') from e
    raise error(f'{what} {path} is truncated or damaged: not a readable .npz archive ({_reason(e)})') from e


def write_bytes(data: bytes, path: str | os.PathLike, *, what: str = 'file',
                error: type[Exception] = PromptError) -> str:
  """Writes `data` to `path` (local or gs://) atomically, creating parents; returns the path."""
  return _write(data, os.fspath(path), what, error)


def _write(data: bytes, path: str, what: str, error: type[Exception]) -> str:
  """Writes `data` beside `path` and renames it into place, creating parents, so a reader never sees half a
  file. The temp name is unique, so several processes may write the same file at once: each rename installs a
  whole copy."""
  parent, name = os.path.split(path)
  tmp = os.path.join(parent, f'.{name}.tmp-{uuid.uuid4().hex}')
  try:
    if files.is_remote(path):
      gfile = files.gfile()
      gfile.makedirs(parent)
      with gfile.GFile(tmp, 'wb') as f:
        f.write(data)
      gfile.rename(tmp, path, overwrite=True)  # copy + delete on gs://, whose objects appear whole anyway
    else:
      if parent:
        os.makedirs(parent, exist_ok=True)
      with open(tmp, 'wb') as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # the data is on disk before the name points at it
      os.replace(tmp, path)
  except Exception as e:  # OSError locally, tf.errors.OpError remotely
    _remove_quietly(tmp)
    raise error(f'cannot write {what} {path}: {_reason(e)}') from e
  return path


def _remove_quietly(path: str) -> None:
  """Best-effort cleanup of a temp file after a failed write (it may never have been created)."""
  try:
    if files.is_remote(path):
      if files.gfile().exists(path):
        files.gfile().remove(path)
    elif os.path.exists(path):
      os.remove(path)
  except Exception:  # pylint: disable=broad-except  (the write's own error is the one to report)
    pass
