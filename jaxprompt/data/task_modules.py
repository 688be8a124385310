"""Tasks registered on first use: a module whose import registers tasks is named here with the prefix of the task
names it registers, and imported only when such a name is looked up (`jaxprompt.data.tasks.get_task`,
`jaxprompt.data.text_tasks.lookup`). The demo model's gin file names its tasks' module this way, so a run that
reads no task (infer on text, inspect) never imports it.
"""
from __future__ import annotations

import importlib

_PROVIDERS: dict[str, str] = {}  # task-name prefix -> module


def provide(prefix: str, module: str) -> None:
  """Task names starting with `prefix` are registered by importing `module`."""
  _PROVIDERS[prefix] = module


def import_for(name: str | None = None) -> None:
  """Imports the modules registering task `name` (None: every module named here, e.g. to list all names)."""
  for prefix, module in list(_PROVIDERS.items()):
    if name is None or name.startswith(prefix):
      importlib.import_module(module)
