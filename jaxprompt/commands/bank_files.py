"""Named prompt sources -> a prompt bank (`jaxprompt.methods.prompt_bank`), for `infer --prompt NAME=FILE` and
`eval --prompt NAME=FILE` (ensembles)."""
from __future__ import annotations

import os
from typing import Any, Mapping

from etils import epath

from jaxprompt.commands import prompt_files
from jaxprompt.errors import ConfigError, PromptError
from jaxprompt.methods import multitask, prompt_bank
from jaxprompt.models.config import T5Config

PEFT_CONFIG = 'adapter_config.json'


def is_checkpoint_dir(path: str) -> bool:
  """A training MODEL_DIR or step dir (a folder that is not a PEFT adapter)."""
  folder = epath.Path(path)
  return folder.is_dir() and not (folder / PEFT_CONFIG).exists()


def load_sources(prompts: Mapping[str, str], *, config: T5Config, combine: str = 'prefix', eos_id: int = 1,
                 step: int | None = None) -> dict[str, tuple[Any, Any]]:
  """{name: (method, params)} of each named source: any `--prompt_file` kind, a PEFT adapter folder, a
  training checkpoint dir (at `step`, default its latest), or a multi-task run's `prompts.npz` (the prompt of
  task `name`)."""
  if not prompts:
    raise ConfigError('a prompt bank needs at least one NAME=FILE prompt')
  out = {}
  for name, path in prompts.items():
    path = os.fspath(path)
    if path.endswith('.npz') and multitask.is_multitask_file(path):  # a multi-task run's prompts.npz
      by_task = multitask.read_multitask_file(path, config, eos_id, combine)
      if name not in by_task:
        raise PromptError(f'{path} holds the prompts of tasks {sorted(by_task)}; --prompt {name}=... names none '
                          'of them')
      out[name] = by_task[name]
    elif is_checkpoint_dir(path):
      out[name] = prompt_files.load_tuned(prompt_file=None, checkpoint=path, step=step, prompt_length=None,
                                          config=config, combine=combine, eos_id=eos_id)
    else:
      out[name] = prompt_files.load_tuned(prompt_file=path, checkpoint=None, step=None, prompt_length=None,
                                          config=config, combine=combine, eos_id=eos_id)
  return out


def load_bank(prompts: Mapping[str, str], *, config: T5Config, combine: str = 'prefix', eos_id: int = 1,
              step: int | None = None) -> tuple[prompt_bank.PromptBank, dict[str, Any]]:
  """(bank, its tree) of the named sources, task ids in the order given."""
  return prompt_bank.build_bank(load_sources(prompts, config=config, combine=combine, eos_id=eos_id, step=step),
                                config, eos_id)


def load_method(*, prompts: Mapping[str, str] | None, prompt_file: str | None, checkpoint: str | None,
                step: int | None, prompt_length: int | None, config: T5Config, combine: str = 'prefix',
                eos_id: int = 1, what: str = 'a prompt bank') -> tuple[Any, Any, dict[str, str]]:
  """`eval` / `infer`'s prompt: (method, parameters, {name: source} for the fingerprint check) of the named
  `prompts` (a bank: `what` names its use in the error) or of the one `prompt_file` / `checkpoint`."""
  if prompts:
    if prompt_file is not None or checkpoint is not None:
      raise ConfigError(f'give either --prompt NAME=FILE ({what}) or --prompt_file / --checkpoint, not both')
    method, trainable = load_bank(prompts, config=config, combine=combine, eos_id=eos_id, step=step)
    return method, trainable, dict(prompts)
  method, trainable = prompt_files.load_tuned(prompt_file=prompt_file, checkpoint=checkpoint, step=step,
                                              prompt_length=prompt_length, config=config, combine=combine,
                                              eos_id=eos_id)
  return method, trainable, {'': prompt_file or checkpoint}
