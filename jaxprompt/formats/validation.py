"""Checks of entry-point arguments shared by every command: each bad value gets one error naming the gin macro.

Model-free on purpose (every layer may use them). `KINDS` says once what each kind of setting must be (the phrase
errors and docs show, and the check of a Python value); the macro table (`formats/macros.py`) gives every gin
macro its kind, and the entry points' groups (`commands.groups`) check their fields through it.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxprompt.errors import ConfigError

FEATURE_GROUPS = ('inputs', 'targets')  # TASK_FEATURE_LENGTHS's keys and LENGTH_BUCKETS' groups
METHOD_FACTORY_ARGS = ('config', 'eos_id')  # a method factory's first parameters (docs/architecture.md)


def describe(value: Any) -> str:
  """A value as an error shows it: strings say so (a quoted string where a number or a reference belongs is
  the usual slip), gin references as written (`@name`, `@name()`, `%MACRO`)."""
  return f'the string {value!r}' if isinstance(value, str) else repr(value)


def close_matches(name: str, known: Iterable[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
  """The names of `known` closest to `name`, best first (what every 'did you mean' offers)."""
  return difflib.get_close_matches(name, sorted(set(known)), n=n, cutoff=cutoff)


def suggest(names: Iterable[str], quote: bool = False) -> str:
  """'; did you mean a or b?' (the end of an error line), or '' for no names."""
  names = [repr(n) if quote else n for n in names]
  return f'; did you mean {" or ".join(names)}?' if names else ''


def did_you_mean(name: str, known: Iterable[str], quote: bool = False) -> str:
  """`suggest` the names of `known` closest to `name`."""
  return suggest(close_matches(name, known), quote)


def require(value: Any, macro: str, example: str) -> Any:
  """`value`, or a ConfigError naming the gin macro to set."""
  if value is None:
    raise ConfigError(f'{macro} is not set: pass --gin.{macro}={example} or set it in a gin file')
  return value


# ------------------------------------------------------------------------------------ the kinds


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
  return _is_int(value) or isinstance(value, (float, np.floating))


def _is_path(value: Any) -> bool:
  return isinstance(value, (str, os.PathLike)) and bool(os.fspath(value))


def _is_sequence_of(value: Any, test: Callable[[Any], bool]) -> bool:
  """A non-empty list or tuple (never a string) of items passing `test`."""
  return isinstance(value, (list, tuple)) and bool(value) and all(test(v) for v in value)


def is_method_factory(value: Any) -> bool:
  """A tuning method's factory `(config, eos_id, ...) -> Method` (a gin configurable, a partial of one, ...)."""
  if not callable(value) or isinstance(value, type):
    return False
  try:
    names = tuple(inspect.signature(value).parameters)
  except (TypeError, ValueError):  # a builtin without a signature is no method factory
    return False
  return names[:len(METHOD_FACTORY_ARGS)] == METHOD_FACTORY_ARGS


FEATURE_LENGTHS = "{'inputs': int, 'targets': int}"
_BUCKET_GROUP = 'a positive step (e.g. 64), a list of lengths'
LENGTH_BUCKETS = f"{_BUCKET_GROUP}, {{'inputs': ..., 'targets': ...}} or None"


def length_bucket_group(spec: Any, name: str, phrase: str = f'{_BUCKET_GROUP} or None') -> int | tuple[int, ...] | None:
  """One group's LENGTH_BUCKETS spec -> a step (int), a sorted tuple of lengths, or None (never cut)."""
  if spec is None:
    return None
  if isinstance(spec, (bool, np.bool_)) or not isinstance(spec, (int, np.integer, list, tuple)):
    raise ConfigError(f'{name} must be {phrase}, got {describe(spec)}')
  if isinstance(spec, (int, np.integer)):
    if spec <= 0:
      raise ConfigError(f'{name} step must be positive, got {spec}')
    return int(spec)
  if not _is_sequence_of(spec, lambda x: _is_int(x) and x > 0):
    raise ConfigError(f'{name} must list positive integer lengths, got {spec!r}')
  return tuple(sorted({int(x) for x in spec}))


def length_buckets(spec: Any, name: str = 'LENGTH_BUCKETS') -> dict[str, int | tuple[int, ...] | None]:
  """A LENGTH_BUCKETS spec (see `jaxprompt.data.buckets`) -> {group: step, lengths or None}."""
  if isinstance(spec, Mapping):
    unknown = set(spec) - set(FEATURE_GROUPS)
    if unknown:
      raise ConfigError(f'{name} keys must be among {FEATURE_GROUPS}, got unknown {sorted(unknown)}')
    return {g: length_bucket_group(spec.get(g), f'{name}[{g!r}]') for g in FEATURE_GROUPS}
  parsed = length_bucket_group(spec, name, LENGTH_BUCKETS)
  return dict.fromkeys(FEATURE_GROUPS, parsed)


def check_feature_lengths(lengths: Any, name: str = 'TASK_FEATURE_LENGTHS') -> dict[str, int]:
  """TASK_FEATURE_LENGTHS as {'inputs': int, 'targets': int}."""
  lengths = require(lengths, name, "\"{'inputs': 512, 'targets': 16}\"")
  if not isinstance(lengths, Mapping) or set(lengths) != set(FEATURE_GROUPS):
    raise ConfigError(f'{name} must be {FEATURE_LENGTHS}, got {describe(lengths)}')
  check_positive(**{f"{name}['{k}']": v for k, v in lengths.items()})
  return {k: int(v) for k, v in lengths.items()}


@dataclasses.dataclass(frozen=True)
class Kind:
  """What a setting must be: `expects` (errors and docs: '<name> must be <expects>, got ...') and either `test`
  (value, choices) -> bool, or `check` (value, name), which raises its own, more precise, error."""
  expects: str
  test: Callable[[Any, Sequence[Any]], bool] | None = None
  check: Callable[[Any, str], Any] | None = None


KINDS: dict[str, Kind] = {
    'positive int': Kind('a positive integer', lambda v, _: _is_int(v) and v > 0),
    'int': Kind('an integer', lambda v, _: _is_int(v)),
    'count': Kind('an integer >= 0', lambda v, _: _is_int(v) and v >= 0),
    'bool': Kind('True or False', lambda v, _: isinstance(v, (bool, np.bool_))),
    'text': Kind('a non-empty string', lambda v, _: isinstance(v, str) and bool(v)),
    'path': Kind('a path (a quoted string)', lambda v, _: _is_path(v)),
    'paths': Kind('a path, or a list of paths', lambda v, _: _is_path(v) or _is_sequence_of(v, _is_path)),
    'rate': Kind('a number in [0, 1)', lambda v, _: _is_number(v) and 0 <= v < 1),
    'positive number': Kind('a positive number', lambda v, _: _is_number(v) and v > 0),
    'labels': Kind("a list of label strings, e.g. ['negative', 'positive']",
                   lambda v, _: _is_sequence_of(v, lambda x: isinstance(x, str) and bool(x))),
    'one of': Kind('one of {choices}', lambda v, choices: isinstance(v, str) and v in choices),
    'some of': Kind('a tuple of {choices}', lambda v, choices: _is_sequence_of(v, lambda x: x in choices)),
    'feature lengths': Kind(FEATURE_LENGTHS, check=check_feature_lengths),
    'length buckets': Kind(LENGTH_BUCKETS, check=length_buckets),
    'method': Kind('a method factory (config, eos_id) -> Method', lambda v, _: is_method_factory(v)),
    # What only its gin configurable can make (a T5Config, an initialiser): checked by whoever takes it.
    'made by gin': Kind('a value made by a gin configurable', lambda v, _: True),
    'task heads': Kind(
        "a dict {task: {'kind': ..., 'num_labels': ...}}",
        lambda v, _: isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, dict) for k, x in v.items())),
}


def expects(kind: str, choices: Collection[Any] = ()) -> str:
  """The phrase of `kind` ('a positive integer', "one of 'a', 'b'")."""
  return KINDS[kind].expects.replace('{choices}', ', '.join(repr(c) for c in choices))


def check_kind(kind: str, name: str, value: Any, choices: Sequence[Any] = (), phrase: str | None = None) -> None:
  """A ConfigError '<name> must be <phrase>, got <value>' unless `value` is of `kind`."""
  spec = KINDS[kind]
  if spec.check is not None:
    spec.check(value, name)
  elif not spec.test(value, choices):
    raise ConfigError(f'{name} must be {phrase or expects(kind, choices)}, got {describe(value)}')


# ------------------------------------------------------------------------------------ by name (None: unset)


def check_positive(**values: int | None) -> None:
  for name, value in values.items():
    if value is not None:
      check_kind('positive int', name, value)


def check_bool(**values: bool) -> None:
  for name, value in values.items():
    check_kind('bool', name, value)


def check_text(**values: str | None) -> None:
  """Each value None or a non-empty string (a split, a task or metric name)."""
  for name, value in values.items():
    if value is not None:
      check_kind('text', name, value)


def optional_path(value: str | os.PathLike | None, name: str) -> str | None:
  """None, or the path `value` (a non-empty string or os.PathLike) as a string."""
  if value is None:
    return None
  check_kind('path', name, value)
  return os.fspath(value)
