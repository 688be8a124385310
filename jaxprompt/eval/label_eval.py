"""Scoring and predicting with an encoder-only model's task head (BERT / RoBERTa): label ids, not text.

A split of a label task (`data/label_tasks.py`, your own label files) or a tagging task (`data/tagging_tasks.py`)
is read once, uncut, into the encoder rows (`data/encoder.py`, `TagAligner` for tagging: the rows are cut and
counted there). The head predicts (`ModelFns.head_labels`: `EncoderOnlyModel.predict_labels`), and the task's
metric fns score the predictions on label ids (accuracy, F1, Matthews, Pearson / Spearman), or, for tagging, each
word's tag (its first sub-token's) by entity span P / R / F1 and word accuracy. MultiRC and ReCoRD rows are scored
in groups (`data/superglue_groups.py`): a split read here keeps each row's group (its question / query, and ReCoRD's
entity and answers), taken from the examples' extra features, which a training mixture drops. A split read with
`max_examples` scores the groups as far as its rows go.

Records: `{"input", "prediction", "prediction_by": "head", ...}`: a class or choice name and its `probability`
(softmax of the head's scores), a regression value, or for tagging the input's `words` and a tag per word. A
grouped task's split adds each row's `group`, and for ReCoRD its `entity`, `true_logit` (what ranks it) and
`group_prediction` (the entity picked for its query); text inputs have no group, so infer on text lines gives a
row's label name only.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxprompt.data import encoder, superglue_groups, task_heads
from jaxprompt.data import pipeline as data
from jaxprompt.errors import ConfigError
from jaxprompt.eval import records as records_lib
from jaxprompt.eval.losses import task_id, validation_loss
from jaxprompt.models.features import CLASS_LABEL, IGNORE_LABEL, REGRESSION_LABEL, TAGGING_FEATURES, TASK_FEATURE
from jaxprompt.models.task_heads import TaskHeads

TAG_LABELS = TAGGING_FEATURES[-1]  # 'token_labels'


@dataclasses.dataclass
class LabelSet:
  """One task's split for a head: `texts` (what records show), `features` (the rows, with their labels when
  `targets`), `targets` (label ids, values, or each sentence's tags; None: unlabelled inputs), `aligned` (tagging:
  each sentence's words and sub-tokens, `token_labels.Aligned`)."""
  task: Any  # anything with a `name`: a seqio task, or `Named` for text inputs
  split: str
  labels: task_heads.TaskLabels
  texts: list[str]
  features: dict[str, np.ndarray]
  targets: list[Any] | None
  vocabulary: Any
  length: int
  aligned: list[Any] | None = None  # tagging: `text.split()` are the words
  truncation: Any = None  # the rows' cuts are said once where they are made (`encoder.to_encoder_features`)
  grouped: str = ''  # `superglue_groups.MULTIRC` / `RECORD`: `groups` holds each row's `RowGroup`
  groups: list[superglue_groups.RowGroup] | None = None


@dataclasses.dataclass(frozen=True)
class Named:
  name: str


def task_labels(name: str) -> task_heads.TaskLabels:
  """The head task `name` asks for; one ConfigError when it is a text-to-text task."""
  found = task_heads.head_labels(name)
  if found is None:
    raise ConfigError(
        f'task {name!r} has no labels for a task head: an encoder-only model reads label tasks (GLUE / '
        "SuperGLUE '*_labels', label files) and tagging tasks (CoNLL directories), not text-to-text tasks")
  return found


def _tagging(name: str) -> Any:
  from jaxprompt.data import tagging_tasks  # pylint: disable=g-import-not-at-top
  return tagging_tasks.get(name)


def prepare(provider: Any, split: str, feature_lengths: Mapping[str, int], *, max_examples: int | None = None,
            task_names: Sequence[str] = ()) -> list[LabelSet]:
  """Each task's split (of a task, or of a mixture's tasks) as rows for its head; `task_names` (a multi-task
  method's) tags each set's rows with its task's index."""
  sets = []
  length = int(feature_lengths['inputs'])
  for task in data.subtasks(provider, split):
    labels, vocabulary = task_labels(task.name), data.inputs_vocabulary(task)
    if labels.kind == 'tagging':
      aligned, features, sentences = _tagging(task.name).features(split, vocabulary, length)
      keep = slice(max_examples or None)
      aligned, sentences, features = aligned[keep], sentences[keep], {k: v[keep] for k, v in features.items()}
      texts, targets = [' '.join(s.words) for s in sentences], [list(s.tags) for s in sentences]
    else:
      examples, _ = data.read_examples(task, None, split, max_examples)
      features = encoder.example_features(examples, feature_lengths, encoder.EncoderTokens.of(vocabulary),
                                          where=f'task {task.name!r} split {split!r}')
      texts = [_text(ex, vocabulary) for ex in examples]
      regression = labels.kind == 'regression'
      targets, aligned = [encoder.target(ex, regression).item() for ex in examples], None
    grouped = _grouped(task.name) if labels.kind != 'tagging' else ''
    groups = [superglue_groups.RowGroup.of(ex) for ex in examples] if grouped else None
    if task_names:
      features[TASK_FEATURE] = np.full((len(texts),), task_id(task_names, task.name), np.int32)
    sets.append(
        LabelSet(task, split, labels, texts, features, targets, vocabulary, length, aligned, grouped=grouped,
                 groups=groups))
  return sets


def _grouped(name: str) -> str:
  from jaxprompt.data import label_tasks  # pylint: disable=g-import-not-at-top
  return label_tasks.get(name).grouped


def _text(example: Mapping[str, Any], vocabulary: Any) -> str:
  """An example's texts as one line: the first, then ' | ' and the second text or each choice."""
  choices = encoder.choice_keys(example)
  parts = [example[encoder.FIRST], *(example[k] for k in choices)] if choices else encoder.example_texts(example)
  return ' | '.join(vocabulary.decode([int(t) for t in p]) for p in parts)


def text_set(texts: Sequence[str], labels: task_heads.TaskLabels, vocabulary: Any,
             feature_lengths: Mapping[str, int]) -> LabelSet:
  """Text lines as a head's inputs: one text (a tab between two texts of a pair; a tagging line's words split on
  whitespace); multiple choice reads `first<TAB>choice<TAB>choice...`."""
  length = int(feature_lengths['inputs'])
  if labels.kind == 'tagging':
    from jaxprompt.data.token_labels import TagAligner  # pylint: disable=g-import-not-at-top
    aligner = TagAligner(vocabulary, labels.names, length)
    aligned = [aligner.align(t.split()) for t in texts]
    rows = [aligner.features(a) for a in aligned]
    features = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    return LabelSet(Named(labels.task), 'text', labels, list(texts), features, None, vocabulary, length, aligned)
  tokens = encoder.EncoderTokens.of(vocabulary)
  parts = [[vocabulary.encode(p) for p in t.split('\t')] for t in texts]
  if labels.kind == 'multiple_choice':
    choices = [[(p[0], c) for c in p[1:]] for p in parts]
    features = encoder.choice_features(choices, None, feature_lengths, tokens, 'text inputs')
  else:
    features = encoder.to_encoder_features([p[:2] for p in parts], None, feature_lengths, tokens, 'text inputs')
  return LabelSet(Named(labels.task), 'text', labels, list(texts), features, None, vocabulary, length)


def predict(fns: Any, trainable: Any, label_set: LabelSet, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(ids, logits) of the head on every row: class / choice ids [n] and their logits [n, classes]; values [n]
  twice (regression); tag ids [n, l] twice (tagging). Per-task heads: the set's task's head."""
  features = {k: v for k, v in label_set.features.items() if k not in (CLASS_LABEL, REGRESSION_LABEL)}
  predictions, logits = [], []
  for batch, real in data.padded_batches(features, batch_size, fns.data_parallel):
    answers = fns.head_labels(trainable, batch)
    ids, scores = answers[label_set.task.name] if isinstance(answers, dict) else answers
    predictions.append(ids[:real])
    logits.append(scores[:real])
  return np.concatenate(predictions), np.concatenate(logits)


def scored(kind: str, ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
  """[n] what a record shows beside each row's prediction: the softmax probability of its class / choice id;
  zeros (tagging); the value itself (regression)."""
  if kind in ('classification', 'multiple_choice'):
    logits = np.asarray(logits, np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return (probs / probs.sum(-1, keepdims=True)).max(-1)
  return np.zeros((len(ids),)) if kind == 'tagging' else ids


def with_every_label(features: Mapping[str, np.ndarray], kinds: Sequence[str]) -> dict[str, np.ndarray]:
  """`features` with the label feature of every head kind in `kinds` that they lack, all weight 0: per-task heads
  score every row under every head (a classification set's rows need `label_values` for a regression head's loss,
  which their task ids then zero)."""
  rows = len(next(iter(features.values())))
  length = features[encoder.TOKENS].shape[-1]
  missing = {
      'classification': (CLASS_LABEL, np.full((rows,), -1, np.int32)),
      'regression': (REGRESSION_LABEL, np.zeros((rows,), np.float32)),
      'tagging': (TAG_LABELS, np.full((rows, length), IGNORE_LABEL, np.int32)),
  }
  out = dict(features)
  for kind in kinds:
    if kind in missing and missing[kind][0] not in out:
      out[missing[kind][0]] = missing[kind][1]
  return out


def records(label_set: LabelSet, predictions: np.ndarray, logits: np.ndarray) -> list[dict[str, Any]]:
  """One record per row (module docstring) of `predict`'s ids and logits."""
  kind, out = label_set.labels.kind, []
  if kind == 'tagging':
    from jaxprompt.data.token_labels import TagAligner  # pylint: disable=g-import-not-at-top
    aligner = TagAligner(label_set.vocabulary, label_set.labels.names, label_set.length)
    for text, aligned, row in zip(label_set.texts, label_set.aligned, predictions):
      out.append({
          'input': text, 'words': text.split(), 'prediction': aligner.word_tags(aligned, row),
          'prediction_by': records_lib.HEAD
      })
    return out
  for text, prediction, score in zip(label_set.texts, predictions, scored(kind, predictions, logits)):
    if kind == 'regression':
      out.append({'input': text, 'prediction': float(prediction), 'prediction_by': records_lib.HEAD})
    else:
      name = label_set.labels.name_of(int(prediction)) if kind == 'classification' else int(prediction)
      out.append({'input': text, 'prediction': name, **records_lib.score_fields(score, records_lib.HEAD)})
  if label_set.groups is not None:
    extra = superglue_groups.record_fields(label_set.grouped, logits, label_set.groups)
    out = [dict(r, **e) for r, e in zip(out, extra)]
  return out


def evaluate(fns: Any, trainable: Any, label_set: LabelSet, batch_size: int, *,
             task_metrics: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """(metrics, records) of a labelled split: the loss, the head's `token_accuracy` and the task's metrics."""
  metrics: dict[str, Any] = {'num_examples': len(label_set.texts)}
  head = getattr(fns.rt.model.method, 'head', None)
  features = label_set.features
  if isinstance(head, TaskHeads):  # every head scores every row
    features = with_every_label(features, [c.kind for c in head.configs])
  metrics.update(validation_loss(fns, trainable, features, batch_size))
  if not task_metrics:
    return metrics, []
  predictions, logits = predict(fns, trainable, label_set, batch_size)
  rows = records(label_set, predictions, logits)
  name, kind = label_set.task.name, label_set.labels.kind
  if kind == 'tagging':
    from jaxprompt.data.tagging_tasks import tagging_metrics  # pylint: disable=g-import-not-at-top
    metrics.update(tagging_metrics(label_set.targets, [r['prediction'] for r in rows]))
  else:
    from jaxprompt.data import label_tasks  # pylint: disable=g-import-not-at-top
    metrics.update(
        label_tasks.get(name).score(label_set.targets, [p.item() for p in predictions], logits, label_set.groups))
  targets = label_set.targets if kind != 'classification' else [label_set.labels.name_of(t) for t in label_set.targets]
  return {k: float(v) if isinstance(v, (np.floating, np.integer)) else v for k, v in metrics.items()
         }, [dict(r, target=t) for r, t in zip(rows, targets)]
