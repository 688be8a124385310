"""Named prompt sources -> a prompt bank (`jaxprompt.methods.prompt_bank`), for `infer --prompt NAME=FILE` and
`eval --prompt NAME=FILE` (ensembles)."""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from etils import epath

from jaxprompt.commands import prompt_files
from jaxprompt.commands.groups import PromptSource
from jaxprompt.errors import ConfigError, PromptError
from jaxprompt.methods import task_heads
from jaxprompt.methods.base import Method
from jaxprompt.models.base import ModelConfig

PEFT_CONFIG = 'adapter_config.json'


def is_checkpoint_dir(path: str) -> bool:
  """A training MODEL_DIR or step dir (a folder that is not a PEFT adapter)."""
  folder = epath.Path(path)
  return folder.is_dir() and not (folder / PEFT_CONFIG).exists()


def load_sources(prompts: Mapping[str, str], *, config: ModelConfig, combine: str = 'prefix', eos_id: int = 1,
                 step: int | None = None) -> dict[str, tuple[Any, Any]]:
  """{name: (method, params)} of each named source: any `--prompt_file` kind, a PEFT adapter folder, or a
  training checkpoint dir (at `step`, default its latest); a source serving several tasks (a multi-task run's
  `prompts.npz`, with its per-task heads) gives the prompt (and head) of task `name`."""
  if not prompts:
    raise ConfigError('a prompt bank needs at least one NAME=FILE prompt')
  out = {}
  for name, path in prompts.items():
    path = os.fspath(path)
    is_dir = is_checkpoint_dir(path)
    method, params = prompt_files.load_tuned(prompt_file=None if is_dir else path, checkpoint=path if is_dir else None,
                                             step=step if is_dir else None, prompt_length=None, config=config,
                                             combine=combine, eos_id=eos_id)
    method, params = method.inference(params)  # a multi-task method's inference form is its prompt bank
    if method.task_names:
      if name not in method.task_names:
        raise PromptError(f'{path} holds the prompts of tasks {sorted(method.task_names)}; --prompt {name}=... '
                          'names none of them')
      method, params = task_heads.task_alone(method, params, name)
    out[name] = (method, params)
  return out


def load_bank(prompts: Mapping[str, str], *, config: ModelConfig, combine: str = 'prefix', eos_id: int = 1,
              step: int | None = None) -> tuple[Method, dict[str, Any]]:
  """(bank, its tree) of the named sources, task ids in the order given; sources with a task head (an encoder's
  runs) make a bank with per-task heads."""
  sources = load_sources(prompts, config=config, combine=combine, eos_id=eos_id, step=step)
  return task_heads.bank_of(sources, config, eos_id)


def load_method(source: PromptSource, *, config: ModelConfig, eos_id: int = 1,
                what: str = 'a prompt bank') -> tuple[Any, Any, dict[str, str]]:
  """`eval` / `infer`'s tuned method: (method, parameters, {name: source} for the fingerprint check) of the named
  `source.prompts` (a bank: `what` names its use in the error) or of its one `prompt_file` / `checkpoint`."""
  if source.prompts:
    if source.prompt_file is not None or source.checkpoint is not None:
      raise ConfigError(f'give either --prompt NAME=FILE ({what}) or --prompt_file / --checkpoint, not both')
    method, trainable = load_bank(source.prompts, config=config, combine=source.combine, eos_id=eos_id,
                                  step=source.checkpoint_step)
    return method, trainable, dict(source.prompts)
  method, trainable = prompt_files.load_tuned(prompt_file=source.prompt_file, checkpoint=source.checkpoint,
                                              step=source.checkpoint_step, prompt_length=source.prompt_length,
                                              config=config, combine=source.combine, eos_id=eos_id)
  return method, trainable, {'': source.prompt_file or source.checkpoint}
