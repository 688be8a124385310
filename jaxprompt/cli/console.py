"""What a command shows on the terminal: native start-up logs hidden, jaxprompt's log lines on stderr, and every
failure turned into one line `jaxprompt: error: <message>` plus an exit code (no traceback)."""
from __future__ import annotations

import contextlib
import importlib.abc
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from jaxprompt.errors import JaxPromptError, TrainingError

PROG = 'jaxprompt'
# seqio's advice on uncached FunctionDataSource tasks: jaxprompt's file and demo tasks reshuffle the whole
# (small) split each epoch, so the advice does not apply.
_NOISE_PREFIXES = ('Using an uncached FunctionDataset for training',)


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
  """Hides the C++ log lines TensorFlow / XLA print at import whatever TF_CPP_MIN_LOG_LEVEL says (replayed if
  the block fails, since they may explain why)."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as sink:
    os.dup2(sink.fileno(), 2)
    try:
      yield
    except BaseException:
      os.dup2(saved, 2)
      sink.seek(0)
      sys.stderr.write(sink.read().decode('utf-8', 'replace'))
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)


# Modules whose first import prints native log lines (TensorFlow's C++ start-up; seqio imports it too).
NOISY_IMPORTS = ('tensorflow',)


class _QuietLoader(importlib.abc.Loader):
  """Runs a module's import under `quiet_native_stderr`; the module keeps its own loader."""

  def __init__(self, loader: Any):
    self._loader = loader

  def create_module(self, spec: Any) -> Any:
    return self._loader.create_module(spec)

  def exec_module(self, module: Any) -> None:
    module.__loader__ = module.__spec__.loader = self._loader
    with quiet_native_stderr():
      self._loader.exec_module(module)


class _QuietFinder(importlib.abc.MetaPathFinder):
  """Finds `names` as the other finders do, with `_QuietLoader` around their loader."""

  def __init__(self, names: Sequence[str]):
    self._names = tuple(names)

  def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
    if fullname not in self._names:
      return None
    for finder in sys.meta_path:
      find = getattr(finder, 'find_spec', None) if finder is not self else None
      spec = find(fullname, path, target) if find else None
      if spec is not None and spec.loader is not None:
        spec.loader = _QuietLoader(spec.loader)
        return spec
    return None


@contextlib.contextmanager
def quiet_imports(names: Sequence[str] = NOISY_IMPORTS) -> Iterator[None]:
  """Hides the native log lines of `names`' first import wherever it happens in the block (a command may load
  TensorFlow only once it reads a task)."""
  finder = _QuietFinder(names)
  sys.meta_path.insert(0, finder)
  try:
    yield
  finally:
    sys.meta_path.remove(finder)


class _StderrHandler(logging.Handler):
  """Writes to whatever `sys.stderr` is now (not the stream of the first call, e.g. under pytest)."""

  def emit(self, record: logging.LogRecord) -> None:
    try:
      sys.stderr.write(self.format(record) + '\n')
    except Exception:  # pylint: disable=broad-except
      self.handleError(record)


class DropKnownNoise(logging.Filter):
  """Drops library warnings that do not apply to jaxprompt's runs (see `_NOISE_PREFIXES`)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_NOISE_PREFIXES)


def quiet_known_noise() -> None:
  """Installs `DropKnownNoise` on absl's logger for the rest of the process (the demo and benchmarks)."""
  logger = logging.getLogger('absl')
  if not any(isinstance(f, DropKnownNoise) for f in logger.filters):
    logger.addFilter(DropKnownNoise())


@contextlib.contextmanager
def console_logging() -> Iterator[None]:
  """jaxprompt's INFO lines on stderr for the duration of a command (undone after, for in-process callers)."""
  logger = logging.getLogger('jaxprompt')
  handler = _StderrHandler()
  handler.setFormatter(logging.Formatter('%(asctime)s %(message)s', datefmt='%H:%M:%S'))
  saved = logger.level, logger.propagate
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  logger.propagate = False
  noise = DropKnownNoise()
  absl_logger = logging.getLogger('absl')
  absl_logger.addFilter(noise)
  try:
    yield
  finally:
    logger.removeHandler(handler)
    logger.level, logger.propagate = saved
    absl_logger.removeFilter(noise)


def one_line(text: str) -> str:
  """Gin appends context lines ('In call to configurable ...', file and line): keeps the useful ones."""
  lines = [line.strip() for line in str(text).splitlines() if line.strip()]
  lines = [line for line in lines if not line.startswith('In call to configurable')]
  return '; '.join(lines) or type(text).__name__


def fail(message: str, code: int, prog: str = PROG) -> int:
  """Writes `<prog>: error: <message>` as one line; returns `code`."""
  sys.stderr.write(f'{prog}: error: {" ".join(str(message).split())}\n')
  sys.stderr.flush()
  return code


def gin_call_error(e: Exception) -> str | None:
  """A message for errors gin raises when calling configurables (unset macro, missing required binding)."""
  text = str(e)
  if 'No values supplied by Gin or caller' in text or 'Required bindings' in text or 'REQUIRED' in text:
    scope = text.rsplit("in scope '", 1)
    if 'macro()' in text and len(scope) == 2:
      name = scope[1].split("'", 1)[0]
      return f'gin macro {name} is used but never set: pass --gin.{name}=VALUE or set it in a gin file'
    return f'gin: {one_line(text)}'
  return None


def run_reporting_errors(command: Callable[[], int], prog: str = PROG) -> int:
  """Runs `command`; a bad input becomes one error line and exit code 2 (1 for a failed training run, 130 on
  Ctrl-C). Anything else is a bug in jaxprompt and keeps its traceback."""
  try:
    return command()
  except TrainingError as e:
    return fail(one_line(str(e)), 1, prog)
  except JaxPromptError as e:
    return fail(one_line(str(e)), 2, prog)
  except KeyboardInterrupt:
    return fail('interrupted', 130, prog)
  except OSError as e:  # a file the user named cannot be read or written
    where = f'{e.filename}: ' if getattr(e, 'filename', None) else ''
    return fail(f'{where}{e.strerror or e}', 2, prog)
  except (TypeError, ValueError, RuntimeError) as e:
    message = gin_call_error(e)
    if message is None:
      raise
    return fail(message, 2, prog)
