"""The loop's `Schedule` (gin: `jaxprompt.Schedule`), apart from the loop so that the entry points' groups
(`commands/groups.py`) load it without the loop's TensorFlow and Orbax."""
from __future__ import annotations

import dataclasses

import gin

from jaxprompt.formats import macros, validation


@gin.configurable(module='jaxprompt')
@dataclasses.dataclass(frozen=True)
class Schedule:
  """When things happen, in steps (all positive): the total, counting a resumed run's [TRAIN_STEPS], and the
  periods of evaluation [EVAL_PERIOD], checkpoints [CHECKPOINT_PERIOD] and log lines / TensorBoard points."""
  train_steps: int | None = None
  eval_period: int = 1000
  checkpoint_period: int = 1000
  log_period: int = 100

  def __post_init__(self):
    validation.require(self.train_steps, 'TRAIN_STEPS', '1000')
    # None is no period: a step count is needed (EVAL_SPLIT = None turns evaluation off).
    validation.require(self.eval_period, 'EVAL_PERIOD', '1000')
    validation.require(self.checkpoint_period, 'CHECKPOINT_PERIOD', '1000')
    validation.require(self.log_period, 'jaxprompt.Schedule.log_period', '100')
    macros.check(TRAIN_STEPS=self.train_steps, EVAL_PERIOD=self.eval_period, CHECKPOINT_PERIOD=self.checkpoint_period)
    validation.check_positive(**{'jaxprompt.Schedule.log_period': self.log_period})
