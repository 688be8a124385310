"""Tagging data in CoNLL-2003 form: one word a line, a blank line between sentences (local or gs:// files).

Two layouts, told apart per line by a tab:
  * `word<TAB>tag` (more tab-separated columns are allowed: the tag is the last one);
  * CoNLL-2003's own `word POS chunk NER`, space-separated: the word is the first column, the tag the last.
Lines whose first column is `-DOCSTART-` end the sentence and are skipped; so are repeated blank lines. Tags are
`O` or B-/I-/E-/S- and a type (IOB1, IOB2 or BIOES, read as `data/span_metrics.py` reads them: an I- after O opens
an entity, as CoNLL-2003's IOB1 files have it). Every line of a file has the same number of columns.

A file that breaks a rule gets one `DataError` naming the file and the line: one column, a column count unlike the
file's first line, an empty word, a tag of no scheme, a tag outside the given label list.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from jaxprompt.data.custom import read_lines
from jaxprompt.data.span_metrics import OUTSIDE, tag_problem
from jaxprompt.errors import DataError
from jaxprompt.formats import files

DOCSTART = '-DOCSTART-'


@dataclasses.dataclass(frozen=True)
class Sentence:
  """One sentence: its words and their tags [n], and the file line of its first word (for messages)."""
  words: tuple[str, ...]
  tags: tuple[str, ...]
  line: int = 0


def _columns(line: str) -> list[str]:
  """A line's columns, [] for a blank line."""
  if not line.strip():
    return []
  return [c.strip() for c in line.split('\t')] if '\t' in line else line.split()


def read_conll(path: str, labels: Sequence[str] | None = None) -> list[Sentence]:
  """The sentences of a CoNLL file; `labels` (if given) is every tag the file may use."""
  if files.isdir(path):
    raise DataError(f'tagging file {path} is a directory, expected a CoNLL file (word<TAB>tag per line)')
  known = None if labels is None else set(labels)
  sentences, words, tags, first, width = [], [], [], 0, None
  for n, line in enumerate(read_lines(path), 1):
    columns = _columns(line)
    if not columns or columns[0] == DOCSTART:
      if words:
        sentences.append(Sentence(tuple(words), tuple(tags), first))
      words, tags = [], []
      continue
    problem = None
    if len(columns) < 2:
      problem = f'one column {line.strip()!r}: a line is `word<TAB>tag` or `word POS chunk NER`'
    elif width is not None and len(columns) != width:
      problem = f'{len(columns)} columns, but the file\'s first line has {width}'
    elif not columns[0]:
      problem = 'an empty word before the tag'
    else:
      problem = tag_problem(columns[-1])
      if problem is None and known is not None and columns[-1] not in known:
        problem = f'tag {columns[-1]!r} is not in the label list {list(labels)}'
    if problem:
      raise DataError(f'{path}:{n}: {problem}')
    width = width or len(columns)
    first = first if words else n
    words.append(columns[0])
    tags.append(columns[-1])
  if words:
    sentences.append(Sentence(tuple(words), tuple(tags), first))
  if not sentences:
    raise DataError(f'tagging file {path} has no sentences (expected word<TAB>tag lines)')
  return sentences


def tag_list(sentences: Iterable[Sentence]) -> tuple[str, ...]:
  """Every tag the sentences use: O first, then sorted by type, B- I- E- S- within a type (label id = index)."""
  order = {p: i for i, p in enumerate('BIES')}
  used = {t for s in sentences for t in s.tags} - {OUTSIDE}
  return (OUTSIDE, *sorted(used, key=lambda t: (t[2:], order[t[0]])))
