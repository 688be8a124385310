"""Your own label tasks for encoder-only models: TSV / JSONL files with a text (and a second text) and a label
column, read as `custom.register_file_task` reads its files (the same formats, header rules, `file:line` errors and
metric names).

  register_label_file_task('my_nli', train='train.tsv', validation='dev.tsv', text_field='premise',
                           pair_field='hypothesis', label_field='label', label_set=('entailment', 'other'))

`kind` says what the label column holds (metrics default to accuracy, or pearson_corrcoef and spearman_corrcoef for
a regression):
* 'classification': a class name; with a label set each must be one of it (its id: its index), without one the
  set is the training file's labels, sorted (as numbers when they all are);
* 'regression': a number;
* 'choice' (multiple choice): the index 0..n-1 of the right one of `choice_fields`, the n columns holding each
  choice's second text (`text_field` is the first text of every choice row).
None: a classification with a label set, else a regression. The task is a seqio Task of the label tasks' examples
(`inputs`, `inputs_pair`, `is_pair`, `label`, `label_value`, or `inputs`, `choice_<i>`, `label`:
`data/label_tasks.py`; any but multiple choice mix) and a `LabelTask` (`label_tasks.get(name)`: its label names,
kind and metric fns).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import seqio
import tensorflow as tf

from jaxprompt.data import custom, encoder, label_tasks
from jaxprompt.errors import ConfigError, DataError

Example = tuple[str, tuple[str, ...] | None, Any]  # (text, its second texts: pair or choices, label id or value)
KINDS = (label_tasks.CLASSIFICATION, label_tasks.REGRESSION, label_tasks.CHOICE)


def _read(paths: Sequence[str], *, text_field: str, second_fields: Sequence[str], label_field: str,
          labels: tuple[str, ...] | None, **kwargs) -> list[Example]:
  """The examples of one split's files, validated (a pair or choice column is read as a second `inputs` column):
  (text, its second texts (None without), the label column's entry)."""
  texts, targets = custom.read_examples(paths, inputs_field=text_field, targets_field=label_field, label_set=labels,
                                        **kwargs)
  columns = [
      custom.read_examples(paths, inputs_field=field, targets_field=label_field, label_set=labels, **kwargs)[0]
      for field in second_fields
  ]
  seconds = list(zip(*columns)) if columns else [None] * len(texts)
  return list(zip(texts, seconds, targets))


def train_labels(paths: Sequence[str], *, text_field: str, label_field: str, **kwargs) -> tuple[str, ...]:
  """The label set of a training file: its labels sorted (as numbers when they all are numbers)."""
  found = set(
      custom.read_examples(paths, inputs_field=text_field, targets_field=label_field, label_set=None, **kwargs)[1])
  try:
    return tuple(sorted(found, key=float))
  except ValueError:
    return tuple(sorted(found))


def _dataset_fn(split: str, shuffle_files: bool, seed: int | None = None, *, data: Mapping[str, list[Example]],
                kind: str) -> tf.data.Dataset:
  """A split's examples in memory (the label tasks' features, `label_tasks.texts_of` / `labels_of`), shuffled
  whole when `shuffle_files` (a fixed default seed: every host holds the same order before seqio shards it)."""
  rows = data[split]
  label = tf.constant([r[2] for r in rows], tf.float32 if kind == label_tasks.REGRESSION else tf.int32)
  columns = {encoder.FIRST: tf.constant([r[0] for r in rows], tf.string), encoder.LABEL: label}
  seconds = len(rows[0][1] or ())  # columns choice_<i>: each choice, or (choice_0 alone) a pair's second text
  columns.update({
      f'{encoder.CHOICE_PREFIX}{i}': tf.constant([r[1][i] for r in rows], tf.string) for i in range(seconds)
  })
  ds = tf.data.Dataset.from_tensor_slices(columns)
  ds = ds.shuffle(len(rows), seed=0 if seed is None else seed) if shuffle_files else ds

  def example(x: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    labels = label_tasks.labels_of(x[encoder.LABEL], kind)
    if kind == label_tasks.CHOICE:
      return {**x, **labels}  # the choices as they are
    return {**label_tasks.texts_of(x[encoder.FIRST], x.get(f'{encoder.CHOICE_PREFIX}0')), **labels}

  return ds.map(example)


def _label_value(target: str, i: int, paths: Sequence[str], kind: str, labels: tuple[str, ...] | None) -> Any:
  """A label column's entry as its id (classification, choice) or value (regression)."""
  if kind == label_tasks.CLASSIFICATION:
    return labels.index(target)
  try:
    value = float(target)
  except ValueError as e:
    raise DataError(f'{", ".join(paths)}: example {i + 1} has the label {target!r}, not a number (a task without '
                    f'label_set is a regression; give label_set=... for classes)') from e
  if kind == label_tasks.CHOICE:
    if value not in range(len(labels)):
      raise DataError(f'{", ".join(paths)}: example {i + 1} has the label {target!r}, not the index of one of its '
                      f'{len(labels)} choices {list(labels)} (0..{len(labels) - 1})')
    return int(value)
  return value


def register_label_file_task(
    name: str,
    *,
    train: custom.Paths | None = None,
    validation: custom.Paths | None = None,
    test: custom.Paths | None = None,
    format: str | None = None,  # pylint: disable=redefined-builtin
    kind: str | None = None,
    text_field: str = 'text',
    pair_field: str | None = None,
    choice_fields: Sequence[str] | None = None,
    label_field: str = 'label',
    has_header: bool | None = None,
    label_set: Sequence[str] | None = None,
    metrics: Sequence[str | Callable[..., Any]] | None = None) -> label_tasks.LabelTask:
  """Registers (and returns) a label task reading the user's files; see the module docstring.

  Raises:
    ConfigError: bad arguments. DataError: missing / empty / malformed files, a label outside the label set, a
      regression label that is no number, a choice label that is no choice's index.
  """
  files = {s: custom.as_paths(s, v) for s, v in zip(custom.SPLITS, (train, validation, test))}
  files = {s: paths for s, paths in files.items() if paths}
  if not files:
    raise ConfigError(f'label task {name}: give at least one of train=, validation=, test=')
  if format not in (None, 'tsv', 'jsonl'):
    raise ConfigError(f"label task {name}: format={format!r} is not 'tsv', 'jsonl' (or None for the extension)")
  kind = kind or (label_tasks.CLASSIFICATION if label_set is not None else label_tasks.REGRESSION)
  if kind not in KINDS:
    raise ConfigError(f'label task {name}: kind={kind!r} is not one of {list(KINDS)}')
  if (kind == label_tasks.CHOICE) != bool(choice_fields):
    raise ConfigError(f'label task {name}: choice_fields (the columns of the choices) are for kind='
                      f"'{label_tasks.CHOICE}', and it needs at least 2 of them")
  if choice_fields is not None and (len(choice_fields) < 2 or pair_field is not None):
    raise ConfigError(f'label task {name}: a multiple-choice task needs 2 or more choice_fields and no pair_field '
                      f'(got {list(choice_fields)}, pair_field={pair_field!r})')
  if label_set is not None and kind != label_tasks.CLASSIFICATION:
    raise ConfigError(f'label task {name}: label_set is for a classification, not kind={kind!r}')
  read_kwargs = dict(format=format, has_header=has_header)
  if kind == label_tasks.CLASSIFICATION and label_set is None:
    if 'train' not in files:
      raise ConfigError(f'label task {name}: without a training file, give its label set (label_set=... / labels=a|b)')
    label_set = train_labels(files['train'], text_field=text_field, label_field=label_field, **read_kwargs)
  labels = tuple(choice_fields) if kind == label_tasks.CHOICE else custom.normalize_label_set(label_set)
  metrics = metrics or (('pearson_corrcoef', 'spearman_corrcoef') if kind == label_tasks.REGRESSION else ('accuracy',))
  fns, _ = custom.metric_fns((metrics,) if isinstance(metrics, str) else tuple(metrics), labels)
  seconds = tuple(choice_fields or ()) or ((pair_field,) if pair_field is not None else ())
  data = {}
  for split, paths in files.items():
    rows = _read(paths, text_field=text_field, second_fields=seconds, label_field=label_field,
                 labels=labels if kind == label_tasks.CLASSIFICATION else None, **read_kwargs)
    data[split] = [(t, s, _label_value(v, i, paths, kind, labels)) for i, (t, s, v) in enumerate(rows)]
  fields = tuple(choice_fields) if kind == label_tasks.CHOICE else (text_field, *seconds)
  spec = label_tasks.LabelTask(name, '', tuple(files), fields, labels, tuple(fns), kind)
  source = seqio.FunctionDataSource(functools.partial(_dataset_fn, data=data, kind=kind), splits=list(files),
                                    num_input_examples={s: len(v) for s, v in data.items()})
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(name, source=source, preprocessors=[label_tasks.tokenize_texts],
                         output_features=label_tasks.output_features(spec), metric_fns=list(fns))
  return label_tasks.add(spec)
