"""The persistent XLA compilation cache of command-line runs: a repeated `jaxprompt eval` / `infer` / `train` on the
same model and shapes reads its compiled programs from disk instead of compiling them again.

Where the cache lives, the first rule that applies:
  1. `--compilation_cache_dir=DIR` on the command line (`none`, or `--no_compilation_cache`: no cache);
  2. JAX's own setting, left as it is: `JAX_COMPILATION_CACHE_DIR` (or a directory an in-process caller set with
     `jax.config.update`); the test suite sets one per run this way;
  3. `JAXPROMPT_COMPILATION_CACHE=DIR` (`none`: no cache);
  4. `$XDG_CACHE_HOME/jaxprompt/xla`, else `~/.cache/jaxprompt/xla`.

JAX keys an entry by the lowered program, the jax / jaxlib version, the backend, the devices, the compile options
and `XLA_FLAGS`, so a stale entry is never read: a new version or other flags miss and compile. JAX keeps only
programs that took over a second to compile; jaxprompt lowers that floor to zero (and lifts the entry-size
floor) unless JAX's own settings say otherwise, since a CPU run's many small programs add up. A directory that
cannot be written costs one warning line, never the run. The cache is trusted code: keep it private (it is made
with mode 0700).
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from jaxprompt.errors import UsageError

ENV = 'JAXPROMPT_COMPILATION_CACHE'
OFF = 'none'
_DIR = 'jax_compilation_cache_dir'
_ENABLE = 'jax_enable_compilation_cache'
# JAX's floors, lowered when still at JAX's defaults (the value is what jaxprompt sets).
_FLOORS = {'jax_persistent_cache_min_compile_time_secs': 0.0, 'jax_persistent_cache_min_entry_size_bytes': -1}
_JAX_DEFAULTS = {
    _DIR: None, 'jax_persistent_cache_min_compile_time_secs': 1.0, 'jax_persistent_cache_min_entry_size_bytes': 0
}

log = logging.getLogger('jaxprompt')


def default_dir() -> str:
  """`$XDG_CACHE_HOME/jaxprompt/xla`, else `~/.cache/jaxprompt/xla`."""
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'jaxprompt', 'xla')


def _jax_sets(name: str, config: Any) -> bool:
  """Whether JAX option `name` was set by its environment variable or an in-process caller."""
  return name.upper() in os.environ or getattr(config, name) != _JAX_DEFAULTS[name]


def choose(flag: str | None, config: Any) -> str | None:
  """The cache directory jaxprompt sets: `OFF`, a path, or None to leave JAX's own setting (rules 1-4 above)."""
  if flag is not None:
    if not flag.strip():
      raise UsageError('--compilation_cache_dir needs a directory (or none: no cache)')
    return _path(flag)
  if _jax_sets(_DIR, config):
    return None
  env = os.environ.get(ENV, '').strip()
  return _path(env) if env else default_dir()


def _path(value: str) -> str:
  value = value.strip()
  return OFF if value.lower() == OFF else os.path.expanduser(value)


def _writable(path: str) -> str | None:
  """None if `path` is (made) a writable directory, else why not."""
  if '://' in path:  # a remote file system (gs://): JAX reports its own errors
    return None
  try:
    os.makedirs(path, mode=0o700, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as e:
    return f'{type(e).__name__}: {e.strerror or e}'
  return None


def settings(flag: str | None, config: Any) -> dict[str, Any]:
  """The JAX options to set for this run, given JAX's `config` ({}: leave JAX as it is); one warning line if the
  directory is unusable."""
  path = choose(flag, config)
  if path is None:
    return {}
  if path == OFF:
    return {_ENABLE: False}
  problem = _writable(path)
  if problem:
    log.warning(
        'compilation cache %s is not usable (%s): compiling without it (choose another with '
        '--compilation_cache_dir=DIR or %s=DIR, or turn it off with --no_compilation_cache)', path, problem, ENV)
    return {_ENABLE: False}
  updates: dict[str, Any] = {_DIR: path}
  updates.update({k: v for k, v in _FLOORS.items() if not _jax_sets(k, config)})
  return updates


@contextlib.contextmanager
def configured(flag: str | None) -> Iterator[None]:
  """Sets the cache for one command and restores JAX's previous settings after it (for in-process callers).

  JAX opens its cache once per process, at the first compilation: it is reset on both sides so that a change
  of directory takes effect.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top
  updates = settings(flag, jax.config)
  saved = {name: getattr(jax.config, name) for name in updates}
  for name, value in updates.items():
    jax.config.update(name, value)
  if updates:
    compilation_cache.reset_cache()
  try:
    yield
  finally:
    for name, value in saved.items():
      jax.config.update(name, value)
    if updates:
      compilation_cache.reset_cache()
