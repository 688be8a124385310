"""Reading what a method trained, for `eval` / `infer` / `inspect`: its inference file or a training checkpoint's
copy of it, checked against the model, as (method, parameters); and the frozen-model fingerprint each source
records. Which method a file belongs to is the registry's answer (`jaxprompt.methods.registry`), from what
the file holds; the sources are

  a .npy                            float32 [P, d] input prompt (a training checkpoint's orbax state holds one too)
  a .npz / .safetensors             any registered method's file: prefix, per-layer prompts, multi-task prompts ...
  a PEFT adapter folder             PROMPT_TUNING / P_TUNING (a prompt), PREFIX_TUNING (a decoder_self prefix)
                                    (`jaxprompt.methods.peft_adapters`)
  a training MODEL_DIR or step dir  the file its method left in the step's numpy dir (`registry.step_files`)
  a method's folder                 what `export` writes for a method with a task head: the step's files by their
                                    step names (`prefix.npz` + `head.npz`, ...) and `fingerprint.json`
                                    (`folder_file`)

A file that joins another (`registry.joining_files`: an encoder's task head, `head.npz`) is read with the file it
lies beside, by name: `final_prefix.npz` takes `final_head.npz`, a step dir's `prompt.npy` its `head.npz` (the
joining file's name after the same prefix; `join_beside`). A multi-task run's `prompts.npz` takes the
`<task>.head.npz` of each of its tasks beside it (`final_prompts.npz`: `final_<task>.head.npz`), as one bank
with per-task heads.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
from etils import epath

from jaxprompt.errors import ConfigError, PromptError
from jaxprompt.formats import fingerprint_files
from jaxprompt.formats.keys import PROMPT_FILE, PROMPT_KEY
from jaxprompt.formats.npy_io import npy_shape
from jaxprompt.methods import initializers, peft_adapters, peft_heads, registry, task_heads
from jaxprompt.methods.base import Method
from jaxprompt.methods.with_head import HEAD_FILE
from jaxprompt.models.base import ModelConfig
from jaxprompt.train import checkpoint_files, step_dirs


def load_tuned(*, prompt_file: str | None, checkpoint: str | None, step: int | None, prompt_length: int | None,
               config: ModelConfig, combine: str = 'prefix', eos_id: int = 1) -> tuple[Method, Any]:
  """(method, host parameters) of a trained method, from its file or from a training checkpoint (MODEL_DIR or a
  step dir; its numpy copy of `step`, default the latest). `prompt_length` and `combine` apply to input
  prompts; the other files carry their own shapes and options."""
  if (prompt_file is None) == (checkpoint is None):
    raise ConfigError('give exactly one of --prompt_file (a prompt .npy, prefix .npz / .safetensors, '
                      'per_layer_prompts.npz or a PEFT adapter folder) or --checkpoint (a training MODEL_DIR or step '
                      f'dir); got prompt_file={prompt_file!r}, checkpoint={checkpoint!r}')
  context = registry.ReadContext(config, eos_id=eos_id, combine=combine, prompt_length=prompt_length)
  path = None if prompt_file is None else os.fspath(prompt_file)
  if path is not None and not peft_adapters.is_adapter_dir(path):
    path = folder_file(path) or path  # an export folder: its method's file, the head joined below
  if path is not None and peft_adapters.is_adapter_dir(path):
    adapter = peft_adapters.read_adapter(path, config)
    context = dataclasses.replace(context, source=f'PEFT adapter {path}')
    return peft_heads.join(adapter, path, *registry.from_arrays(adapter.arrays, context), context)  # an encoder's head
  found = None
  if checkpoint is not None and not epath.Path(os.fspath(checkpoint)).is_file():
    found = step_file(os.fspath(checkpoint), step)
    path = None if found is None or os.path.basename(found) == PROMPT_FILE else found
  elif checkpoint is not None:
    path = os.fspath(checkpoint)
  if path is None or path.endswith('.npy'):  # a prompt (a checkpoint's orbax state holds one too)
    prompt = load_prompt(prompt_file=path, checkpoint=None if path else checkpoint, step=step,
                         prompt_length=prompt_length, embed_dim=config.emb_dim)
    arrays = {PROMPT_KEY: prompt}
  elif os.path.isdir(path):
    raise PromptError(f'prompt file {path} is a folder without {peft_adapters.CONFIG_FILE}: not a PEFT adapter (for '
                      'a training MODEL_DIR or step dir use --checkpoint)')
  else:
    arrays = registry.read_arrays(path)
  method, params = registry.from_arrays(arrays, dataclasses.replace(context, source=path or os.fspath(checkpoint)))
  beside = path or found  # a step's prompt.npy (read from its orbax state) takes its head.npz too
  return (method, params) if beside is None else join_beside(method, params, beside, context)


def folder_file(path: str) -> str | None:
  """The main file of a method's folder (an export folder or a numpy step dir): the first of
  `registry.step_files()` it holds (main files first); None when `path` is no folder holding one."""
  if not epath.Path(path).is_dir():
    return None
  return next((os.path.join(path, f) for f in registry.step_files() if epath.Path(path, f).is_file()), None)


def _main_prefix(name: str) -> str | None:
  """What precedes the step file name in a method's file name (`final_` of `final_prefix.npz`, '' in a step dir);
  None for a joining file itself (read alone) or a name of no step file."""
  joining = registry.joining_files()
  if name in joining or any(name.endswith('_' + j) for j in joining):
    return None
  main = next((f for f in registry.step_files() if f not in joining and name.endswith(f)), None)
  return None if main is None else name[:len(name) - len(main)]


def beside_files(path: str) -> list[str]:
  """The joining files (a task head) that lie beside the method's file `path`, by name (module docstring)."""
  folder, name = os.path.split(path)
  prefix = _main_prefix(name)
  if prefix is None:
    return []
  return [p for other in registry.joining_files() if epath.Path(p := os.path.join(folder, prefix + other)).exists()]


def join_beside(method: Method, params: Any, path: str, context: registry.ReadContext) -> tuple[Method, Any]:
  """(method, params) read from `path`, with the joining files beside it (module docstring) joined in."""
  folder, name = os.path.split(path)
  prefix = _main_prefix(name)
  if prefix is None:
    return method, params
  if method.task_names and method.head is None and _task_heads_beside(folder, prefix, method.task_names):
    return task_heads.read_task_heads(method, params, folder, context, prefix=prefix)
  for beside in beside_files(path):
    method, params = registry.join_file(method, params, beside, context)
  return method, params


def _task_heads_beside(folder: str, prefix: str, tasks: tuple[str, ...]) -> bool:
  """Whether a multi-task run with per-task heads left its tasks' head files beside its `<prefix>prompts.npz`."""
  return any(epath.Path(folder, prefix + task_heads.task_file(t, HEAD_FILE)).exists() for t in tasks)


def step_file(checkpoint: str, step: int | None = None) -> str | None:
  """The inference file a training step left in its numpy step dir (`Method.numpy_copy`), None when it left
  none the registry knows (or the numpy dir is missing: only process 0 writes it)."""
  numpy_dir, _ = checkpoint_files.checkpoint_step(checkpoint, step)
  if numpy_dir is None:
    return None
  found = [numpy_dir / n for n in registry.step_files() if (numpy_dir / n).exists()]
  return os.fspath(found[0]) if found else None


def recorded_fingerprint(source: str | os.PathLike, step: int | None = None) -> dict | None:
  """The frozen-model fingerprint recorded for a prompt source, None when it records none: a file's
  `<file>.fingerprint.json` sidecar (else a step dir's `fingerprint.json` beside it, for a file inside a numpy
  step dir), a PEFT adapter folder's safetensors metadata, or a training checkpoint's (MODEL_DIR at `step`,
  default the latest, or a step dir) numpy step dir `fingerprint.json`."""
  source = os.fspath(source)
  if peft_adapters.is_adapter_dir(source):
    return peft_adapters.read_fingerprint(source)
  if not epath.Path(source).is_file() and (inside := _export_folder_file(source)) is not None:
    source = inside
  if epath.Path(source).is_file():
    recorded = fingerprint_files.read(fingerprint_files.sidecar_path(source))
    beside = os.path.join(os.path.dirname(source), fingerprint_files.STEP_FILE)
    return recorded if recorded is not None else fingerprint_files.read(beside)
  if '://' not in source and not os.path.exists(source):
    raise PromptError(f'prompt source {source} does not exist')
  return fingerprint_files.read(step_numpy_dir(source, step) / fingerprint_files.STEP_FILE)


def _export_folder_file(path: str) -> str | None:
  """`folder_file` of a folder that is no numpy step dir (those record theirs by step, checked)."""
  return None if os.path.basename(path.rstrip('/')).startswith(step_dirs.NUMPY_PREFIX) else folder_file(path)


def step_numpy_dir(checkpoint: str, step: int | None = None) -> epath.Path:
  """The numpy step dir (`numpy_checkpoints/checkpoint_<step>`) of a MODEL_DIR or either kind of step dir; it may
  not exist (only process 0 writes it)."""
  numpy_dir, orbax_dir = checkpoint_files.checkpoint_step(checkpoint, step)
  if numpy_dir is not None:
    return numpy_dir
  return orbax_dir.parent.parent / step_dirs.NUMPY_CHECKPOINTS / f'{step_dirs.NUMPY_PREFIX}{orbax_dir.name}'


def load_prompt(*, prompt_file: str | None, checkpoint: str | None, step: int | None, prompt_length: int | None,
                embed_dim: int) -> np.ndarray:
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
