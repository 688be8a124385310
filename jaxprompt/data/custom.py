"""The user's own data as tasks: TSV or JSONL files holding an input text and a target text per example.

File formats (UTF-8; empty lines are skipped; errors name `file:line`):
  * TSV, one example per line, fields split on tabs, no quoting (a field cannot hold a tab or a newline: use
    JSONL for such text). Either
      - with a header: the first line names the columns, among them `inputs_field` and `targets_field`
        (other columns are ignored); every row has as many fields as the header; or
      - without a header: exactly two fields per line, input then target.
    `has_header=None` (default) decides from the first line: it is a header iff it contains a field equal to
    `inputs_field` or `targets_field`. Pass `has_header=True/False` to force either.
  * JSONL: one JSON object per line with string (or number) values under `inputs_field` and `targets_field`.
  * Instruction JSONL (`format='alpaca'`): {"instruction", "input" (optional), "output"} per line, made into
    inputs and targets by `jaxprompt.data.instructions`' template.

Registration scans every file eagerly, so bad data fails before training starts. Each split is read again,
into memory, when it is read (a text task: `jaxprompt.data.text_tasks`, no TensorFlow for eval and infer) or
streamed (its seqio Task): a split must fit in host memory (a tf.data constant is limited to 2 GB).

From Python: `register_file_task("my_task", train="train.tsv", validation="dev.tsv", label_set=("no", "yes"))`.
From gin: `register_file_task` and `file_task_name` are configurables (module `jaxprompt.data`), e.g.
    MIXTURE_OR_TASK_NAME = @jaxprompt.data.file_task_name()
    jaxprompt.data.register_file_task.name = 'my_task'
    jaxprompt.data.register_file_task.train = '/data/train.tsv'
From the command line (`--task`): `jaxprompt.data.task_spec`.
"""
from __future__ import annotations

import functools
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import gin
import numpy as np

from jaxprompt.data import instructions, text_tasks
from jaxprompt.data import metrics as metrics_lib
from jaxprompt.data import vocab as vocab_lib
from jaxprompt.errors import ConfigError, DataError
from jaxprompt.formats import files

if TYPE_CHECKING:
  import seqio

Paths = str | Sequence[str]
Example = tuple[int, str, str]  # (line number, inputs, targets)

FORMATS = ('tsv', 'jsonl', instructions.FORMAT)
SPLITS = ('train', 'validation', 'test')
_EXTENSIONS = {'.tsv': 'tsv', '.jsonl': 'jsonl'}
_TASK_NAME = re.compile(r'^[\w.:#]+$')  # what seqio accepts
# (metric fn, needs a label set, scores floats) for each metric name accepted by `metrics=`.
_METRICS: dict[str, tuple[Callable[..., Any], bool, bool]] = {
    'accuracy': (metrics_lib.accuracy, False, False),
    'sequence_accuracy': (metrics_lib.sequence_accuracy, False, False),
    'f1': (metrics_lib.f1_score_with_invalid, True, False),
    'macro_f1': (metrics_lib.mean_multiclass_f1, True, False),
    'matthews_corrcoef': (metrics_lib.matthews_corrcoef, False, False),
    'pearson_corrcoef': (metrics_lib.pearson_corrcoef, False, True),
    'spearman_corrcoef': (metrics_lib.spearman_corrcoef, False, True),
}

_FILE_TASKS: set[str] = set()  # the names of the text tasks registered here
_TOKEN_LENGTHS: dict[tuple[str, str], dict[str, np.ndarray]] = {}  # (name, split) -> `token_lengths`, once read

# ------------------------------------------------------------------------------------------------- reading files


def read_lines(path: str) -> list[str]:
  """The lines of a UTF-8 text file (local or gs://), without line terminators."""
  if not files.exists(path):
    raise DataError(f'data file {path} does not exist')
  if files.isdir(path):
    raise DataError(f'data file {path} is a directory, expected a .tsv or .jsonl file')
  data = files.read_bytes(path)
  try:
    text = data.decode('utf-8-sig')  # -sig: tolerate the byte-order mark some editors write
  except UnicodeDecodeError as e:
    line = data[:e.start].count(b'\n') + 1
    raise DataError(f'{path}:{line}: not UTF-8 text ({e.reason} at byte {e.start})') from e
  return [line[:-1] if line.endswith('\r') else line for line in text.split('\n')]


def _read_tsv(path: str, inputs_field: str, targets_field: str, has_header: bool | None) -> list[Example]:
  rows = [(n, line.split('\t')) for n, line in enumerate(read_lines(path), start=1) if line]
  if not rows:
    raise DataError(f'data file {path} is empty')
  first_line, first = rows[0]
  if has_header is None:
    has_header = inputs_field in first or targets_field in first
  if has_header:
    for field in (inputs_field, targets_field):
      if field not in first:
        raise DataError(f'{path}:{first_line}: the header {first} has no column {field!r} '
                        f'(set inputs_field / targets_field, or has_header=False for a 2-column file)')
      if first.count(field) > 1:
        raise DataError(f'{path}:{first_line}: the header names column {field!r} twice')
    columns, width, rows = (first.index(inputs_field), first.index(targets_field)), len(first), rows[1:]
    layout = f'the header has {width} columns'
  else:
    columns, width, layout = (0, 1), 2, 'input<TAB>target, no header'
  examples = []
  for n, fields in rows:
    if len(fields) != width:
      raise DataError(f'{path}:{n}: expected {width} tab-separated fields ({layout}), found {len(fields)}')
    examples.append((n, fields[columns[0]], fields[columns[1]]))
  if not examples:
    raise DataError(f'data file {path} has a header but no examples')
  return examples


def _json_text(path: str, line: int, obj: Mapping[str, Any], field: str) -> str:
  if field not in obj:
    raise DataError(f'{path}:{line}: no field {field!r} in the object (its fields: {sorted(obj)})')
  value = obj[field]
  if isinstance(value, str):
    return value
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return str(value)
  raise DataError(f'{path}:{line}: field {field!r} must be a string or a number, got {type(value).__name__}')


def _read_jsonl(path: str, row_texts: Callable[[str, int, dict[str, Any]], tuple[str, str]]) -> list[Example]:
  """The (line, inputs, targets) of each JSON object line; `row_texts(path, line, object)` reads its two texts."""
  examples = []
  for n, line in enumerate(read_lines(path), start=1):
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(f'{path}:{n}: invalid JSON ({e.msg} at column {e.colno})') from e
    if not isinstance(obj, dict):
      raise DataError(f'{path}:{n}: expected a JSON object per line, got {type(obj).__name__}')
    examples.append((n, *row_texts(path, n, obj)))
  if not examples:
    raise DataError(f'data file {path} is empty')
  return examples


def _file_format(path: str, format: str | None) -> str:  # pylint: disable=redefined-builtin
  if format is not None:
    return format
  extension = os.path.splitext(path)[1].lower()
  if extension not in _EXTENSIONS:
    raise DataError(f'cannot tell the format of {path} from its extension {extension!r}: '
                    f"name it .tsv or .jsonl, or pass format='tsv' / 'jsonl'")
  return _EXTENSIONS[extension]


def read_examples(
    paths: Sequence[str],
    *,
    format: str | None,  # pylint: disable=redefined-builtin
    inputs_field: str,
    targets_field: str,
    has_header: bool | None,
    label_set: Sequence[str] | None) -> tuple[list[str], list[str]]:
  """(inputs, targets) of one split, validated; several files are concatenated in order."""
  inputs, targets = [], []
  for path in paths:
    kind = _file_format(path, format)
    if kind == 'tsv':
      examples = _read_tsv(path, inputs_field, targets_field, has_header)
    elif kind == instructions.FORMAT:
      examples = _read_jsonl(path, instructions.example)
    else:
      examples = _read_jsonl(
          path, lambda p, n, obj: (_json_text(p, n, obj, inputs_field), _json_text(p, n, obj, targets_field)))
    for line, example_inputs, example_targets in examples:
      if label_set is not None and example_targets not in label_set:
        raise DataError(f'{path}:{line}: target {example_targets!r} is not in the label set {list(label_set)}')
      inputs.append(example_inputs)
      targets.append(example_targets)
  return inputs, targets


# ------------------------------------------------------------------------------------------------- tasks


def as_paths(split: str, value: Paths | None) -> tuple[str, ...]:
  if value is None:
    return ()
  paths = (value,) if isinstance(value, (str, os.PathLike)) else tuple(value)
  if not paths:
    raise ConfigError(f'split {split!r}: empty list of files')
  return tuple(p if str(p).startswith('gs://') else os.path.expanduser(str(p)) for p in map(str, paths))


def _label_to_class_id(text: str, *, label_set: tuple[str, ...], **unused_kwargs) -> int:
  """Index of the decoded label in the label set, -1 for anything else (T5's string_label_to_class_id)."""
  text = text.strip()
  return label_set.index(text) if text in label_set else -1


def _string_to_float(text: str, **unused_kwargs) -> float:
  """Float value of the decoded text, -1 when it is not a number (T5's string_to_float)."""
  try:
    return float(text)
  except ValueError:
    return -1.0


def metric_fns(metrics: Sequence[str | Callable[..., Any]],
               label_set: tuple[str, ...] | None) -> tuple[list[Callable[..., Any]], bool]:
  """Metric functions for `metrics`, and whether predictions must be postprocessed to floats."""
  fns, floats = [], False
  for metric in metrics:
    if callable(metric):
      fns.append(metric)
      continue
    if metric not in _METRICS:
      raise ConfigError(f'unknown metric {metric!r}: use one of {sorted(_METRICS)} or a callable')
    fn, needs_labels, scores_floats = _METRICS[metric]
    if needs_labels and label_set is None:
      raise ConfigError(f'metric {metric!r} needs a label set (label_set=... / labels=a|b)')
    if metric == 'f1' and len(label_set) != 2:
      raise ConfigError(f"metric 'f1' needs exactly 2 labels (negative|positive), got {list(label_set)}")
    if scores_floats and label_set is not None:
      raise ConfigError(f'metric {metric!r} scores numbers and cannot be used with a label set')
    fns.append(fn(len(label_set)) if metric == 'macro_f1' else fn)
    floats = floats or scores_floats
  return fns, floats


def normalize_label_set(label_set: Sequence[Any] | None) -> tuple[str, ...] | None:
  if label_set is None:
    return None
  if isinstance(label_set, str):
    raise ConfigError(f"label_set must be a list of labels, got the string {label_set!r} (use ('no', 'yes'))")
  labels = tuple(str(label) for label in label_set)
  if not labels:
    raise ConfigError('label_set is empty')
  duplicates = sorted({label for label in labels if labels.count(label) > 1})
  if duplicates:
    raise ConfigError(f'label_set {list(labels)} repeats {duplicates}')
  return labels


@gin.configurable(module='jaxprompt.data')
def register_file_task(
    name: str,
    *,
    train: Paths | None = None,
    validation: Paths | None = None,
    test: Paths | None = None,
    format: str | None = None,  # pylint: disable=redefined-builtin
    inputs_field: str = 'inputs',
    targets_field: str = 'targets',
    has_header: bool | None = None,
    label_set: Sequence[str] | None = None,
    vocabulary: str | seqio.Vocabulary | None = None,
    metrics: Sequence[str | Callable[..., Any]] = ('accuracy',),
    overwrite: bool = False) -> text_tasks.TextTask:
  """Registers (and returns) a task reading the user's TSV / JSONL files; see the module docstring. A text task
  (`jaxprompt.data.text_tasks`): read without TensorFlow, and a seqio Task too (`get_dataset`, `source`, ...).

  Args:
    name: task name for seqio (letters, digits, `_ . : #`).
    train, validation, test: a file path (local or gs://) or a list of them, per split; at least one split.
    format: 'tsv', 'jsonl', or 'alpaca' (JSONL instruction / input / output rows: `data/instructions.py`); None
      picks 'tsv' / 'jsonl' from each file's extension (.tsv / .jsonl).
    inputs_field, targets_field: TSV header columns / JSON keys holding the input and the target text.
    has_header: TSV only: True / False, or None to detect the header from the first line.
    label_set: allowed target strings; every target is checked, and predictions are mapped to class ids.
    vocabulary: None (T5's default), a SentencePiece model path, or a vocabulary (`jaxprompt.vocabulary()`'s or
      any seqio.Vocabulary).
    metrics: names among accuracy, sequence_accuracy, f1 (2 labels, the second is positive), macro_f1,
      matthews_corrcoef, pearson_corrcoef, spearman_corrcoef (no label set) -- or metric callables.
    overwrite: replace a task of the same name registered with different arguments.

  Raises:
    ConfigError: bad arguments. DataError: missing / empty / malformed files, a target outside the label set.
  """
  if not isinstance(name, str) or not _TASK_NAME.match(name):
    raise ConfigError(f'task name {name!r} is invalid: use letters, digits and _ . : #')
  if format is not None and format not in FORMATS:
    raise ConfigError(f'task {name}: format={format!r} is not one of {FORMATS} (or None for the extension)')
  files = {split: as_paths(split, value) for split, value in zip(SPLITS, (train, validation, test))}
  files = {split: paths for split, paths in files.items() if paths}
  if not files:
    raise ConfigError(f'task {name}: give at least one of train=, validation=, test=')
  labels = normalize_label_set(label_set)
  metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
  key = (files, format, inputs_field, targets_field, has_header, labels, vocabulary, metrics)
  existing = text_tasks.find(name)
  if name in _FILE_TASKS and existing.key == key:
    return existing  # gin evaluates references on every use: registering again is a no-op
  seqio = sys.modules.get('seqio')  # a task seqio registered elsewhere (not loaded: there is none)
  if not overwrite and (existing is not None or (seqio is not None and name in seqio.TaskRegistry.names())):
    raise DataError(f'task {name!r} is already registered (differently); pass overwrite=True to replace it')

  fns, scores_floats = metric_fns(metrics, labels)
  read = functools.partial(read_examples, format=format, inputs_field=inputs_field, targets_field=targets_field,
                           has_header=has_header, label_set=labels)
  sizes = {split: len(read(paths)[1]) for split, paths in files.items()}  # eager validation
  if labels is not None:
    postprocess_fn = functools.partial(_label_to_class_id, label_set=labels)
  else:
    postprocess_fn = _string_to_float if scores_floats else None
  task = text_tasks.TextTask(name, tuple(files), functools.partial(_split_texts, files=files, read=read),
                             vocab_lib.resolve(vocabulary), labels=labels, postprocessor=postprocess_fn,
                             metrics=tuple(fns), sizes=sizes, key=key)
  unregister_file_task(name)  # only reached with overwrite=True (or a new name), after the new files validated
  _FILE_TASKS.add(name)
  return text_tasks.register(task)


def _split_texts(split: str, *, files: Mapping[str, tuple[str, ...]],
                 read: Callable[[Sequence[str]], tuple[list[str], list[str]]]) -> Iterable[tuple[str, str]]:
  """(inputs, targets) of a split, read from its files now."""
  inputs, targets = read(files[split])
  return zip(inputs, targets)


def is_file_task(name: str) -> bool:
  return name in _FILE_TASKS


def token_lengths(name: str, split: str) -> dict[str, np.ndarray]:
  """{'inputs', 'targets'}: each example's token count with EOS [N] in one split of a file task, before any cut
  (read from its files and tokenized once per registration)."""
  if (name, split) not in _TOKEN_LENGTHS:
    task = text_tasks.find(name)
    pairs = list(task.texts(split))
    _TOKEN_LENGTHS[name, split] = {
        feature: np.asarray([len(task.vocabulary.encode(pair[i])) + 1 for pair in pairs], np.int64)
        for i, feature in enumerate(('inputs', 'targets'))
    }
  return _TOKEN_LENGTHS[name, split]


def longest_lengths(name: str) -> dict[str, int]:
  """The longest inputs and targets (tokens with EOS) over every split of a file task; targets also count the
  label set, whose labels rank classification scores even when no example has them."""
  task = text_tasks.find(name)
  lengths = [token_lengths(name, split) for split in task.splits]
  labels = [len(task.vocabulary.encode(label)) + 1 for label in task.labels or ()]
  return {
      'inputs': max(int(x['inputs'].max(initial=0)) for x in lengths),
      'targets': max([int(x['targets'].max(initial=0)) for x in lengths] + labels)
  }


@gin.configurable(module='jaxprompt.data')
def file_task_name() -> str:
  """Registers the task configured for `register_file_task` (in the current gin scope); returns its name."""
  return register_file_task().name  # pylint: disable=no-value-for-parameter  (gin supplies the arguments)


def unregister_file_task(name: str) -> None:
  """Forgets a task made by `register_file_task`, in seqio's registry too (no-op for unknown names)."""
  if name in _FILE_TASKS:
    _FILE_TASKS.discard(name)
    text_tasks.remove(name)
    for split in SPLITS:
      _TOKEN_LENGTHS.pop((name, split), None)


def get_file_task_label_set(name: str) -> tuple[str, ...] | None:
  """The label set of a task made by `register_file_task` (None if it has none)."""
  if name not in _FILE_TASKS:
    raise DataError(f'task {name!r} was not registered with register_file_task '
                    f"(file tasks: {sorted(_FILE_TASKS) or 'none'})")
  return text_tasks.find(name).labels
