"""jaxprompt's own tasks, defined without seqio: examples of an input and a target text, tokenized as seqio's
`tokenize` + `append_eos_after_trim` tokenize them (the vocabulary's ids, then EOS).

The demo tasks and the user's TSV / JSONL tasks (`custom`) are `TextTask`s. Evaluation and inference read a
split of one in plain Python (`TextTask.examples`: the dicts, ids and dtypes seqio's pipeline yields for it) and
score it with its postprocessor and metric fns (numpy, `jaxprompt.data.metrics`), so an eval call loads neither
TensorFlow nor seqio (about 4 s of its start-up, plus ~1 s of autograph). Training streams the same task
through tf.data: its seqio Task is built from this definition (`text_task_seqio`), and anything a seqio Task has
that a TextTask lacks (`get_dataset`, `source`, ...) is answered by that Task, built on first use. Registered
tasks (and mixtures of them) enter seqio's registry at registration when seqio is loaded already, else at the
first seqio lookup (`jaxprompt.data.tasks.get_task`), so seqio code finds them by name.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxprompt.data import task_modules

Texts = Callable[[str], Iterable[tuple[str, str]]]  # split -> its (inputs, targets) texts, in order
# seqio's signatures of the three kinds of metric fn (positional arguments without defaults).
_METRIC_KINDS = (('targets', 'predictions'), ('targets', 'scores'), ('targets', 'predictions', 'aux_values'))


@dataclasses.dataclass(frozen=True)
class Feature:
  """An output feature as evaluation reads it (the fields of `seqio.Feature` a text task sets)."""
  vocabulary: Any
  add_eos: bool = True
  required: bool = True


@dataclasses.dataclass(frozen=True, eq=False)
class TextTask:
  """A task of text examples: `texts(split)` gives each split's (inputs, targets) strings in order, lazily.

  labels: the class labels (rank classification), or None; postprocessor(text, example=, is_target=): as
  seqio's `postprocess_fn`; metrics: metric fns, sorted by signature as seqio sorts them; sizes: examples per
  split (seqio's `num_input_examples`); streamed: the split is generated on the fly (tf.data from a generator,
  seqio's buffer shuffles), else read whole and shuffled whole when seqio shuffles files; key: what makes two
  registrations the same task (the owner's arguments); inputs_eos: whether the inputs end in EOS (a causal LM's
  do not: `retokenized`).
  """
  name: str
  splits: tuple[str, ...]
  texts: Texts
  vocabulary: Any
  labels: tuple[str, ...] | None = None
  postprocessor: Callable[..., Any] | None = None
  metrics: tuple[Callable[..., Any], ...] = ()
  sizes: Mapping[str, int] | None = None
  streamed: bool = False
  key: Any = None
  inputs_eos: bool = True

  @property
  def output_features(self) -> dict[str, Feature]:
    return {'inputs': Feature(self.vocabulary, self.inputs_eos, required=False), 'targets': Feature(self.vocabulary)}

  def retokenized(self, vocabulary: Any, inputs_eos: bool = True) -> TextTask:
    """This task read with `vocabulary`, its inputs ending in EOS or not (what `data/retokenized.py` does to a
    seqio task for a causal LM's tokenizer): itself when it already does, else its copy (one per setting)."""
    if vocabulary == self.vocabulary and inputs_eos == self.inputs_eos:
      return self
    copies = self.__dict__.setdefault('_copies', {})  # a cache, like as_seqio's
    if (vocabulary, inputs_eos) not in copies:
      copies[vocabulary, inputs_eos] = dataclasses.replace(self, vocabulary=vocabulary, inputs_eos=inputs_eos)
    return copies[vocabulary, inputs_eos]

  def postprocess_fn(self, output: Any, **kwargs) -> Any:
    return output if self.postprocessor is None else self.postprocessor(output, **kwargs)

  @functools.cached_property
  def _metric_kinds(self) -> tuple[list[Callable[..., Any]], ...]:
    kinds: tuple[list[Callable[..., Any]], ...] = ([], [], [])
    for fn in self.metrics:
      positional = tuple(k for k, p in inspect.signature(fn).parameters.items()
                         if p.default is inspect.Parameter.empty and p.kind == p.POSITIONAL_OR_KEYWORD)
      if positional not in _METRIC_KINDS:
        raise ValueError(f'task {self.name!r}: a metric fn takes {positional}, not one of {list(_METRIC_KINDS)}')
      kinds[_METRIC_KINDS.index(positional)].append(fn)
    return kinds

  @property
  def predict_metric_fns(self) -> list[Callable[..., Any]]:
    return self._metric_kinds[0]

  @property
  def score_metric_fns(self) -> list[Callable[..., Any]]:
    return self._metric_kinds[1]

  @property
  def predict_with_aux_metric_fns(self) -> list[Callable[..., Any]]:
    return self._metric_kinds[2]

  @property
  def metric_fns(self) -> list[Callable[..., Any]]:
    return [fn for kind in self._metric_kinds for fn in kind]

  def examples(self, split: str, max_examples: int | None = None) -> list[dict[str, Any]]:
    """The first `max_examples` (None: all) examples of `split` as seqio's pipeline yields them with no lengths:
    `inputs` / `targets` int32 ids + EOS (the inputs without it unless `inputs_eos`), `inputs_pretokenized` /
    `targets_pretokenized` UTF-8 bytes."""
    vocabulary = self.vocabulary

    def ids(text: str, eos: bool = True) -> np.ndarray:
      return np.asarray([*vocabulary.encode(text), *([vocabulary.eos_id] if eos else [])], np.int32)

    return [{
        'inputs': ids(inputs, self.inputs_eos), 'inputs_pretokenized': inputs.encode(), 'targets': ids(targets),
        'targets_pretokenized': targets.encode()
    } for inputs, targets in itertools.islice(self.texts(split), max_examples or None)]

  def as_seqio(self) -> Any:
    """This task as a `seqio.Task` (built once; imports TensorFlow and seqio)."""
    if '_seqio' not in self.__dict__:
      from jaxprompt.data import text_task_seqio  # pylint: disable=g-import-not-at-top
      self.__dict__['_seqio'] = text_task_seqio.build(self)  # a cache, not state: the dataclass stays frozen
    return self.__dict__['_seqio']

  def __getattr__(self, name: str) -> Any:
    # Only reached for names this class lacks: the seqio Task's (`get_dataset`, `source`, `preprocessors`, ...).
    if name.startswith('_') or name in _FIELDS:  # a field not set yet (a copy being made) is no seqio question
      raise AttributeError(name)
    return getattr(self.as_seqio(), name)

  def __repr__(self) -> str:
    return f'TextTask(name={self.name!r}, splits={self.splits})'


_FIELDS = frozenset(f.name for f in dataclasses.fields(TextTask))

# ------------------------------------------------------------------------------------ the registry

_TASKS: dict[str, TextTask] = {}
_MIXTURES: dict[str, tuple[tuple[str, float], ...]] = {}  # name -> its (task name, rate) pairs


def sync_seqio() -> None:
  """Every registered text task and mixture in seqio's registry (imports seqio)."""
  from jaxprompt.data import text_task_seqio  # pylint: disable=g-import-not-at-top
  text_task_seqio.sync(list(_TASKS.values()), _MIXTURES)


def _sync_if_seqio() -> None:
  if 'seqio' in sys.modules:  # seqio code may look the names up now
    sync_seqio()


def register(task: TextTask) -> TextTask:
  """Registers `task` under its name (replacing any text task of that name)."""
  _TASKS[task.name] = task
  _sync_if_seqio()
  return task


def register_mixture(name: str, rates: Sequence[tuple[str, float]]) -> None:
  """Registers a mixture of text tasks: seqio's `Mixture(name, rates)` once it enters seqio's registry."""
  _MIXTURES[name] = tuple((str(task), float(rate)) for task, rate in rates)
  _sync_if_seqio()


def remove(name: str) -> None:
  """Forgets the text task or mixture `name` (and takes it out of seqio's registry); no-op for unknown names."""
  _TASKS.pop(name, None)
  _MIXTURES.pop(name, None)
  if 'seqio' in sys.modules:
    from jaxprompt.data import text_task_seqio  # pylint: disable=g-import-not-at-top
    text_task_seqio.forget(name)


def find(name: str) -> TextTask | None:
  """The registered text task `name`, None if there is none."""
  return _TASKS.get(name)


def lookup(task: Any) -> TextTask | None:
  """`task` itself if it is a TextTask; a name: its text task, once the module providing such names is imported
  (`task_modules`); None for anything else (a seqio task or mixture)."""
  if isinstance(task, TextTask):
    return task
  if not isinstance(task, str) or task in _MIXTURES:
    return None
  if task not in _TASKS:
    task_modules.import_for(task)
  return _TASKS.get(task)
