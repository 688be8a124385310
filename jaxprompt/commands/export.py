"""`jaxprompt export`: a training checkpoint's inference file, what `eval` / `infer` take as `--prompt_file`.

  prompt methods (prompt tuning, P-tuning)   float32 [P, d] .npy
  prefix methods (prefix tuning, P-tuning v2) prefix .npz, or .safetensors by the output's extension
  per-layer prompts                          per_layer_prompts .npz
Reads only that file (or, for a prompt, the prompt leaf of the orbax state): neither the frozen model nor the
optimizer state.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from jaxprompt.commands.prompt_files import STEP_FILES
from jaxprompt.errors import PromptError, UsageError
from jaxprompt.methods import kv_prefix
from jaxprompt.methods.prompt_tuning import PROMPT_FILE
from jaxprompt.train.checkpoint_files import checkpoint_step, load_prompt_from_checkpoint
from jaxprompt.train.npy_io import read_npz, write_npy, write_npz

_PREFIX_SUFFIXES = ('.npz', '.safetensors')


def export(output_file: str, *, checkpoint: str | None = None, step: int | None = None,
           model_dir: str | None = None) -> dict[str, Any]:
  """Writes the inference file of `checkpoint` (a training MODEL_DIR or one of its step dirs; default
  `model_dir`) at `step` (default: the latest) to `output_file` (local or gs://); returns what was written."""
  source = checkpoint or model_dir
  if not source:
    raise UsageError('export needs --checkpoint (a training MODEL_DIR or step dir) or --gin.MODEL_DIR')
  source = os.fspath(source)
  method_file = None
  if not os.path.isfile(source):
    numpy_dir, _ = checkpoint_step(source, step)
    found = [numpy_dir / n for n in STEP_FILES if numpy_dir is not None and (numpy_dir / n).exists()]
    method_file = os.fspath(found[0]) if found and found[0].name != PROMPT_FILE else None
  if method_file is None:
    prompt = np.asarray(load_prompt_from_checkpoint(source, step=step), np.float32)
    if prompt.ndim != 2:
      raise PromptError(f'cannot export a prompt of shape {prompt.shape} to {output_file}: expected [length, embed]')
    return {'checkpoint': source, 'output': write_npy(prompt, output_file), 'shape': list(prompt.shape)}
  arrays = read_npz(method_file)
  is_prefix = any(k.endswith('/key') for k in arrays)
  if not output_file.endswith(_PREFIX_SUFFIXES if is_prefix else ('.npz',)):
    wanted = ' or '.join(_PREFIX_SUFFIXES) if is_prefix else '.npz'
    raise UsageError(f'{os.path.basename(method_file)} of {source} exports as {wanted}; got --output {output_file}')
  if is_prefix and output_file.endswith('.safetensors'):
    relpos = next(k.split('/', 1)[1] for k in arrays if k.startswith(kv_prefix.RELPOS_KEY + '/'))
    rows = {k[:-len('/key')]: (v, arrays[k[:-len('key')] + 'value']) for k, v in arrays.items() if k.endswith('/key')}
    path = kv_prefix.save_prefix(output_file, rows, relpos)
  else:
    path = write_npz(arrays, output_file, what='export')
  shapes = {k: list(v.shape) for k, v in arrays.items() if v.size}
  return {'checkpoint': source, 'output': path, 'shapes': shapes}
