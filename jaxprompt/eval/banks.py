"""Serving a prompt bank (`jaxprompt.methods.prompt_bank`): mixed-task requests, and prompt ensembles.

Mixed-task requests: rows `{"task": name, "input": text}` are served in arrival order, `batch_size` rows at a
time, whatever their tasks: one rank classification for the rows of tasks with a label set (each row over its
own task's labels) and one decode for the others, both mixed-task. No batch is ever split by task. A bank with
per-task heads (encoder-only) answers each row with its task's head (`serve_heads`).

Ensembles (Lester et al. 2021 §7): K prompts of one task; every example runs under all K in one batched pass
(its row repeated K times, task ids 0..K-1) and the prediction is the majority vote (ties: the highest summed
score among the tied answers).
"""
from __future__ import annotations

import collections
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxprompt.data import pipeline as data
from jaxprompt.errors import DataError
from jaxprompt.eval import label_eval, records
from jaxprompt.eval.evaluation import EvalSet, ModelFns, label_candidates, scalar
from jaxprompt.methods.prompt_bank import PromptBank
from jaxprompt.models.features import CLASS_LABEL, REGRESSION_LABEL, TASK_FEATURE
from jaxprompt.models.task_heads import row_answers

if TYPE_CHECKING:
  import seqio

Batch = dict[str, np.ndarray]

# ------------------------------------------------------------------------------------ requests


def parse_requests(lines: Iterable[str], tasks: Sequence[str], where: str = 'input') -> list[dict[str, Any]]:
  """JSONL request lines -> [{'task', 'input', ...}]; every row must name one of `tasks` and give a string
  `input` (DataError naming the line otherwise). Other fields are kept and echoed in the output."""
  rows = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except ValueError as e:
      raise DataError(f'{where}:{number}: not a JSON object ({e}); each line is {{"task": ..., "input": ...}}') from e
    if not isinstance(row, dict):
      raise DataError(f'{where}:{number}: expected a JSON object {{"task": ..., "input": ...}}, got {line[:60]!r}')
    if 'task' not in row:
      raise DataError(f'{where}:{number}: the row names no "task"; each row needs one of {list(tasks)}')
    if row['task'] not in tasks:
      raise DataError(f'{where}:{number}: task {row["task"]!r} is not in the prompt bank; it has {list(tasks)}')
    if not isinstance(row.get('input'), str):
      raise DataError(f'{where}:{number}: the row needs a string "input"')
    rows.append(row)
  if not rows:
    raise DataError(f'no inputs: {where} has no request line')
  return rows


def candidate_tables(labels: Mapping[str, Sequence[str]], tasks: Sequence[str], vocabulary: seqio.Vocabulary,
                     length: int) -> tuple[np.ndarray, np.ndarray]:
  """Every task's label set as token rows: ([T, C, length] ids, [T, C] bool real) with C the largest set
  (tasks without labels: no real row). An empty or repeated label is a DataError naming its task."""
  unknown = sorted(set(labels) - set(tasks))
  if unknown:
    raise DataError(f'labels given for {unknown}, which are not in the prompt bank {list(tasks)}')
  for name, names in labels.items():
    names = list(names)
    problem = ('an empty label' if not all(label.strip() for label in names) else next(
        (f'the label {label!r} twice' for i, label in enumerate(names) if label in names[:i]), None))
    if problem:
      raise DataError(f'labels of task {name!r} {names} hold {problem}: give each label once, as '
                      f'--labels {name}=A|B')
  width = max([len(v) for v in labels.values()] + [1])
  ids = np.zeros((len(tasks), width, length), np.int32)
  real = np.zeros((len(tasks), width), bool)
  for t, name in enumerate(tasks):
    if labels.get(name):
      table = label_candidates(list(labels[name]), vocabulary, length)
      ids[t, :len(table)] = table
      real[t, :len(table)] = True
  return ids, real


def _pad_rows(batch: Mapping[str, np.ndarray], size: int) -> Batch:
  real = next(iter(batch.values())).shape[0]
  return {k: np.concatenate([v, np.zeros((size - real,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}


def batch_view(fns: ModelFns, trainable: Any, task_ids: np.ndarray) -> Any:
  """The bank's tree with its input prompts cut to the widest prompt among these rows' tasks.

  A bank's table is as wide as its longest prompt, and every row of a batch would carry that width; cut to the
  batch's own widest (rows are padded at their end, so nothing else changes), a batch of short-prompt tasks
  does not pay for a long-prompt task it does not hold. One compile per distinct width, at most one per prompt
  length in the bank.
  """
  bank = fns.rt.model.method
  if not isinstance(bank, PromptBank) or not bank.input_length or 'prompts' not in trainable:
    return trainable
  width = max(bank.entries[t].input_length for t in np.unique(task_ids))
  if width >= bank.input_length:
    return trainable
  return dict(trainable, prompts=trainable['prompts'][:, :max(width, 1)])


def rank_rows(fns: ModelFns, trainable: Any, batch: Mapping[str, np.ndarray], ids: np.ndarray, real: np.ndarray,
              batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(best candidate index [n], its log-likelihood [n]) of each row over its task's candidates.

  batch: n <= batch_size rows with `task_ids`; ids / real: `candidate_tables`. One pass for the n rows.
  """
  n = len(batch[TASK_FEATURE])
  tasks = batch[TASK_FEATURE]
  candidates = _pad_rows({'c': ids[tasks]}, batch_size)['c']
  scores = fns.rank(batch_view(fns, trainable, tasks), _pad_rows(batch, batch_size), candidates)[:n]
  scores = np.where(real[tasks][:, :scores.shape[1]], scores, -np.inf)  # a padded candidate is no answer
  best = scores.argmax(-1)
  return best, scores[np.arange(n), best]


def decode_rows(fns: ModelFns, trainable: Any, batch: Mapping[str, np.ndarray], batch_size: int,
                index: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(decoded ids [n, L], scores [n]) of n <= batch_size mixed-task rows, in one decode."""
  n = len(batch[TASK_FEATURE])
  decodes, scores = fns.decode(batch_view(fns, trainable, batch[TASK_FEATURE]), _pad_rows(batch, batch_size), index)
  return decodes[:n], scores[:n]


def serve(fns: ModelFns, trainable: Any, tasks: Sequence[str], rows: Sequence[Mapping[str, Any]],
          vocabulary: seqio.Vocabulary, feature_lengths: Mapping[str, int], batch_size: int,
          labels: Mapping[str, Sequence[str]] | None = None) -> list[dict[str, Any]]:
  """One output record per request row, in input order: the row's fields plus `prediction` and its score fields
  (`jaxprompt.eval.records`: the best label and its `log_likelihood` for tasks with `labels`, else the decode
  and its `beam_score` / `sample_log_prob`).

  `fns` / `trainable`: a `ModelFns` of a `PromptBank` whose `task_names` are `tasks`, and its placed tree.
  """
  labels = dict(labels or {})
  ids, real = candidate_tables(labels, tasks, vocabulary, feature_lengths['targets'])
  texts = data.tokenize_texts([r['input'] for r in rows], vocabulary, feature_lengths, 'requests')
  features = data.inference_features(texts, feature_lengths, fns.family, data.text_tokens(vocabulary))
  features[TASK_FEATURE] = np.asarray([list(tasks).index(r['task']) for r in rows], np.int32)
  out: list[dict[str, Any]] = [dict(r) for r in rows]
  decoded_by = records.prediction_by(False, fns.decode_options.method)
  for index, start in enumerate(range(0, len(rows), batch_size)):
    chunk = {k: v[start:start + batch_size] for k, v in features.items()}
    ranked = np.asarray([bool(labels.get(tasks[t])) for t in chunk[TASK_FEATURE]])
    if ranked.any():
      best, scores = rank_rows(fns, trainable, {k: v[ranked] for k, v in chunk.items()}, ids, real, batch_size)
      for i, b, s in zip(np.flatnonzero(ranked), best, scores):
        out[start + i].update(prediction=labels[rows[start + i]['task']][b], **records.score_fields(s, records.RANKED))
    if (~ranked).any():
      decodes, scores = decode_rows(fns, trainable, {k: v[~ranked] for k, v in chunk.items()}, batch_size, index)
      for i, d, s in zip(np.flatnonzero(~ranked), decodes, scores):
        out[start + i].update(prediction=vocabulary.decode([int(t) for t in d]), **records.score_fields(s, decoded_by))
  return out


def serve_heads(fns: ModelFns, trainable: Any, tasks: Sequence[str], rows: Sequence[Mapping[str, Any]],
                sets: Mapping[str, label_eval.LabelSet], batch_size: int) -> list[dict[str, Any]]:
  """`serve` for a bank with per-task heads (encoder-only): one record per request row, in input order, the row's
  fields plus its prediction as `label_eval.records` gives it for its task alone (a label name and `probability`,
  a value, or a tag per word). `sets`: {task: `label_eval.LabelSet` of that task's rows' inputs, in input order}.
  Batches mix tasks: each row is answered by its own task's head (`row_answers`)."""
  where = {t: [i for i, r in enumerate(rows) if r['task'] == t] for t in sets}
  ids = np.asarray([list(tasks).index(r['task']) for r in rows], np.int32)
  features: Batch = {}
  for task, label_set in sets.items():  # every row's features in input order (a key a set lacks: zeros)
    for key, value in label_set.features.items():
      if key not in (CLASS_LABEL, REGRESSION_LABEL):
        features.setdefault(key, np.zeros((len(rows),) + value.shape[1:], value.dtype))[where[task]] = value
  features[TASK_FEATURE] = ids
  answers: list[tuple[np.ndarray, np.ndarray]] = []
  for start, (batch, real) in zip(range(0, len(rows), batch_size),
                                  data.padded_batches(features, batch_size, fns.data_parallel)):
    answers += row_answers(fns.head_labels(trainable, batch), tuple(tasks), ids[start:start + batch_size])[:real]
  out: list[dict[str, Any]] = [dict(r) for r in rows]
  for task, label_set in sets.items():
    mine = [answers[i] for i in where[task]]
    outputs = np.stack([a[0] for a in mine]), np.stack([a[1] for a in mine])
    for i, record in zip(where[task], label_eval.records(label_set, *outputs)):
      out[i].update({k: v for k, v in record.items() if k != 'input'})
  return out


# ------------------------------------------------------------------------------------ ensembles


def repeat_for_ensemble(batch: Mapping[str, np.ndarray], size: int) -> Batch:
  """Each row repeated `size` times (example-major), the copies carrying task ids 0 .. size-1."""
  rows = next(iter(batch.values())).shape[0]
  out = {k: np.repeat(np.asarray(v), size, axis=0) for k, v in batch.items() if k != TASK_FEATURE}
  out[TASK_FEATURE] = np.tile(np.arange(size, dtype=np.int32), rows)
  return out


def vote(predictions: Sequence[str], scores: Sequence[float]) -> str:
  """The majority answer of one example's K predictions; a tie goes to the tied answer with the highest
  summed score."""
  counts = collections.Counter(predictions)
  top = max(counts.values())
  tied = [p for p in counts if counts[p] == top]
  if len(tied) == 1:
    return tied[0]
  total = {p: sum(s for q, s in zip(predictions, scores) if q == p) for p in tied}
  return max(tied, key=lambda p: total[p])


def ensemble_predict(fns: ModelFns, trainable: Any, features: Mapping[str, np.ndarray], size: int, batch_size: int,
                     vocabulary: seqio.Vocabulary,
                     labels: Sequence[str] | None) -> tuple[list[list[str]], list[list[float]]]:
  """Every example under each of the bank's `size` prompts, `batch_size` examples (x size rows) per pass:
  (predictions [n][size], scores [n][size]) by rank classification over `labels`, else decoding. `features`:
  inference features (`ModelFns.features`)."""
  texts: list[list[str]] = []
  scores: list[list[float]] = []
  candidates = None
  if labels:
    candidates = label_candidates(list(labels), vocabulary, features['decoder_target_tokens'].shape[1])
  for index, (batch, real) in enumerate(data.padded_batches(features, batch_size, fns.data_parallel)):
    batch = repeat_for_ensemble({k: v for k, v in batch.items() if k != TASK_FEATURE}, size)
    if candidates is not None:
      ll = fns.rank(trainable, batch, candidates).reshape(-1, size, candidates.shape[-2])[:real]
      best = ll.argmax(-1)
      texts += [[labels[j] for j in row] for row in best]
      scores += [[float(ll[i, k, j]) for k, j in enumerate(row)] for i, row in enumerate(best)]
    else:
      decodes, decode_scores = fns.decode(trainable, batch, index)
      decodes = decodes.reshape(-1, size, decodes.shape[-1])[:real]
      decode_scores = decode_scores.reshape(-1, size)[:real]
      texts += [[vocabulary.decode([int(t) for t in d]) for d in row] for row in decodes]
      scores += [[float(s) for s in row] for row in decode_scores]
  return texts, scores


def evaluate_ensemble(fns: ModelFns, trainable: Any, eval_set: EvalSet, batch_size: int, *,
                      names: Sequence[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """(metrics, records) of one task's split under an ensemble of the bank's prompts `names`: the task's metric
  fns on each prompt's predictions (`<name>/<metric>`) and on the majority vote (`ensemble/<metric>`)."""
  task, examples = eval_set.task, eval_set.examples
  vocabulary = data.targets_vocabulary(task)
  texts, scores = ensemble_predict(fns, trainable, eval_set.inference, len(names), batch_size, vocabulary,
                                   eval_set.labels)
  targets = [
      task.postprocess_fn(data.example_text(ex, 'targets', vocabulary), example=ex, is_target=True) for ex in examples
  ]
  votes = [vote(t, s) for t, s in zip(texts, scores)]
  metrics: dict[str, Any] = {'num_examples': len(examples)}
  for prefix, answers in [(name, [row[k] for row in texts]) for k, name in enumerate(names)] + [('ensemble', votes)]:
    predictions = [task.postprocess_fn(a, example=ex, is_target=False) for a, ex in zip(answers, examples)]
    for metric_fn in task.predict_metric_fns:
      metrics.update({f'{prefix}/{k}': scalar(v) for k, v in metric_fn(targets, predictions).items()})
  vocab_in = data.inputs_vocabulary(task)
  records = [{
      'input': data.example_text(ex, 'inputs', vocab_in), 'target': data.example_text(ex, 'targets', vocabulary),
      'prediction': v, 'predictions': dict(zip(names, row))
  } for ex, v, row in zip(examples, votes, texts)]
  return metrics, records
