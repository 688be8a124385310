"""`jaxprompt train`: the gin entry points `jaxprompt.train` (a tuning method on a frozen model; prompt tuning
by default) and `jaxprompt.train_model` (model tuning: every weight, or pretraining from scratch). Both run
the one loop of `jaxprompt.train.loop`. A method on a frozen model records that model's fingerprint
(`jaxprompt.models.fingerprint`) in every checkpoint step and beside every `final_*` file."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from jaxprompt.checkpoints import t5x_writer
from jaxprompt.commands import configs
from jaxprompt.data import buckets
from jaxprompt.data import pipeline as data
from jaxprompt.eval import evaluation as eval_lib
from jaxprompt.formats import fingerprint_files, validation
from jaxprompt.formats.keys import PROMPT_FILE, PROMPT_KEY
from jaxprompt.formats.npy_io import write_npy, write_npz
from jaxprompt.methods.base import Method
from jaxprompt.methods.model_tuning import model_tuning
from jaxprompt.methods.prompt_tuning import prompt_tuning
from jaxprompt.models import fingerprint as fingerprint_lib
from jaxprompt.models.config import T5Config
from jaxprompt.models.wrapper import LossConfig
from jaxprompt.parallel import host
from jaxprompt.runtime import runtime as runtime_lib
from jaxprompt.runtime.optim import Optimizer, make_optimizer
from jaxprompt.train import loop
from jaxprompt.train.checkpoints import StateCheckpointer

# The method's inference files (`Method.numpy_copy` names) with this prefix: final_prompt.npy, final_prefix.npz.
# Not `prompt.npy`: checkpoint readers take a directory holding a prompt.npy for one checkpoint step.
FINAL_PREFIX = 'final_'
FINAL_PROMPT = FINAL_PREFIX + PROMPT_FILE
MethodFactory = Callable[[T5Config, int], Method]


@dataclasses.dataclass
class TrainResult:
  """How a training run ended. `trainable` is the method's tree on the host at `step`; `inference` its
  inference form (`Method.inference`: a reparameterised method's computed prompt or prefix)."""
  model_dir: str
  step: int
  trainable: Mapping[str, Any]
  preempted: bool = False
  eval_metrics: dict | None = None
  exported: str | None = None  # final_prompt.npy / final_prefix.npz ..., or the T5X checkpoint of model tuning
  inference: Mapping[str, Any] | None = None

  @property
  def prompt(self) -> np.ndarray | None:
    """The float32 [P, d] input prompt (prompt tuning, P-tuning; None for methods without one)."""
    tree = self.inference if self.inference is not None else self.trainable
    value = tree.get(PROMPT_KEY) if isinstance(tree, Mapping) else None
    return None if value is None else np.asarray(value, np.float32)

  @property
  def prompt_file(self) -> str | None:
    return self.exported if self.prompt is not None else None


def _save_gin_config(model_dir: str) -> None:
  """The full gin config of the run, for the record (t5x writes the same kind of file)."""
  text = gin.config_str()
  if jax.process_index() == 0 and text.strip():
    with tf.io.gfile.GFile(os.path.join(model_dir, 'config.gin'), 'w') as f:
      f.write(text)


def run_training(*, method: MethodFactory, model_dir: Any, model_config: Any, initial_checkpoint_path: Any,
                 mixture_or_task_name: Any, task_feature_lengths: Any, train_steps: Any, batch_size: int,
                 optimizer: Optimizer | None, loss: LossConfig | None, model_parallel: int, num_microbatches: int,
                 seed: int, train_split: str, eval_split: str | None, eval_period: int, eval_metrics: bool,
                 eval_batch_size: int | None, eval_max_examples: int | None, checkpoint_period: int,
                 keep_checkpoints: int, best_metric: str | None, best_mode: str, log_period: int,
                 progress_bar: bool | None, pack: bool = False, length_buckets: Any = buckets.DEFAULT,
                 checkpoint_required: bool = True, **debug: Any) -> tuple[loop.LoopResult, runtime_lib.Runtime]:
  """Validates the arguments, builds the runtime and runs the loop (shared by both entry points)."""
  model_dir = os.fspath(validation.require(model_dir, 'MODEL_DIR', "\"'/path/to/model_dir'\""))
  config, checkpoint_path, task_name, lengths = configs.check_common(model_config, initial_checkpoint_path,
                                                                     mixture_or_task_name, task_feature_lengths,
                                                                     checkpoint_required=checkpoint_required)
  validation.require(train_steps, 'TRAIN_STEPS', '1000')
  validation.check_positive(TRAIN_STEPS=train_steps, BATCH_SIZE=batch_size, eval_period=eval_period,
                            checkpoint_period=checkpoint_period, keep_checkpoints=keep_checkpoints,
                            log_period=log_period, eval_batch_size=eval_batch_size, eval_max_examples=eval_max_examples)
  bucket_set = buckets.LengthBuckets.from_spec(length_buckets)
  checkpointer = StateCheckpointer(model_dir, keep=keep_checkpoints, best_metric=best_metric,
                                   best_mode=best_mode)  # fails now if MODEL_DIR is not writable
  try:
    provider = data.get_provider(task_name)
    vocab = data.targets_vocabulary(provider)
    configs.check_vocabulary(vocab, config, task_name)
    # The method first: its configuration errors (e.g. class labels the task lacks) come before data errors.
    tuning = method(config, vocab.eos_id)
    prompt_slots = tuning.packing_slots if pack else 0
    checkpointer.numpy_copy = lambda state: tuning.numpy_copy(state.trainable)
    data.check_split(provider, train_split)
    eval_sets = (eval_lib.prepare_eval(provider, eval_split, lengths, max_examples=eval_max_examples,
                                       rank_classification=eval_metrics, task_names=tuning.task_names)
                 if eval_split else [])
    data_parallel = runtime_lib.data_parallel_size(model_parallel)
    host_batch = data.host_batch_size(batch_size, data_parallel)
    data.host_batch_size(eval_batch_size or batch_size, data_parallel)
    optimizer = optimizer or make_optimizer()
    runtime = runtime_lib.build_runtime(config, tuning, checkpoint_path, lengths, optimizer=optimizer, loss=loss,
                                        model_parallel=model_parallel, num_microbatches=num_microbatches,
                                        eos_id=vocab.eos_id, seed=seed)
    runtime.fingerprint = model_fingerprint(runtime, vocab)
    checkpointer.use_model(runtime.fingerprint)  # refuses to resume on another model before anything is written
    _save_gin_config(model_dir)
    state = loop.initial_state(runtime, optimizer, seed)

    def batches(skip: int):
      ds = data.train_dataset(provider, lengths, train_split, host_batch, seed, pack=pack, prompt_slots=prompt_slots,
                              task_names=tuning.task_names)
      return buckets.bucketed(data.train_batches(ds, skip=skip), bucket_set, name='train step', agree=host.global_max)

    evaluate = (loop_evaluation(runtime, bucket_set, eval_sets, eval_batch_size or batch_size, eval_metrics)
                if eval_split else None)
    result = loop.run(runtime, state, checkpointer, model_dir=model_dir, batches=batches, batch_size=batch_size,
                      schedule=loop.Schedule(train_steps, eval_period, checkpoint_period, log_period),
                      evaluate=evaluate, progress_bar=progress_bar, task_name=task_name, **debug)
  finally:
    checkpointer.close()
  return result, runtime


def loop_evaluation(runtime: runtime_lib.Runtime, bucket_set: buckets.LengthBuckets,
                    eval_sets: Sequence[eval_lib.EvalSet], batch_size: int, task_metrics: bool) -> loop.Evaluate:
  """The loop's `evaluate(trainable)`: the validation sets' loss and metrics (the loop itself knows no eval)."""
  fns = eval_lib.ModelFns(runtime, length_buckets=bucket_set)

  def evaluate(trainable: Any) -> dict[str, Any]:
    metrics, _ = eval_lib.evaluate_sets(fns, trainable, eval_sets, batch_size, task_metrics=task_metrics)
    return metrics

  return evaluate


def model_fingerprint(runtime: runtime_lib.Runtime, vocabulary: Any) -> dict[str, Any] | None:
  """The fingerprint of the frozen model a method trains on (one gather of its embedding rows, a collective on a
  pod); None for model tuning, which trains the network itself."""
  if runtime.method is None or runtime.method.trains_network:
    return None
  return fingerprint_lib.model_fingerprint(runtime.config, vocabulary, runtime.network['token_embedder']['embedding'])


@gin.configurable(module='jaxprompt')
def train(model_dir: str | None = None, *, model_config: T5Config | None = None,
          initial_checkpoint_path: str | None = None, mixture_or_task_name: str | None = None,
          task_feature_lengths: Mapping[str, int] | None = None, train_steps: int | None = None, batch_size: int = 32,
          method: MethodFactory = prompt_tuning, optimizer: Optimizer | None = None, loss: LossConfig | None = None,
          model_parallel: int = 1, num_microbatches: int = 1, seed: int = 0, train_split: str = 'train',
          eval_split: str | None = 'validation', eval_period: int = 1000, eval_metrics: bool = True,
          eval_batch_size: int | None = None, eval_max_examples: int | None = None, checkpoint_period: int = 1000,
          keep_checkpoints: int = 3, best_metric: str | None = None, best_mode: str = 'max', log_period: int = 100,
          progress_bar: bool | None = None, pack: bool = False, length_buckets: Any = buckets.DEFAULT,
          debug_poison_loss_at_step: int | None = None, debug_sleep_per_step: float = 0.0) -> TrainResult:
  """Tunes a method (default: a prompt) on a frozen T5, resuming from `model_dir`'s newest intact checkpoint.

  Args (the gin macros in brackets are what gin_configs/runs/prompt_tuning.gin binds):
    model_dir: checkpoints, metrics, TensorBoard events and the final `final_prompt.npy` [MODEL_DIR].
    model_config: the frozen model's T5Config [@jaxprompt.model_config(), set by models/*.gin].
    initial_checkpoint_path: T5X checkpoint (any format, or a model dir) or HF safetensors folder
      [INITIAL_CHECKPOINT_PATH].
    mixture_or_task_name: seqio task or mixture [MIXTURE_OR_TASK_NAME]; task_feature_lengths
      {'inputs': n, 'targets': m} [TASK_FEATURE_LENGTHS].
    train_steps: total optimizer steps, counting those of a resumed run [TRAIN_STEPS].
    batch_size: global batch, split over processes [BATCH_SIZE]. A resumed run must use the same.
    method: a factory `(config, eos_id) -> Method` [METHOD, set by methods/*.gin]; default prompt tuning
      (`jaxprompt.methods.prompt_tuning`: PROMPT_LENGTH rows, PROMPT_INIT).
    optimizer: @jaxprompt.make_optimizer() (Adafactor, lr 0.3 constant by default) [LEARNING_RATE inside].
    model_parallel: devices per model replica (the 'model' mesh axis).
    seed: seeds the method's initialisation, the rng in the state and the data order [RANDOM_SEED].
    eval_split: split scored every `eval_period` steps and at the end (None: no eval); `eval_metrics` adds
      the task's metrics (rank classification / decoding) to the loss; `eval_max_examples` caps the split.
    checkpoint_period, keep_checkpoints, best_metric ('accuracy', 'loss', ...), best_mode: retention.
    log_period: steps between log lines / TensorBoard points; progress_bar: None = when stderr is a tty.
    pack: several examples per row (seqio packing), each with its own copy of the prompt in front [PACK];
      the examples per step and the fraction of non-padding encoder positions are logged.
    length_buckets: cut each batch to the smallest bucket holding its longest row (`jaxprompt.data.buckets`:
      a step such as 64, a list of lengths, a dict per 'inputs' / 'targets', or None for fixed-length
      batches) [LENGTH_BUCKETS]; TASK_FEATURE_LENGTHS stays the maximum.
    debug_poison_loss_at_step / debug_sleep_per_step: test hooks (a NaN loss at that step; a pause per step).
  """
  result, runtime = run_training(
      method=method, model_dir=model_dir, model_config=model_config, initial_checkpoint_path=initial_checkpoint_path,
      mixture_or_task_name=mixture_or_task_name, task_feature_lengths=task_feature_lengths, train_steps=train_steps,
      batch_size=batch_size, optimizer=optimizer, loss=loss, model_parallel=model_parallel,
      num_microbatches=num_microbatches, seed=seed, train_split=train_split, eval_split=eval_split,
      eval_period=eval_period, eval_metrics=eval_metrics, eval_batch_size=eval_batch_size,
      eval_max_examples=eval_max_examples, checkpoint_period=checkpoint_period, keep_checkpoints=keep_checkpoints,
      best_metric=best_metric, best_mode=best_mode, log_period=log_period, progress_bar=progress_bar, pack=pack,
      length_buckets=length_buckets, debug_poison_loss_at_step=debug_poison_loss_at_step,
      debug_sleep_per_step=debug_sleep_per_step)
  trainable = loop.host_trainable(result.state)
  _, inference = runtime.method.inference(trainable)
  exported = None if result.preempted else export_final(runtime.method, trainable, os.fspath(model_dir),
                                                        fingerprint=runtime.fingerprint)
  return TrainResult(os.fspath(model_dir), result.step, trainable, result.preempted, result.eval_metrics, exported,
                     jax.tree.map(np.asarray, inference))


def export_final(method: Method, trainable: Mapping[str, Any], model_dir: str, *,
                 fingerprint: Mapping[str, Any] | None = None) -> str | None:
  """Writes the method's inference files as `final_<name>` in `model_dir` (process 0), each with its
  `<file>.fingerprint.json` when `fingerprint` (the frozen model) is given; returns the first path (what
  `--prompt_file` takes), or None for a method without files."""
  paths = []
  for name, value in (method.numpy_copy(trainable) or {}).items():
    path = os.path.join(model_dir, FINAL_PREFIX + name)
    if jax.process_index() == 0:
      if fingerprint is not None:  # first, as in checkpoint steps: a final file always says its model
        fingerprint_files.write(fingerprint_files.sidecar_path(path), fingerprint)
      (write_npz if isinstance(value, Mapping) else write_npy)(value, path)
    paths.append(path)
  return paths[0] if paths else None


@gin.configurable(module='jaxprompt')
def train_model(model_dir: str | None = None, *, model_config: T5Config | None = None, initial_checkpoint_path: str |
                None = None, mixture_or_task_name: Any = None, task_feature_lengths: Mapping[str, int] | None = None,
                train_steps: int | None = None, batch_size: int = 32, optimizer: Optimizer | None = None,
                loss: LossConfig | None = None, model_parallel: int = 1, seed: int = 0, train_split: str = 'train',
                eval_split: str | None = 'validation', eval_period: int = 1000, eval_max_examples: int | None = None,
                eval_batch_size: int | None = None, checkpoint_period: int = 1000, keep_checkpoints: int = 1,
                log_period: int = 100, progress_bar: bool | None = None, save_checkpoint: bool = True,
                checkpoint_dtype: str | None = None, pack: bool = False,
                length_buckets: Any = buckets.DEFAULT) -> TrainResult:
  """Model tuning: trains every weight of a T5 with the same loop as `train` (and resumes the same way).

  `initial_checkpoint_path=None` starts from a random init (seeded by `seed`: pretraining); `pack` packs
  training examples (seqio's `EncDecFeatureConverter(pack=True)`: ~2x fewer pad tokens); `length_buckets` as
  `train`'s;
  `save_checkpoint` writes the result as a T5X checkpoint `model_dir/checkpoint_<train_steps>` (readable as
  INITIAL_CHECKPOINT_PATH) in `checkpoint_dtype` (default: the training dtype).
  """
  result, _ = run_training(method=model_tuning, model_dir=model_dir, model_config=model_config,
                           initial_checkpoint_path=initial_checkpoint_path, mixture_or_task_name=mixture_or_task_name,
                           task_feature_lengths=task_feature_lengths, train_steps=train_steps, batch_size=batch_size,
                           optimizer=optimizer, loss=loss, model_parallel=model_parallel, num_microbatches=1, seed=seed,
                           train_split=train_split, eval_split=eval_split, eval_period=eval_period, eval_metrics=True,
                           eval_batch_size=eval_batch_size, eval_max_examples=eval_max_examples,
                           checkpoint_period=checkpoint_period, keep_checkpoints=keep_checkpoints, best_metric=None,
                           best_mode='max', log_period=log_period, progress_bar=progress_bar, pack=pack,
                           length_buckets=length_buckets, checkpoint_required=False)
  params = loop.host_trainable(result.state)
  checkpoint = None
  if save_checkpoint and not result.preempted:
    dtype = None if checkpoint_dtype is None else jnp.dtype(checkpoint_dtype)
    checkpoint = t5x_writer.save_t5x_checkpoint(params, os.fspath(model_dir), result.step, dtype=dtype, overwrite=True)
  return TrainResult(os.fspath(model_dir), result.step, params, result.preempted, result.eval_metrics, checkpoint)
