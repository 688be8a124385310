"""`--task name=my_task,train=/p/train.tsv,validation=/p/dev.tsv,labels=yes|no`: the command-line form of
`jaxprompt.data.custom.register_file_task`; with `kind=classification|regression|choice` of
`label_files.register_label_file_task` (encoder-only label tasks), with `kind=tagging` or `conll=DIR` of
`tagging_tasks.register_tagging_task` (CoNLL tagging tasks).

The command line binds its `--task` specs to `register_task_specs.specs` (paths made absolute) and then calls
it, so a run's `config.gin` records them and a command reading that config registers the same tasks. When the
user sets no TASK_FEATURE_LENGTHS, such a task gets them from its data (`derived_lengths`).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import gin

from jaxprompt.data import custom, truncation
from jaxprompt.errors import ConfigError

log = logging.getLogger('jaxprompt')

TEXT, CLASSIFICATION, REGRESSION, CHOICE, TAGGING = 'text', 'classification', 'regression', 'choice', 'tagging'
_SPLIT_KEYS = {'train': 'train', 'validation': 'validation', 'test': 'test'}
_FILE_KEYS = {'format': 'format', 'header': 'has_header', 'has_header': 'has_header', 'metrics': 'metrics'}
_LABEL_KEYS = {
    **_SPLIT_KEYS, **_FILE_KEYS, 'text': 'text_field', 'text_field': 'text_field', 'label': 'label_field',
    'label_field': 'label_field'
}
# Per kind: spec key -> the registering function's argument (each argument also under its own name).
_KEYS = {
    TEXT: {
        **_SPLIT_KEYS, **_FILE_KEYS, 'inputs': 'inputs_field', 'inputs_field': 'inputs_field',
        'targets': 'targets_field', 'targets_field': 'targets_field', 'labels': 'label_set', 'label_set': 'label_set',
        'vocab': 'vocabulary', 'vocabulary': 'vocabulary'
    },
    CLASSIFICATION: {
        **_LABEL_KEYS, 'pair': 'pair_field', 'pair_field': 'pair_field', 'labels': 'label_set', 'label_set': 'label_set'
    },
    REGRESSION: {**_LABEL_KEYS, 'pair': 'pair_field', 'pair_field': 'pair_field'},
    CHOICE: {**_LABEL_KEYS, 'choices': 'choice_fields', 'choice_fields': 'choice_fields'},
    TAGGING: {**_SPLIT_KEYS, 'conll': 'directory', 'directory': 'directory', 'labels': 'labels', 'tags': 'labels'},
}
_COMMON = ('name', 'kind')
_LISTS = ('label_set', 'metrics', 'choice_fields', 'labels')  # `a|b` values that are always tuples
_PATH_KEYS = ('train', 'validation', 'test', 'vocab', 'vocabulary', 'conll', 'directory')  # values that are paths
SPECS_PARAMETER = 'jaxprompt.data.register_task_specs.specs'
_BOOLEANS = {'true': True, 'yes': True, '1': True, 'false': False, 'no': False, '0': False, 'auto': None}


def _items(spec: str) -> dict[str, str]:
  """`key=value,key=value` -> {key: value}: each item key=value, each key once, no empty value."""
  items: dict[str, str] = {}
  for item in (part.strip() for part in spec.split(',')):
    if not item:
      continue
    key, sep, value = (s.strip() for s in item.partition('='))
    if not sep:
      raise ConfigError(f'task spec {spec!r}: {item!r} is not key=value')
    if not value:
      raise ConfigError(f'task spec {spec!r}: key {key!r} has no value')
    if key in items:
      raise ConfigError(f'task spec {spec!r}: key {key!r} is given twice')
    items[key] = value
  return items


def _kind(spec: str, items: dict[str, str]) -> str:
  """The spec's kind: `kind=`, else tagging when it names a `conll=` directory, else text."""
  kind = items.get('kind', TAGGING if 'conll' in items or 'directory' in items else TEXT)
  if kind not in _KEYS:
    raise ConfigError(f'task spec {spec!r}: kind={kind!r} is not one of {list(_KEYS)}')
  return kind


def parse_task_spec(spec: str) -> dict[str, Any]:
  """Keyword arguments of the registering function of the spec's kind, from `key=value,key=value` (the --task
  command-line form; docs/data.md). `kind` is in them unless it is text (`register_file_task`).

  Keys of every kind: name (required), kind (text, classification, regression, choice, tagging).
  text: train / validation / test (a path; several joined by `|`), format, inputs, targets, header (true / false /
  auto), labels (`no|yes`), metrics (`accuracy|f1`), vocab (a path).
  classification / regression / choice (`label_files.register_label_file_task`): the splits, format, header,
  metrics, text, label (column names), pair (classification, regression), labels (classification; default: the
  training file's), choices (choice: `c0|c1`).
  tagging (`tagging_tasks.register_tagging_task`): conll (a directory of split files) and / or train / validation /
  test (one file each), labels (the tag set; default: the training file's).
  Values cannot contain commas.
  """
  items = _items(spec)
  kind = _kind(spec, items)
  keys = _KEYS[kind]
  kwargs: dict[str, Any] = {}
  for key, value in items.items():
    if key in _COMMON:
      continue
    if key not in keys:
      other = [k for k, table in _KEYS.items() if key in table]
      if other:
        raise ConfigError(f'task spec {spec!r}: key {key!r} is for kind={"/".join(other)}, not kind={kind!r} '
                          '(set kind=...)')
      raise ConfigError(f'task spec {spec!r}: unknown key {key!r} for kind={kind!r} (known: {sorted(keys)})')
    arg = keys[key]
    if arg in kwargs:
      raise ConfigError(f'task spec {spec!r}: {arg} is given twice')
    if arg in ('train', 'validation', 'test', *_LISTS):
      parts = [v.strip() for v in value.split('|')]
      if not all(parts):
        raise ConfigError(f'task spec {spec!r}: {key}={value!r} has an empty entry')
      if kind == TAGGING and arg in _SPLIT_KEYS and len(parts) > 1:
        raise ConfigError(f'task spec {spec!r}: {key}={value!r}: a tagging split is one CoNLL file')
      kwargs[arg] = tuple(parts) if arg in _LISTS or len(parts) > 1 else parts[0]
    elif arg == 'has_header':
      if value.lower() not in _BOOLEANS:
        raise ConfigError(f'task spec {spec!r}: header={value!r} is not true / false / auto')
      kwargs[arg] = _BOOLEANS[value.lower()]
    else:
      kwargs[arg] = value
  if 'name' not in items:
    raise ConfigError(f'task spec {spec!r}: name=... is required')
  return {'name': items['name'], **kwargs, **({'kind': kind} if kind != TEXT else {})}


def register_task_spec(spec: str) -> Any:
  """Registers the task of `spec` with its kind's function; returns it (it has a `name`)."""
  kwargs = parse_task_spec(spec)
  name, kind = kwargs.pop('name'), kwargs.pop('kind', TEXT)
  if kind == TEXT:
    return custom.register_file_task(name, **kwargs)
  if kind == TAGGING:
    from jaxprompt.data import tagging_tasks  # pylint: disable=g-import-not-at-top  (its seqio task: TensorFlow)
    return tagging_tasks.register_tagging_task(name, **kwargs)
  from jaxprompt.data import label_files  # pylint: disable=g-import-not-at-top
  return label_files.register_label_file_task(name, kind=kind, **kwargs)


def _absolute(path: str) -> str:
  """A local path made absolute; a URL (gs://...) as it is."""
  return path if '://' in path else os.path.abspath(os.path.expanduser(path))


def absolute_spec(spec: str) -> str:
  """`spec` (checked) with its local file paths made absolute: the same task from any working directory."""
  parse_task_spec(spec)
  items = []
  for key, value in _items(spec).items():
    if key in _PATH_KEYS:
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
def register_task_specs(specs: Sequence[str] = ()) -> list[Any]:
  """Registers the task of each `--task` spec (the command line binds them here first)."""
  return [register_task_spec(spec) for spec in specs]


def derived_lengths(name: str) -> dict[str, int] | None:
  """TASK_FEATURE_LENGTHS for file task `name` from its data: its longest inputs and targets (tokens with EOS,
  over every split, targets also over the label set), rounded up to a multiple of 8 and at most
  `truncation.AUTO_LIMIT`; logged once. None for a label or tagging task: it keeps the head gin's lengths (read
  with the model's tokenizer, known only to the run)."""
  if not custom.is_file_task(name):
    return None
  longest = custom.longest_lengths(name)
  lengths = truncation.fitting_lengths(longest)
  log.info(
      'TASK_FEATURE_LENGTHS = %s from the data of task %r (the longest inputs %d and targets %d tokens with EOS, '
      'rounded up to a multiple of %d, at most %d); set --gin.TASK_FEATURE_LENGTHS to choose them', lengths, name,
      longest['inputs'], longest['targets'], truncation.ROUND_TO, truncation.AUTO_LIMIT)
  return lengths
