"""What every evaluation shares: a split's summed loss and token accuracy (`validation_loss`), and a multi-task
method's task index (`task_id`)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxprompt.data import pipeline as data
from jaxprompt.errors import ConfigError


def loss_summary(totals: Mapping[str, float]) -> dict[str, float]:
  weight = max(totals.get('weight_sum', 0.0), 1.0)
  return {'loss': totals['loss'] / weight, 'token_accuracy': totals['correct'] / weight}


def validation_loss(fns: Any, trainable: Any, features: Mapping[str, np.ndarray], batch_size: int) -> dict:
  """Per-token loss and token accuracy over every example of `features` (`fns`: `evaluation.ModelFns`)."""
  totals = {'loss': 0.0, 'weight_sum': 0.0, 'correct': 0.0}
  for batch, _ in data.padded_batches(features, batch_size, fns.data_parallel):
    metrics = fns.loss_metrics(trainable, batch)
    totals['loss'] += metrics['loss']
    totals['weight_sum'] += metrics['weight_sum']
    totals['correct'] += metrics['token_accuracy'] * metrics['weight_sum']
  return loss_summary(totals)


def task_id(task_names: Sequence[str], name: str) -> int:
  """The index of task `name` among a multi-task method's tasks (ConfigError naming both when absent)."""
  if name not in task_names:
    raise ConfigError(f'task {name!r} is not one of the method\'s tasks {list(task_names)}')
  return list(task_names).index(name)
