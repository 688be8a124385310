"""Checks of entry-point arguments shared by every command: each bad value gets one error naming the gin macro."""
from __future__ import annotations

import os
from typing import Any, Mapping

from jaxprompt.errors import ConfigError
from jaxprompt.models.config import T5Config


def require(value: Any, macro: str, example: str) -> Any:
  """`value`, or a ConfigError naming the gin macro to set."""
  if value is None:
    raise ConfigError(f'{macro} is not set: pass --gin.{macro}={example} or set it in a gin file')
  return value


def check_positive(**values: int | None) -> None:
  for name, value in values.items():
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
      raise ConfigError(f'{name} must be a positive integer, got {value!r}')


def check_feature_lengths(lengths: Any) -> dict[str, int]:
  """TASK_FEATURE_LENGTHS as {'inputs': int, 'targets': int}."""
  lengths = require(lengths, 'TASK_FEATURE_LENGTHS', "\"{'inputs': 512, 'targets': 16}\"")
  if not isinstance(lengths, Mapping) or set(lengths) != {'inputs', 'targets'}:
    raise ConfigError(f"TASK_FEATURE_LENGTHS must be {{'inputs': int, 'targets': int}}, got {lengths!r}")
  check_positive(**{f"TASK_FEATURE_LENGTHS['{k}']": v for k, v in lengths.items()})
  return {k: int(v) for k, v in lengths.items()}


def check_common(model_config: Any, initial_checkpoint_path: Any, mixture_or_task_name: Any,
                 task_feature_lengths: Any, *, checkpoint_required: bool = True,
                 task_required: bool = True) -> tuple[T5Config, str | None, Any, dict[str, int]]:
  """The arguments every entry point (train, train_model, evaluate, infer) shares, checked in one place.

  Returns (T5Config, checkpoint path, task name, {'inputs': n, 'targets': m}). The checkpoint may be None only
  when not `checkpoint_required` (training from scratch), the task only when not `task_required` (infer on
  raw text). A Task object bound to MIXTURE_OR_TASK_NAME (e.g. `@jaxprompt.data.file_task_name()`'s task) is
  replaced by its name.
  """
  config = require(model_config, 'MODEL_CONFIG', '"@jaxprompt.model_config()" (a models/*.gin)')
  if not isinstance(config, T5Config):
    raise ConfigError(f'model_config must be a T5Config (e.g. @jaxprompt.model_config()), got {config!r}')
  checkpoint = initial_checkpoint_path
  if checkpoint_required:
    checkpoint = require(checkpoint, 'INITIAL_CHECKPOINT_PATH', "\"'/path/to/checkpoint'\"")
  checkpoint = None if checkpoint is None else os.fspath(checkpoint)
  name = getattr(mixture_or_task_name, 'name', mixture_or_task_name)
  if task_required:
    name = require(name, 'MIXTURE_OR_TASK_NAME', "\"'my_task'\"")
  return config, checkpoint, name, check_feature_lengths(task_feature_lengths)
