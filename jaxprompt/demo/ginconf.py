"""Parsing the demo's gin files exactly as `jaxprompt train` does (same search paths, same configurables)."""
from __future__ import annotations

import importlib
import logging
import os
from typing import Sequence

import gin

from jaxprompt.errors import ConfigError


def import_configurables() -> None:
  """Every module whose configurables the demo gin files bind (the CLI's set plus the demo's own)."""
  from jaxprompt.cli import main as cli  # pylint: disable=g-import-not-at-top
  cli.import_configurables()
  for name in ('jaxprompt.demo.model', 'jaxprompt.demo.tasks', 'jaxprompt.train.model_tuning'):
    importlib.import_module(name)


def parse(files: Sequence[str], bindings: Sequence[str] = ()) -> None:
  """Clears gin, then parses `files` (looked up like `--gin_file`) and `bindings` ('NAME = value')."""
  from jaxprompt.cli import main as cli  # pylint: disable=g-import-not-at-top  (cli imports the demo lazily too)
  paths = cli.search_paths('')
  try:
    resolved = [cli.resolve_gin_file(f, paths) for f in files]
  except cli.CliError as e:
    raise ConfigError(str(e)) from None
  gin.clear_config()
  for path in paths:
    gin.add_config_file_search_path(path)
  root = logging.getLogger()
  level = root.level
  root.setLevel(logging.CRITICAL)  # gin logs every search-path miss of an `include` as an error
  try:
    gin.parse_config_files_and_bindings(resolved, list(bindings), finalize_config=False)
  finally:
    root.setLevel(level)


def quote(value: str) -> str:
  """A Python string as a gin string literal."""
  return repr(os.fspath(value))


class _DropInMemorySourceWarning(logging.Filter):
  """seqio warns on every shuffled read of a FunctionDataSource that restarts may reshuffle poorly; the demo
  tasks are small in-memory lists, reshuffled by seqio's own buffer, so the warning is noise here."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith('Using an uncached FunctionDataset for training')


def quiet_in_memory_source_warning() -> None:
  logger = logging.getLogger('absl')
  if not any(isinstance(f, _DropInMemorySourceWarning) for f in logger.filters):
    logger.addFilter(_DropInMemorySourceWarning())
