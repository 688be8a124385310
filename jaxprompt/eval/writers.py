"""Result files: metrics as JSON, predictions as JSONL (process 0 writes; local paths or gs://)."""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax


def write_json(path: str, value: Any) -> None:
  """Process 0 writes `value` as JSON (creating parent dirs)."""
  if jax.process_index() != 0:
    return
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  parent = os.path.dirname(path)
  if parent:
    tf.io.gfile.makedirs(parent)
  with tf.io.gfile.GFile(path, 'w') as f:
    f.write(json.dumps(value, indent=2, sort_keys=True) + '\n')


def write_jsonl(path: str | None, records: Sequence[Mapping[str, Any]], stream=None) -> None:
  """Process 0 writes one JSON object per line to `path` (or to `stream` when path is None / '-')."""
  if jax.process_index() != 0:
    return
  lines = ''.join(json.dumps(dict(r), ensure_ascii=False) + '\n' for r in records)
  if path in (None, '-'):
    stream.write(lines)
    stream.flush()
    return
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  parent = os.path.dirname(path)
  if parent:
    tf.io.gfile.makedirs(parent)
  with tf.io.gfile.GFile(path, 'w') as f:
    f.write(lines)
