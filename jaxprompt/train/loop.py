"""The prompt-tuning train loop: the `train` entry point behind `jaxprompt train` (gin-configurable).

    frozen T5 (T5X or HF checkpoint, loaded shard by shard) + Prompt + optimizer on a ('data', 'model') mesh
    seqio task -> EncDecFeatureConverter(pack=False) -> BATCH_SIZE / process_count rows per host
    every step: train step; every eval_period: validation loss + task metrics; every checkpoint_period: save

Exact resume: the checkpoint holds the prompt, optimizer state, step, rng and the number of batches consumed;
a restarted run restores them and skips that many batches of the (seeded, deterministic) stream, so it ends
with the same prompt, bit for bit, as a run that was never interrupted. SIGTERM (preemption) saves the
current step and returns normally (exit 0). A non-finite loss stops training with a TrainingError naming the
step; the checkpoints already written are kept and nothing is saved after the bad step.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Mapping

import gin
import jax
import numpy as np
import tensorflow as tf
from jax.experimental import multihost_utils

from jaxprompt.errors import ConfigError, DataError, TrainingError
from jaxprompt.models.config import T5Config
from jaxprompt.models.wrapper import LossConfig
from jaxprompt.methods.initializers import Initializer
from jaxprompt.train import runtime as components
from jaxprompt.data import pipeline as data
from jaxprompt.eval import evaluation as eval_lib
from jaxprompt.train import observability
from jaxprompt.train.checkpoints import PromptCheckpointer, export_prompt
from jaxprompt.train.optim import PromptOptimizer, make_optimizer
from jaxprompt.train.preemption import PreemptionGuard
from jaxprompt.train.step import TrainState, init_train_state
from jaxprompt.commands import validation
from jaxprompt.parallel import host
from jaxprompt.commands import configs

log = logging.getLogger('jaxprompt')
# Not `prompt.npy`: checkpointing reads a directory holding a prompt.npy as one checkpoint step.
FINAL_PROMPT = 'final_prompt.npy'


@dataclasses.dataclass
class TrainResult:
  """How a `train` call ended. `prompt` is the float32 [P, d] prompt at `step`."""
  model_dir: str
  step: int
  prompt: np.ndarray
  preempted: bool = False
  eval_metrics: dict | None = None
  prompt_file: str | None = None


def prompt_to_host(state: TrainState) -> np.ndarray:
  """The [P, d] prompt as float32 numpy on every host (gathered if it is sharded across hosts)."""
  x = state.prompt['prompt']
  if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True), np.float32)
  return np.asarray(host.host_value(x), np.float32)


def _poison(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Debug: NaN loss weights make this step's loss non-finite (same shapes, no recompilation)."""
  return dict(batch, decoder_loss_weights=np.full_like(batch['decoder_loss_weights'], np.nan))


class _StepChecker:
  """Reads each step's metrics one step late (so the host never stalls the device) and stops on NaN/inf."""

  def __init__(self, observer: observability.TrainObserver, checkpointer: PromptCheckpointer, model_dir: str):
    self.observer, self.checkpointer, self.model_dir = observer, checkpointer, model_dir
    self._pending: tuple[int, Any] | None = None

  def push(self, step: int, metrics: Any) -> None:
    self.flush()
    self._pending = (step, metrics)

  def flush(self) -> None:
    if self._pending is None:
      return
    step, metrics = self._pending
    self._pending = None
    host = {k: float(host.host_value(v)) for k, v in metrics.items()}
    if not host.get('finite', 1.0):
      self.checkpointer.wait_until_finished()
      last = self.checkpointer.latest_step()
      kept = (f'the last good checkpoint, step {last}, is kept in {self.model_dir}' if last is not None
              else f'no checkpoint was written to {self.model_dir} yet')
      raise TrainingError(f'non-finite loss at step {step} (loss={host.get("loss")}, grad_norm='
                          f'{host.get("grad_norm")}): training stopped; {kept}; lower LEARNING_RATE or check '
                          'the data')
    self.observer.step(step, host)


def _validate(model_dir, model_config, initial_checkpoint_path, mixture_or_task_name, task_feature_lengths,
              train_steps, **positive) -> tuple[str, T5Config, str, str, dict[str, int]]:
  model_dir = validation.require(model_dir, 'MODEL_DIR', "\"'/path/to/model_dir'\"")
  config = validation.require(model_config, 'MODEL_CONFIG', "\"@jaxprompt.model_config()\" (a models/*.gin)")
  if not isinstance(config, T5Config):
    raise ConfigError(f'train.model_config must be a T5Config (e.g. @jaxprompt.model_config()), got {config!r}')
  ckpt = validation.require(initial_checkpoint_path, 'INITIAL_CHECKPOINT_PATH', "\"'/path/to/checkpoint'\"")
  name = validation.require(mixture_or_task_name, 'MIXTURE_OR_TASK_NAME', "\"'my_task'\"")
  lengths = validation.check_feature_lengths(task_feature_lengths)
  validation.require(train_steps, 'TRAIN_STEPS', '1000')
  validation.check_positive(TRAIN_STEPS=train_steps, **positive)
  return os.fspath(model_dir), config, os.fspath(ckpt), name, lengths


@gin.configurable(module='jaxprompt')
def train(model_dir: str | None = None, *, model_config: T5Config | None = None,
          initial_checkpoint_path: str | None = None, mixture_or_task_name: str | None = None,
          task_feature_lengths: Mapping[str, int] | None = None, train_steps: int | None = None,
          batch_size: int = 32, prompt_length: int = 100, prompt_init: Initializer | None = None,
          prompt_combine: str = 'prefix', optimizer: PromptOptimizer | None = None, loss: LossConfig | None = None,
          model_parallel: int = 1, num_microbatches: int = 1, seed: int = 0, train_split: str = 'train',
          eval_split: str | None = 'validation', eval_period: int = 1000, eval_metrics: bool = True,
          eval_batch_size: int | None = None, eval_max_examples: int | None = None,
          checkpoint_period: int = 1000, keep_checkpoints: int = 3, best_metric: str | None = None,
          best_mode: str = 'max', log_period: int = 100, progress_bar: bool | None = None,
          debug_poison_loss_at_step: int | None = None, debug_sleep_per_step: float = 0.0) -> TrainResult:
  """Tunes a prompt on a frozen T5, resuming from `model_dir`'s latest checkpoint if there is one.

  Args (the gin macros in brackets are what gin_configs/runs/prompt_tuning.gin binds):
    model_dir: where checkpoints, metrics, TensorBoard events and the final `final_prompt.npy` go [MODEL_DIR].
    model_config: the frozen model's T5Config [@jaxprompt.model_config(), set by models/*.gin].
    initial_checkpoint_path: T5X checkpoint (any format, or a model dir) or HF safetensors folder
      [INITIAL_CHECKPOINT_PATH].
    mixture_or_task_name: seqio task or mixture [MIXTURE_OR_TASK_NAME]; task_feature_lengths
      {'inputs': n, 'targets': m} [TASK_FEATURE_LENGTHS].
    train_steps: total optimizer steps, counting those of a resumed run [TRAIN_STEPS].
    batch_size: global batch, split over processes [BATCH_SIZE]; prompt_length [PROMPT_LENGTH];
    prompt_init: an initialiser from jaxprompt.methods [PROMPT_INIT]; None = the module's U(-0.5, 0.5).
    optimizer: @jaxprompt.make_optimizer() (Adafactor, lr 0.3 constant by default) [LEARNING_RATE inside].
    model_parallel: devices per model replica (the 'model' mesh axis).
    seed: seeds the prompt initialisation, the rng in the state and the data order [RANDOM_SEED].
    eval_split: split scored every `eval_period` steps and at the end (None: no eval); `eval_metrics` adds
      the task's metrics (rank classification / decoding) to the loss; `eval_max_examples` caps the split.
    checkpoint_period, keep_checkpoints, best_metric ('accuracy', 'loss', ...), best_mode: retention.
    log_period: steps between log lines / TensorBoard points; progress_bar: None = when stderr is a tty.
    debug_poison_loss_at_step / debug_sleep_per_step: test hooks (a NaN loss at that step; a pause per step).
  """
  model_dir, config, ckpt_path, task_name, lengths = _validate(
      model_dir, model_config, initial_checkpoint_path, task_name_or(mixture_or_task_name), task_feature_lengths,
      train_steps, BATCH_SIZE=batch_size, PROMPT_LENGTH=prompt_length, eval_period=eval_period,
      checkpoint_period=checkpoint_period, keep_checkpoints=keep_checkpoints, log_period=log_period,
      eval_batch_size=eval_batch_size, eval_max_examples=eval_max_examples)
  checkpointer = PromptCheckpointer(model_dir, keep=keep_checkpoints, best_metric=best_metric,
                                    best_mode=best_mode)  # fails now if MODEL_DIR is not writable
  _save_gin_config(model_dir)
  provider = data.get_provider(task_name)
  data.check_split(provider, train_split)
  eval_sets = (eval_lib.prepare_eval(provider, eval_split, lengths, max_examples=eval_max_examples,
                                     rank_classification=eval_metrics) if eval_split else [])
  vocab = data.targets_vocabulary(provider)
  configs.check_vocabulary(vocab, config, task_name)
  eos_id = vocab.eos_id
  data_parallel = components.data_parallel_size(model_parallel)
  host_batch = data.host_batch_size(batch_size, data_parallel)
  eval_batch = eval_batch_size or batch_size
  data.host_batch_size(eval_batch, data_parallel)
  optimizer = optimizer or make_optimizer()
  runtime = components.build_runtime(config, prompt_length, ckpt_path, lengths, optimizer=optimizer,
                                     combine=prompt_combine, loss=loss, model_parallel=model_parallel,
                                     num_microbatches=num_microbatches, eos_id=eos_id)

  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(seed))
  prompt = runtime.model.init_prompt(init_rng, runtime.frozen, prompt_init)
  state = runtime.steps.place_state(init_train_state(prompt, optimizer, state_rng))
  start, position = 0, 0
  if checkpointer.latest_step() is not None:
    state, meta = checkpointer.restore(state)
    start, position = meta['step'], meta['data_position']
    log.info('resuming from %s at step %d (%d batches consumed)', model_dir, start, position)
  if start >= train_steps:
    log.info('%s is already trained to step %d (TRAIN_STEPS=%d): nothing to do', model_dir, start, train_steps)
    checkpointer.close()
    return _finish(model_dir, start, state, export=False)

  batches = data.train_batches(data.train_dataset(provider, lengths, train_split, host_batch, seed), skip=position)
  observer = observability.TrainObserver(model_dir, total_steps=train_steps, start_step=start,
                                         log_period=log_period, progress_bar=progress_bar)
  checker = _StepChecker(observer, checkpointer, model_dir)
  fns = eval_lib.ModelFns(runtime) if eval_split else None
  step, preempted, eval_result = start, False, None
  try:
    with PreemptionGuard() as guard:
      while step < train_steps:
        batch = next(batches, None)
        if batch is None:
          raise DataError(f'task {task_name!r} split {train_split!r} ran out of examples at step {step}')
        if debug_poison_loss_at_step is not None and step + 1 == debug_poison_loss_at_step:
          batch = _poison(batch)
        state, metrics = runtime.steps.train_step(state, runtime.frozen, runtime.steps.shard_batch(batch))
        step, position = step + 1, position + 1
        checker.push(step, metrics)
        if debug_sleep_per_step:
          time.sleep(debug_sleep_per_step)
        do_eval = bool(eval_split) and (step % eval_period == 0 or step == train_steps)
        do_save = step % checkpoint_period == 0 or step == train_steps
        preempted = guard.should_stop(step)
        if not (do_eval or do_save or preempted):
          continue
        checker.flush()  # never evaluate or save a state that followed a non-finite step
        eval_result = None
        if do_eval:
          eval_result, _ = eval_lib.evaluate_sets(fns, state.prompt, eval_sets, eval_batch,
                                                  task_metrics=eval_metrics)
          observer.eval(step, eval_result)
        checkpointer.save(step, state, data_position=position, metrics=eval_result, force=preempted)
        if preempted:
          checkpointer.wait_until_finished()
          observer.message(f'preempted: saved step {step} in {model_dir}; run the same command to resume')
          break
      checker.flush()
  finally:
    checkpointer.wait_until_finished()
    checkpointer.close()
    observer.close()
  return _finish(model_dir, step, state, preempted=preempted, eval_metrics=eval_result,
                 export=not preempted)


def _save_gin_config(model_dir: str) -> None:
  """The full gin config of the run, for the record (t5x writes the same kind of file)."""
  text = gin.config_str()
  if jax.process_index() == 0 and text.strip():
    with tf.io.gfile.GFile(os.path.join(model_dir, 'config.gin'), 'w') as f:
      f.write(text)


def task_name_or(name: Any) -> Any:
  """MIXTURE_OR_TASK_NAME may be bound to a Task object (e.g. `@jaxprompt.data.register_file_task()`)."""
  return getattr(name, 'name', name)


def _finish(model_dir: str, step: int, state: TrainState, *, preempted: bool = False,
            eval_metrics: dict | None = None, export: bool = True) -> TrainResult:
  """The result; on completion process 0 also writes MODEL_DIR/final_prompt.npy."""
  prompt = prompt_to_host(state)
  path = os.path.join(model_dir, FINAL_PROMPT)
  if export and jax.process_index() == 0:
    export_prompt(prompt, path)
  exported = export or (not preempted and tf.io.gfile.exists(path))  # an earlier run's, when nothing was left to do
  return TrainResult(model_dir, step, prompt, preempted, eval_metrics, path if exported else None)
