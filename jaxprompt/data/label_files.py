"""Your own label tasks for encoder-only models: TSV / JSONL files with a text (and a second text) and a label
column, read as `custom.register_file_task` reads its files (the same formats, header rules, `file:line` errors and
metric names).

  register_label_file_task('my_nli', train='train.tsv', validation='dev.tsv', text_field='premise',
                           pair_field='hypothesis', label_field='label', label_set=('entailment', 'other'))

With a label set every label must be one of it (its id: its index; metrics default to accuracy); without one the
labels are numbers, a regression (metrics default to pearson_corrcoef and spearman_corrcoef). The task is a seqio
Task of the label tasks' examples (`inputs`, `inputs_pair`, `label`: `data/label_tasks.py`) and a `LabelTask`
(`label_tasks.get(name)`: its label names, kind and metric fns).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import seqio
import tensorflow as tf

from jaxprompt.data import custom, encoder, label_tasks
from jaxprompt.errors import ConfigError, DataError

Example = tuple[str, str | None, Any]  # (text, second text, label id or value)


def _read(paths: Sequence[str], *, text_field: str, pair_field: str | None, label_field: str,
          labels: tuple[str, ...] | None, **kwargs) -> list[Example]:
  """The examples of one split's files, validated (a pair column is read as a second `inputs` column)."""
  texts, targets = custom.read_examples(paths, inputs_field=text_field, targets_field=label_field, label_set=labels,
                                        **kwargs)
  pairs = [None] * len(texts)
  if pair_field is not None:
    pairs = custom.read_examples(paths, inputs_field=pair_field, targets_field=label_field, label_set=labels,
                                 **kwargs)[0]
  values = []
  for i, target in enumerate(targets):
    if labels is not None:
      values.append(labels.index(target))
      continue
    try:
      values.append(float(target))
    except ValueError as e:
      raise DataError(f'{", ".join(paths)}: example {i + 1} has the label {target!r}, not a number (a task '
                      f'without label_set is a regression; give label_set=... for classes)') from e
  return list(zip(texts, pairs, values))


def _dataset_fn(split: str, shuffle_files: bool, seed: int | None = None, *, data: Mapping[str, list[Example]],
                regression: bool) -> tf.data.Dataset:
  """A split's examples in memory, shuffled whole when `shuffle_files` (a fixed default seed: every host holds the
  same order before seqio shards it)."""
  rows = data[split]
  columns = {
      encoder.FIRST: tf.constant([r[0] for r in rows], tf.string),
      encoder.LABEL: tf.constant([r[2] for r in rows], tf.float32 if regression else tf.int32)
  }
  if rows[0][1] is not None:
    columns[encoder.SECOND] = tf.constant([r[1] for r in rows], tf.string)
  ds = tf.data.Dataset.from_tensor_slices(columns)
  return ds.shuffle(len(rows), seed=0 if seed is None else seed) if shuffle_files else ds


def register_label_file_task(
    name: str,
    *,
    train: custom.Paths | None = None,
    validation: custom.Paths | None = None,
    test: custom.Paths | None = None,
    format: str | None = None,  # pylint: disable=redefined-builtin
    text_field: str = 'text',
    pair_field: str | None = None,
    label_field: str = 'label',
    has_header: bool | None = None,
    label_set: Sequence[str] | None = None,
    metrics: Sequence[str | Callable[..., Any]] | None = None) -> label_tasks.LabelTask:
  """Registers (and returns) a label task reading the user's files; see the module docstring.

  Raises:
    ConfigError: bad arguments. DataError: missing / empty / malformed files, a label outside the label set, a
      regression label that is no number.
  """
  files = {s: custom.as_paths(s, v) for s, v in zip(custom.SPLITS, (train, validation, test))}
  files = {s: paths for s, paths in files.items() if paths}
  if not files:
    raise ConfigError(f'label task {name}: give at least one of train=, validation=, test=')
  if format not in (None, 'tsv', 'jsonl'):
    raise ConfigError(f"label task {name}: format={format!r} is not 'tsv', 'jsonl' (or None for the extension)")
  labels = custom.normalize_label_set(label_set)
  metrics = metrics or (('accuracy',) if labels else ('pearson_corrcoef', 'spearman_corrcoef'))
  fns, _ = custom.metric_fns((metrics,) if isinstance(metrics, str) else tuple(metrics), labels)
  read = functools.partial(_read, text_field=text_field, pair_field=pair_field, label_field=label_field, labels=labels,
                           format=format, has_header=has_header)
  data = {split: read(paths) for split, paths in files.items()}
  kind = label_tasks.CLASSIFICATION if labels else label_tasks.REGRESSION
  fields = (text_field,) if pair_field is None else (text_field, pair_field)
  spec = label_tasks.LabelTask(name, '', tuple(files), fields, labels, tuple(fns), kind)
  source = seqio.FunctionDataSource(functools.partial(_dataset_fn, data=data, regression=labels is None),
                                    splits=list(files), num_input_examples={s: len(v) for s, v in data.items()})
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(name, source=source, preprocessors=[label_tasks.tokenize_texts],
                         output_features=label_tasks.output_features(spec), metric_fns=list(fns))
  return label_tasks.add(spec)
