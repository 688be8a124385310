"""Where a frozen model's fingerprint (`jaxprompt.models.fingerprint`) is kept: JSON files beside a prompt file
(`<file>.fingerprint.json`) or in a checkpoint's numpy step dir (`fingerprint.json`), local or gs://.

The record itself is plain JSON with an 'id'; this module reads and writes it without knowing what it hashes.
"""
from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from typing import Any

from jaxprompt.errors import PromptError
from jaxprompt.formats import files

Fingerprint = dict[str, Any]
SIDECAR_SUFFIX = '.fingerprint.json'
STEP_FILE = 'fingerprint.json'  # in a checkpoint's numpy step dir, beside the method's files


def sidecar_path(path: str | os.PathLike) -> str:
  """The fingerprint file kept beside a single prompt file: `<path>.fingerprint.json`."""
  return os.fspath(path) + SIDECAR_SUFFIX


def to_json(fingerprint: Mapping[str, Any]) -> str:
  return json.dumps(dict(fingerprint), sort_keys=True)


def from_json(text: str | bytes, where: str) -> Fingerprint:
  try:
    value = json.loads(text)
  except ValueError as e:
    raise PromptError(f'{where}: not a fingerprint JSON ({e})') from e
  if not isinstance(value, dict) or 'id' not in value:
    raise PromptError(f"{where}: a fingerprint needs an 'id' field; got {str(value)[:80]}")
  return value


def write(path: str | os.PathLike, fingerprint: Mapping[str, Any], *, error: type[Exception] = PromptError) -> str:
  """Writes a fingerprint JSON file (local or gs://, parents created); returns its path. Local files are
  written beside and renamed into place, so a reader never sees half a record. Failures: one `error`."""
  path = os.fspath(path)
  data = to_json(fingerprint).encode()
  parent, name = os.path.split(path)
  try:
    if files.is_remote(path):
      files.gfile().makedirs(parent)
      with files.open_file(path, 'wb') as f:  # gs:// objects appear whole anyway
        f.write(data)
      return path
    if parent:
      os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f'.{name}.tmp-{uuid.uuid4().hex}')  # unique: several writers may race
    try:
      with open(tmp, 'wb') as f:
        f.write(data)
      os.replace(tmp, path)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
  except Exception as e:  # OSError locally, tf.errors.OpError remotely
    raise error(f'cannot write fingerprint file {path}: {getattr(e, "strerror", None) or e}') from e
  return path


def read(path: str | os.PathLike) -> Fingerprint | None:
  """The fingerprint in a JSON file (local or gs://), None when there is no such file; an unreadable or
  malformed one is a PromptError naming it."""
  path = os.fspath(path)
  try:
    if not files.exists(path):
      return None
    data = files.read_bytes(path)
  except Exception as e:  # a directory of that name, no permission, no access to the bucket
    raise PromptError(f'cannot read fingerprint file {path}: {getattr(e, "strerror", None) or e}') from e
  return from_json(data, path)
