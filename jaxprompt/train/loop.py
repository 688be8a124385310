"""The one training loop, for every tuning method: steps, evaluation, checkpoints, preemption.

    network (loaded shard by shard, or initialised) + method + optimizer on a ('data', 'model') mesh
    seeded batch stream (BATCH_SIZE / process_count rows per host)
    every step: train step; every eval_period: validation loss + task metrics; every checkpoint_period: save

Checkpoints are written every checkpoint_period steps, after the last step and on preemption, and nowhere else,
with one exception: with a `best_metric` (CheckpointConfig), an evaluation that improves on the best value saved
so far is saved too, since the best step's state exists nowhere else (an eval between two periodic saves would
otherwise be a best that cannot be restored).

Exact resume: the checkpoint holds the trainable tree, optimizer state, step, rng and the number of batches
consumed; a restarted run restores them and skips that many batches of the (seeded, deterministic) stream, so
it ends with the same parameters, bit for bit, as a run that was never interrupted. SIGTERM (preemption) saves
the current step and returns normally. A non-finite loss, gradient or update (parameters that overflowed) stops
training with a TrainingError naming the step; the checkpoints already written are kept and nothing is saved
after the bad step.

Evaluation is a callable the command passes in (`commands/train.py` builds it from `jaxprompt.eval`): train and
eval sit side by side above the runtime, and neither imports the other.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np

from jaxprompt.data import pipeline as data_lib
from jaxprompt.errors import DataError, TrainingError
from jaxprompt.parallel import host
from jaxprompt.runtime.optim import Optimizer
from jaxprompt.runtime.runtime import Runtime
from jaxprompt.runtime.state import TrainState, init_train_state
from jaxprompt.train import observability
from jaxprompt.train.checkpoints import StateCheckpointer
from jaxprompt.train.preemption import PreemptionGuard
from jaxprompt.train.schedule import Schedule

log = logging.getLogger('jaxprompt')
Batch = dict[str, np.ndarray]
# The trainable tree (on the mesh) -> the evaluation's metrics (logged, and kept with the checkpoint).
Evaluate = Callable[[Any], dict[str, Any]]
# The number of batches to skip -> this process's seeded stream of batches after them.
Batches = Callable[[int], Iterator[Batch]]


@dataclasses.dataclass
class LoopResult:
  """How the loop ended: the last step's state (on the mesh) and the last evaluation."""
  step: int
  state: TrainState
  preempted: bool = False
  eval_metrics: dict | None = None


@dataclasses.dataclass(frozen=True)
class Faults:
  """Faults the tests inject into a run, never set otherwise (`commands/train.py` reads them from the
  environment): a non-finite loss at step `nan_loss_at_step` (its batch's loss weights are NaN: same shapes, no
  recompilation), and a pause of `sleep_per_step` seconds after each step (time to send a signal mid-run)."""
  nan_loss_at_step: int | None = None
  sleep_per_step: float = 0.0

  def batch(self, step: int, batch: Batch) -> Batch:
    """The batch of step `step` (1-based), poisoned at `nan_loss_at_step`."""
    if step != self.nan_loss_at_step:
      return batch
    return dict(batch, decoder_loss_weights=np.full_like(batch['decoder_loss_weights'], np.nan))


class _StepChecker:
  """Reads each step's metrics one step late (so the host never stalls the device) and stops on NaN/inf."""

  def __init__(self, observer: observability.TrainObserver, checkpointer: StateCheckpointer, model_dir: str):
    self.observer, self.checkpointer, self.model_dir = observer, checkpointer, model_dir
    self._pending: tuple[int, Any] | None = None

  def push(self, step: int, metrics: Any, host_metrics: Mapping[str, float] | None = None) -> None:
    self.flush()
    self._pending = (step, metrics, dict(host_metrics or {}))

  def flush(self) -> None:
    if self._pending is None:
      return
    step, metrics, host_metrics = self._pending
    self._pending = None
    values = {k: float(host.host_value(v)) for k, v in metrics.items()}
    values.update(host_metrics)
    if not values.get('finite', 1.0):
      self.checkpointer.wait_until_finished()
      last = self.checkpointer.latest_step()
      kept = (f'the last good checkpoint, step {last}, is kept in {self.model_dir}'
              if last is not None else f'no checkpoint was written to {self.model_dir} yet')
      loss, grad_norm = values.get('loss', math.nan), values.get('grad_norm', math.nan)
      what = (f'non-finite update at step {step} (loss={loss} and grad_norm={grad_norm} were finite, the updated '
              'parameters or optimizer state were not)' if math.isfinite(loss) and math.isfinite(grad_norm) else
              f'non-finite loss at step {step} (loss={loss}, grad_norm={grad_norm})')
      raise TrainingError(f'{what}: training stopped; {kept}; lower LEARNING_RATE or check the data')
    self.observer.step(step, values)


class _BestSoFar:
  """The best value of the checkpointer's `best_metric` among the steps saved (None: no metric, or none seen)."""

  def __init__(self, checkpointer: StateCheckpointer, restored: Mapping[str, Any] | None):
    self.metric, self.mode = checkpointer.best_metric, checkpointer.best_mode
    self.value: float | None = None
    # A resumed run starts from its restored step's value: the best saved is at least as good, so an eval below
    # it is no new best and one above it at worst saves a step the retention policy drops.
    self.saved(restored)

  def _value(self, metrics: Mapping[str, Any] | None) -> float | None:
    value = (metrics or {}).get(self.metric) if self.metric else None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not np.isnan(value)
    return float(value) if ok else None

  def improves(self, metrics: Mapping[str, Any] | None) -> bool:
    """Whether saving a step with `metrics` keeps a new best."""
    value = self._value(metrics)
    if value is None:
      return False
    return self.value is None or (value > self.value if self.mode == 'max' else value < self.value)

  def saved(self, metrics: Mapping[str, Any] | None) -> None:
    if self.improves(metrics):
      self.value = self._value(metrics)


def initial_state(runtime: Runtime, optimizer: Optimizer, seed: int) -> TrainState:
  """The method's initial trainable tree and optimizer state, placed on the mesh (their sizes logged)."""
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(seed))
  trainable = runtime.method.init(init_rng, runtime.network)
  state = runtime.steps.place_state(init_train_state(trainable, optimizer.tx, state_rng))
  count, size = tree_size(state.trainable)
  log.info('%s: %s trainable parameters (%s bytes); a checkpoint holds them and the optimizer state: %s bytes',
           type(runtime.method).__name__, f'{count:,}', f'{size:,}', f'{tree_size(state)[1]:,}')
  return state


def tree_size(tree: Any) -> tuple[int, int]:
  """(elements, bytes) of every array leaf of a tree."""
  leaves = [x for x in jax.tree.leaves(tree) if hasattr(x, 'dtype')]
  return (int(sum(np.size(x) for x in leaves)), int(sum(np.size(x) * np.dtype(x.dtype).itemsize for x in leaves)))


def run(runtime: Runtime, state: TrainState, checkpointer: StateCheckpointer, *, model_dir: str, batches: Batches,
        batch_size: int, schedule: Schedule, evaluate: Evaluate | None = None, progress_bar: bool | None = None,
        task_name: str = '', faults: Faults | None = None, on_start: Callable[[], None] | None = None) -> LoopResult:
  """Trains from the newest intact checkpoint in `checkpointer` (or from `state`) to `schedule.train_steps`.

  `batches(skip)` is the seeded stream of this process's numpy batches with the first `skip` dropped;
  `evaluate(trainable)` (None: never) runs every `schedule.eval_period` steps and after the last one; `faults`
  are the tests' (see `Faults`); `on_start()` runs once the checkpoint to resume from passed its checks (batch
  size, tree shapes), before anything is written: a refused resume leaves MODEL_DIR as it was.
  """
  faults = faults or Faults()
  start, position = 0, 0
  restored = checkpointer.restore_latest(state, batch_size=batch_size)
  meta: Mapping[str, Any] = {}
  if restored is not None:
    state, meta = restored
    start, position = meta['step'], meta['data_position']
    log.info('resuming from %s at step %d (%d batches consumed)', model_dir, start, position)
  if on_start is not None:
    on_start()
  if start >= schedule.train_steps:
    log.info('%s is already trained to step %d (TRAIN_STEPS=%d): nothing to do', model_dir, start, schedule.train_steps)
    return LoopResult(start, state)
  stream = batches(position)
  observer = observability.TrainObserver(model_dir, total_steps=schedule.train_steps, start_step=start,
                                         log_period=schedule.log_period, progress_bar=progress_bar)
  checker = _StepChecker(observer, checkpointer, model_dir)
  steps, frozen = runtime.steps, runtime.frozen
  step, preempted, eval_result = start, False, None
  best = _BestSoFar(checkpointer, meta.get('metrics'))
  try:
    with PreemptionGuard() as guard:
      while step < schedule.train_steps:
        batch = next(stream, None)
        if batch is None:
          raise DataError(f'task {task_name!r} ran out of training examples at step {step}')
        batch = faults.batch(step + 1, batch)
        fill = data_lib.batch_stats(batch)
        state, metrics = steps.train_step(state, frozen, steps.shard_batch(batch))
        step, position = step + 1, position + 1
        # Examples per step: this host's rows times the hosts (each feeds the same number of rows).
        checker.push(step, metrics,
                     {'examples': fill['examples'] * jax.process_count(), 'encoder_fill': fill['encoder_fill']})
        if faults.sleep_per_step:
          time.sleep(faults.sleep_per_step)
        last = step == schedule.train_steps
        do_eval = evaluate is not None and (step % schedule.eval_period == 0 or last)
        do_save = step % schedule.checkpoint_period == 0 or last
        preempted = guard.should_stop(step)
        if not (do_eval or do_save or preempted):
          continue
        checker.flush()  # never evaluate or save a state that followed a non-finite step
        eval_result = None
        if do_eval:
          eval_result = evaluate(state.trainable)
          observer.eval(step, eval_result)
          do_save = do_save or best.improves(eval_result)  # see the module docstring
        if do_save or preempted:
          checkpointer.save(step, state, data_position=position, batch_size=batch_size, metrics=eval_result,
                            force=preempted)
          best.saved(eval_result)
        if preempted:
          checkpointer.wait_until_finished()
          observer.message(f'preempted: saved step {step} in {model_dir}; run the same command to resume')
          break
      checker.flush()
  finally:
    checkpointer.wait_until_finished()
    observer.close()
  return LoopResult(step, state, preempted, eval_result)


def host_trainable(state: TrainState) -> Mapping[str, Any]:
  """The trainable tree as numpy on every host (gathered where sharded across hosts)."""
  return jax.tree.map(host.host_value, state.trainable)
