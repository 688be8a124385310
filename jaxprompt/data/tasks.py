"""seqio Tasks and Mixtures for GLUE and SuperGLUE in T5's text-to-text format (Lester et al.'s setup).

Each dataset is registered twice, reading the real TFDS builders:

  super_glue_boolq_v102            T5's format:   "boolq passage: ... question: ..." -> "True"
  taskless_super_glue_boolq_v102   prompt-tuning: "passage: ... question: ..."       -> "True"

SuperGLUE reads `super_glue/<config>:1.0.2` (`_v102`). GLUE is registered for two TFDS versions:
`glue_<config>_v200` reads `glue/<config>:2.0.0`, the only version this TFDS can prepare (the
prompt-tuning repo's name); `glue_<config>_v002` is T5's name and reads `glue/<config>:1.0.0`, usable only
with data prepared by an older TFDS. Mixtures use T5's example-count rates (`super_glue_v102_proportional`,
`glue_v200_proportional`, ...; the short names `super_glue_v102`, `glue_v002`, `glue_v200` are aliases).

Importing this module registers everything (`register_all_tasks`, idempotent). Use `get_task(name)` (clear
errors for unknown names), `get_label_set(name)` (class verbalizers for rank classification and
class-label prompt initialisation), `check_nonempty(name, split)` before training or evaluating, and
`set_tfds_data_dir(path)` to read prepared data from a directory other than TFDS's default.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import seqio

from jaxprompt.data import metrics, postprocessors, superglue, task_modules, text_tasks
from jaxprompt.data import preprocessors as pp
from jaxprompt.data.vocab import get_default_vocabulary
from jaxprompt.errors import DataError
from jaxprompt.formats import validation

SUPER_GLUE_VERSION = ('1.0.2', 'v102')
GLUE_VERSIONS = (('2.0.0', 'v200'), ('1.0.0', 'v002'))  # (TFDS version, task-name suffix)
TASKLESS_PREFIX = 'taskless_'
_TRAIN_EVAL_TEST = ('train', 'validation', 'test')


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """One dataset in T5 format; registered as `name` and as `taskless_<name>`."""
  name: str
  tfds_name: str
  splits: tuple[str, ...]
  text_preprocessors: tuple[Callable, ...]  # raw TFDS example -> {'inputs', 'targets', ...} strings
  metric_fns: tuple[Callable, ...] = ()
  postprocess_fn: Callable | None = None
  label_set: tuple[str, ...] | None = None


def _classification(name: str, tfds_name: str, benchmark: str, labels: Sequence[str], features: Sequence[str],
                    metric_fns: Sequence[Callable], splits: Sequence[str] = _TRAIN_EVAL_TEST,
                    pre: Sequence[Callable] = ()) -> TaskSpec:
  """A task whose target is a class name, scored on the class index."""
  text = functools.partial(pp.glue, benchmark_name=benchmark, label_names=tuple(labels), feature_names=tuple(features))
  post = functools.partial(postprocessors.string_label_to_class_id, label_classes=tuple(labels))
  return TaskSpec(name, tfds_name, tuple(splits), tuple(pre) + (text,), tuple(metric_fns), post, tuple(labels))


# The TFDS class names (in class-id order) of the GLUE / SuperGLUE tasks that share them; the label-id tasks
# (`label_tasks.py`) name their ids with the same tuples.
BOOL_LABELS = ('False', 'True')
RTE_LABELS = ('entailment', 'not_entailment')
MNLI_LABELS = ('entailment', 'neutral', 'contradiction')
# SuperGLUE AX-b names its sentences like GLUE; T5 renames them to read as SuperGLUE RTE.
_AXB_REKEY = functools.partial(
    seqio.preprocessors.rekey,
    key_map={'premise': 'sentence1', 'hypothesis': 'sentence2', 'label': 'label', 'idx': 'idx'})


def super_glue_specs() -> list[TaskSpec]:
  """SuperGLUE tasks (T5's formats and metrics), plus DPR which T5 mixes in for WSC."""
  version, suffix = SUPER_GLUE_VERSION

  def sg(config: str) -> tuple[str, str]:  # (task name, TFDS name)
    return f'super_glue_{config}_{suffix}', f'super_glue/{config}:{version}'

  accuracy = (metrics.accuracy,)
  return [
      _classification(*sg('boolq'), 'boolq', BOOL_LABELS, ('passage', 'question'), accuracy),
      _classification(*sg('cb'), 'cb', ('entailment', 'contradiction', 'neutral'), ('hypothesis', 'premise'),
                      (metrics.mean_multiclass_f1(num_classes=3), metrics.accuracy)),
      _classification(*sg('copa'), 'copa', ('choice1', 'choice2'), ('choice1', 'choice2', 'premise', 'question'),
                      accuracy),
      dataclasses.replace(
          _classification(*sg('multirc'), 'multirc', BOOL_LABELS, ('question', 'answer', 'paragraph'),
                          (metrics.multirc_f1_over_all_answers, metrics.mean_group_metric(metrics.all_match))),
          postprocess_fn=postprocessors.multirc),
      TaskSpec(*sg('record'), _TRAIN_EVAL_TEST, (superglue.record,), (metrics.record,), postprocessors.record),
      _classification(*sg('rte'), 'rte', RTE_LABELS, ('hypothesis', 'premise'), accuracy),
      _classification(*sg('wic'), 'wic', BOOL_LABELS, ('sentence1', 'sentence2', 'word'), accuracy),
      _classification(*sg('axb'), 'rte', RTE_LABELS, ('hypothesis', 'premise'), (), splits=('test',),
                      pre=(_AXB_REKEY,)),
      _classification(*sg('axg'), 'rte', RTE_LABELS, ('hypothesis', 'premise'), (), splits=('test',)),
      TaskSpec(*sg('wsc.fixed'), _TRAIN_EVAL_TEST, (superglue.wsc,), accuracy,
               functools.partial(postprocessors.string_label_to_class_id, label_classes=BOOL_LABELS), BOOL_LABELS),
      TaskSpec(f'super_glue_wsc_{suffix}_simple_train', f'super_glue/wsc.fixed:{version}', ('train',),
               (functools.partial(superglue.wsc_simple, correct_referent_only=True),)),
      TaskSpec(f'super_glue_wsc_{suffix}_simple_eval', f'super_glue/wsc.fixed:{version}', ('validation', 'test'),
               (functools.partial(superglue.wsc_simple, correct_referent_only=False),), accuracy,
               postprocessors.wsc_simple),
      TaskSpec('dpr_v001_simple', 'definite_pronoun_resolution:1.1.0', ('train', 'test'), (superglue.dpr_simple,),
               accuracy),
  ]


def glue_specs(tfds_version: str, suffix: str) -> list[TaskSpec]:
  """GLUE tasks (T5's formats and metrics) reading `glue/<config>:<tfds_version>`."""

  def g(config: str) -> tuple[str, str]:  # (task name, TFDS name)
    return f'glue_{config}_{suffix}', f'glue/{config}:{tfds_version}'

  accuracy = (metrics.accuracy,)
  f1_accuracy = (metrics.f1_score_with_invalid, metrics.accuracy)
  pair = ('sentence1', 'sentence2')
  mnli_eval = ('validation', 'test')
  return [
      _classification(*g('cola'), 'cola', ('unacceptable', 'acceptable'), ('sentence',), (metrics.matthews_corrcoef,)),
      _classification(*g('sst2'), 'sst2', ('negative', 'positive'), ('sentence',), accuracy),
      _classification(*g('mrpc'), 'mrpc', ('not_equivalent', 'equivalent'), pair, f1_accuracy),
      _classification(*g('qqp'), 'qqp', ('not_duplicate', 'duplicate'), ('question1', 'question2'), f1_accuracy),
      TaskSpec(*g('stsb'), _TRAIN_EVAL_TEST, (pp.stsb,), (metrics.pearson_corrcoef, metrics.spearman_corrcoef),
               postprocessors.string_to_float),
      _classification(
          *g('mnli'), 'mnli', MNLI_LABELS, ('hypothesis', 'premise'), accuracy,
          splits=('train', 'validation_matched', 'validation_mismatched', 'test_matched', 'test_mismatched')),
      _classification(*g('mnli_matched'), 'mnli', MNLI_LABELS, ('hypothesis', 'premise'), accuracy, splits=mnli_eval),
      _classification(*g('mnli_mismatched'), 'mnli', MNLI_LABELS, ('hypothesis', 'premise'), accuracy,
                      splits=mnli_eval),
      _classification(*g('qnli'), 'qnli', RTE_LABELS, ('question', 'sentence'), accuracy),
      _classification(*g('rte'), 'rte', RTE_LABELS, pair, accuracy),
      _classification(*g('wnli'), 'wnli', ('not_entailment', 'entailment'), pair, accuracy),
      _classification(*g('ax'), 'mnli', MNLI_LABELS, ('hypothesis', 'premise'), (), splits=('test',)),
  ]


def all_specs() -> list[TaskSpec]:
  specs = super_glue_specs()
  for tfds_version, suffix in GLUE_VERSIONS:
    specs += glue_specs(tfds_version, suffix)
  return specs


# T5's rates: the number of training examples (0: evaluation only).
SUPER_GLUE_RATES = {
    'dpr_v001_simple': 1_322.,
    'super_glue_wsc_v102_simple_train': 259.,
    'super_glue_wsc_v102_simple_eval': 0.,
    'super_glue_boolq_v102': 9_427.,
    'super_glue_cb_v102': 250.,
    'super_glue_copa_v102': 400.,
    'super_glue_multirc_v102': 27_243.,
    'super_glue_record_v102': 138_854.,
    'super_glue_rte_v102': 2_490.,
    'super_glue_wic_v102': 5_428.,
    'super_glue_axb_v102': 0.,
    'super_glue_axg_v102': 0.,
}
GLUE_RATES = {  # T5 leaves WNLI out (it trains on WSC / DPR instead)
    'cola': 8_551., 'sst2': 67_349., 'mrpc': 3_668., 'qqp': 363_849., 'stsb': 5_749., 'mnli': 392_702.,
    'qnli': 104_743., 'rte': 2_490., 'mnli_mismatched': 0., 'mnli_matched': 0., 'ax': 0.,
}


def mixture_specs() -> dict[str, list[tuple[str, float]]]:
  """Mixture name -> [(task name, rate)], for the T5 and the taskless task names."""
  out = {}
  for prefix in ('', TASKLESS_PREFIX):
    super_glue = [(prefix + name, rate) for name, rate in SUPER_GLUE_RATES.items()]
    out[f'{prefix}super_glue_v102_proportional'] = out[f'{prefix}super_glue_v102'] = super_glue
    out[f'{prefix}super_glue_wsc_and_dev_v102_simple'] = [(f'{prefix}super_glue_wsc_v102_simple_train', 1.0),
                                                          (f'{prefix}super_glue_wsc_v102_simple_eval', 1.0)]
    for _, suffix in GLUE_VERSIONS:
      glue = [(f'{prefix}glue_{config}_{suffix}', rate) for config, rate in GLUE_RATES.items()]
      out[f'{prefix}glue_{suffix}_proportional'] = out[f'{prefix}glue_{suffix}'] = glue
      out[f'{prefix}glue_mnli_and_dev_{suffix}'] = [
          (f'{prefix}glue_{config}_{suffix}', 1.0) for config in ('mnli', 'mnli_matched', 'mnli_mismatched')
      ]
  return out


# ------------------------------------------------------------------------------------------------- registration

_LABEL_SETS: dict[str, tuple[str, ...] | None] = {}
_OUR_TASKS: list[str] = []


def default_output_features(vocabulary: seqio.Vocabulary | None = None) -> dict[str, seqio.Feature]:
  """T5's features: `inputs` (optional, for decoder-only use) and `targets`, both ending in EOS."""
  vocabulary = vocabulary or get_default_vocabulary()
  return {
      'inputs': seqio.Feature(vocabulary=vocabulary, add_eos=True, required=False),
      'targets': seqio.Feature(vocabulary=vocabulary, add_eos=True),
  }


def _token_preprocessors() -> list:
  return [seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(), seqio.preprocessors.append_eos_after_trim]


def _add_task(name: str, spec: TaskSpec, taskless: bool, output_features) -> None:
  text = list(spec.text_preprocessors) + ([pp.remove_first_text_token] if taskless else [])
  seqio.TaskRegistry.add(name, source=seqio.TfdsDataSource(tfds_name=spec.tfds_name, splits=list(spec.splits)),
                         preprocessors=text + _token_preprocessors(), output_features=output_features,
                         postprocess_fn=spec.postprocess_fn, metric_fns=list(spec.metric_fns))


def register_all_tasks() -> None:
  """Registers every GLUE / SuperGLUE task and mixture not registered yet (safe to call repeatedly)."""
  tasks = set(seqio.TaskRegistry.names())
  mixtures = set(seqio.MixtureRegistry.names())
  output_features = None
  for spec in all_specs():
    for name, taskless in ((spec.name, False), (TASKLESS_PREFIX + spec.name, True)):
      _LABEL_SETS[name] = spec.label_set
      if name not in _OUR_TASKS:
        _OUR_TASKS.append(name)
      if name not in tasks:
        output_features = output_features or default_output_features()
        _add_task(name, spec, taskless, output_features)
  for name, rates in mixture_specs().items():
    if name not in mixtures:
      seqio.MixtureRegistry.add(name, rates)


def registered_task_names() -> list[str]:
  """Names of the GLUE / SuperGLUE tasks this module registers (not the mixtures)."""
  register_all_tasks()
  return list(_OUR_TASKS)


def register_label_set(task_name: str, labels: Sequence[str] | None) -> None:
  """Records the class verbalizers of a seqio task registered elsewhere (file tasks need not: see custom)."""
  _LABEL_SETS[task_name] = None if labels is None else tuple(labels)


def get_task(name: str) -> seqio.Task | seqio.Mixture:
  """The registered Task or Mixture `name`.

  Raises:
    DataError: no task or mixture has that name; the message suggests the closest names.
  """
  register_all_tasks()
  for which in (name, None):  # the module registering `name` on first use, then every one (for the suggestions)
    task_modules.import_for(which)
    text_tasks.sync_seqio()  # jaxprompt's text tasks (file and demo tasks) as seqio Tasks
    if name in seqio.TaskRegistry.names():
      return seqio.TaskRegistry.get(name)
    if name in seqio.MixtureRegistry.names():
      return seqio.MixtureRegistry.get(name)
  known = list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names())
  hint = validation.did_you_mean(
      name, known, quote=True) or ('; no similar name is registered (see jaxprompt.data.tasks.registered_task_names())')
  raise DataError(f'unknown task or mixture {name!r}{hint}')


def get_label_set(task_name: str) -> list[str] | None:
  """Class names the task's targets are drawn from (e.g. ['False', 'True']), or None for free text.

  A mixture has a label set when all its tasks share the same one.

  Raises:
    DataError: `task_name` is not registered.
  """
  provider = get_task(task_name)
  if isinstance(provider, seqio.Mixture):
    sets = {_task_label_set(t.name) for t in provider.tasks}
    label_set = sets.pop() if len(sets) == 1 else None
  else:
    label_set = _task_label_set(task_name)
  return None if label_set is None else list(label_set)


def _task_label_set(task_name: str) -> tuple[str, ...] | None:
  if task_name in _LABEL_SETS:
    return _LABEL_SETS[task_name]
  text = text_tasks.find(task_name)  # a file or demo task
  return None if text is None else text.labels  # None: a seqio task registered without `register_label_set`


_TFDS_DATA_DIR: list[str | None] = [None]  # what `set_tfds_data_dir` set last
_MORE_TFDS_TASKS: list[str] = []  # tasks of these builders registered elsewhere (data/label_tasks.py)


def set_tfds_data_dir(data_dir: str | None) -> None:
  """Reads (and prepares) the TFDS data of every task here (and of `add_tfds_tasks`') from `data_dir`; None: back
  to TFDS's default."""
  _TFDS_DATA_DIR[0] = data_dir
  for name in registered_task_names() + _MORE_TFDS_TASKS:
    task = seqio.TaskRegistry.get(name)
    if isinstance(task.source, seqio.TfdsDataSource):
      task.source.tfds_dataset.override_data_dir(data_dir)


def add_tfds_tasks(names: Sequence[str]) -> None:
  """Tasks registered elsewhere on the same TFDS builders: they read from `set_tfds_data_dir`'s folder too."""
  _MORE_TFDS_TASKS.extend(n for n in names if n not in _MORE_TFDS_TASKS)
  if _TFDS_DATA_DIR[0] is not None:
    set_tfds_data_dir(_TFDS_DATA_DIR[0])


def check_nonempty(task: str | seqio.Task | seqio.Mixture, split: str) -> None:
  """Checks that `split` of a task (every task of a mixture that has it) yields at least one example.

  Raises:
    DataError: unknown task, no such split (the message lists the available ones), unreadable data, or no
      example after preprocessing; the message names the task and the split.
  """
  provider = get_task(task) if isinstance(task, str) else task
  subtasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
  with_split = [t for t in subtasks if split in t.splits]
  if not with_split:
    available = sorted({s for t in subtasks for s in t.splits})
    raise DataError(f'task {provider.name!r} has no split {split!r}; available splits: {available}')
  for t in with_split:
    try:
      ds = t.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1, try_in_mem_cache=False)
      empty = next(iter(ds.take(1)), None) is None
    except Exception as e:  # pylint: disable=broad-except  (TFDS / tf.data raise many types)
      raise DataError(f'task {t.name!r} split {split!r}: cannot read examples '
                      f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    if empty:
      raise DataError(f'task {t.name!r} split {split!r} is empty: no example left after preprocessing')


register_all_tasks()
for _prefix in ('glue_', 'super_glue_'):  # the label tasks (`*_labels`) of the same builders, on first lookup
  task_modules.provide(_prefix, 'jaxprompt.data.label_tasks')
