"""Checks of entry-point arguments shared by every command: each bad value gets one error naming the gin macro.

Model-free on purpose (every layer may use them); the check of the model config is `commands.configs.check_common`."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxprompt.errors import ConfigError


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
