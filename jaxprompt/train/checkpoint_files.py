"""Reading what a training run left, for `eval`, `infer` and `export`: a checkpoint step's numpy copies (the
method's inference files) or, for a prompt, the orbax state itself; never the optimizer state."""
from __future__ import annotations

import os

import numpy as np
from etils import epath

from jaxprompt.errors import CheckpointError
from jaxprompt.formats import npy_io
from jaxprompt.formats.keys import PROMPT_FILE
from jaxprompt.train import step_dirs


def _read_prompt_npy(path: epath.Path) -> np.ndarray:
  """A float [length, embed] prompt .npy, as float32."""
  array = npy_io.read_npy(str(path), what='prompt file', error=CheckpointError)
  if array.ndim != 2 or array.dtype.kind not in 'fiu':
    raise CheckpointError(f'prompt file {path} holds shape {array.shape} dtype {array.dtype}, expected a float '
                          '[length, embed]')
  return array.astype(np.float32)


def checkpoint_step(model_dir_or_step_dir: str, step: int | None = None) -> tuple[epath.Path | None, epath.Path | None]:
  """(numpy-copy folder, orbax step dir) of one checkpoint step, either None where the path names only the other.

  Accepts MODEL_DIR (uses `step`, default the latest committed one), its `checkpoints` dir, an orbax step dir
  (`.../checkpoints/<step>`) or a numpy step dir (`.../numpy_checkpoints/checkpoint_<step>`).
  """
  path = epath.Path(os.fspath(model_dir_or_step_dir))
  if not path.exists():
    raise CheckpointError(f'checkpoint path {path} does not exist')
  numpy_step = path.name.startswith(step_dirs.NUMPY_PREFIX)
  if numpy_step or (path / 'state').exists():
    named = step_dirs.parse_step(path.name, step_dirs.NUMPY_PREFIX if numpy_step else '')
    if step is not None and named is not None and named != int(step):
      raise CheckpointError(f'{path} is the checkpoint of step {named}, not of the requested step {step}')
    return (path, None) if numpy_step else (None, path)
  if path.name == step_dirs.CHECKPOINTS:
    model_dir, ckpt_dir = path.parent, path
  else:
    model_dir, ckpt_dir = path, path / step_dirs.CHECKPOINTS
  steps = step_dirs.committed_steps(ckpt_dir)
  if not steps:
    raise CheckpointError(f'no checkpoints in {path} (expected {ckpt_dir}/<step>/ or a prompt file)')
  step = steps[-1] if step is None else int(step)
  if step not in steps:
    raise CheckpointError(f'no checkpoint for step {step} in {ckpt_dir} (have {steps})')
  return model_dir / step_dirs.NUMPY_CHECKPOINTS / f'{step_dirs.NUMPY_PREFIX}{step}', ckpt_dir / str(step)


def load_prompt_from_checkpoint(model_dir_or_step_dir: str, step: int | None = None) -> np.ndarray:
  """The float32 [P, d] prompt of a training checkpoint (either release's; `checkpoint_step` says which paths),
  or of a `.npy`, without the optimizer state; the numpy copy is preferred to the orbax state."""
  path = epath.Path(os.fspath(model_dir_or_step_dir))
  if path.is_file():
    return _read_prompt_npy(path)
  numpy_dir, orbax_dir = checkpoint_step(path, step)
  if numpy_dir is not None and ((numpy_dir / PROMPT_FILE).exists() or orbax_dir is None):
    return _read_prompt_npy(numpy_dir / PROMPT_FILE)
  from jaxprompt.train import orbax_steps  # pylint: disable=g-import-not-at-top  (Orbax: only for this case)
  return orbax_steps.read_prompt(orbax_dir)
