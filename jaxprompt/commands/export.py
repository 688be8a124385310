"""`jaxprompt export`: the prompt of a training checkpoint as a float32 [P, d] .npy (what `eval` / `infer`
take as `--prompt_file`). Reads only the prompt: neither the frozen model nor the optimizer state."""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from jaxprompt.errors import PromptError, UsageError
from jaxprompt.train.checkpoint_files import load_prompt_from_checkpoint
from jaxprompt.train.npy_io import write_npy


def export(output_file: str, *, checkpoint: str | None = None, step: int | None = None,
           model_dir: str | None = None) -> dict[str, Any]:
  """Writes the prompt of `checkpoint` (a training MODEL_DIR or one of its step dirs; default `model_dir`) at
  `step` (default: the latest) to `output_file` (local or gs://); returns what was written."""
  source = checkpoint or model_dir
  if not source:
    raise UsageError('export needs --checkpoint (a training MODEL_DIR or step dir) or --gin.MODEL_DIR')
  source = os.fspath(source)
  prompt = np.asarray(load_prompt_from_checkpoint(source, step=step), np.float32)
  if prompt.ndim != 2:
    raise PromptError(f'cannot export a prompt of shape {prompt.shape} to {output_file}: expected [length, embed]')
  path = write_npy(prompt, output_file)
  return {'checkpoint': source, 'output': path, 'shape': list(prompt.shape)}
