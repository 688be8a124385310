"""GLUE and SuperGLUE as label ids for encoder-only models (BERT / RoBERTa with a head), from the same TFDS builders
as the text-to-text tasks of `data/tasks.py`:

  glue_<config>_<v200|v002>_labels     cola sst2 mrpc qqp stsb mnli mnli_matched mnli_mismatched qnli rte wnli
  super_glue_<config>_v102_labels      boolq cb rte wic copa wsc wsc.fixed multirc record

An example is the ids of its texts without specials (`inputs`, and `inputs_pair` for a pair, in the order
transformers' GLUE / P-tuning v2 scripts feed them; `is_pair`) and its labels: `label` (the TFDS class id, -1 on
test splits) and `label_value` (STS-B's float score), the other kind's -1 / 0; every task but COPA has these
features, so any of them share a mixture (`register_mixture`). `data/encoder.py` makes the rows. COPA is multiple
choice: `inputs` the premise, `choice_0` / `choice_1` "because <choice>" (cause) or "so <choice>" (effect),
`label` the right choice. WiC reads "<word>: <sentence1>" and <sentence2>.

The rest follow P-tuning v2's BERT / RoBERTa SuperGLUE code (THUDM, `tasks/superglue/dataset.py`), each row a
binary False / True classification: WSC (and wsc.fixed, the builder's corrected spans) reads "<pronoun>: <text>"
and the candidate (span1); MultiRC one row per answer, the paragraph and "<question> <answer>"; ReCoRD one row per
candidate entity, the passage ("@highlight\n" as "- ") and the query with `@placeholder` filled by the entity, True
when the entity is a gold answer (-1 on the test split, which has none). MultiRC and ReCoRD are scored per
question / query (`data/superglue_groups.py`: T5's metric names and values); their rows carry the group as extra
features that are not output features, so they still mix with the others.

Each task knows its `label_names` (what infer prints; `tasks.get_label_set` gives them too), its `kind`
('classification', 'regression', 'choice') and its metric fns, T5's for the task (`data/metrics.py`), called as
seqio calls them: `fn(targets, predictions)` on label ids (or floats), the test split's -1 labels left out first
(`score`); a grouped task (`grouped`) scores its rows with their groups and head logits instead. The tasks read
with T5's vocabulary until the pipeline re-reads them with the model's
(`pipeline.get_provider(name, vocabulary, 'encoder_only')`).
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

from jaxprompt.data import encoder, metrics, superglue_groups, tasks
from jaxprompt.data.vocab import get_default_vocabulary
from jaxprompt.errors import DataError

SUFFIX = '_labels'
CLASSIFICATION, REGRESSION, CHOICE = 'classification', 'regression', 'choice'


@dataclasses.dataclass(frozen=True)
class LabelTask:
  """One label task: `fields` (the raw example's first and second text), `label_names` (None: regression);
  `tfds_name` '' for a task of the user's files (`label_files`)."""
  name: str
  tfds_name: str
  splits: tuple[str, ...]
  fields: tuple[str, ...]
  label_names: tuple[str, ...] | None
  metric_fns: tuple[Callable[..., dict[str, float]], ...]
  kind: str = CLASSIFICATION
  rows: Callable[[tf.data.Dataset], tf.data.Dataset] | None = None  # raw examples -> rows; None: by `fields`
  grouped: str = ''  # superglue_groups.MULTIRC / RECORD: scored per group of rows

  def score(self, targets: Sequence[Any], predictions: Sequence[Any], logits: np.ndarray | None = None,
            groups: Sequence[superglue_groups.RowGroup] | None = None) -> dict[str, float]:
    """Every metric of the task over the labelled examples (targets -1 are unlabelled test rows); a grouped task
    needs each row's head `logits` [n, 2] and `groups` (`superglue_groups.RowGroup`)."""
    if not self.grouped:
      return score(self.metric_fns, targets, predictions)
    if logits is None or groups is None:
      raise DataError(f'task {self.name!r} is scored per group of rows: give each row\'s logits and group')
    return superglue_groups.score(self.grouped, targets, predictions, logits, groups)


def score(metric_fns: Sequence[Callable[..., dict[str, float]]], targets: Sequence[Any],
          predictions: Sequence[Any]) -> dict[str, float]:
  """The metric fns on (targets, predictions) pairs whose target is a label (not the test split's -1)."""
  kept = [(t, p) for t, p in zip(targets, predictions) if not (isinstance(t, (int, np.integer)) and t < 0)]
  if not kept:
    raise DataError('no labelled example to score (a test split has label -1 everywhere)')
  out = {}
  for fn in metric_fns:
    out.update(fn([t for t, _ in kept], [p for _, p in kept]))
  return out


def labels_of(label: tf.Tensor, kind: str) -> dict[str, tf.Tensor]:
  """An example's labels (`data/encoder.py`): a choice task's `label` alone, else both `label` and `label_value`
  (the one the task does not use: -1 / 0, weight 0 under that kind's head)."""
  if kind == CHOICE:
    return {encoder.LABEL: tf.cast(label, tf.int32)}
  regression = kind == REGRESSION
  return {
      encoder.LABEL: tf.constant(encoder.NO_CLASS, tf.int32) if regression else tf.cast(label, tf.int32),
      encoder.LABEL_VALUE: tf.cast(label, tf.float32) if regression else tf.constant(0.0, tf.float32)
  }


def texts_of(first: tf.Tensor, second: tf.Tensor | None) -> dict[str, tf.Tensor]:
  """An example's texts in the mixable form: `inputs`, `inputs_pair` ('' without one) and `is_pair`."""
  return {
      encoder.FIRST: first, encoder.SECOND: tf.constant('') if second is None else second,
      encoder.IS_PAIR: tf.constant(0 if second is None else 1, tf.int32)
  }


def _rows(fields: Sequence[str], kind: str) -> Callable[[Mapping[str, tf.Tensor]], dict[str, tf.Tensor]]:
  """raw TFDS example -> the texts and labels of `data/encoder.py`'s examples."""

  def fn(x: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    labels = labels_of(x['label'], kind)
    if kind == CHOICE:  # COPA
      joiner = tf.where(tf.equal(x['question'], 'cause'), 'because', 'so')
      choices = {f'{encoder.CHOICE_PREFIX}{i}': tf.strings.join([joiner, x[f]], ' ') for i, f in enumerate(fields)}
      return {encoder.FIRST: x['premise'], **choices, **labels}
    first = x[fields[0]] if fields[0] != 'word' else tf.strings.join([x['word'], ': ', x['sentence1']])
    return {**texts_of(first, x[fields[-1]] if len(fields) > 1 else None), **labels}

  return fn


def _wsc(x: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """WSC as P-tuning v2's BERT template: "<pronoun>: <text>", then the candidate referent."""
  first = tf.strings.join([x['span2_text'], ': ', x['text']])
  return {**texts_of(first, x['span1_text']), **labels_of(x['label'], CLASSIFICATION)}


def _multirc(x: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """MultiRC: the paragraph, then "<question> <answer>"; the question is the row's group."""
  second = tf.strings.join([x['question'], x['answer']], ' ')
  return {
      **texts_of(x['paragraph'], second),
      **labels_of(x['label'], CLASSIFICATION), superglue_groups.GROUP: tf.cast(x['idx']['question'], tf.int32)
  }


def _record(ds: tf.data.Dataset) -> tf.data.Dataset:
  """ReCoRD: one row per candidate entity (module docstring), grouped by query, with the entity and the answers."""

  def expand(x: Mapping[str, tf.Tensor]) -> tf.data.Dataset:
    passage = tf.strings.regex_replace(x['passage'], '@highlight\n', '- ')
    # (passage, query), as the text-to-text ReCoRD's targets group it (`postprocessors.record`)
    answers, query = x['answers'], tf.cast(tf.stack([x['idx']['passage'], x['idx']['query']]), tf.int32)

    def row(entity: tf.Tensor) -> dict[str, tf.Tensor]:
      literal = tf.strings.regex_replace(entity, r'\\', r'\\\\')  # a backslash is an escape in the rewrite
      found = tf.cast(tf.reduce_any(tf.equal(answers, entity)), tf.int32)
      label = tf.where(tf.size(answers) > 0, found, encoder.NO_CLASS)
      return {
          **texts_of(passage, tf.strings.regex_replace(x['query'], '@placeholder', literal)),
          **labels_of(label, CLASSIFICATION), superglue_groups.GROUP: query, superglue_groups.ENTITY: entity,
          superglue_groups.ANSWERS: answers
      }

    return tf.data.Dataset.from_tensor_slices(x['entities']).map(row)

  return ds.flat_map(expand)


def tokenize_texts(ds: tf.data.Dataset, output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
  """seqio's `tokenize` of the string features only (the label is an output feature too, kept as it is)."""

  def fn(x):
    return {
        k: output_features[k].vocabulary.encode_tf(v) if k in output_features and v.dtype == tf.string else v
        for k, v in x.items()
    }

  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def output_features(spec: LabelTask, vocabulary: Any = None) -> dict[str, seqio.Feature]:
  """A label task's seqio features: every task but multiple choice has the same ones (any of them mix)."""
  vocabulary = vocabulary or get_default_vocabulary()
  text = functools.partial(seqio.Feature, vocabulary=vocabulary, add_eos=False)
  scalar = lambda dtype: seqio.Feature(vocabulary, add_eos=False, dtype=dtype, rank=0)  # noqa: E731
  if spec.kind == CHOICE:
    texts = {encoder.FIRST: text(), **{f'{encoder.CHOICE_PREFIX}{i}': text() for i in range(len(spec.fields))}}
    return {**texts, encoder.LABEL: scalar(tf.int32)}
  return {
      encoder.FIRST: text(), encoder.SECOND: text(), encoder.IS_PAIR: scalar(tf.int32), encoder.LABEL: scalar(tf.int32),
      encoder.LABEL_VALUE: scalar(tf.float32)
  }


def _specs() -> list[LabelTask]:
  accuracy, f1_accuracy = (metrics.accuracy,), (metrics.f1_score_with_invalid, metrics.accuracy)
  mnli, rte = tasks.MNLI_LABELS, tasks.RTE_LABELS
  out = []
  for version, suffix in tasks.GLUE_VERSIONS:
    g = lambda config, *rest, v=version, s=suffix: LabelTask(f'glue_{config}_{s}{SUFFIX}', f'glue/{config}:{v}', *rest)
    every = ('train', 'validation', 'test')
    mnli_eval = ('validation', 'test')
    out += [
        g('cola', every, ('sentence',), ('unacceptable', 'acceptable'), (metrics.matthews_corrcoef,)),
        g('sst2', every, ('sentence',), ('negative', 'positive'), accuracy),
        g('mrpc', every, ('sentence1', 'sentence2'), ('not_equivalent', 'equivalent'), f1_accuracy),
        g('qqp', every, ('question1', 'question2'), ('not_duplicate', 'duplicate'), f1_accuracy),
        g('stsb', every, ('sentence1', 'sentence2'), None, (metrics.pearson_corrcoef, metrics.spearman_corrcoef),
          REGRESSION),
        g('mnli', ('train', 'validation_matched', 'validation_mismatched', 'test_matched', 'test_mismatched'),
          ('premise', 'hypothesis'), mnli, accuracy),
        g('mnli_matched', mnli_eval, ('premise', 'hypothesis'), mnli, accuracy),
        g('mnli_mismatched', mnli_eval, ('premise', 'hypothesis'), mnli, accuracy),
        g('qnli', every, ('question', 'sentence'), rte, accuracy),
        g('rte', every, ('sentence1', 'sentence2'), rte, accuracy),
        g('wnli', every, ('sentence1', 'sentence2'), ('not_entailment', 'entailment'), accuracy),
    ]
  version, suffix = tasks.SUPER_GLUE_VERSION
  sg = lambda config, *rest, **kw: LabelTask(f'super_glue_{config}_{suffix}{SUFFIX}', f'super_glue/{config}:{version}',
                                             ('train', 'validation', 'test'), *rest, **kw)
  wsc = seqio.map_over_dataset(_wsc)
  return out + [
      sg('boolq', ('question', 'passage'), tasks.BOOL_LABELS, accuracy),
      sg('cb', ('premise', 'hypothesis'), ('entailment', 'contradiction', 'neutral'),
         (metrics.mean_multiclass_f1(num_classes=3), metrics.accuracy)),
      sg('rte', ('premise', 'hypothesis'), rte, accuracy),
      sg('wic', ('word', 'sentence2'), tasks.BOOL_LABELS, accuracy),
      sg('copa', ('choice1', 'choice2'), ('choice1', 'choice2'), accuracy, CHOICE),
      sg('wsc', ('text', 'span1_text'), tasks.BOOL_LABELS, accuracy, rows=wsc),
      sg('wsc.fixed', ('text', 'span1_text'), tasks.BOOL_LABELS, accuracy, rows=wsc),
      sg('multirc', ('paragraph', 'answer'), tasks.BOOL_LABELS,
         (), rows=seqio.map_over_dataset(_multirc), grouped=superglue_groups.MULTIRC),
      sg('record', ('passage', 'query'), tasks.BOOL_LABELS, (), rows=_record, grouped=superglue_groups.RECORD),
  ]


_TASKS: dict[str, LabelTask] = {}


def register_all() -> None:
  """Registers every label task not registered yet (idempotent), with its label names for `tasks.get_label_set`."""
  known = set(seqio.TaskRegistry.names())
  for spec in _specs():
    add(spec)
    if spec.name not in known:
      seqio.TaskRegistry.add(
          spec.name, source=seqio.TfdsDataSource(tfds_name=spec.tfds_name, splits=list(spec.splits)),
          preprocessors=[spec.rows or seqio.map_over_dataset(_rows(spec.fields, spec.kind)),
                         tokenize_texts], output_features=output_features(spec), metric_fns=list(spec.metric_fns))
  tasks.add_tfds_tasks([n for n, spec in _TASKS.items() if spec.tfds_name])


def add(spec: LabelTask) -> LabelTask:
  """Records a label task registered elsewhere (`label_files`), with its label names for `tasks.get_label_set`."""
  _TASKS[spec.name] = spec
  tasks.register_label_set(spec.name, spec.label_names)
  return spec


def register_mixture(name: str, rates: Sequence[tuple[str, float]]) -> None:
  """Registers the seqio Mixture `name` of label tasks [(task, rate)] (replacing one of that name): any single-text
  or pair, classification or regression tasks, or multiple-choice tasks alone (their rows are [choices, length]);
  DataError naming the task otherwise."""
  specs = [get(task) for task, _ in rates]
  choice = [s.name for s in specs if s.kind == CHOICE]
  if choice and len(choice) != len(specs):
    others = [s.name for s in specs if s.kind != CHOICE]
    raise DataError(f'mixture {name!r}: multiple-choice task {choice[0]!r} cannot mix with {others} (its rows are '
                    '[choices, length]): mix multiple-choice tasks only with each other')
  seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, [(task, float(rate)) for task, rate in rates])


def names() -> list[str]:
  register_all()
  return list(_TASKS)


def get(name: str) -> LabelTask:
  """The label task `name`; DataError naming the known ones otherwise."""
  register_all()
  if name not in _TASKS:
    raise DataError(f'{name!r} is not a label task (encoder-only GLUE / SuperGLUE tasks end in {SUFFIX!r}: '
                    f'{sorted(_TASKS)[:3]} ...)')
  return _TASKS[name]


register_all()
