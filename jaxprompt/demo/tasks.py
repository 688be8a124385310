"""The demo's tasks: the pretraining skills, their mixture, and the held-out formulations.

  demo_<skill>            one pretraining skill with its instruction (splits train, validation)
  demo_pretrain           the mixture of all skills (rates `data.SKILL_RATES`)
  demo_heldout_topic      raw review -> topic, no instruction (the demo's task; train, validation)
  demo_heldout_sentiment  raw review -> sentiment, no instruction

They are text tasks (`jaxprompt.data.text_tasks`: eval reads them without TensorFlow, training streams them
through their seqio Tasks). Importing this module registers them with the shipped demo vocabulary:
`jaxprompt.demo.model` (which models/demo.gin imports) has a lookup of a `demo_` name import it, and a gin file
may also `import jaxprompt.demo.tasks`. `register_demo_tasks(vocabulary)` re-registers them with another
vocabulary (the pretraining script, before the shipped model exists). Examples are generated in memory from
fixed seeds.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import Any

from jaxprompt.data import metrics as metrics_lib
from jaxprompt.data import postprocessors, text_tasks
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


def _texts(split: str, *, kind: str, skill: str, sizes: dict[str, int], data_seed: int) -> Iterator[tuple[str, str]]:
  """(inputs, targets) of one split, generated lazily (the same sequence on every read)."""
  if kind == 'skill':
    return data.iter_skill_examples(skill, sizes[split], data_seed, split)
  return iter(data.heldout_examples(skill, sizes[split], data_seed, split))


def _add(name: str, kind: str, skill: str, sizes: dict[str, int], data_seed: int, vocabulary: Any) -> None:
  labels = data.SKILL_LABELS.get(skill)
  if labels:
    postprocess = functools.partial(postprocessors.string_label_to_class_id, label_classes=labels)
    metric_fns = (metrics_lib.accuracy,)
  else:
    postprocess, metric_fns = None, (metrics_lib.sequence_accuracy,)
  texts = functools.partial(_texts, kind=kind, skill=skill, sizes=sizes, data_seed=data_seed)
  text_tasks.register(
      text_tasks.TextTask(name, tuple(sizes), texts, vocabulary, labels=None if labels is None else tuple(labels),
                          postprocessor=postprocess, metrics=metric_fns, sizes=dict(sizes), streamed=True))


def task_names() -> list[str]:
  return ([skill_task_name(s) for s in data.SKILLS] + [heldout_task_name(s) for s in data.HELDOUT_SKILLS])


def register_demo_tasks(vocabulary: Any = None) -> list[str]:
  """(Re-)registers every demo task and the pretraining mixture with `vocabulary` (default: the shipped
  demo vocabulary); returns the task names."""
  vocabulary = vocabulary if vocabulary is not None else demo_model.vocabulary()
  for skill in data.SKILLS:
    _add(skill_task_name(skill), 'skill', skill, SKILL_SIZES, DATA_SEED, vocabulary)
  for skill in data.HELDOUT_SKILLS:
    _add(heldout_task_name(skill), 'heldout', skill, HELDOUT_SIZES, HELDOUT_SEED, vocabulary)
  text_tasks.register_mixture(PRETRAIN_MIXTURE, [(skill_task_name(s), rate) for s, rate in data.SKILL_RATES.items()])
  return task_names()


def _register_shipped() -> None:
  """Import-time registration, when the shipped vocabulary exists (it does not before the first pretraining)."""
  if os.path.isfile(os.path.join(demo_model.asset_dir(), demo_model.VOCAB_FILE)):
    register_demo_tasks()


_register_shipped()
