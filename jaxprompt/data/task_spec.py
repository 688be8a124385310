"""`--task name=my_task,train=/p/train.tsv,validation=/p/dev.tsv,labels=yes|no`: the command-line form of
`jaxprompt.data.custom.register_file_task`.

The command line binds its `--task` specs to `register_task_specs.specs` (paths made absolute) and then calls
it, so a run's `config.gin` records them and a command reading that config registers the same tasks. When the
user sets no TASK_FEATURE_LENGTHS, such a task gets them from its data (`derived_lengths`).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import gin

from jaxprompt.data import custom, truncation
from jaxprompt.errors import ConfigError

log = logging.getLogger('jaxprompt')

if TYPE_CHECKING:
  from jaxprompt.data.text_tasks import TextTask

# Spec key -> `register_file_task` argument (each argument also under its own name).
_SPEC_KEYS = {
    'name': 'name', 'train': 'train', 'validation': 'validation', 'test': 'test', 'format': 'format',
    'inputs': 'inputs_field', 'inputs_field': 'inputs_field', 'targets': 'targets_field',
    'targets_field': 'targets_field', 'header': 'has_header', 'has_header': 'has_header', 'labels': 'label_set',
    'label_set': 'label_set', 'metrics': 'metrics', 'vocab': 'vocabulary', 'vocabulary': 'vocabulary'
}
_PATH_ARGS = ('train', 'validation', 'test', 'vocabulary')  # values that are file paths (several joined by `|`)
SPECS_PARAMETER = 'jaxprompt.data.register_task_specs.specs'
_BOOLEANS = {'true': True, 'yes': True, '1': True, 'false': False, 'no': False, '0': False, 'auto': None}


def parse_task_spec(spec: str) -> dict[str, Any]:
  """Keyword arguments of `register_file_task` from `key=value,key=value` (the --task command-line form).

  Keys: name (required), train / validation / test (a path; several joined by `|`), format, inputs,
  targets, header (true / false / auto), labels (`no|yes`), metrics (`accuracy|f1`), vocab (a path).
  Values cannot contain commas.
  """
  kwargs: dict[str, Any] = {}
  for item in (part.strip() for part in spec.split(',')):
    if not item:
      continue
    key, sep, value = (s.strip() for s in item.partition('='))
    if not sep:
      raise ConfigError(f'task spec {spec!r}: {item!r} is not key=value')
    if key not in _SPEC_KEYS:
      raise ConfigError(f'task spec {spec!r}: unknown key {key!r} (known: {sorted(_SPEC_KEYS)})')
    if not value:
      raise ConfigError(f'task spec {spec!r}: key {key!r} has no value')
    arg = _SPEC_KEYS[key]
    if arg in kwargs:
      raise ConfigError(f'task spec {spec!r}: {arg} is given twice')
    if arg in ('train', 'validation', 'test', 'label_set', 'metrics'):
      parts = [v.strip() for v in value.split('|')]
      if not all(parts):
        raise ConfigError(f'task spec {spec!r}: {key}={value!r} has an empty entry')
      kwargs[arg] = tuple(parts) if arg in ('label_set', 'metrics') or len(parts) > 1 else parts[0]
    elif arg == 'has_header':
      if value.lower() not in _BOOLEANS:
        raise ConfigError(f'task spec {spec!r}: header={value!r} is not true / false / auto')
      kwargs[arg] = _BOOLEANS[value.lower()]
    else:
      kwargs[arg] = value
  if 'name' not in kwargs:
    raise ConfigError(f'task spec {spec!r}: name=... is required')
  return kwargs


def register_task_spec(spec: str) -> TextTask:
  """`register_file_task(**parse_task_spec(spec))`."""
  kwargs = parse_task_spec(spec)
  return custom.register_file_task(kwargs.pop('name'), **kwargs)


def _absolute(path: str) -> str:
  """A local path made absolute; a URL (gs://...) as it is."""
  return path if '://' in path else os.path.abspath(os.path.expanduser(path))


def absolute_spec(spec: str) -> str:
  """`spec` (checked) with its local file paths made absolute: the same task from any working directory."""
  parse_task_spec(spec)
  items = []
  for item in (part.strip() for part in spec.split(',') if part.strip()):
    key, _, value = (s.strip() for s in item.partition('='))
    if _SPEC_KEYS[key] in _PATH_ARGS:
      value = '|'.join(_absolute(v.strip()) for v in value.split('|'))
    items.append(f'{key}={value}')
  return ','.join(items)


def bind_task_specs(specs: Sequence[str]) -> None:
  """Adds `specs` (paths made absolute) to those gin already binds to `register_task_specs` (a run's config.gin
  may hold some), each once."""
  try:
    bound = list(gin.query_parameter(SPECS_PARAMETER) or ())
  except ValueError:  # not bound
    bound = []
  added = [absolute_spec(spec) for spec in specs]
  gin.bind_parameter(SPECS_PARAMETER, list(dict.fromkeys(bound + added)))


@gin.configurable(module='jaxprompt.data')
def register_task_specs(specs: Sequence[str] = ()) -> list[TextTask]:
  """Registers the task of each `--task` spec (the command line binds them here first)."""
  return [register_task_spec(spec) for spec in specs]


def derived_lengths(name: str) -> dict[str, int]:
  """TASK_FEATURE_LENGTHS for file task `name` from its data: its longest inputs and targets (tokens with EOS,
  over every split, targets also over the label set), rounded up to a multiple of 8 and at most
  `truncation.AUTO_LIMIT`; logged once."""
  longest = custom.longest_lengths(name)
  lengths = truncation.fitting_lengths(longest)
  log.info(
      'TASK_FEATURE_LENGTHS = %s from the data of task %r (the longest inputs %d and targets %d tokens with EOS, '
      'rounded up to a multiple of %d, at most %d); set --gin.TASK_FEATURE_LENGTHS to choose them', lengths, name,
      longest['inputs'], longest['targets'], truncation.ROUND_TO, truncation.AUTO_LIMIT)
  return lengths
