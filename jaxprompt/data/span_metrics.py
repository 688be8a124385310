"""Entity-level (span) precision, recall and F1 for BIO tagging, as seqeval's default mode (conlleval.pl) scores.

A tag is `O` or `<prefix>-<TYPE>` with prefix B (begin), I (inside), E (end) or S (single): IOB1 (CoNLL-2003's own
files: I- opens an entity, B- only splits two adjacent ones of a type), IOB2 (every entity opens with B-) and
BIOES / IOBES are all read, and mixed, the lenient way conlleval reads them:
  * an entity opens at B- or S-, at I- / E- after O or after an entity that just closed (E- or S-), and wherever
    the type changes (`B-PER I-LOC` is two entities; `O I-PER I-PER` is one);
  * it closes before O, B- or S-, after E- or S-, where the type changes, and at the sentence end.
An entity counts as found when the prediction has one of the same type over exactly the same words. Scores are
micro over entity types (every entity counts once), and also per type (the types seen in targets or predictions);
0/0 is 0, as seqeval (with its warning) and sklearn give it.
"""
from __future__ import annotations

import collections
from collections.abc import Sequence

from jaxprompt.data.metrics import check_lengths, f1_from_counts
from jaxprompt.errors import DataError

OUTSIDE = 'O'
PREFIXES = ('B', 'I', 'E', 'S')
SCHEMES = 'IOB1, IOB2 or BIOES'
KEYS = ('span_precision', 'span_recall', 'span_f1')


def split_tag(tag: str) -> tuple[str, str] | None:
  """('B', 'PER') for 'B-PER', ('O', '') for 'O'; None for a tag no scheme has."""
  if tag == OUTSIDE:
    return OUTSIDE, ''
  if len(tag) > 2 and tag[0] in PREFIXES and tag[1] == '-':
    return tag[0], tag[2:]
  return None


def tag_problem(tag: str) -> str | None:
  """Why `tag` is not a tag of the schemes read (one phrase), None when it is."""
  if split_tag(tag) is None:
    return f'tag {tag!r} is neither O nor B-/I-/E-/S- and a type ({SCHEMES}, e.g. B-PER)'
  return None


def entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
  """The entities of one sentence's tags: (type, first word, last word + 1)."""
  found, start, prev, prev_type = set(), 0, OUTSIDE, ''
  for i, tag in enumerate([*tags, OUTSIDE]):
    parts = split_tag(tag)
    if parts is None:
      raise DataError(f'span metrics: {tag_problem(tag)}')
    prefix, kind = parts
    inside = prev != OUTSIDE
    closes = inside and (prev in 'ES' or prefix in 'BSO' or kind != prev_type)
    opens = prefix != OUTSIDE and (prefix in 'BS' or prev in 'OES' or kind != prev_type)
    if closes:
      found.add((prev_type, start, i))
    if opens:
      start = i
    prev, prev_type = prefix, kind
  return found


def _scores(tp: int, true: int, predicted: int) -> tuple[float, float, float]:
  precision = tp / predicted if predicted else 0.0
  recall = tp / true if true else 0.0
  return 100.0 * precision, 100.0 * recall, 100.0 * f1_from_counts(tp, true, predicted)


def span_f1(targets: Sequence[Sequence[str]], predictions: Sequence[Sequence[str]]) -> dict[str, float]:
  """Entity-level scores in percent over sentences of word tags: `span_precision`, `span_recall`, `span_f1` (micro
  over types) and `span_precision/<TYPE>`, `span_recall/<TYPE>`, `span_f1/<TYPE>` per type."""
  check_lengths('span_f1', targets, predictions)
  counts = collections.defaultdict(lambda: [0, 0, 0])  # type -> [found, true, predicted]
  for n, (target, prediction) in enumerate(zip(targets, predictions)):
    if len(target) != len(prediction):
      raise DataError(f'span_f1: sentence {n} has {len(target)} target tags but {len(prediction)} predicted tags')
    true, predicted = entities(target), entities(prediction)
    for kind, *_ in true:
      counts[kind][1] += 1
    for entity in predicted:
      counts[entity[0]][2] += 1
      counts[entity[0]][0] += entity in true
  out = dict(zip(KEYS, _scores(*(sum(c[i] for c in counts.values()) for i in range(3)))))
  for kind in sorted(counts):
    out.update({f'{key}/{kind}': value for key, value in zip(KEYS, _scores(*counts[kind]))})
  return out
