"""Local or remote files (gs://, anything `tf.io.gfile` opens): plain file calls for local paths, so TensorFlow
(about 4 s to import) loads only for a remote one."""
from __future__ import annotations

import os
from typing import IO, Any


def is_remote(path: str | os.PathLike) -> bool:
  return '://' in os.fspath(path)


def gfile() -> Any:
  """`tf.io.gfile`, for remote paths."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.io.gfile


def exists(path: str) -> bool:
  return gfile().exists(path) if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
  return gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


def open_file(path: str, mode: str) -> IO[Any]:
  """`open(path, mode)`, text in UTF-8 (as `tf.io.gfile` writes it)."""
  if is_remote(path):
    return gfile().GFile(path, mode)
  # pylint: disable-next=consider-using-with  (the callers' `with` closes it)
  return open(path, mode) if 'b' in mode else open(path, mode, encoding='utf-8')


def read_bytes(path: str) -> bytes:
  with open_file(path, 'rb') as f:
    return f.read()


def write_text(path: str, text: str) -> None:
  """Writes `text` (UTF-8) to `path`, creating its parent folders."""
  parent = os.path.dirname(path)
  if parent and is_remote(path):
    gfile().makedirs(parent)
  elif parent:
    os.makedirs(parent, exist_ok=True)
  with open_file(path, 'w') as f:
    f.write(text)
