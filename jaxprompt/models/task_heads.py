"""Per-task heads of the encoder-only family: a batch mixing tasks, each row scored by its own task's head.

A multi-task run over label tasks (SST-2 + RTE + STS-B ...) or a prompt bank of single-task runs serves several
heads over one network pass: `TaskHeads` names them in task-id order (`task_ids` [b] picks a row's), each a
`HeadConfig` of its own kind and label count. The parameters are `trainable['head'][<task>]`, each one head's tree
(`jaxprompt.models.heads.TaskHead`), so any task's head is a plain single-task head file (`methods/task_heads.py`).

Every head runs on every row (a head is one or two small matmuls beside the encoder's layers) and row i keeps only
its task's: the loss weights of the other tasks' rows are 0 under each head, so each head's loss, and its gradient,
come from its own rows alone. Heads whose kinds read different inputs cannot share a batch: multiple choice reads
[batch, choices, length] rows, the others [batch, length]; such a mix is refused in one line naming the tasks.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxprompt.errors import ConfigError
from jaxprompt.models.heads import HeadConfig

CHOICE_KIND = 'multiple_choice'


@dataclasses.dataclass(frozen=True)
class TaskHeads:
  """One head per task: `tasks` (task-id order) and their `configs`."""
  tasks: tuple[str, ...]
  configs: tuple[HeadConfig, ...]

  def __post_init__(self):
    if not self.tasks or len(self.tasks) != len(self.configs):
      raise ConfigError(f'TaskHeads needs one HeadConfig per task, got tasks {list(self.tasks)} and '
                        f'{len(self.configs)} heads')
    if len(set(self.tasks)) != len(self.tasks):
      raise ConfigError(f'TaskHeads: task names must be unique, got {list(self.tasks)}')
    for task, config in zip(self.tasks, self.configs):
      if not isinstance(config, HeadConfig):
        raise ConfigError(f'TaskHeads: task {task!r} has a {type(config).__name__}, not a HeadConfig')
    choice = [c.kind == CHOICE_KIND for c in self.configs]
    if any(choice) and not all(choice):
      kinds = ', '.join(f'{t}: {c.kind}' for t, c in zip(self.tasks, self.configs))
      raise ConfigError(f'these task heads cannot share a batch ({kinds}): multiple-choice rows are [batch, choices, '
                        'length] and the other kinds read [batch, length]; serve the multiple-choice tasks apart')

  @classmethod
  def of(cls, heads: Mapping[str, HeadConfig]) -> TaskHeads:
    """{task: HeadConfig} in task-id order."""
    return cls(tuple(heads), tuple(heads.values()))

  @property
  def choices(self) -> bool:
    """True when the tasks are multiple choice (then all are)."""
    return self.configs[0].kind == CHOICE_KIND

  @property
  def dropout(self) -> float:
    """The largest head dropout: > 0 when any head needs a dropout rng in training."""
    return max(c.dropout for c in self.configs)

  def items(self) -> tuple[tuple[str, HeadConfig], ...]:
    return tuple(zip(self.tasks, self.configs))

  def check_network(self, pooler: bool, source: str = 'the encoder') -> None:
    """One ConfigError when a head reads a pooler `source` does not have."""
    for config in self.configs:
      config.check_network(pooler, source)

  def describe(self) -> str:
    """'task: kind (n labels), ...' for messages."""
    return ', '.join(f'{t}: {c.kind}' + (f' ({c.num_labels} labels)' if c.num_labels else '') for t, c in self.items())


def row_answers(answers: Mapping[str, tuple[Any, Any]], tasks: tuple[str, ...],
                task_ids: Any) -> list[tuple[np.ndarray, np.ndarray]]:
  """Row i's (prediction, scores) on the host, from its own task's head: `answers` is per-task heads'
  `EncoderOnlyModel.predict_labels` ({task: (predictions, scores) of every row}), `task_ids` [b] each row's task
  id in `tasks`. Each row keeps its head's shapes: a class id and [n] logits, a value twice, tags [l] and [l, n]."""
  ids = np.asarray(task_ids)
  host = {t: (np.asarray(p), np.asarray(s)) for t, (p, s) in answers.items()}
  return [(host[tasks[t]][0][i], host[tasks[t]][1][i]) for i, t in enumerate(ids.tolist())]
