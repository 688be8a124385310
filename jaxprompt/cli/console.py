"""What a command shows on the terminal: native start-up logs hidden, jaxprompt's log lines on stderr, and every
failure turned into one line `jaxprompt: error: <message>` plus an exit code (no traceback)."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator

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
