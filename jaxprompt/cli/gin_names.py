"""The names gin knows: the macros gin text sets and what gin holds for a macro; for 'did you mean', the registered
configurables and their parameters, the tuning methods and the gin files of the search paths. Every hint here
is '' or starts with '; ' so it ends an error line."""
from __future__ import annotations

import inspect
import os
import re
import tokenize
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from jaxprompt.formats import validation

# gin's own messages for a name it does not know (gin-config 0.5.0).
_UNKNOWN_REFERENCE = re.compile(r"No configurable matching reference '@([\w.]+)(\(\))?'")
_UNKNOWN_CONFIGURABLE = re.compile(r"No configurable matching '([\w.]+)'")
_UNKNOWN_PARAMETER = re.compile(r"Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'")
_MISSING_INCLUDE = re.compile(r'Unable to open file: (.+?)\. Searched config paths')


class SyntaxOnly:
  """A gin parser delegate that builds nothing: syntax is read before any configurable is imported."""

  def configurable_reference(self, scoped_configurable_name: str, evaluate: bool) -> Any:
    del evaluate
    return scoped_configurable_name

  def macro(self, macro_name: str) -> Any:
    return macro_name


def statements(source: Any) -> Iterator[Any]:
  """The statements (gin's `BindingStatement`, `IncludeStatement`, ...) of gin text or an open file, read for
  syntax only (no imports, nothing bound)."""
  from gin import config_parser  # pylint: disable=g-import-not-at-top
  yield from config_parser.ConfigParser(source, SyntaxOnly())


def macro_names(text: str) -> list[str]:
  """The macros the gin bindings `text` set (`NAME = VALUE` statements; no imports, nothing bound)."""
  from gin import config_parser  # pylint: disable=g-import-not-at-top
  try:
    found = list(statements(text))
  except (SyntaxError, ValueError, tokenize.TokenError):
    return []
  return [s.selector for s in found if isinstance(s, config_parser.BindingStatement) and not s.arg_name and not s.scope]


def registered() -> list[str]:
  """The complete selector of every registered gin configurable ('jaxprompt.train', ...)."""
  from gin import config as gin_config  # pylint: disable=g-import-not-at-top
  # gin (pinned at 0.5.0) has no public listing of its registry.
  return sorted(selector for selector, _ in gin_config._REGISTRY.items())  # pylint: disable=protected-access


def matching(name: str) -> list[str]:
  """The registered selectors `name` picks out as gin reads it ('prefix_tuning', 'methods.prefix_tuning')."""
  from gin import config as gin_config  # pylint: disable=g-import-not-at-top
  try:
    return sorted(gin_config._REGISTRY.matching_selectors(name))  # pylint: disable=protected-access
  except (KeyError, ValueError):
    return []


def wrapped(selector: str):
  """The function or class registered as `selector` (not gin's wrapper)."""
  from gin import config as gin_config  # pylint: disable=g-import-not-at-top
  return gin_config._REGISTRY[selector].wrapped  # pylint: disable=protected-access


def method_factories() -> list[str]:
  """The selectors of the registered tuning methods' factories (`validation.is_method_factory`)."""
  return [s for s in registered() if validation.is_method_factory(wrapped(s))]


def close_selectors(name: str, selectors: Iterable[str]) -> list[str]:
  """The selectors closest to `name`, compared on as many trailing components as `name` has ('trian' against
  'train', 'jaxprompt.trian' against 'jaxprompt.train')."""
  depth = name.count('.') + 1
  by_tail: dict[str, list[str]] = {}
  for selector in selectors:
    parts = selector.split('.')
    if len(parts) >= depth:
      by_tail.setdefault('.'.join(parts[-depth:]), []).append(selector)
  return [s for tail in validation.close_matches(name, by_tail) for s in by_tail[tail]][:3]


def parameter_hint(selector: str, parameter: str) -> str:
  """Close matches among the parameters of configurable `selector`, or all of them when none is close."""
  from gin import config as gin_config  # pylint: disable=g-import-not-at-top
  try:
    names = [p for p in inspect.signature(gin_config.get_configurable(selector)).parameters if p != 'self']
  except (KeyError, ValueError, TypeError):
    return ''
  return validation.did_you_mean(parameter, names) or f'; its parameters: {", ".join(names)}'


def gin_files(paths: Sequence[str], folder: str) -> list[str]:
  """The gin files in `folder` of each search path, named as `--gin_file` takes them ('methods/x.gin')."""
  names = set()
  for base in paths:
    where = os.path.join(base, folder)
    if os.path.isdir(where):
      names.update(os.path.join(folder, f) for f in os.listdir(where) if f.endswith('.gin'))
  return sorted(names)


def gin_file_hint(name: str, paths: Sequence[str]) -> str:
  """'; did you mean methods/prefix_tuning.gin? (methods: model_tuning, ...)' for a gin file not found: close
  names in its folder (or in the closest folder of that name), then what that folder holds."""
  folder = os.path.dirname(name)
  candidates = gin_files(paths, folder)
  if not candidates and folder and not os.path.isabs(name):  # the folder itself mistyped: 'method/x.gin'
    folders = {
        d for base in paths if os.path.isdir(base) for d in os.listdir(base) if os.path.isdir(os.path.join(base, d))
    }
    close = validation.close_matches(folder, folders, n=1)
    folder = close[0] if close else folder
    candidates = gin_files(paths, folder)
  if not candidates:
    return ''
  hint = validation.did_you_mean(name, candidates)
  listing = ', '.join(os.path.splitext(os.path.basename(c))[0] for c in candidates)
  return f'{hint} ({folder or "gin files"}: {listing})'


def gin_error_hint(message: str, paths: Sequence[str]) -> str:
  """Close matches for the name a gin error says it does not know (a configurable, a parameter, an include)."""
  if m := _UNKNOWN_REFERENCE.search(message):
    return validation.suggest(f'@{s}{m.group(2) or ""}' for s in close_selectors(m.group(1), registered()))
  if m := _UNKNOWN_CONFIGURABLE.search(message):
    return validation.suggest(close_selectors(m.group(1), registered()))
  if m := _UNKNOWN_PARAMETER.search(message):
    return parameter_hint(m.group(1), m.group(2))
  if m := _MISSING_INCLUDE.search(message):
    return gin_file_hint(m.group(1), paths)
  return ''
