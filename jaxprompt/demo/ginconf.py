"""Parsing the demo's gin files exactly as `jaxprompt train` does (same search paths, same configurables)."""
from __future__ import annotations

import os
from typing import Sequence

import gin

from jaxprompt.errors import ConfigError


def import_configurables() -> None:
  """Every module whose configurables the demo gin files bind (the CLI's set plus the demo's own)."""
  # pylint: disable=g-import-not-at-top,unused-import
  from jaxprompt import cli
  cli.import_configurables()
  from jaxprompt.demo import model, tasks
  from jaxprompt.training import model_tuning


def parse(files: Sequence[str], bindings: Sequence[str] = ()) -> None:
  """Clears gin, then parses `files` (looked up like `--gin_file`) and `bindings` ('NAME = value')."""
  from jaxprompt import cli  # pylint: disable=g-import-not-at-top  (cli imports the demo lazily too)
  paths = cli.search_paths('')
  try:
    resolved = [cli.resolve_gin_file(f, paths) for f in files]
  except cli.CliError as e:
    raise ConfigError(str(e)) from None
  gin.clear_config()
  for path in paths:
    gin.add_config_file_search_path(path)
  gin.parse_config_files_and_bindings(resolved, list(bindings), finalize_config=False)


def quote(value: str) -> str:
  """A Python string as a gin string literal."""
  return repr(os.fspath(value))
