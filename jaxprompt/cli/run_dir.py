"""Reading a run directory: `eval` / `infer` (and `export --format hf_model`) on a training MODEL_DIR take the run's own
configuration.

A run writes its whole gin configuration to MODEL_DIR/config.gin (model, checkpoint, task or `--task` specs,
feature lengths, batch size, vocabulary), as t5x does. `eval` / `infer --checkpoint=MODEL_DIR` (or one of its
step dirs, or `--prompt_file=MODEL_DIR/final_*`) with no `--gin_file` read that file, then
`runs/from_run_dir.gin` (it undoes what only training means: the train split, packing), then the flags and
`--gin.NAME=VALUE` overrides: no flag training had is needed again. With `--gin_file`, the files given are the
configuration, as for any command; a run's config.gin among them is followed by `runs/from_run_dir.gin` too.
`export --format hf_model --checkpoint=MODEL_DIR` of an encoder run reads it the same way: the run's config.gin
names the frozen encoder (MODEL_CONFIG, HF_MODEL_DIR) and the task whose label names the folder records.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from jaxprompt.formats.keys import RUN_CONFIG_FILE as CONFIG

FROM_RUN_DIR = 'runs/from_run_dir.gin'
COMMANDS = ('eval', 'infer')
EXPORT_FORMAT = 'hf_model'  # the one export format that writes the run's frozen model
# The folders a training run writes beside config.gin: they tell a run directory from any folder with a config.gin.


def _run_folders() -> tuple[str, str]:
  # Imported here: train.step_dirs imports orbax (and with it JAX), which a gin slip must not wait for.
  from jaxprompt.train import step_dirs  # pylint: disable=g-import-not-at-top
  return step_dirs.CHECKPOINTS, step_dirs.NUMPY_CHECKPOINTS


def _gfile():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (only for remote paths: keeps --help fast)
  return tf.io.gfile


def _exists(path: str) -> bool:
  return _gfile().exists(path) if '://' in path else os.path.exists(path)


def is_run_dir(path: str) -> bool:
  """A training MODEL_DIR: it holds config.gin and a checkpoint folder."""
  return _exists(os.path.join(path, CONFIG)) and any(_exists(os.path.join(path, m)) for m in _run_folders())


def run_dir_of(path: str | None) -> str | None:
  """The run directory `path` belongs to: MODEL_DIR itself, its `checkpoints` / `numpy_checkpoints` folder, one
  of their step dirs, or a file in MODEL_DIR (`final_prompt.npy`); None for anything else."""
  if not path:
    return None
  path = _local(os.fspath(path))
  parent = os.path.dirname(path)
  candidates = [path, parent]
  if os.path.basename(parent) in _run_folders():
    candidates.append(os.path.dirname(parent))
  return next((c for c in candidates if c and is_run_dir(c)), None)


def _local(path: str) -> str:
  """A local path normalised and made absolute; a URL (gs://...) without its trailing slash."""
  return path.rstrip('/') if '://' in path else os.path.abspath(path)


def is_run_config(gin_file: str) -> bool:
  """A gin file that is a run's config.gin."""
  return os.path.basename(gin_file) == CONFIG and is_run_dir(os.path.dirname(_local(gin_file)))


def reads_run_config(command: str, format: str | None, checkpoint: str | None) -> bool:  # pylint: disable=redefined-builtin
  """Whether `command` (with its `--format` and `--checkpoint`) takes a run directory's config (module docstring)."""
  if command == 'export':
    return format == EXPORT_FORMAT and run_dir_of(checkpoint) is not None
  return command in COMMANDS


def gin_files(command: str, files: Sequence[str], checkpoint: str | None, prompt_file: str | None,
              format: str | None = None) -> list[str]:  # pylint: disable=redefined-builtin
  """The gin files `command` parses: `files`, or a run directory's config (see the module docstring)."""
  if not reads_run_config(command, format, checkpoint):
    return list(files)
  if not files:
    run = run_dir_of(checkpoint) or run_dir_of(prompt_file)
    files = [os.path.join(run, CONFIG)] if run else []
  out = []
  for name in files:
    out += [name, FROM_RUN_DIR] if is_run_config(name) else [name]
  return out
