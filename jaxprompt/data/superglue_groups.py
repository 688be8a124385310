"""SuperGLUE label tasks scored in groups of rows: MultiRC (a question's answers) and ReCoRD (a query's entities).

Their rows train as any binary classification (`label_tasks.py`: False / True per row); what groups them rides
beside the rows as features that are not output features, so a mixture drops them (its tasks keep one structure)
and only a split read once for evaluation (`eval/label_eval.py`) sees them:

  group     int32, MultiRC's question (`idx/question`, T5's group); ReCoRD's [2] (`idx/passage`, `idx/query`)
  entity    ReCoRD: the row's candidate entity (the text that filled `@placeholder`)
  answers   ReCoRD: the query's gold answers ([] on the test split, whose rows have label -1)

`RowGroup.of(example)` reads them from an example; `score_multirc` and `score_record` give T5's metric names and
values (`data/metrics.py`, as `data/tasks.py`'s text-to-text MultiRC and ReCoRD report them): MultiRC `exact_match`
(every answer of a question right, averaged over questions: `mean_group_metric(all_match)`) and `f1` over all
answers (`multirc_f1_over_all_answers`); ReCoRD picks per query the entity whose row has the highest True logit
(the head's raw class-1 score, as THUDM's P-tuning v2 ranks them; on a tie the entity last in string order, as its
sort does) and scores it with SQuAD's max-over-answers `em` / `f1` (T5's `record` metric).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxprompt.data import metrics
from jaxprompt.errors import DataError

GROUP, ENTITY, ANSWERS = 'group', 'entity', 'answers'
MULTIRC, RECORD = 'multirc', 'record'


def _text(value: Any) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


@dataclasses.dataclass(frozen=True)
class RowGroup:
  """What scores a row with its group: the group id, and (ReCoRD) the row's entity and the query's answers."""
  group: int | tuple[int, ...]
  entity: str = ''
  answers: tuple[str, ...] = ()

  @classmethod
  def of(cls, example: Mapping[str, Any]) -> RowGroup:
    """The group of a read example (numpy features, strings as bytes)."""
    if GROUP not in example:
      raise DataError(f'a grouped task\'s example has no {GROUP!r} feature (its features: {sorted(example)})')
    group = np.asarray(example[GROUP])
    return cls(
        int(group) if group.ndim == 0 else tuple(int(v) for v in group), _text(example.get(ENTITY, b'')),
        tuple(_text(a) for a in np.asarray(example.get(ANSWERS, ())).tolist()))


def true_logits(logits: np.ndarray) -> np.ndarray:
  """[n] class-1 (True) logit of a binary head's rows, from `label_eval.predict`'s logits [n, 2]."""
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2 or logits.shape[1] != 2:
    raise DataError(f'ReCoRD ranks a binary head\'s rows by their True logit: got logits of shape {logits.shape}')
  return logits[:, 1]


def record_picks(positives: Sequence[float], groups: Sequence[RowGroup]) -> dict[Any, str]:
  """{query: the entity of its row with the highest True score}; a tie goes to the entity last in string order."""
  best: dict[Any, tuple[float, str]] = {}
  for p, g in zip(positives, groups):
    if g.group not in best or (float(p), g.entity) > best[g.group]:
      best[g.group] = (float(p), g.entity)
  return {k: entity for k, (_, entity) in best.items()}


def score_multirc(targets: Sequence[int], predictions: Sequence[int], groups: Sequence[RowGroup]) -> dict[str, float]:
  """T5's MultiRC metrics over the labelled rows: `exact_match` per question, averaged, and `f1` over answers."""
  kept = [(int(t), int(p), g.group) for t, p, g in zip(targets, predictions, groups) if t >= 0]
  if not kept:
    raise DataError('no labelled example to score (a test split has label -1 everywhere)')
  gold = [{'value': t, 'group': g} for t, _, g in kept]
  predicted = [{'value': p} for _, p, _ in kept]
  return {
      **metrics.multirc_f1_over_all_answers(gold, predicted),
      **metrics.mean_group_metric(metrics.all_match)(gold, predicted)
  }


def score_record(positives: Sequence[float], groups: Sequence[RowGroup]) -> dict[str, float]:
  """T5's ReCoRD metrics (`em`, `f1`) of each answered query's picked entity (`record_picks`); queries without
  answers (the test split) are left out."""
  picks = record_picks(positives, groups)
  answered = {g.group: g.answers for g in groups if g.answers}
  if not answered:
    raise DataError('no labelled example to score (a test split has no answers)')
  gold = [{'value': list(answers), 'group': q} for q, answers in answered.items()]
  return metrics.record(gold, [{'value': picks[q]} for q in answered])


def score(kind: str, targets: Sequence[int], predictions: Sequence[int], logits: np.ndarray,
          groups: Sequence[RowGroup]) -> dict[str, float]:
  """A grouped task's metrics (`kind` MULTIRC or RECORD) from its rows' labels, head ids and logits [n, 2]."""
  if len(groups) != len(predictions):
    raise DataError(f'{kind}: {len(predictions)} predictions but {len(groups)} row groups')
  if kind == MULTIRC:
    return score_multirc(targets, predictions, groups)
  return score_record(true_logits(logits), groups)


def record_fields(kind: str, logits: np.ndarray, groups: Sequence[RowGroup]) -> list[dict[str, Any]]:
  """What each row's eval / infer record adds: its `group`, and for ReCoRD its `entity`, its `true_logit` (what
  ranks it) and the query's `group_prediction` (the entity picked for it)."""
  if kind == MULTIRC:
    return [{GROUP: g.group} for g in groups]
  positives = true_logits(logits)
  picks = record_picks(positives, groups)
  return [{GROUP: g.group, ENTITY: g.entity, 'true_logit': float(p), 'group_prediction': picks[g.group]}
          for p, g in zip(positives, groups)]
