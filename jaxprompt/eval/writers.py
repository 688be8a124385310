"""Result files: metrics as JSON, predictions as JSONL (process 0 writes; local paths or gs://)."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import jax

from jaxprompt.formats import files


def write_json(path: str, value: Any) -> None:
  """Process 0 writes `value` as JSON (creating parent dirs)."""
  if jax.process_index() != 0:
    return
  files.write_text(path, json.dumps(value, indent=2, sort_keys=True) + '\n')


def write_jsonl(path: str | None, records: Sequence[Mapping[str, Any]], stream=None) -> None:
  """Process 0 writes one JSON object per line to `path` (or to `stream` when path is None / '-')."""
  if jax.process_index() != 0:
    return
  lines = ''.join(json.dumps(dict(r), ensure_ascii=False) + '\n' for r in records)
  if path in (None, '-'):
    stream.write(lines)
    stream.flush()
    return
  files.write_text(path, lines)
