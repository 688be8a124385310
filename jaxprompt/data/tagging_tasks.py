"""Tagging tasks from CoNLL-2003 files (`word<TAB>tag`, a blank line between sentences; `data/conll.py`).

`register_tagging_task('ner', '/data/conll')` reads `train` / `validation` / `test` files of that directory (named
`<split>.txt`, `.conll`, `.tsv` or bare; `dev.*` is the validation split; or give `train=`... paths), checks every
line now, and takes its tag set from the training file (`conll.tag_list`: O first) unless `labels` is given. The
task keeps the words, so infer can print a tag per word (`TagAligner.word_tags`). It is a seqio Task of that name
too (`tagging_seqio`: training's stream, through the encoder family's converter).

Rows: `features(split, vocabulary, length)` -> the sentences aligned to the model's tokenizer (`token_labels`:
the word's tag id on its first sub-token, IGNORE_LABEL elsewhere) and their `TAGGING_FEATURES` [n, length]; the
sentences cut are counted and said once. Metric: `score(aligned, predicted, split)` maps each word's first
sub-token's predicted id back to the word and scores entity P / R / F1 (`span_metrics.span_f1`, as seqeval) and
the words' tag accuracy.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxprompt.data import conll
from jaxprompt.data.span_metrics import span_f1
from jaxprompt.data.token_labels import Aligned, TagAligner
from jaxprompt.errors import ConfigError, DataError
from jaxprompt.formats import files

SPLITS = ('train', 'validation', 'test')
_NAMES = {'train': ('train',), 'validation': ('validation', 'dev', 'valid'), 'test': ('test',)}
_EXTENSIONS = ('', '.txt', '.conll', '.tsv')


@dataclasses.dataclass(frozen=True, eq=False)
class TaggingTask:
  """A tagging task: its split files, its tag set (label id = index)."""
  name: str
  paths: Mapping[str, str]
  labels: tuple[str, ...]

  @property
  def splits(self) -> tuple[str, ...]:
    return tuple(self.paths)

  def sentences(self, split: str) -> list[conll.Sentence]:
    if split not in self.paths:
      raise DataError(f'tagging task {self.name!r} has no split {split!r}; it has {list(self.paths)}')
    return conll.read_conll(self.paths[split], self.labels)

  @functools.lru_cache(maxsize=8)  # noqa: B019  (tasks live as long as the process)
  def aligner(self, vocabulary: Any, length: int) -> TagAligner:
    return TagAligner(vocabulary, self.labels, length)

  def features(self, split: str, vocabulary: Any,
               length: int) -> tuple[list[Aligned], dict[str, np.ndarray], list[conll.Sentence]]:
    """(aligned sentences, their features stacked [n, length], the sentences) of a split."""
    sentences = self.sentences(split)
    aligned, rows, _ = self.aligner(vocabulary, length).tagging_features(sentences,
                                                                         f'task {self.name!r} split {split!r}')
    return aligned, {k: np.stack([r[k] for r in rows]) for k in rows[0]}, sentences

  def word_tags(self, aligned: Sequence[Aligned], predicted: np.ndarray, vocabulary: Any,
                length: int) -> list[list[str]]:
    """Each sentence's tag per word from per-token predicted ids [n, length]: its first sub-token's."""
    aligner = self.aligner(vocabulary, length)
    return [aligner.word_tags(a, p) for a, p in zip(aligned, predicted)]

  def score(self, sentences: Sequence[conll.Sentence], predicted_tags: Sequence[Sequence[str]]) -> dict[str, float]:
    """span_f1's entity scores (percent) and `accuracy`, the percent of words tagged right."""
    return tagging_metrics([s.tags for s in sentences], predicted_tags)


def tagging_metrics(targets: Sequence[Sequence[str]], predictions: Sequence[Sequence[str]]) -> dict[str, float]:
  """A seqio-style metric fn on word tags per sentence: span P / R / F1 (`span_metrics`) and word `accuracy`."""
  out = span_f1(targets, predictions)
  pairs = [(t, p) for target, prediction in zip(targets, predictions) for t, p in zip(target, prediction)]
  out['accuracy'] = 100.0 * float(np.mean([t == p for t, p in pairs])) if pairs else 0.0
  return out


def _find(directory: str, split: str) -> str | None:
  for stem in _NAMES[split]:
    for extension in _EXTENSIONS:
      path = os.path.join(directory, stem + extension)
      if files.exists(path) and not files.isdir(path):
        return path
  return None


_TASKS: dict[str, TaggingTask] = {}


def register_tagging_task(name: str, directory: str | None = None, *, train: str | None = None,
                          validation: str | None = None, test: str | None = None,
                          labels: Sequence[str] | None = None) -> TaggingTask:
  """Registers (and returns) the tagging task `name` of a directory's split files or of given paths."""
  paths = {s: p for s, p in zip(SPLITS, (train, validation, test)) if p is not None}
  if directory is not None:
    if not files.isdir(directory):
      raise DataError(f'tagging task {name!r}: {directory} is not a directory (of train / validation files)')
    paths = {**{s: p for s in SPLITS if (p := _find(directory, s)) is not None}, **paths}
  if not paths:
    raise ConfigError(f'tagging task {name!r}: no split file (name them train / validation / test, .txt .conll '
                      f'.tsv or bare, or give train= / validation= / test=)')
  if labels is None:
    if 'train' not in paths:
      raise ConfigError(f'tagging task {name!r}: without a training file, give its tag set (labels=...)')
    labels = conll.tag_list(conll.read_conll(paths['train']))
  task = TaggingTask(name, paths, tuple(labels))
  for split in paths:  # every line checked now, against the tag set
    task.sentences(split)
  _TASKS[name] = task
  from jaxprompt.data import tagging_seqio  # pylint: disable=g-import-not-at-top  (TensorFlow)
  tagging_seqio.register(task)
  return task


def get(name: str) -> TaggingTask:
  if name not in _TASKS:
    raise DataError(f'unknown tagging task {name!r} (registered: {sorted(_TASKS) or "none"})')
  return _TASKS[name]


def names() -> list[str]:
  """The tagging tasks registered in this process."""
  return sorted(_TASKS)
