"""A `--task` file task gets its TASK_FEATURE_LENGTHS from its data, unless the user set them.

Set by the user means bound on the command line (`--gin.TASK_FEATURE_LENGTHS=...`, `--gin_bindings`) or in a gin
file of their own (or a file it includes), as the macro or as `jaxprompt.DataConfig.task_feature_lengths`. The
values of the gin files shipped with jaxprompt (`runs/*.gin`, `models/demo.gin`) are defaults for their own tasks
and do not count. Lengths from the data: `jaxprompt.data.task_spec.derived_lengths`.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from jaxprompt.cli import gin_config, gin_names
from jaxprompt.errors import UsageError
from jaxprompt.formats import macros

MACRO = 'TASK_FEATURE_LENGTHS'
_FIELD = ('DataConfig', 'task_feature_lengths')  # the group field the run files bind from the macro


def _sets_lengths(statement: Any) -> bool:
  """Whether a gin statement binds the macro, or the DataConfig field to anything but the macro."""
  selector, arg = getattr(statement, 'selector', None), getattr(statement, 'arg_name', None)
  if selector == MACRO and arg == '':
    return True
  return (selector or '').endswith(_FIELD[0]) and arg == _FIELD[1] and statement.value != MACRO


def _shipped(path: str) -> bool:
  return os.path.realpath(path).startswith(os.path.realpath(gin_config.PACKAGE_GIN_CONFIGS) + os.sep)


def _file_sets_lengths(path: str, search_paths: Sequence[str], seen: set[str]) -> bool:
  """Whether a user's gin file (or one it includes; shipped files are skipped) sets the lengths."""
  if _shipped(path) or path in seen:
    return False
  seen.add(path)
  with open(path, encoding='utf-8') as f:
    for statement in gin_names.statements(f):
      if _sets_lengths(statement):
        return True
      include = getattr(statement, 'filename', None)
      if include is not None:
        try:
          included = gin_config.resolve_gin_file(include, search_paths)
        except UsageError:  # gin itself reported it while parsing
          continue
        if _file_sets_lengths(included, search_paths, seen):
          return True
  return False


def user_sets_lengths(files: Sequence[str], bindings: Sequence[gin_config.Binding], search_path_flag: str = '') -> bool:
  """Whether the command line's bindings or the user's own gin `files` (resolved paths) set the lengths."""
  if any(_sets_lengths(s) for b in bindings for s in gin_names.statements(b.text)):
    return True
  paths, seen = gin_config.search_paths(search_path_flag), set()
  return any(_file_sets_lengths(f, paths, seen) for f in files)


def derive_unless_set(task_names: Sequence[str], files: Sequence[str], bindings: Sequence[gin_config.Binding],
                      search_path_flag: str = '') -> None:
  """Binds TASK_FEATURE_LENGTHS from the data of the `--task` task that MIXTURE_OR_TASK_NAME names, unless the
  user set them (then they stay exactly as set)."""
  name = macros.bound('MIXTURE_OR_TASK_NAME')
  if not isinstance(name, str) or name not in task_names or user_sets_lengths(files, bindings, search_path_flag):
    return
  from jaxprompt.data import task_spec  # pylint: disable=g-import-not-at-top  (imports TF)
  lengths = task_spec.derived_lengths(name)
  if lengths is not None:
    gin_config.bind_macro(MACRO, lengths)
