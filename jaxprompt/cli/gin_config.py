"""The one place gin files and bindings are parsed, for the command line and the demo alike.

gin files are looked up in `--gin_search_paths`, then the current directory, then jaxprompt's own `gin_configs/`
(the repository folder; `jaxprompt/gin_configs` links to it in a checkout and is a copy inside a wheel). Values
are gin syntax, so strings are quoted: `--gin.MODEL_DIR="'/tmp/run'"`. A value gin cannot parse is reported
naming the flag (or file and line) it came from and, for a bare string, the quoted form.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import os
import pathlib
import sys
import tokenize
from collections.abc import Iterator, Sequence
from typing import Any

from jaxprompt.cli import console, gin_names, macro_check
from jaxprompt.errors import UsageError

PACKAGE_GIN_CONFIGS = pathlib.Path(__file__).resolve().parent.parent / 'gin_configs'

# Modules defining the configurables jaxprompt's gin files bind, imported before any gin file is parsed: TensorFlow,
# seqio and the GLUE / SuperGLUE tasks first, so that a gin file's own `import` may build on them.
CONFIGURABLE_MODULES = ('seqio', 'tensorflow', 'jaxprompt.data.tasks', 'jaxprompt.data.custom', 'jaxprompt.methods',
                        'jaxprompt.runtime.optim', 'jaxprompt.commands.configs', 'jaxprompt.commands.groups',
                        'jaxprompt.eval.evaluation', 'jaxprompt.commands.train', 'jaxprompt.commands.evaluate',
                        'jaxprompt.commands.infer', 'jaxprompt.commands.inspect')
# What a light start-up imports: none of these loads TensorFlow (about 4 s), Orbax or the training loop. A task's
# modules load when the run looks the task up (TensorFlow only for a seqio task, not a text task); all the others,
# before parsing again, when a gin file fails to parse without them (e.g. a training run's config.gin binds
# `jaxprompt.train`).
LIGHT_MODULES = tuple(m for m in CONFIGURABLE_MODULES
                      if m not in ('seqio', 'tensorflow', 'jaxprompt.data.tasks', 'jaxprompt.commands.train'))

OVERRIDE = 'override'  # --gin.NAME=VALUE
RAW = 'raw'  # --gin_bindings='NAME = VALUE'
# The first characters of values that are gin literals or references, not bare words missing their quotes.
_LITERAL_STARTS = tuple('\'"[({@%-+.0123456789')


@dataclasses.dataclass(frozen=True)
class Binding:
  """One gin binding `NAME = VALUE` and the kind of flag it came from (errors show it as the user wrote it)."""
  text: str
  kind: str = OVERRIDE

  def flag(self, text: str | None = None) -> str:
    """The flag that gives `text` (default: this binding) the way this binding was given."""
    text = self.text if text is None else text
    if self.kind == OVERRIDE:
      name, _, value = text.partition(' = ')
      return f'--gin.{name}={value}'
    return f'--gin_bindings="{text}"'


def flag_bindings(raw: Sequence[str], overrides: Sequence[str]) -> list[Binding]:
  """`--gin_bindings` then `--gin.NAME=VALUE` (parsed in that order, so the overrides win)."""
  return [Binding(b, RAW) for b in raw] + [Binding(o, OVERRIDE) for o in overrides]


def quote(value: str | os.PathLike) -> str:
  """A Python string as a gin string literal."""
  return repr(os.fspath(value))


# ------------------------------------------------------------------------------------ files


def search_paths(flag: str = '') -> list[str]:
  """--gin_search_paths entries, then the current directory, then jaxprompt's gin_configs/."""
  paths = [p.strip() for p in flag.split(',') if p.strip()]
  paths.append(os.getcwd())
  if PACKAGE_GIN_CONFIGS.is_dir():
    paths.append(str(PACKAGE_GIN_CONFIGS))
  return paths


def resolve_gin_file(name: str, paths: Sequence[str]) -> str:
  """The absolute path of gin file `name`, looked up in `paths` unless absolute; not found: a UsageError with the
  close names (`gin file methods/prefix_tunning.gin not found; did you mean methods/prefix_tuning.gin? ...`)."""
  if os.path.isabs(name):
    if os.path.isfile(name):
      return name
    raise UsageError(f'gin file {name} does not exist{gin_names.gin_file_hint(name, [""])}')
  for base in paths:
    candidate = os.path.join(base, name)
    if os.path.isfile(candidate):
      return os.path.abspath(candidate)
  hint = gin_names.gin_file_hint(name, paths) or f' (searched {", ".join(paths)})'
  raise UsageError(f'gin file {name} not found{hint}')


# ------------------------------------------------------------------------------------ errors


def _value_error(e: SyntaxError, binding: Binding | None) -> str | None:
  """The message for a binding whose value gin cannot parse, or None for other syntax errors."""
  if not str(e.msg).startswith(('Unable to parse value', 'malformed node or string')):
    return None
  line = (e.text or '').strip()
  if binding is not None and not line:  # gin reports an empty value against an empty line
    line = binding.text.strip().splitlines()[(e.lineno or 1) - 1].strip()
  name, _, value = (part.strip() for part in line.partition('='))
  if not value.startswith(('"', "'")):  # a bare word's trailing comment is not part of it
    value = value.split('#', 1)[0].rstrip()
  where = binding.flag() if binding is not None else f'gin file {e.filename}:{e.lineno}: {name}'
  if not value:
    return f'{where}: {name} has no value (gin syntax: strings need quotes)'
  message = f'{where}: gin could not parse the value {value}'
  if value.startswith(_LITERAL_STARTS):
    return f'{message} ({e.msg.rstrip(".")})'
  fixed = f'{name} = {quote(value)}'
  if binding is None:
    return f'{message}; strings need quotes: {fixed}'
  if binding.kind == OVERRIDE:
    return f'{message}; strings need quotes: --gin.{name}="{quote(value)}"'
  return f'{message}; strings need quotes: {binding.flag(fixed)}'


def _gin_error(e: Exception, binding: Binding | None, paths: Sequence[str] = ()) -> UsageError:
  """One line naming the flag or file, for anything gin raises while parsing; a name gin does not know (a
  configurable, a parameter, an included file) with its close matches (`paths`: where includes are found)."""
  if isinstance(e, SyntaxError):
    message = _value_error(e, binding)
    if message is not None:
      return UsageError(message)
    if binding is None and e.filename:
      return UsageError(f'gin file {e.filename}:{e.lineno}: {e.msg}: {(e.text or "").strip()}')
  text = str(e) or type(e).__name__
  hint = gin_names.gin_error_hint(text, paths)
  if binding is not None:  # gin's context lines would repeat the binding the flag already shows
    return UsageError(f'{binding.flag()}: gin: {text.splitlines()[0].rstrip(".")}{hint}')
  return UsageError(f'gin: {console.one_line(text)}{hint}')


def check_syntax(files: Sequence[str], bindings: Sequence[Binding]) -> None:
  """Parses files and bindings for syntax only (no imports, so a typo fails before TensorFlow loads)."""
  for path in files:
    with open(path, encoding='utf-8') as f:
      try:
        for _ in gin_names.statements(f):
          pass
      except (SyntaxError, ValueError, tokenize.TokenError) as e:
        raise _gin_error(e, None) from None
  for binding in bindings:
    try:
      for _ in gin_names.statements(binding.text):
        pass
    except (SyntaxError, ValueError, tokenize.TokenError) as e:
      raise _gin_error(e, binding) from None


# ------------------------------------------------------------------------------------ parsing


def prepare(files: Sequence[str], bindings: Sequence[Binding | str] = (),
            search_path_flag: str = '') -> tuple[list[str], list[Binding]]:
  """Resolves the gin files and checks files and bindings for syntax; plain strings are `--gin.` overrides."""
  paths = search_paths(search_path_flag)
  resolved = [resolve_gin_file(f, paths) for f in files]
  checked = [b if isinstance(b, Binding) else Binding(b) for b in bindings]
  check_syntax(resolved, checked)
  return resolved, checked


@contextlib.contextmanager
def _quiet_root_logging() -> Iterator[None]:
  """gin logs every search-path miss of an `include` as an error before it finds the file, or raises (and what
  it raises is what we report)."""
  root = logging.getLogger()
  old = root.level
  root.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    root.setLevel(old)


def parse(files: Sequence[str], bindings: Sequence[Binding | str] = (), search_path_flag: str = '') -> None:
  """Clears gin, then parses `files` (looked up like `--gin_file`) and `bindings`, in that order.

  Needs `import_configurables()` first; after `import_configurables(light=True)`, a failed parse imports the
  other modules and parses again. Every gin parse error is a UsageError naming its flag or file.
  """
  resolved, checked = prepare(files, bindings, search_path_flag)
  try:
    _parse_all(resolved, checked, search_path_flag)
  except UsageError:
    if not import_configurables():  # nothing left to import: the config itself is wrong
      raise
    _parse_all(resolved, checked, search_path_flag)
  macro_check.check_macros(checked)


def _parse_all(resolved: Sequence[str], checked: Sequence[Binding], search_path_flag: str) -> None:
  import gin  # pylint: disable=g-import-not-at-top
  paths = search_paths(search_path_flag)
  gin.clear_config()
  for path in paths:
    gin.add_config_file_search_path(path)
  with _quiet_root_logging():
    for path in resolved:
      _parse_one(gin.parse_config_file, path, None, paths)
    for binding in checked:
      _parse_one(gin.parse_config, binding.text, binding, paths)


def _parse_one(parse_fn: Any, source: str, binding: Binding | None, paths: Sequence[str]) -> None:
  try:
    parse_fn(source)
  except (ValueError, KeyError, TypeError, SyntaxError, OSError, ImportError, AttributeError, tokenize.TokenError) as e:
    raise _gin_error(e, binding, paths) from e


def bind_fields(configurable: str, **values: Any) -> None:
  """Binds each field given (not None) of `configurable`, e.g. a command-line flag's value into its group
  (`jaxprompt.PromptSource.prompt_file`): it wins over the gin files, whose other bindings stay."""
  import gin  # pylint: disable=g-import-not-at-top
  for name, value in values.items():
    if value is not None:
      gin.bind_parameter(f'{configurable}.{name}', value)


def bind_macro(name: str, value: Any) -> None:
  """Binds gin macro `name` to a Python literal `value` (over what the files bound)."""
  import gin  # pylint: disable=g-import-not-at-top
  gin.parse_config(f'{name} = {value!r}')


def import_configurables(extra_modules: Sequence[str] = (), light: bool = False) -> bool:
  """Imports every module with gin configurables (`LIGHT_MODULES` only when `light`), plus `extra_modules`
  (e.g. the demo's), before gin files are parsed, hiding native start-up logs; on a pod, also joins the other
  processes. Returns whether any module was imported now."""
  modules = [m for m in (*(LIGHT_MODULES if light else CONFIGURABLE_MODULES), *extra_modules) if m not in sys.modules]
  with console.quiet_native_stderr():
    for module in modules:
      importlib.import_module(module)
    import jax  # pylint: disable=g-import-not-at-top

    from jaxprompt.parallel import multihost  # pylint: disable=g-import-not-at-top
    multihost.maybe_initialize_distributed()  # on a pod: before anything touches a device
    jax.devices()  # the backend's start-up logs, too
  return bool(modules)
