"""seqio tasks for the demo: the pretraining skills, their mixture, and the held-out formulations.

  demo_<skill>            one pretraining skill with its instruction (splits train, validation)
  demo_pretrain           the mixture of all skills (rates `data.SKILL_RATES`)
  demo_heldout_topic      raw review -> topic, no instruction (the demo's task; train, validation)
  demo_heldout_sentiment  raw review -> sentiment, no instruction

Importing this module registers them with the shipped demo vocabulary: `jaxprompt.demo.model` (which
models/demo.gin imports) has `jaxprompt.data.tasks.get_task` import it when a `demo_` name is first looked up,
and a gin file may also `import jaxprompt.demo.tasks`. `register_demo_tasks(vocabulary)` re-registers them with
another vocabulary (the pretraining script, before the shipped model exists). Examples are generated in memory
from fixed seeds.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import seqio
import tensorflow as tf

from jaxprompt.data import metrics as metrics_lib
from jaxprompt.data import postprocessors
from jaxprompt.data import tasks as tasks_lib
from jaxprompt.demo import data
from jaxprompt.demo import model as demo_model

PRETRAIN_MIXTURE = f'{demo_model.TASK_PREFIX}pretrain'
DATA_SEED = 0  # pretraining skills
HELDOUT_SEED = 1  # the demo's held-out data: a different stream from every pretraining example
# Examples per split; training splits repeat (num_epochs=None) during training.
SKILL_SIZES = {'train': 20000, 'validation': 500}
HELDOUT_SIZES = {'train': 2000, 'validation': 500}


def skill_task_name(skill: str) -> str:
  return f'{demo_model.TASK_PREFIX}{skill}'


def heldout_task_name(skill: str) -> str:
  return f'{demo_model.TASK_PREFIX}heldout_{skill}'


def _dataset_fn(split: str, shuffle_files: bool = False, seed: int | None = None, *, kind: str, skill: str,
                sizes: dict[str, int], data_seed: int) -> tf.data.Dataset:
  """{'inputs', 'targets'} strings of one split, generated lazily (the same sequence on every read)."""
  del shuffle_files, seed  # one generated "file": seqio's own shuffle buffer does the shuffling

  def generate():
    if kind == 'skill':
      examples = data.iter_skill_examples(skill, sizes[split], data_seed, split)
    else:
      examples = iter(data.heldout_examples(skill, sizes[split], data_seed, split))
    for inputs, targets in examples:
      yield {'inputs': inputs, 'targets': targets}

  spec = tf.TensorSpec((), tf.string)
  return tf.data.Dataset.from_generator(generate, output_signature={'inputs': spec, 'targets': spec})


def _add(name: str, kind: str, skill: str, sizes: dict[str, int], data_seed: int, vocabulary: Any) -> None:
  labels = data.SKILL_LABELS.get(skill)
  if labels:
    postprocess = functools.partial(postprocessors.string_label_to_class_id, label_classes=labels)
    metric_fns = [metrics_lib.accuracy]
  else:
    postprocess, metric_fns = None, [metrics_lib.sequence_accuracy]
  source = seqio.FunctionDataSource(
      functools.partial(_dataset_fn, kind=kind, skill=skill, sizes=sizes, data_seed=data_seed), splits=list(sizes),
      num_input_examples=dict(sizes))
  seqio.TaskRegistry.add(
      name, source=source, preprocessors=[
          seqio.preprocessors.tokenize,
          seqio.CacheDatasetPlaceholder(), seqio.preprocessors.append_eos_after_trim
      ], output_features={
          'inputs': seqio.Feature(vocabulary, add_eos=True, required=False),
          'targets': seqio.Feature(vocabulary, add_eos=True)
      }, postprocess_fn=postprocess, metric_fns=metric_fns)
  tasks_lib.register_label_set(name, labels)


def task_names() -> list[str]:
  return ([skill_task_name(s) for s in data.SKILLS] + [heldout_task_name(s) for s in data.HELDOUT_SKILLS])


def register_demo_tasks(vocabulary: Any = None) -> list[str]:
  """(Re-)registers every demo task and the pretraining mixture with `vocabulary` (default: the shipped
  demo vocabulary); returns the task names."""
  vocabulary = vocabulary if vocabulary is not None else demo_model.vocabulary()
  for name in task_names() + [PRETRAIN_MIXTURE]:
    seqio.TaskRegistry.remove(name)
    seqio.MixtureRegistry.remove(name)
  for skill in data.SKILLS:
    _add(skill_task_name(skill), 'skill', skill, SKILL_SIZES, DATA_SEED, vocabulary)
  for skill in data.HELDOUT_SKILLS:
    _add(heldout_task_name(skill), 'heldout', skill, HELDOUT_SIZES, HELDOUT_SEED, vocabulary)
  seqio.MixtureRegistry.add(PRETRAIN_MIXTURE, [(skill_task_name(s), rate) for s, rate in data.SKILL_RATES.items()])
  return task_names()


def _register_shipped() -> None:
  """Import-time registration, when the shipped vocabulary exists (it does not before the first pretraining)."""
  if os.path.isfile(os.path.join(demo_model.asset_dir(), demo_model.VOCAB_FILE)):
    register_demo_tasks()


_register_shipped()
