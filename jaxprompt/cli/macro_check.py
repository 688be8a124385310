"""Every gin macro bound after parsing, checked against the macro table (`formats/macros.py`) before any command
runs, so a slip is one line and nothing is written:

  METHOD must be a method factory such as @jaxprompt.methods.prompt_tuning, got the string 'prefix_tuning':
  write --gin.METHOD=@jaxprompt.methods.prefix_tuning

A literal is checked by its kind (`formats.validation.KINDS`); a gin reference by its form: a method is a
factory (`@name`), anything else a value, so `@name()` (its value is checked by the group that takes it). A
string naming a configurable gets the reference to write. A macro set by a flag that no binding uses and the
table does not know is a typo: one line with the close names.
"""
from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Sequence
from typing import Any, Protocol

from jaxprompt.cli import gin_names
from jaxprompt.errors import ConfigError, UsageError
from jaxprompt.formats import macros, validation

_UNBOUND = object()
_MADE_BY_GIN = ('method', 'made by gin')  # kinds only a gin reference can give
_USED_MACRO = re.compile(r'%([A-Za-z_]\w*)')
_SHELL_SAFE = re.compile(r'[\w@%./:,+-]+')  # a value a shell passes on as it is


class Flag(Protocol):
  """A gin binding as the user gave it (`gin_config.Binding`): its text and the flag that gives a text that way."""
  text: str

  def flag(self, text: str | None = None) -> str:
    ...


def _reference_type() -> type:
  from gin import config as gin_lib  # pylint: disable=g-import-not-at-top
  return gin_lib.ConfigurableReference


def _bound(name: str) -> Any:
  """The value gin holds for macro `name` as parsed (references unevaluated), following `%OTHER` (a macro of the
  user's) and gin constants; `_UNBOUND` when it is not set, is `%gin.REQUIRED` or names a macro of the table
  (checked on its own, so the error names the macro the value was given to)."""
  import gin  # pylint: disable=g-import-not-at-top
  reference = _reference_type()
  value = macros.bound(name, _UNBOUND)
  for _ in range(16):  # a chain of macros; gin reports a cycle itself when it evaluates one
    if not (isinstance(value, reference) and value.evaluate):
      break
    if value.configurable.selector == 'gin.macro':
      other = '/'.join(value.scopes)
      value = _UNBOUND if other in macros.MACROS else macros.bound(other, _UNBOUND)
    elif value.configurable.selector == 'gin.constant':
      value = value.scoped_configurable_fn()
      value = _UNBOUND if value is gin.REQUIRED else value
    else:
      break
  return value


def _holds_reference(value: Any) -> bool:
  """A list, tuple or dict with a gin reference inside: its value exists only once gin evaluates it."""
  if isinstance(value, dict):
    return any(_holds_reference(v) for v in value.values())
  if isinstance(value, (list, tuple)):
    return any(_holds_reference(v) for v in value)
  return isinstance(value, _reference_type())


def _methods() -> str:
  names = [s.rsplit('.', 1)[-1] for s in gin_names.method_factories()]
  return f' (methods: {", ".join(names)})' if names else ''


def _makes(configurable: Any) -> str:
  """What a configurable says it returns: a class itself, a function its return annotation ('' if none)."""
  if isinstance(configurable, type):
    return configurable.__name__
  try:
    returns = inspect.signature(configurable).return_annotation
  except (TypeError, ValueError):
    return ''
  if returns is inspect.Signature.empty:
    return ''
  return returns if isinstance(returns, str) else getattr(returns, '__name__', '')


def _as_reference(text: str, macro: macros.Macro) -> str | None:
  """The reference to write for a string naming a configurable of the kind the macro takes ('prefix_tuning' ->
  '@jaxprompt.methods.prefix_tuning'): one in the module of the table's example, a method factory exactly when
  the macro takes one. None when the string names no such configurable."""
  name = text.strip().lstrip('@').removesuffix('()')
  module = macro.example.lstrip('@').removesuffix('()').rpartition('.')[0]
  method = macro.kind == 'method'
  found = [
      s for s in (gin_names.matching(name) if re.fullmatch(r'[\w.]+', name) else [])
      if s.rpartition('.')[0] == module and validation.is_method_factory(gin_names.wrapped(s)) == method
  ]
  return (f'@{found[0]}' if method else f'@{found[0]}()') if len(found) == 1 else None


def _problem(name: str, value: Any) -> tuple[str, str | None] | None:
  """(what is wrong, the value to write instead or None) for macro `name` bound to `value`; None when fine."""
  macro = macros.MACROS[name]
  wrong = f'{name} must be {macro.phrase()}, got {validation.describe(value)}'
  if value is None:
    return None if macro.none else (f'{wrong} (e.g. --gin.{name}={macro.example})', None)
  if isinstance(value, _reference_type()):
    written = f'@{value.selector}'
    if macro.kind != 'method':
      makes = _makes(value.configurable.wrapped)
      if value.evaluate and macro.makes and makes and makes != macro.makes:
        return f'{wrong}, which makes a {makes}', None
      return None if value.evaluate else (wrong, f'{written}()')
    if not validation.is_method_factory(value.configurable.wrapped):
      return f'{wrong}{_methods()}', None
    return (wrong, written) if value.evaluate else None
  if _holds_reference(value):
    return None
  if macro.kind in _MADE_BY_GIN:
    fix = _as_reference(value, macro) if isinstance(value, str) else None
    return (wrong if fix else f'{wrong}{_methods() if macro.kind == "method" else ""}'), fix
  try:
    macros.check(**{name: value})
  except ConfigError as e:
    return str(e), _unquoted(name, value)
  return None


def _unquoted(name: str, value: Any) -> str | None:
  """A quoted number, True / False, list or dict that the macro takes unquoted (`'8'` -> `8`), else None."""
  if not isinstance(value, str):
    return None
  try:
    macros.check(**{name: ast.literal_eval(value.strip())})
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, ConfigError):
    return None
  return value.strip()


def _fix(name: str, value: str, bindings: Sequence[Flag]) -> str:
  """The flag that sets `name` to `value`, written the way the user set it (`--gin.` unless a
  `--gin_bindings` flag did) and as a shell takes it (`--gin.X="{'inputs': 8}"`, `--gin.X="@f()"`)."""
  given = [b for b in bindings if name in gin_names.macro_names(b.text)]
  flag = given[-1].flag(f'{name} = {value}') if given else ''
  if flag and not flag.startswith(f'--gin.{name}='):
    return flag
  return f'--gin.{name}={value}' if _SHELL_SAFE.fullmatch(value) else f'--gin.{name}="{value}"'


def check_macros(bindings: Sequence[Flag] = ()) -> None:
  """A UsageError for the first bound macro the table rejects, or a flag's macro nothing uses (after
  `gin_config.parse`; `bindings` are the flags, for the fix's form)."""
  for name in macros.MACROS:
    value = _bound(name)
    if value is _UNBOUND:
      continue
    problem = _problem(name, value)
    if problem is not None:
      message, fix = problem
      raise UsageError(f'{message}: write {_fix(name, fix, bindings)}' if fix else message)
  _check_flag_macros_are_used(bindings)


def _check_flag_macros_are_used(bindings: Sequence[Flag]) -> None:
  """A macro a flag sets that no gin binding uses and the table does not know does nothing: a typo."""
  import gin  # pylint: disable=g-import-not-at-top
  used = set(_USED_MACRO.findall(gin.config_str()))
  for binding in bindings:
    for name in gin_names.macro_names(binding.text):
      if name not in macros.MACROS and name not in used:
        hint = validation.did_you_mean(name, [*macros.MACROS, *used])
        raise UsageError(f'{binding.flag()}: no gin binding uses the macro {name}, so it would change '
                         f'nothing{hint}')
