"""Checks of entry-point arguments shared by every command: each bad value gets one error naming the gin macro.

Model-free on purpose (every layer may use them); the entry points' groups (`commands.groups`) check their fields
with them."""
from __future__ import annotations

import os
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


def check_bool(**values: bool) -> None:
  for name, value in values.items():
    if not isinstance(value, bool):
      raise ConfigError(f'{name} must be True or False, got {value!r}')


def check_text(**values: str | None) -> None:
  """Each value None or a non-empty string (a split, a task or metric name)."""
  for name, value in values.items():
    if value is not None and (not isinstance(value, str) or not value):
      raise ConfigError(f'{name} must be a non-empty string, got {value!r}')


def optional_path(value: str | os.PathLike | None, name: str) -> str | None:
  """None, or the path `value` (a non-empty string or os.PathLike) as a string."""
  if value is None:
    return None
  if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
    raise ConfigError(f'{name} must be a path (a quoted string), got {value!r}')
  return os.fspath(value)


def check_feature_lengths(lengths: Any) -> dict[str, int]:
  """TASK_FEATURE_LENGTHS as {'inputs': int, 'targets': int}."""
  lengths = require(lengths, 'TASK_FEATURE_LENGTHS', "\"{'inputs': 512, 'targets': 16}\"")
  if not isinstance(lengths, Mapping) or set(lengths) != {'inputs', 'targets'}:
    raise ConfigError(f"TASK_FEATURE_LENGTHS must be {{'inputs': int, 'targets': int}}, got {lengths!r}")
  check_positive(**{f"TASK_FEATURE_LENGTHS['{k}']": v for k, v in lengths.items()})
  return {k: int(v) for k, v in lengths.items()}
