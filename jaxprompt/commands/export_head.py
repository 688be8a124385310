"""`jaxprompt export` of a step whose method trained a task head beside it (`methods/with_head.py`).

--format file: ONE folder holding the step's files by their step names (the method's `prefix.npz` / `prompt.npy`
  ... and `head.npz`) and `fingerprint.json`: the layout of a numpy step dir, which `--prompt_file=<folder>` reads
  whole (`prompt_files.folder_file`, then the head joined by name as in a step dir). A folder rather than one .npz
  holding both: the registry reads one kind per file (one marker each) and joins a head by name, so each file stays
  readable alone (`inspect`), a prompt stays a plain .npy, and nothing in `methods/registry.py` changes.
--format hf_head: the head alone as transformers' `classifier.*` tensors (`checkpoints/hf_head.py`) in one
  .safetensors file (metadata: `head_kind`, `use_pooler`), to load into a *ForSequenceClassification /
  *ForTokenClassification / *ForMultipleChoice beside the frozen encoder.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flax import traverse_util
from safetensors.numpy import save as save_safetensors

from jaxprompt.checkpoints import hf_head
from jaxprompt.errors import PromptError, UsageError
from jaxprompt.formats import files, fingerprint_files, npy_io
from jaxprompt.methods import registry, with_head

FILE_SUFFIXES = ('.npy', '.npz', '.safetensors')


def head_file(paths: Sequence[str]) -> str | None:
  """The task head among a step's files (its `head.npz`), None when it has none."""
  return next((p for p in paths if os.path.basename(p).endswith(with_head.HEAD_FILE)), None)


def export_folder(kind: registry.FileKind, arrays: registry.Arrays, joined: Sequence[str], output: str, source: str,
                  recorded: Mapping[str, Any] | None) -> dict[str, Any]:
  """Writes the method's `arrays` and its `joined` files (the head) into the new folder `output` (module
  docstring); returns what was written."""
  if output.endswith(FILE_SUFFIXES):
    raise UsageError(f'{source} trained a task head beside its {kind.step_file}: --format file writes both into one '
                     f'folder; give --output a folder (e.g. {os.path.splitext(output)[0]}), not the file {output}')
  listdir = files.gfile().listdir if files.is_remote(output) else os.listdir
  if files.exists(output) and (not files.isdir(output) or listdir(output)):
    raise UsageError(f'--output {output} exists and is not an empty folder: give a new folder for the method and '
                     'its head (nothing is overwritten)')
  written = [registry.write(kind, arrays, os.path.join(output, kind.step_file))]
  for path in joined:
    other = registry.read_arrays(path)
    other_kind = registry.kind_of(other, path)
    written.append(registry.write(other_kind, registry.unmarked(other), os.path.join(output, other_kind.step_file)))
  out: dict[str, Any] = {'checkpoint': source, 'output': output, 'files': [os.path.basename(p) for p in written]}
  out['fingerprint_id'] = (recorded or {}).get('id')
  if recorded:
    out['fingerprint'] = fingerprint_files.write(os.path.join(output, fingerprint_files.STEP_FILE), recorded)
  return out


def export_hf_head(head: str | None, output: str, source: str) -> dict[str, Any]:
  """Writes the task head file `head` as transformers' `classifier.*` tensors to `output` (.safetensors)."""
  if head is None:
    raise PromptError(f'{source} has no task head ({with_head.HEAD_FILE}): --format hf_head exports the head an '
                      'encoder-only run trains (heads/*.gin)')
  if not output.endswith('.safetensors'):
    raise UsageError(f'--format hf_head writes a .safetensors file; got --output {output}')
  arrays = registry.read_arrays(head)
  if with_head.TUNED_ENCODER in arrays:
    raise PromptError(f'{head}: this head was trained with the whole encoder (model tuning + head), which lives in '
                      "the run's orbax checkpoints only; alone on the original encoder it would be wrong")
  marks = {k.split('/', 1)[0]: k.split('/', 1)[1] for k in arrays if not np.size(arrays[k])}
  params = {tuple(k.split('/')): v for k, v in arrays.items() if k.startswith(hf_head.HEAD_PREFIX + '/')}
  tensors = {k: np.ascontiguousarray(v) for k, v in hf_head.head_to_hf(traverse_util.unflatten_dict(params)).items()}
  metadata = {'format': 'pt', 'head_kind': marks.get('kind', ''), 'use_pooler': marks.get('pooler', '')}
  npy_io.write_bytes(save_safetensors(tensors, metadata=metadata), output, what='task head file')
  return {
      'checkpoint': source, 'output': output, 'format': 'hf_head', 'head_kind': metadata['head_kind'],
      'shapes': {k: list(v.shape) for k, v in tensors.items()}
  }
