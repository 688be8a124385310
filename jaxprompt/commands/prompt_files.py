"""Reading a trained prompt for `eval` / `infer`: from a .npy file or a training checkpoint, checked against
the model."""
from __future__ import annotations

import os

import numpy as np

from jaxprompt.errors import ConfigError, PromptError
from jaxprompt.methods import initializers
from jaxprompt.train.npy_io import npy_shape


def load_prompt(*, prompt_file: str | None, checkpoint: str | None, step: int | None,
                prompt_length: int | None, embed_dim: int) -> np.ndarray:
  """The float32 [P, d] prompt from a .npy file or a training checkpoint, checked against the model.

  `prompt_length` None takes the file's length; the embedding size must always match the model's.
  """
  if (prompt_file is None) == (checkpoint is None):
    raise ConfigError('give exactly one of --prompt_file (a .npy) or --checkpoint (a training MODEL_DIR or '
                      f'step dir); got prompt_file={prompt_file!r}, checkpoint={checkpoint!r}')
  if prompt_file is not None:
    prompt_file = os.fspath(prompt_file)
    shape = npy_shape(prompt_file)
    length = prompt_length if prompt_length is not None else (shape[0] if len(shape) == 2 else -1)
    if length <= 0:
      raise PromptError(f'prompt file {prompt_file} has shape {shape}; a prompt must be [length, embed]')
    return np.asarray(initializers.from_file(prompt_file)(None, (length, embed_dim)), np.float32)
  from jaxprompt.train.checkpoint_files import load_prompt_from_checkpoint  # pylint: disable=g-import-not-at-top
  array = load_prompt_from_checkpoint(checkpoint, step=step)
  wanted = (prompt_length if prompt_length is not None else array.shape[0], embed_dim)
  if array.shape != wanted:
    raise PromptError(f'checkpoint {checkpoint} holds a prompt of shape {array.shape} but the model needs '
                      f'{wanted} (PROMPT_LENGTH, embed)')
  return array
