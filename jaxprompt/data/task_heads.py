"""What a task asks of an encoder-only model's head: its kind and its label names, from the label tasks
(`label_tasks`: GLUE / SuperGLUE `*_labels`, your own label files) and the tagging tasks (`tagging_tasks`).

`head_labels(name)` -> `TaskLabels` (None for a task of neither kind: a text-to-text task has no head), and
`num_labels(name, kind, given)` -> the head's number of labels: the task's when `given` is None, else `given`
checked against it; a head of the wrong kind or size for the task is one ConfigError naming both.
"""
from __future__ import annotations

import dataclasses

from jaxprompt.errors import ConfigError

# A label task's kind -> the head kind that predicts it (`models.heads.KINDS`).
HEAD_KIND = {
    'classification': 'classification', 'regression': 'regression', 'choice': 'multiple_choice', 'tagging': 'tagging'
}


@dataclasses.dataclass(frozen=True)
class TaskLabels:
  """A task's head `kind` (`models.heads.KINDS`) and its `names` (class, choice or tag names; None: regression)."""
  task: str
  kind: str
  names: tuple[str, ...] | None

  def name_of(self, label: int) -> str:
    """The name of label id `label` (transformers' `LABEL_<id>` past the names)."""
    names = self.names or ()
    return names[label] if 0 <= label < len(names) else f'LABEL_{label}'


def head_labels(name: str) -> TaskLabels | None:
  """The head task `name` asks for, None when it is neither a label task nor a tagging task."""
  from jaxprompt.data import label_tasks, tagging_tasks  # pylint: disable=g-import-not-at-top  (seqio, TensorFlow)
  if name in label_tasks.names():
    spec = label_tasks.get(name)
    names = None if spec.label_names is None else tuple(spec.label_names)
    return TaskLabels(name, HEAD_KIND[spec.kind], names if spec.kind != 'choice' else None)
  if name in tagging_tasks.names():
    return TaskLabels(name, 'tagging', tagging_tasks.get(name).labels)
  return None


def num_labels(name: str | None, kind: str, given: int | None) -> int | None:
  """The number of labels of a `kind` head for task `name` (module docstring); `given` as it is without a task."""
  found = head_labels(name) if name else None
  if found is None:
    return given
  if found.kind != kind:
    raise ConfigError(f'a {kind} head cannot learn task {name!r}, which needs a {found.kind} head: use '
                      f'heads/{found.kind}.gin')
  if kind in ('regression', 'multiple_choice'):
    return given
  want = len(found.names or ())
  if given is not None and given != want:
    raise ConfigError(f'NUM_LABELS={given} but task {name!r} has {want} labels {list(found.names or ())}: set '
                      f'NUM_LABELS={want} or leave it None (the task\'s)')
  return want
