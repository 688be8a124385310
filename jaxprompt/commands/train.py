"""`jaxprompt train`: the gin entry points `jaxprompt.train` (a tuning method on a frozen model; prompt tuning
by default) and `jaxprompt.train_model` (model tuning: every weight, or pretraining from scratch). Both run
the one loop of `jaxprompt.train.loop`. A method on a frozen model records that model's fingerprint
(`jaxprompt.models.fingerprint`) in every checkpoint step and beside every `final_*` file."""
from __future__ import annotations

import dataclasses
import json
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
from jaxprompt.commands.groups import CheckpointConfig, DataConfig, EvalConfig, ModelSource, Schedule
from jaxprompt.data import buckets
from jaxprompt.data import pipeline as data_lib
from jaxprompt.errors import ConfigError, TrainingError
from jaxprompt.eval import evaluation as eval_lib
from jaxprompt.formats import fingerprint_files, macros, validation
from jaxprompt.formats.keys import PROMPT_FILE, PROMPT_KEY, RUN_CONFIG_FILE
from jaxprompt.formats.npy_io import write_npy, write_npz
from jaxprompt.methods.base import Method
from jaxprompt.methods.model_tuning import model_tuning
from jaxprompt.methods.prompt_tuning import prompt_tuning
from jaxprompt.models import fingerprint as fingerprint_lib
from jaxprompt.models.base import LossConfig, ModelConfig
from jaxprompt.parallel import host
from jaxprompt.runtime import finite
from jaxprompt.runtime import runtime as runtime_lib
from jaxprompt.runtime.optim import Optimizer, make_optimizer
from jaxprompt.train import loop
from jaxprompt.train.checkpoints import StateCheckpointer

# The method's inference files (`Method.numpy_copy` names) with this prefix: final_prompt.npy, final_prefix.npz.
# Not `prompt.npy`: checkpoint readers take a directory holding a prompt.npy for one checkpoint step.
FINAL_PREFIX = 'final_'
FINAL_PROMPT = FINAL_PREFIX + PROMPT_FILE
FINAL_CHECKPOINT = 'checkpoint'  # model tuning's `final_files` key: the T5X checkpoint it writes
MethodFactory = Callable[[ModelConfig, int], Method]
FAULTS_ENV = 'JAXPROMPT_TEST_FAULTS'  # see `injected_faults`


@dataclasses.dataclass
class TrainResult:
  """How a training run ended. `trainable` is the method's tree on the host at `step`; `inference` its
  inference form (`Method.inference`: a reparameterised method's computed prompt or prefix).

  `final_files` names what the run wrote last, by file name: the method's inference file ({'prompt.npy':
  MODEL_DIR/final_prompt.npy}, {'prefix.npz': .../final_prefix.npz}, ...) or model tuning's T5X checkpoint
  ({'checkpoint': MODEL_DIR/checkpoint_<step>}); empty when the run was preempted. `prompt_file` is the one of
  them that `--prompt_file` takes (any method's file; None for model tuning).
  """
  model_dir: str
  step: int
  trainable: Mapping[str, Any]
  preempted: bool = False
  eval_metrics: dict | None = None
  exported: str | None = None  # the first of `final_files` (kept for callers that read it)
  inference: Mapping[str, Any] | None = None
  final_files: Mapping[str, str] = dataclasses.field(default_factory=dict)
  prompt_file: str | None = None

  @property
  def prompt(self) -> np.ndarray | None:
    """The float32 [P, d] input prompt (prompt tuning, P-tuning; None for methods without one)."""
    tree = self.inference if self.inference is not None else self.trainable
    value = tree.get(PROMPT_KEY) if isinstance(tree, Mapping) else None
    return None if value is None else np.asarray(value, np.float32)


def _save_gin_config(model_dir: str) -> None:
  """The full gin config of the run, for the record (t5x writes the same kind of file)."""
  text = gin.config_str()
  if jax.process_index() == 0 and text.strip():
    with tf.io.gfile.GFile(os.path.join(model_dir, RUN_CONFIG_FILE), 'w') as f:
      f.write(text)


def injected_faults() -> loop.Faults | None:
  """The faults the test suite injects into a run through the environment (`JAXPROMPT_TEST_FAULTS`, JSON of
  `loop.Faults` fields, e.g. '{"sleep_per_step": 1.0}'); None in every other run."""
  text = os.environ.get(FAULTS_ENV, '').strip()
  if not text:
    return None
  try:
    return loop.Faults(**json.loads(text))
  except (ValueError, TypeError) as e:
    fields = [f.name for f in dataclasses.fields(loop.Faults)]
    raise ConfigError(f'{FAULTS_ENV}={text!r} must be a JSON object of {fields} (a test setting; unset it)') from e


def run_training(model_dir: Any, *, method: MethodFactory, model: ModelSource, data: DataConfig, schedule: Schedule,
                 evaluation: EvalConfig, checkpoints: CheckpointConfig, optimizer: Optimizer | None,
                 loss: LossConfig | None, seed: int, num_microbatches: int, progress_bar: bool | None,
                 checkpoint_required: bool = True) -> tuple[loop.LoopResult, runtime_lib.Runtime]:
  """Checks what the groups leave to the command, builds the runtime and runs the loop (both entry points)."""
  model_dir = os.fspath(validation.require(model_dir, 'MODEL_DIR', "\"'/path/to/model_dir'\""))
  macros.check(MODEL_DIR=model_dir, METHOD=method, RANDOM_SEED=seed)
  checkpoint_path = model.require_checkpoint() if checkpoint_required else model.checkpoint
  task_name, lengths, split = data.require_task(), data.task_feature_lengths, data.split or 'train'
  if data.max_examples is not None:
    raise ConfigError('jaxprompt.DataConfig.max_examples caps what eval / infer read; training reads its whole '
                      'split (EVAL_MAX_EXAMPLES caps its evaluation)')
  faults = injected_faults()
  # What a configuration can get wrong fails before MODEL_DIR exists (the checkpointer below makes it).
  family = model.family
  provider = data_lib.get_provider(task_name, model.vocabulary, family)
  vocab = data_lib.task_vocabulary(provider)
  configs.check_vocabulary(vocab, model.config, task_name)
  # The method first: its configuration errors (e.g. class labels the task lacks) come before data errors.
  tuning = method(model.config, vocab.eos_id)
  prompt_slots = tuning.packing_slots if data.pack else 0
  data_lib.check_split(provider, split)
  # A file task's truncation is said now; a stream's at the first evaluation, or when a run without one ends.
  count = data_lib.training_count(provider, lengths, split)
  eval_sets = (eval_lib.prepare_eval(provider, evaluation.split, lengths, max_examples=evaluation.max_examples,
                                     rank_classification=evaluation.task_metrics, task_names=tuning.task_names,
                                     family=family) if evaluation.split else [])
  data_parallel = runtime_lib.data_parallel_size(model.model_parallel)
  host_batch = data_lib.host_batch_size(data.batch_size, data_parallel)
  eval_batch = evaluation.batch_size or data.batch_size
  data_lib.host_batch_size(eval_batch, data_parallel)
  checkpointer = StateCheckpointer(model_dir, keep=checkpoints.keep, best_metric=checkpoints.best_metric,
                                   best_mode=checkpoints.best_mode)  # fails now if MODEL_DIR is not writable
  checkpointer.numpy_copy = lambda state: tuning.numpy_copy(state.trainable)
  try:
    optimizer = optimizer or make_optimizer()
    runtime = runtime_lib.build_runtime(model.config, tuning, checkpoint_path, lengths, optimizer=optimizer, loss=loss,
                                        model_parallel=model.model_parallel, num_microbatches=num_microbatches,
                                        eos_id=vocab.eos_id, seed=seed)
    runtime.fingerprint = model_fingerprint(runtime, vocab)
    checkpointer.use_model(runtime.fingerprint)  # refuses to resume on another model before anything is written
    state = loop.initial_state(runtime, optimizer, seed)

    def batches(skip: int):
      ds = data_lib.train_dataset(provider, lengths, split, host_batch, seed, pack=data.pack, prompt_slots=prompt_slots,
                                  task_names=tuning.task_names, count=count, family=family)
      return buckets.bucketed(data_lib.train_batches(ds, skip=skip, family=family), data.length_buckets,
                              name='train step', agree=host.global_max)

    evaluate = (loop_evaluation(runtime, data.length_buckets, eval_sets, eval_batch, evaluation.task_metrics,
                                before=None if count is None else count.report_once) if evaluation.split else None)
    result = loop.run(runtime, state, checkpointer, model_dir=model_dir, batches=batches, batch_size=data.batch_size,
                      schedule=schedule, evaluate=evaluate, progress_bar=progress_bar, task_name=task_name,
                      faults=faults, on_start=lambda: _save_gin_config(model_dir))
    if count is not None:
      count.report_once()
  finally:
    checkpointer.close()
  return result, runtime


def loop_evaluation(runtime: runtime_lib.Runtime, bucket_set: buckets.LengthBuckets,
                    eval_sets: Sequence[eval_lib.EvalSet], batch_size: int, task_metrics: bool,
                    before: Callable[[], None] | None = None) -> loop.Evaluate:
  """The loop's `evaluate(trainable)`: the validation sets' loss and metrics (the loop itself knows no eval);
  `before()` runs before each evaluation."""
  fns = eval_lib.ModelFns(runtime, length_buckets=bucket_set)

  def evaluate(trainable: Any) -> dict[str, Any]:
    if before is not None:
      before()
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
def train(model_dir: str | None = None, *, model: ModelSource | None = None, data: DataConfig | None = None,
          schedule: Schedule | None = None, evaluation: EvalConfig | None = None,
          checkpoints: CheckpointConfig | None = None, method: MethodFactory = prompt_tuning,
          optimizer: Optimizer | None = None, loss: LossConfig | None = None, seed: int = 0, num_microbatches: int = 1,
          progress_bar: bool | None = None) -> TrainResult:
  """Tunes a method (default: a prompt) on a frozen model (T5 or a causal LM), resuming from `model_dir`'s newest
  intact checkpoint.

  Args (the gin macros in brackets are what gin_configs/runs/prompt_tuning.gin binds; a group left None is
  built from its own gin bindings, see `jaxprompt.commands.groups`):
    model_dir: checkpoints, metrics, TensorBoard events and the final `final_prompt.npy` [MODEL_DIR].
    model: the frozen model [MODEL_CONFIG, INITIAL_CHECKPOINT_PATH, MODEL_PARALLEL].
    data: the training examples [MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS, BATCH_SIZE, PACK, LENGTH_BUCKETS];
      its split defaults to 'train'. A resumed run must keep BATCH_SIZE. With PACK, each packed example gets
      its own copy of the prompt in front; examples per step and the encoder fill are logged.
    schedule: train steps, counting a resumed run's, and the eval / checkpoint / log periods [TRAIN_STEPS,
      EVAL_PERIOD, CHECKPOINT_PERIOD].
    evaluation: the split scored every eval period and at the end [EVAL_SPLIT; None: no evaluation].
    checkpoints: how many checkpoints stay, and the best one by a metric.
    method: a factory `(config, eos_id) -> Method` [METHOD, set by methods/*.gin]; default prompt tuning
      (`jaxprompt.methods.prompt_tuning`: PROMPT_LENGTH rows, PROMPT_INIT).
    optimizer: @jaxprompt.make_optimizer() (Adafactor, lr 0.3 constant by default) [LEARNING_RATE inside].
    seed: seeds the method's initialisation, the rng in the state and the data order [RANDOM_SEED].
    num_microbatches: gradient accumulation within a step; progress_bar: None = when stderr is a tty.
  """
  result, runtime = run_training(model_dir, method=method, model=model or ModelSource(), data=data or DataConfig(),
                                 schedule=schedule or Schedule(), evaluation=evaluation or EvalConfig(),
                                 checkpoints=checkpoints or CheckpointConfig(), optimizer=optimizer, loss=loss,
                                 seed=seed, num_microbatches=num_microbatches, progress_bar=progress_bar)
  trainable = loop.host_trainable(result.state)
  _, inference = runtime.method.inference(trainable)
  final = {} if result.preempted else export_final(runtime.method, trainable, os.fspath(model_dir),
                                                   fingerprint=runtime.fingerprint)
  exported = next(iter(final.values()), None)
  return TrainResult(os.fspath(model_dir), result.step, trainable, result.preempted, result.eval_metrics, exported,
                     jax.tree.map(np.asarray, inference), final_files=final, prompt_file=exported)


def export_final(method: Method, trainable: Mapping[str, Any], model_dir: str, *,
                 fingerprint: Mapping[str, Any] | None = None) -> dict[str, str]:
  """Writes the method's inference files as `final_<name>` in `model_dir` (process 0), each with its
  `<file>.fingerprint.json` when `fingerprint` (the frozen model) is given; returns {name: path} (empty for a
  method without files). Files holding NaN / inf are a TrainingError, and the final files already in `model_dir`
  are kept."""
  files = method.numpy_copy(trainable) or {}
  if bad := finite.non_finite_leaves(files):
    raise TrainingError(f'not writing the final files in {model_dir}: NaN/inf in {", ".join(bad)}; the final '
                        'files already there are kept (lower LEARNING_RATE)')
  paths = {}
  for name, value in files.items():
    path = os.path.join(model_dir, FINAL_PREFIX + name)
    if jax.process_index() == 0:
      if fingerprint is not None:  # first, as in checkpoint steps: a final file always says its model
        fingerprint_files.write(fingerprint_files.sidecar_path(path), fingerprint)
      (write_npz if isinstance(value, Mapping) else write_npy)(value, path)
    paths[name] = path
  return paths


@gin.configurable(module='jaxprompt')
def train_model(model_dir: str | None = None, *, model: ModelSource | None = None, data: DataConfig | None = None,
                schedule: Schedule | None = None, evaluation: EvalConfig | None = None,
                checkpoints: CheckpointConfig | None = None, optimizer: Optimizer | None = None,
                loss: LossConfig | None = None, seed: int = 0, progress_bar: bool | None = None,
                save_checkpoint: bool = True, checkpoint_dtype: str | None = None) -> TrainResult:
  """Model tuning: trains every weight of a T5 with the same loop and groups as `train` (and resumes the same way).

  A model without a checkpoint (`model.checkpoint` None) starts from a random init seeded by `seed`:
  pretraining. `checkpoints` default to the newest one only (each holds the whole network and its optimizer
  state). `save_checkpoint` writes the result as a T5X checkpoint `model_dir/checkpoint_<train_steps>` (readable
  as INITIAL_CHECKPOINT_PATH) in `checkpoint_dtype` (default: the training dtype).
  """
  result, _ = run_training(model_dir, method=model_tuning, model=model or ModelSource(), data=data or DataConfig(),
                           schedule=schedule or Schedule(), evaluation=evaluation or EvalConfig(),
                           checkpoints=checkpoints or CheckpointConfig(keep=1), optimizer=optimizer, loss=loss,
                           seed=seed, num_microbatches=1, progress_bar=progress_bar, checkpoint_required=False)
  params = loop.host_trainable(result.state)
  checkpoint = None
  if save_checkpoint and not result.preempted:
    dtype = None if checkpoint_dtype is None else jnp.dtype(checkpoint_dtype)
    checkpoint = t5x_writer.save_t5x_checkpoint(params, os.fspath(model_dir), result.step, dtype=dtype, overwrite=True)
  return TrainResult(os.fspath(model_dir), result.step, params, result.preempted, result.eval_metrics, checkpoint,
                     final_files={} if checkpoint is None else {FINAL_CHECKPOINT: checkpoint})
