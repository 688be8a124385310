"""Scoring a split with a tuned model: validation loss, and the task's metric functions on predictions made by
rank classification (tasks with a label set) or decoding. `trainable` below is the method's tree (None for a
plain network)."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import gin
import jax
import numpy as np

from jaxprompt.data import buckets as buckets_lib
from jaxprompt.data import converters
from jaxprompt.data import pipeline as data
from jaxprompt.data.truncation import Truncation
from jaxprompt.errors import ConfigError
from jaxprompt.eval import label_eval
from jaxprompt.eval import records as records_lib
from jaxprompt.eval.losses import loss_summary, task_id, validation_loss  # noqa: F401  (their home before)
from jaxprompt.formats import validation
from jaxprompt.models.base import BaseModel
from jaxprompt.models.features import TASK_FEATURE
from jaxprompt.parallel import host
from jaxprompt.runtime import runtime as runtime_lib

if TYPE_CHECKING:
  import seqio

log = logging.getLogger('jaxprompt')


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
  """How predictions are decoded: t5x's beam search (default) or temperature sampling."""
  method: str = 'beam'
  num_decodes: int = 1
  alpha: float = 0.6
  temperature: float = 0.0
  topk: int = 1
  topp: float = 0.0
  seed: int = 0


@gin.configurable(module='jaxprompt')
def decoding(method: str = 'beam', num_decodes: int = 1, alpha: float = 0.6, temperature: float = 0.0, topk: int = 1,
             topp: float = 0.0, seed: int = 0) -> DecodeOptions:
  """Config-level decoding options (bind `evaluate.decode = @jaxprompt.decoding()`)."""
  if method not in ('beam', 'sample'):
    raise ConfigError(f"decoding.method must be 'beam' or 'sample', got {method!r}")
  validation.check_positive(**{'decoding.num_decodes': num_decodes})
  return DecodeOptions(method, num_decodes, alpha, temperature, topk, topp, seed)


# What ModelFns compiles, as values: `ShardedSteps.compiled` keys its cache by the function, so two ModelFns of
# one model share a compile exactly when these fields (the model, the static options) are equal.
@dataclasses.dataclass(frozen=True)
class _TargetScores:
  model: BaseModel

  def __call__(self, frozen: Any, trainable: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
    return self.model.score_batch(frozen, trainable, batch)


@dataclasses.dataclass(frozen=True)
class _RankScores:
  model: BaseModel

  def __call__(self, frozen: Any, trainable: Any, batch: Mapping[str, jax.Array], candidates: jax.Array) -> jax.Array:
    return self.model.rank_classify(frozen, trainable, batch, candidates)


@dataclasses.dataclass(frozen=True)
class _Decodes:
  model: BaseModel
  options: DecodeOptions  # seed 0: the seed reaches the function as its `rng` argument, it is not compiled in

  def __call__(self, frozen: Any, trainable: Any, batch: Mapping[str, jax.Array],
               rng: jax.Array) -> tuple[jax.Array, jax.Array]:
    opts = self.options
    features = {k: batch[k] for k in self.model.DECODE_FEATURES if k in batch}
    return self.model.predict_batch(frozen, trainable, features, method=opts.method, num_decodes=opts.num_decodes,
                                    alpha=opts.alpha, temperature=opts.temperature, topk=opts.topk, topp=opts.topp,
                                    rng=rng if opts.method == 'sample' else None)


@dataclasses.dataclass(frozen=True)
class _HeadLabels:
  model: BaseModel

  def __call__(self, frozen: Any, trainable: Any, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    return self.model.predict_labels(frozen, trainable, {k: batch[k] for k in self.model.DECODE_FEATURES if k in batch})


class ModelFns:
  """The frozen model's jitted scoring, ranking and decoding on the mesh; results replicated on every host.

  Batches are global numpy batches held by every process; each process feeds its own rows. Each batch is cut
  to its length buckets first (`jaxprompt.data.buckets`; the same cut on every process, which all hold the
  whole batch); decoding keeps the targets width, its maximum decode length. Ranking and decoding take inference
  batches (`data.inference_features` of the model's family: `family`, `features`).
  """

  def __init__(self, runtime: runtime_lib.Runtime, decode: DecodeOptions | None = None,
               length_buckets: Any = buckets_lib.DEFAULT):
    self.rt = runtime
    self.decode_options = decode or DecodeOptions()
    self.buckets = buckets_lib.LengthBuckets.from_spec(length_buckets)
    self._shapes: dict[str, buckets_lib.ShapeLog] = {}
    self._scores = _TargetScores(runtime.model)
    self._ranks = _RankScores(runtime.model)
    self._decodes = _Decodes(runtime.model, dataclasses.replace(self.decode_options, seed=0))
    self._labels = _HeadLabels(runtime.model)

  @property
  def family(self) -> str:
    """The frozen model's family (`config.family`): whose batch features it reads."""
    return type(self.rt.config).family

  def _shard(self, name: str, batch: Mapping[str, np.ndarray], groups: Sequence[str] = buckets_lib.GROUPS) -> dict:
    if not self.buckets.fixed:
      batch = self._shapes.setdefault(name, buckets_lib.ShapeLog(name, self.buckets)).cut(batch, groups=groups)
    return self.rt.steps.shard_batch(host.local_rows(batch))

  @property
  def data_parallel(self) -> int:
    """The mesh's data-parallel size: what a batch's rows divide by (`data.padded_batches`' `multiple`)."""
    return self.rt.data_parallel

  def loss_metrics(self, trainable: Any, batch: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Summed loss, weight_sum and token_accuracy of a batch (padding rows weigh nothing)."""
    metrics = self.rt.steps.eval_step(self.rt.frozen, trainable, self._shard('eval', batch))
    return {k: float(host.host_value(v)) for k, v in metrics.items()}

  def target_scores(self, trainable: Any, batch: Mapping[str, np.ndarray]) -> np.ndarray:
    """Log-likelihood of each row's target [b]."""
    fn = self.rt.steps.compiled(self._scores)
    return host.host_value(fn(self.rt.frozen, trainable, self._shard('score', batch)))

  def rank(self, trainable: Any, batch: Mapping[str, np.ndarray], candidates: np.ndarray) -> np.ndarray:
    """Log-likelihoods [b, c] of the candidate targets, [c, length] shared or [b, c, length] per row (candidates
    are cut to the longest one: shorter ones are zero-padded, which scores nothing)."""
    width = buckets_lib.last_real_column(candidates.reshape(-1, candidates.shape[-1]))
    candidates = candidates[..., :max(width, 1)]
    fn = self.rt.steps.compiled(self._ranks, 1)
    batch = self._shard('rank', batch, buckets_lib.INFERENCE_GROUPS)
    return host.host_value(fn(self.rt.frozen, trainable, batch, candidates))

  def decode(self, trainable: Any, batch: Mapping[str, np.ndarray], index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(decoded ids [b, L_targets], scores [b]) of the best decode per row."""
    rng = jax.random.fold_in(jax.random.PRNGKey(self.decode_options.seed), index)
    batch = self._shard('decode', batch, buckets_lib.INFERENCE_GROUPS)
    decodes, scores = self.rt.steps.compiled(self._decodes, 1)(self.rt.frozen, trainable, batch, rng)
    return host.host_value(decodes), host.host_value(scores)

  def head_labels(self, trainable: Any, batch: Mapping[str, np.ndarray]) -> Any:
    """An encoder-only model's head predictions and scores of an inference batch (`predict_labels`, on the host):
    (predictions, scores), or per-task heads' {task: (predictions, scores) of every row}."""
    out = self.rt.steps.compiled(self._labels)(self.rt.frozen, trainable, self._shard('labels', batch))
    return jax.tree.map(host.host_value, out)


# ------------------------------------------------------------------------------------ metrics


def scalar(value: Any) -> Any:
  """seqio metric values (floats, numpy scalars, seqio.metrics.Scalar) -> JSON-friendly numbers."""
  value = getattr(value, 'value', value)
  array = np.asarray(value)
  if array.dtype.kind in 'fiub' and array.size == 1:
    return array.item()
  return value if isinstance(value, (str, int, float)) else str(value)


def label_candidates(labels: Sequence[str], vocabulary: seqio.Vocabulary, length: int) -> np.ndarray:
  """Each label tokenized + EOS, zero-padded: [num_labels, length]."""
  rows = []
  for label in labels:
    ids = list(vocabulary.encode(label)) + [vocabulary.eos_id]
    if len(ids) > length:
      raise ConfigError(f"label {label!r} is {len(ids)} tokens with EOS but TASK_FEATURE_LENGTHS['targets'] "
                        f'is {length}: raise it to rank the labels')
    rows.append(ids + [0] * (length - len(ids)))
  return np.asarray(rows, np.int32)


def predict(fns: ModelFns, trainable: Any, features: Mapping[str, np.ndarray], batch_size: int,
            vocabulary: seqio.Vocabulary, labels: Sequence[str] | None) -> tuple[list[str], list[float]]:
  """(prediction texts, scores): the best label by rank classification when `labels`, else the decode (read up to
  its EOS). `features`: inference features (`ModelFns.features`)."""
  texts: list[str] = []
  scores: list[float] = []
  candidates = None
  if labels:
    candidates = label_candidates(labels, vocabulary, features['decoder_target_tokens'].shape[1])
  for index, (batch, real) in enumerate(data.padded_batches(features, batch_size, fns.data_parallel)):
    if candidates is not None:
      ll = fns.rank(trainable, batch, candidates)[:real]
      best = ll.argmax(-1)
      texts += [labels[i] for i in best]
      scores += [float(row[i]) for row, i in zip(ll, best)]
    else:
      decodes, decode_scores = fns.decode(trainable, batch, index)
      texts += [vocabulary.decode([int(t) for t in row]) for row in decodes[:real]]
      scores += [float(s) for s in decode_scores[:real]]
  return texts, scores


@dataclasses.dataclass
class EvalSet:
  """One task's split, read and featurized once (reused by every evaluation of a training run), and how many of
  its examples were longer than the feature lengths (`truncation` in its metrics). `features` (inputs and targets)
  give the loss and target scores; `inference` (the inputs alone) rank classification and decoding."""
  task: seqio.Task
  split: str
  examples: list[dict[str, Any]]
  features: dict[str, np.ndarray]
  inference: dict[str, np.ndarray]
  labels: list[str] | None  # rank classification over these, else decoding
  truncation: Truncation | None = None


def prepare_eval(provider: seqio.Task | seqio.Mixture, split: str, feature_lengths: Mapping[str, int], *,
                 max_examples: int | None = None, rank_classification: bool = True, task_names: Sequence[str] = (),
                 family: str = converters.DEFAULT) -> list[EvalSet]:
  """Reads the split of the task (each task of a mixture) into the `family`'s features (a model config's
  `family`): the loss's and the inputs-only ones rank classification and decoding read; checks the labels fit
  the targets length.

  `task_names` (a multi-task method's `task_names`): each set's rows carry their task's index in it as
  `task_ids`. The encoder-only family's sets are a head's rows and labels (`label_eval.prepare`).
  """
  if family == converters.ENCODER_ONLY:
    return label_eval.prepare(provider, split, feature_lengths, max_examples=max_examples, task_names=task_names)
  sets = []
  for task in data.subtasks(provider, split):
    examples, truncated = data.read_examples(task, feature_lengths, split, max_examples)
    inputs, tokens = [ex['inputs'] for ex in examples], data.stream_tokens(task)
    features = data.to_features(inputs, [ex['targets'] for ex in examples], feature_lengths, family, tokens)
    inference = data.inference_features(inputs, feature_lengths, family, tokens)
    if task_names:
      ids = np.full((len(examples),), task_id(task_names, task.name), np.int32)
      features[TASK_FEATURE], inference[TASK_FEATURE] = ids, ids
    labels = data.label_set(task.name) if rank_classification else None
    if labels:
      label_candidates(labels, data.targets_vocabulary(task), feature_lengths['targets'])
    sets.append(EvalSet(task, split, examples, features, inference, labels, truncated))
  return sets


def evaluate_set(fns: ModelFns, trainable: Any, eval_set: EvalSet, batch_size: int, *,
                 task_metrics: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """(metrics, per-example records) of one task's split: loss, token accuracy and the task's metric fns."""
  task, examples, features = eval_set.task, eval_set.examples, eval_set.features
  metrics: dict[str, Any] = {'num_examples': len(examples)}
  metrics.update(validation_loss(fns, trainable, features, batch_size))
  if not task_metrics:
    return metrics, []
  vocabulary = data.targets_vocabulary(task)
  texts, scores = predict(fns, trainable, eval_set.inference, batch_size, vocabulary, eval_set.labels)
  targets = [
      task.postprocess_fn(data.example_text(ex, 'targets', vocabulary), example=ex, is_target=True) for ex in examples
  ]
  predictions = [task.postprocess_fn(text, example=ex, is_target=False) for text, ex in zip(texts, examples)]
  for metric_fn in task.predict_metric_fns:
    metrics.update({k: scalar(v) for k, v in metric_fn(targets, predictions).items()})
  if task.score_metric_fns:
    target_scores = np.concatenate([
        fns.target_scores(trainable, batch)[:real]
        for batch, real in data.padded_batches(features, batch_size, fns.data_parallel)
    ])
    for metric_fn in task.score_metric_fns:
      metrics.update({k: scalar(v) for k, v in metric_fn(targets, list(target_scores)).items()})
  if task.predict_with_aux_metric_fns:
    log.warning('task %s: %d predict_with_aux metric fns are not computed', task.name,
                len(task.predict_with_aux_metric_fns))
  vocab_in = data.inputs_vocabulary(task)
  by = records_lib.prediction_by(bool(eval_set.labels), fns.decode_options.method)
  records = [{
      'input': data.example_text(ex, 'inputs', vocab_in), 'target': data.example_text(ex, 'targets', vocabulary),
      'prediction': text, **records_lib.score_fields(score, by)
  } for ex, text, score in zip(examples, texts, scores)]
  return metrics, records


def evaluate_sets(
    fns: ModelFns, trainable: Any, sets: Sequence[EvalSet], batch_size: int, *, task_metrics: bool = True,
    score_set: Callable[..., tuple[dict, list]] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """Metrics of one task, or of several (a mixture: keys prefixed `<task>/`), and their records.

  `score_set(fns, trainable, eval_set, batch_size)` scores one set (default `evaluate_set`; an ensemble's is
  `jaxprompt.eval.banks.evaluate_ensemble`). Each set's `truncation` counts (`Truncation.metrics`) join its
  metrics as one `truncation` entry, a dict: no scalar curve, no part of the eval log line."""
  out: dict[str, Any] = {}
  records: list[dict[str, Any]] = []
  for eval_set in sets:
    if isinstance(eval_set, label_eval.LabelSet):
      metrics, set_records = label_eval.evaluate(fns, trainable, eval_set, batch_size, task_metrics=task_metrics)
    elif score_set is None:
      metrics, set_records = evaluate_set(fns, trainable, eval_set, batch_size, task_metrics=task_metrics)
    else:
      metrics, set_records = score_set(fns, trainable, eval_set, batch_size)
    if eval_set.truncation is not None:
      metrics = dict(metrics, truncation=eval_set.truncation.metrics())
    prefix = f'{eval_set.task.name}/' if len(sets) > 1 else ''
    out.update({prefix + k: v for k, v in metrics.items()})
    records += [dict(r, task=eval_set.task.name) for r in set_records] if prefix else set_records
  return out, records


def evaluate_provider(fns: ModelFns, trainable: Any, provider: seqio.Task | seqio.Mixture, split: str,
                      feature_lengths: Mapping[str, int], batch_size: int, *, task_metrics: bool = True,
                      max_examples: int | None = None,
                      rank_classification: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """`prepare_eval` + `evaluate_sets` in one call (reads the split every time)."""
  sets = prepare_eval(provider, split, feature_lengths, max_examples=max_examples,
                      rank_classification=rank_classification, family=fns.family)
  return evaluate_sets(fns, trainable, sets, batch_size, task_metrics=task_metrics)


def evaluate_network(config: Any, params: Any, provider: Any, split: str, feature_lengths: Mapping[str, int],
                     batch_size: int = 32, *, max_examples: int | None = None, eos_id: int = 1) -> dict[str, Any]:
  """Metrics of a network with no tuning method (e.g. a frozen model's zero-shot score) on a split."""
  runtime = runtime_lib.build_runtime(config, None, None, feature_lengths, eos_id=eos_id, network=params)
  metrics, _ = evaluate_provider(ModelFns(runtime), None, data.get_provider(provider, streams=False), split,
                                 feature_lengths, batch_size, max_examples=max_examples)
  return metrics
