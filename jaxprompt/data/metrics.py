"""Evaluation metrics with the semantics of T5's `t5.evaluation.metrics`.

Every metric takes `targets` and `predictions` (sequences, as seqio hands them over after postprocessing) and
returns a dict `{name: value}` with T5's key names and values in percent (x100), so scores line up with
published T5 / prompt-tuning numbers. Only numpy and scipy are needed (no scikit-learn); the edge cases follow
scikit-learn's defaults that T5 relies on (an undefined F1 is 0, an undefined MCC is 0).
"""
from __future__ import annotations

import collections
import itertools
import re
import string
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxprompt.errors import DataError

MetricFn = Callable[..., dict[str, float]]


def check_lengths(name: str, targets: Sequence[Any], predictions: Sequence[Any]) -> None:
  if len(targets) != len(predictions):
    raise DataError(f'metric {name}: {len(targets)} targets but {len(predictions)} predictions')
  if not len(targets):
    raise DataError(f'metric {name}: no examples to score')


def _weights(sample_weight: Sequence[float] | None, n: int) -> np.ndarray:
  if sample_weight is None:
    return np.ones(n, dtype=np.float64)
  w = np.asarray(sample_weight, dtype=np.float64)
  if w.shape != (n,):
    raise DataError(f'sample_weight has shape {w.shape}, expected ({n},)')
  return w


def f1_from_counts(tp: float, true_sum: float, pred_sum: float) -> float:
  # F1 = 2TP / (2TP + FP + FN) = 2TP / (#true + #predicted); sklearn defines the 0/0 case as 0.
  denom = true_sum + pred_sum
  return 0.0 if denom == 0 else 2.0 * tp / denom


# ------------------------------------------------------------------------------------------------- classification


def accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
  """Percent of predictions equal to their target (labels, class ids or strings)."""
  check_lengths('accuracy', targets, predictions)
  return {'accuracy': 100.0 * float(np.mean([t == p for t, p in zip(targets, predictions)]))}


def sequence_accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Percent of predicted sequences exactly equal to their target sequence."""
  check_lengths('sequence_accuracy', targets, predictions)
  return {'sequence_accuracy': 100.0 * float(np.mean([t == p for t, p in zip(targets, predictions)]))}


def _binary_f1(targets: np.ndarray, predictions: np.ndarray, weights: np.ndarray) -> float:
  """F1 of the positive class 1; targets and predictions are 0/1 arrays of shape [n]."""
  tp = float(np.sum(weights * ((targets == 1) & (predictions == 1))))
  return f1_from_counts(tp, float(np.sum(weights * (targets == 1))), float(np.sum(weights * (predictions == 1))))


def _check_binary(name: str, what: str, values: np.ndarray) -> None:
  bad = [v for v in np.unique(values).tolist() if v not in (0, 1)]
  if bad:
    raise DataError(f'metric {name}: {what} must be 0 or 1, got {bad[:5]}')


def f1_binary(targets: Sequence[int], predictions: Sequence[int],
              sample_weight: Sequence[float] | None = None) -> dict[str, float]:
  """F1 of the positive class 1 (sklearn `f1_score` defaults); both inputs must be 0/1."""
  check_lengths('f1', targets, predictions)
  t, p = np.asarray(targets), np.asarray(predictions)
  _check_binary('f1', 'targets', t)
  _check_binary('f1', 'predictions', p)
  return {'f1': 100.0 * _binary_f1(t, p, _weights(sample_weight, len(t)))}


def f1_score_with_invalid(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
  """Binary F1 (positive class 1) where any prediction other than 0/1 counts as wrong.

  An invalid prediction (e.g. -1 from a label postprocessor) is replaced by the opposite of its target, as T5
  does for MRPC / QQP. Targets must be 0 or 1.
  """
  check_lengths('f1', targets, predictions)
  t = np.asarray(targets)
  _check_binary('f1', 'targets', t)
  p = np.array(predictions)  # a copy: the caller's predictions stay untouched
  invalid = (p != 0) & (p != 1)
  p[invalid] = 1 - t[invalid]
  return {'f1': 100.0 * _binary_f1(t, p, np.ones(len(t)))}


def _macro_f1_from_indicators(labels: np.ndarray, preds: np.ndarray, weights: np.ndarray) -> float:
  """Unweighted mean over classes of per-class F1; labels/preds are 0/1 indicators [n, num_classes]."""
  w = weights[:, None]
  tp = np.sum(w * (labels * preds), axis=0)
  true_sum, pred_sum = np.sum(w * labels, axis=0), np.sum(w * preds, axis=0)
  return float(np.mean([f1_from_counts(*c) for c in zip(tp, true_sum, pred_sum)]))


def _one_hot(ids: Sequence[Any], num_classes: int) -> np.ndarray:
  """[n] class ids -> [n, num_classes] indicators; an id outside 0..num_classes-1 gives an all-zero row."""
  out = np.zeros((len(ids), num_classes), dtype=np.float64)
  for row, i in enumerate(ids):
    if isinstance(i, (int, np.integer)) and 0 <= i < num_classes:
      out[row, int(i)] = 1.0
  return out


def mean_multiclass_f1(num_classes: int, sample_weight: Sequence[float] | None = None) -> MetricFn:
  """Returns a metric: macro F1 over classes 0..num_classes-1, key `mean_{num_classes}class_f1`.

  A class never seen in targets nor predictions contributes F1 0 to the mean (sklearn with `labels` given);
  predictions outside the classes (e.g. -1) only count as misses of the true class.
  """
  key = f'mean_{num_classes}class_f1'

  def metric(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    check_lengths(key, targets, predictions)
    w = _weights(sample_weight, len(targets))
    value = _macro_f1_from_indicators(_one_hot(targets, num_classes), _one_hot(predictions, num_classes), w)
    return {key: 100.0 * value}

  return metric


def matthews_corrcoef(targets: Sequence[Hashable], predictions: Sequence[Hashable]) -> dict[str, float]:
  """Matthews correlation (multiclass R_K form, as sklearn), key `matthews_corrcoef`; 0 when undefined."""
  check_lengths('matthews_corrcoef', targets, predictions)
  classes = {c: i for i, c in enumerate(sorted(set(targets) | set(predictions), key=repr))}
  k, n = len(classes), len(targets)
  confusion = np.zeros((k, k), dtype=np.float64)
  for t, p in zip(targets, predictions):
    confusion[classes[t], classes[p]] += 1
  t_sum, p_sum = confusion.sum(axis=1), confusion.sum(axis=0)
  cov_tp = np.trace(confusion) * n - t_sum @ p_sum
  cov_pp = n * n - p_sum @ p_sum
  cov_tt = n * n - t_sum @ t_sum
  if cov_pp * cov_tt == 0:
    return {'matthews_corrcoef': 0.0}
  return {'matthews_corrcoef': 100.0 * float(cov_tp / np.sqrt(cov_tt * cov_pp))}


def pearson_corrcoef(targets: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
  """Pearson correlation x100 (scipy; NaN if either side is constant)."""
  import scipy.stats  # pylint: disable=g-import-not-at-top  (keeps `import metrics` light)
  check_lengths('pearson_corrcoef', targets, predictions)
  return {'pearson_corrcoef': 100.0 * float(scipy.stats.pearsonr(targets, predictions)[0])}


def spearman_corrcoef(targets: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
  """Spearman rank correlation x100 (scipy; ties get their average rank)."""
  import scipy.stats  # pylint: disable=g-import-not-at-top
  check_lengths('spearman_corrcoef', targets, predictions)
  return {'spearman_corrcoef': 100.0 * float(scipy.stats.spearmanr(targets, predictions)[0])}


def all_match(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
  """100 if the whole list of predictions equals the whole list of targets, else 0 (key `exact_match`).

  Used per question group for MultiRC: `mean_group_metric(all_match)`.
  """
  return {'exact_match': 100.0 * float(np.array_equal(np.asarray(targets), np.asarray(predictions)))}


exact_match = all_match  # T5 names the function all_match and the key exact_match

# ------------------------------------------------------------------------------------------------- SQuAD / ReCoRD


def normalize_squad(text: str) -> str:
  """SQuAD v1.1 answer normalisation: lower case, drop punctuation, drop a/an/the, squeeze whitespace."""
  text = text.lower()
  text = ''.join(ch for ch in text if ch not in _PUNCTUATION)
  text = re.sub(r'\b(a|an|the)\b', ' ', text)
  return ' '.join(text.split())


_PUNCTUATION = frozenset(string.punctuation)


def _token_f1(target: str, prediction: str) -> float:
  """Bag-of-tokens F1 between two normalised answers."""
  pred_tokens, target_tokens = prediction.split(), target.split()
  common = sum((collections.Counter(pred_tokens) & collections.Counter(target_tokens)).values())
  if common == 0:
    return 0.0
  precision, recall = common / len(pred_tokens), common / len(target_tokens)
  return 2.0 * precision * recall / (precision + recall)


def squad(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
  """SQuAD exact match `em` and token `f1`, each the max over an example's gold answers, averaged, x100.

  Args:
    targets: per example, a list of acceptable answers.
    predictions: per example, the predicted answer string.
  """
  check_lengths('squad', targets, predictions)
  ems, f1s = [], []
  for answers, prediction in zip(targets, predictions):
    if isinstance(answers, str):
      raise DataError(f'metric squad: each target must be a list of answers, got the string {answers!r}')
    if not len(answers):
      raise DataError(f'metric squad: an example has no gold answer (prediction {prediction!r})')
    pred = normalize_squad(prediction)
    golds = [normalize_squad(a) for a in answers]
    ems.append(max(float(g == pred) for g in golds))
    f1s.append(max(_token_f1(g, pred) for g in golds))
  return {'em': 100.0 * float(np.mean(ems)), 'f1': 100.0 * float(np.mean(f1s))}


# ------------------------------------------------------------------------------------------------- grouped metrics


def deduplicate_metric(metric_fn: MetricFn, group_key: str = 'group', value_key: str = 'value') -> MetricFn:
  """Returns `metric_fn` applied to the first example of each group only (ReCoRD repeats inputs per answer).

  Targets and predictions are dicts; `target[group_key]` names the group, `[value_key]` holds the value.
  """

  def metric(targets: Sequence[Mapping[str, Any]], predictions: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    seen = set()
    kept_targets, kept_predictions = [], []
    for target, prediction in zip(targets, predictions):
      group = target[group_key]
      if group in seen:
        continue
      seen.add(group)
      kept_targets.append(target[value_key])
      kept_predictions.append(prediction[value_key])
    return metric_fn(kept_targets, kept_predictions)

  return metric


def record(targets: Sequence[Mapping[str, Any]], predictions: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """ReCoRD: SQuAD em/f1 over deduplicated queries (T5's `deduplicate_metric(squad)`)."""
  return deduplicate_metric(squad)(targets, predictions)


def mean_group_metric(metric_fn: MetricFn, group_key: str = 'group', value_key: str = 'value',
                      return_subgroup_scores: bool = False) -> MetricFn:
  """Returns a metric: `metric_fn` computed inside each group (by `target[group_key]`), then averaged.

  With `return_subgroup_scores`, each group's score is also returned under `"{group}-{metric}"`.
  """

  def metric(targets: Sequence[Mapping[str, Any]], predictions: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    grouped = collections.defaultdict(lambda: ([], []))
    for target, prediction in zip(targets, predictions):
      group_targets, group_predictions = grouped[target[group_key]]
      group_targets.append(target[value_key])
      group_predictions.append(prediction[value_key])
    scores = collections.defaultdict(list)
    for group, (group_targets, group_predictions) in grouped.items():
      for name, score in metric_fn(group_targets, group_predictions).items():
        scores[name].append(score)
        if return_subgroup_scores:
          scores[f'{group}-{name}'].append(score)
    return {name: float(np.mean(values)) for name, values in scores.items()}

  return metric


def multirc_f1_over_all_answers(targets: Sequence[Mapping[str, Any]],
                                predictions: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """MultiRC F1a: `f1_score_with_invalid` over the `value` of every answer, ignoring the grouping."""
  return f1_score_with_invalid([t['value'] for t in targets], [p['value'] for p in predictions])


# ------------------------------------------------------------------------------------------------- rank classification


def _ranked_counts(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Weighted cumulative (true positives, false positives) at each distinct score, highest score first."""
  order = np.argsort(-scores, kind='mergesort')
  labels, scores, weights = labels[order], scores[order], weights[order]
  last_of_each_score = np.r_[np.where(np.diff(scores))[0], len(scores) - 1]
  tps = np.cumsum(labels * weights)[last_of_each_score]
  fps = np.cumsum((1 - labels) * weights)[last_of_each_score]
  return tps, fps


def _roc_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> float:
  """Area under the ROC curve (trapezoids); NaN when only one class is present."""
  tps, fps = _ranked_counts(labels, scores, weights)
  if tps[-1] == 0 or fps[-1] == 0:
    return float('nan')
  tpr, fpr = np.r_[0.0, tps / tps[-1]], np.r_[0.0, fps / fps[-1]]
  return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def _average_precision(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> float:
  """Step-wise average precision sum_k (R_k - R_{k-1}) P_k, as sklearn (no interpolation); 0 with no positive."""
  tps, fps = _ranked_counts(labels, scores, weights)
  if tps[-1] == 0:
    return 0.0
  precision, recall = tps / (tps + fps), tps / tps[-1]
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def rank_classification(targets: Sequence[tuple[Sequence[int], bool, float,
                                                int]], scores: Sequence[float], num_classes: int | None = None,
                        normalize_by_target_length: bool = False, idx_len: int = 2) -> dict[str, float]:
  """Classification by ranking the log-likelihood of every candidate answer (T5's `rank_classification`).

  Args:
    targets: one `(idx, is_correct, weight, target_length)` per (example, candidate); `idx` is an
      `idx_len`-tuple whose first entry is the example index.
    scores: [num_examples * num_classes] log-likelihoods, one per target.
    num_classes: candidates per example; None when it varies (then only accuracy is computed).
    normalize_by_target_length: divide each score by its target length first.
    idx_len: length of each `idx`.

  Returns:
    `accuracy`; with a fixed `num_classes` also `f1`, `auc-roc`, `auc-pr` (2 classes, positive = candidate 1)
    or `mean_{n}class_f1` (more classes). A prediction matching any correct candidate counts as correct.
  """
  if len(targets) != len(scores):
    raise DataError(f'rank_classification: {len(targets)} targets but {len(scores)} scores')
  if not targets:
    raise DataError('rank_classification: no examples to score')
  if len(targets[0]) != 4:
    raise DataError(f'rank_classification: each target must be (idx, is_correct, weight, length), got {targets[0]}')
  idx_0 = targets[0][0]
  if not hasattr(idx_0, '__len__') or len(idx_0) != idx_len:
    raise DataError(f'rank_classification: each idx must have {idx_len} entries, got {idx_0}')
  scores = [s / t[3] for t, s in zip(targets, scores)] if normalize_by_target_length else list(scores)
  # Sorting on the whole idx puts each example's candidates together, in candidate order.
  pairs = sorted(zip(targets, scores), key=lambda pair: tuple(pair[0][0]))

  if not num_classes:
    correct = total = 0.0
    for _, group in itertools.groupby(pairs, key=lambda pair: pair[0][0][0]):
      candidates, log_likelihoods = zip(*group)
      best = candidates[int(np.argmax(log_likelihoods))]
      correct += best[1] * best[2]
      total += best[2]
    return {'accuracy': 100.0 * correct / total}

  if len(pairs) % num_classes:
    raise DataError(f'rank_classification: {len(pairs)} targets is not a multiple of num_classes={num_classes}')
  labels = np.array([float(t[1]) for t, _ in pairs]).reshape(-1, num_classes)
  weights = np.array([t[2] for t, _ in pairs], dtype=np.float64).reshape(-1, num_classes)[:, 0]
  log_likelihoods = np.array([s for _, s in pairs], dtype=np.float32).reshape(-1, num_classes)
  predictions = log_likelihoods.argmax(-1)
  hits = labels[np.arange(len(labels)), predictions]
  results = {'accuracy': 100.0 * float(np.average(hits, weights=weights))}
  if np.any(labels.sum(-1) > 1):  # several correct candidates: only accuracy is meaningful
    return results

  pred_indicators = np.eye(num_classes)[predictions]
  if num_classes > 2:
    results[f'mean_{num_classes}class_f1'] = 100.0 * _macro_f1_from_indicators(labels, pred_indicators, weights)
    return results
  results['f1'] = 100.0 * _binary_f1(labels.argmax(-1), predictions, weights)
  shifted = np.exp(log_likelihoods - log_likelihoods.max(-1, keepdims=True))
  positive_prob = (shifted / shifted.sum(-1, keepdims=True))[:, 1].astype(np.float64)
  results['auc-roc'] = 100.0 * _roc_auc(labels[:, 1], positive_prob, weights)
  results['auc-pr'] = 100.0 * _average_precision(labels[:, 1], positive_prob, weights)
  return results
