"""A `TextTask` as a seqio Task, and the text tasks in seqio's registry (this module imports TensorFlow and seqio).

`build(task)`: a `seqio.Task` reading the task's texts through tf.data, with seqio's `tokenize`,
`CacheDatasetPlaceholder` and `append_eos_after_trim` (EOS on inputs and targets), its postprocessor and metric
fns: what training streams. `sync(tasks, mixtures)` enters the registered text tasks and mixtures in seqio's
registry (replacing a task of the same name, as registering a jaxprompt task always did); `forget(name)` takes one
out. The registry (`text_tasks`) calls in here.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import seqio
import tensorflow as tf


class TextTaskLike(Protocol):
  """What this module reads of a `jaxprompt.data.TextTaskLike` (that module calls in here; naming the
  fields rather than the class keeps the dependency one way)."""
  name: str
  splits: Sequence[str]
  sizes: Mapping[str, int] | None
  streamed: bool
  output_features: Mapping[str, Any]
  postprocessor: Callable[..., Any] | None
  metrics: Sequence[Callable[..., Any]]

  def texts(self, split: str) -> Iterable[tuple[str, str]]:
    ...

  def as_seqio(self) -> seqio.Task:
    ...


# name -> (what sync() put in seqio's registry under it, the seqio tasks it was made of)
_ENTERED: dict[str, tuple[object, tuple[object, ...]]] = {}


def _dataset_fn(split: str, shuffle_files: bool, seed: int | None = None, *, task: TextTaskLike) -> tf.data.Dataset:
  """tf.data of {'inputs': string, 'targets': string}: generated lazily (`streamed`), else the whole split in
  memory, shuffled whole when `shuffle_files`."""
  spec = tf.TensorSpec((), tf.string)
  if task.streamed:  # seqio's own shuffle buffer does the shuffling
    return tf.data.Dataset.from_generator(lambda: ({'inputs': i, 'targets': t} for i, t in task.texts(split)),
                                          output_signature={'inputs': spec, 'targets': spec})
  pairs = list(task.texts(split))
  ds = tf.data.Dataset.from_tensor_slices({
      'inputs': tf.constant([p[0] for p in pairs], tf.string), 'targets': tf.constant([p[1] for p in pairs], tf.string)
  })
  if shuffle_files:
    # A fixed default seed keeps the order identical on every host, so seqio's per-host `ds.shard` stays
    # disjoint; seqio's own shuffle buffer (seeded or not) follows.
    ds = ds.shuffle(len(pairs), seed=0 if seed is None else seed, reshuffle_each_iteration=True)
  return ds


def build(task: TextTaskLike) -> seqio.Task:
  """`task` as a seqio Task (not registered)."""
  source = seqio.FunctionDataSource(functools.partial(_dataset_fn, task=task), splits=list(task.splits),
                                    num_input_examples=dict(task.sizes) if task.sizes else None)
  features = {
      k: seqio.Feature(f.vocabulary, add_eos=f.add_eos, required=f.required) for k, f in task.output_features.items()
  }
  return seqio.Task(
      task.name, source, features, postprocess_fn=task.postprocessor, metric_fns=list(task.metrics), preprocessors=[
          seqio.preprocessors.tokenize,
          seqio.CacheDatasetPlaceholder(), seqio.preprocessors.append_eos_after_trim
      ])


def _holds(registry: type, name: str, provider: object) -> bool:
  return name in registry.names() and registry.get(name) is provider


def _enter(registry: type, name: str, provider: object, made_of: tuple[object, ...]) -> None:
  registry.remove(name)
  registry.add_provider(name, provider)
  _ENTERED[name] = (provider, made_of)


def sync(tasks: Sequence[TextTaskLike], mixtures: Mapping[str, Sequence[tuple[str, float]]]) -> None:
  """The registered text tasks and mixtures in seqio's registry, each entered again only when it changed."""
  for task in tasks:
    made = task.as_seqio()
    if not _holds(seqio.TaskRegistry, task.name, made):
      _enter(seqio.TaskRegistry, task.name, made, (made,))
  for name, rates in mixtures.items():
    parts = tuple(seqio.TaskRegistry.get(t) for t, _ in rates if t in seqio.TaskRegistry.names())
    entered = _ENTERED.get(name)
    if entered is None or entered[1] != parts or not _holds(seqio.MixtureRegistry, name, entered[0]):
      _enter(seqio.MixtureRegistry, name, seqio.Mixture(name, list(rates)), parts)


def forget(name: str) -> None:
  """Takes `name` out of seqio's registry if sync() put it there."""
  entered = _ENTERED.pop(name, None)
  for registry in (seqio.TaskRegistry, seqio.MixtureRegistry):
    if entered is not None and _holds(registry, name, entered[0]):
      registry.remove(name)
