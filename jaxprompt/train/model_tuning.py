"""Full-parameter training of a T5 (no prompt): pretraining from scratch and the model-tuning baseline.

The counterpart of `trainer.train` for when every weight is trained. It reuses the prompt trainer's pieces:
the loss of `PromptModel(config, prompt=None)`, the optimizers of `optim.make_optimizer`, the seqio data
stream of `data_pipeline`, the evaluation of `evaluate` (rank classification over a label set, or decoding)
and the progress bar / metric files / curves PNG of `observability`. The result is written as a T5X
checkpoint (`MODEL_DIR/checkpoint_<step>`, see `checkpoints.t5x_writer`), readable by `jaxprompt train` as
INITIAL_CHECKPOINT_PATH. Runs start from scratch (no resume); the optimizer state is not saved.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping

import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprompt.parallel import partitioning
from jaxprompt.checkpoints import t5x_writer
from jaxprompt.errors import ConfigError, DataError, TrainingError
from jaxprompt.models.config import T5Config
from jaxprompt.models.wrapper import LossConfig, PromptModel
from jaxprompt.train import runtime as components
from jaxprompt.data import pipeline as data
from jaxprompt.eval import evaluation as eval_lib
from jaxprompt.train import observability
from jaxprompt.train import step as step_lib
from jaxprompt.train.optim import PromptOptimizer, make_optimizer
from jaxprompt.train.compiled import ShardedSteps
from jaxprompt.commands import validation
from jaxprompt.parallel import host
from jaxprompt.commands import configs

log = logging.getLogger('jaxprompt')
Batch = Mapping[str, jax.Array]


@flax.struct.dataclass
class ModelTrainState:
  """Everything full-parameter training changes. `rng` is uint32 key data (feeds dropout)."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def init_params(config: T5Config, seed: int) -> dict:
  """Freshly initialised T5X-named parameters (the model's own initialisers) on the host."""
  model = PromptModel(config, None)
  ones = jnp.ones((1, 4), jnp.int32)
  boxed = jax.jit(lambda rng: model.module.init(rng, ones, ones, ones, enable_dropout=False))(
      jax.random.PRNGKey(seed))
  return jax.tree.map(np.asarray, nn.meta.unbox(boxed)['params'])


def init_model_state(params: Any, optimizer: PromptOptimizer, rng: jax.Array) -> ModelTrainState:
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)
  return ModelTrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.tx.init(params),
                         rng=rng)


def model_train_step(model: PromptModel, optimizer: PromptOptimizer, state: ModelTrainState,
                     batch: Batch) -> tuple[ModelTrainState, dict]:
  """One update of every parameter with `model.loss_fn` (the prompt trainer's loss, here without a prompt).

  As in `step.train_step`, a non-finite loss or gradient keeps the old state and sets metrics['finite'].
  """
  if model.prompt is not None:
    raise ConfigError('model_train_step trains a model without a prompt (PromptModel(config, prompt=None))')
  step_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  dropout_rng = step_rng if model.config.dropout_rate > 0 else None
  grad_fn = jax.value_and_grad(lambda params: model.loss_fn(None, params, batch, dropout_rng), has_aux=True)
  (loss, metrics), grads = grad_fn(state.params)
  params, opt_state, grad_norm, finite = step_lib.guarded_update(optimizer, grads, state.opt_state, state.params,
                                                                 loss)
  new_state = step_lib.keep_if_finite(
      ModelTrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=state.rng), state, finite)
  metrics = dict(metrics, loss=loss, grad_norm=grad_norm, param_norm=optax.global_norm(new_state.params),
                 learning_rate=jnp.asarray(optimizer.learning_rate(state.step), jnp.float32), finite=finite)
  return new_state, metrics


def no_prompt_runtime(config: T5Config, params: Any, feature_lengths: Mapping[str, int], *,
                      loss: LossConfig | None = None, eos_id: int = 1) -> components.Runtime:
  """A `Runtime` of the model WITHOUT a prompt (params placed on a one-replica-per-device mesh), for
  `evaluate.ModelFns` / `evaluate.evaluate_provider` with `prompt=None`."""
  model = PromptModel(config, None, loss=loss or LossConfig(), eos_id=eos_id)
  mesh = partitioning.create_mesh(1)
  rules = partitioning.prompt_logical_axis_rules()
  steps = ShardedSteps(model, None, mesh, rules, 1, feature_lengths['inputs'], feature_lengths['targets'])
  return components.Runtime(config, model, mesh, rules, steps, steps.place_frozen(params))


def evaluate_params(config: T5Config, params: Any, provider: Any, split: str,
                    feature_lengths: Mapping[str, int], batch_size: int = 32, *, max_examples: int | None = None,
                    eos_id: int = 1) -> dict[str, Any]:
  """Metrics of a model with no prompt on a task / mixture split (the trainer's evaluation code)."""
  runtime = no_prompt_runtime(config, params, feature_lengths, eos_id=eos_id)
  metrics, _ = eval_lib.evaluate_provider(eval_lib.ModelFns(runtime), None, data.get_provider(provider), split,
                                          feature_lengths, batch_size, max_examples=max_examples)
  return metrics


@dataclasses.dataclass
class ModelTuningResult:
  model_dir: str
  step: int
  config: T5Config
  params: Any  # host numpy tree
  eval_metrics: dict | None
  checkpoint: str | None


def _jit_step(runtime: components.Runtime, optimizer: PromptOptimizer, state: ModelTrainState):
  """The train step jitted with params sharded like frozen weights, batch over 'data', the rest replicated."""
  steps, rep = runtime.steps, partitioning.replicated(runtime.mesh)
  state_sh = ModelTrainState(step=rep, params=steps.frozen_shardings,
                             opt_state=jax.tree.map(lambda _: rep, state.opt_state), rng=rep)
  jitted = jax.jit(lambda s, b: model_train_step(runtime.model, optimizer, s, b),
                   in_shardings=(state_sh, steps.batch_sharding), out_shardings=(state_sh, rep), donate_argnums=(0,))

  def run(s, b):
    with partitioning.use_mesh(runtime.mesh, runtime.rules):
      return jitted(s, b)

  return run, state_sh


_PACKED_FEATURES = data.FEATURES + ('encoder_segment_ids', 'decoder_segment_ids')


def train_stream(provider: Any, feature_lengths: Mapping[str, int], split: str, batch_size: int, seed: int,
                 pack: bool = False):
  """The trainer's seeded, endless numpy batches; `pack=True` packs several examples per row (seqio's
  `EncDecFeatureConverter(pack=True)`, segment ids kept) -- fine without a prompt, and ~2x fewer pad tokens."""
  if not pack:
    return data.train_batches(data.train_dataset(provider, feature_lengths, split, batch_size, seed))
  import seqio  # pylint: disable=g-import-not-at-top

  ds = provider.get_dataset(sequence_length=dict(feature_lengths), split=split, use_cached=False, shuffle=True,
                            seed=seed, num_epochs=None)
  ds = seqio.EncDecFeatureConverter(pack=True)(ds, dict(feature_lengths)).batch(batch_size, drop_remainder=True)

  def batches():
    for batch in ds.prefetch(2).as_numpy_iterator():
      out = {k: np.asarray(batch[k]) for k in _PACKED_FEATURES}
      out['decoder_loss_weights'] = out['decoder_loss_weights'].astype(np.float32)
      yield out

  return batches()


def _host_metrics(metrics: Mapping[str, Any], step: int) -> dict[str, float]:
  host = {k: float(host.host_value(v)) for k, v in metrics.items()}
  if not host.get('finite', 1.0):
    raise TrainingError(f'non-finite loss at step {step} (loss={host.get("loss")}, grad_norm='
                        f'{host.get("grad_norm")}): full-parameter training stopped; lower the learning rate')
  return host


@gin.configurable(module='jaxprompt')
def train_model(model_dir: str | None = None, *, model_config: T5Config | None = None,
                initial_checkpoint_path: str | None = None, mixture_or_task_name: Any = None,
                task_feature_lengths: Mapping[str, int] | None = None, train_steps: int | None = None,
                batch_size: int = 32, optimizer: PromptOptimizer | None = None, loss: LossConfig | None = None,
                seed: int = 0, train_split: str = 'train', eval_split: str | None = 'validation',
                eval_period: int = 1000, eval_max_examples: int | None = None, eval_batch_size: int | None = None,
                log_period: int = 100, progress_bar: bool | None = None, save_checkpoint: bool = True,
                checkpoint_dtype: str | None = None, pack: bool = False) -> ModelTuningResult:
  """Trains every parameter of a T5 on a seqio task or mixture; saves a T5X checkpoint at the end.

  Args mirror `trainer.train`; in addition `initial_checkpoint_path=None` starts from a random init (seeded
  by `seed`, pretraining), `pack` packs training examples (see `train_stream`), and `save_checkpoint` /
  `checkpoint_dtype` control the T5X checkpoint written to `model_dir/checkpoint_<train_steps>`. Single
  process (the model-tuning baseline and demo pretraining).
  """
  model_dir = os.fspath(validation.require(model_dir, 'MODEL_DIR', "\"'/path/to/model_dir'\""))
  config = validation.require(model_config, 'MODEL_CONFIG', "\"@jaxprompt.model_config()\"")
  if not isinstance(config, T5Config):
    raise ConfigError(f'train_model.model_config must be a T5Config (e.g. @jaxprompt.model_config()), got {config!r}')
  task = validation.require(mixture_or_task_name, 'MIXTURE_OR_TASK_NAME', "\"'my_task'\"")
  lengths = validation.check_feature_lengths(task_feature_lengths)
  validation.require(train_steps, 'TRAIN_STEPS', '1000')
  validation.check_positive(TRAIN_STEPS=train_steps, BATCH_SIZE=batch_size, eval_period=eval_period,
                            log_period=log_period, eval_max_examples=eval_max_examples,
                            eval_batch_size=eval_batch_size)
  if jax.process_count() > 1:
    raise ConfigError('train_model (full-parameter training) runs in a single process')
  provider = data.get_provider(getattr(task, 'name', task))
  data.check_split(provider, train_split)
  if eval_split:
    data.check_split(provider, eval_split)
  vocab = data.targets_vocabulary(provider)
  configs.check_vocabulary(vocab, config, provider.name)
  os.makedirs(model_dir, exist_ok=True)
  optimizer = optimizer or make_optimizer()

  if initial_checkpoint_path is None:
    params = init_params(config, seed)
  else:
    params = components.load_frozen(os.fspath(initial_checkpoint_path), PromptModel(config, None), None, lengths)
  runtime = no_prompt_runtime(config, params, lengths, loss=loss, eos_id=vocab.eos_id)
  data.host_batch_size(batch_size, runtime.data_parallel)
  state = init_model_state(runtime.frozen, optimizer, jax.random.PRNGKey(seed))
  step_fn, state_sh = _jit_step(runtime, optimizer, state)
  state = jax.device_put(state, state_sh)

  batches = train_stream(provider, lengths, train_split, batch_size, seed, pack)
  observer = observability.TrainObserver(model_dir, total_steps=train_steps, start_step=0, log_period=log_period,
                                         progress_bar=progress_bar)
  fns = eval_lib.ModelFns(runtime) if eval_split else None
  eval_result, pending = None, None
  try:
    for step in range(1, train_steps + 1):
      batch = next(batches, None)
      if batch is None:
        raise DataError(f'task {provider.name!r} split {train_split!r} ran out of examples at step {step}')
      state, metrics = step_fn(state, runtime.steps.shard_batch(batch))
      if pending is not None:  # read the previous step's metrics now: the host never waits on the device
        observer.step(pending[0], _host_metrics(pending[1], pending[0]))
      pending = (step, metrics)
      if eval_split and (step % eval_period == 0 or step == train_steps):
        observer.step(step, _host_metrics(metrics, step))
        pending = None
        runtime.frozen = state.params
        eval_result, _ = eval_lib.evaluate_provider(fns, None, provider, eval_split, lengths,
                                                    eval_batch_size or batch_size, max_examples=eval_max_examples)
        observer.eval(step, eval_result)
    if pending is not None:
      observer.step(pending[0], _host_metrics(pending[1], pending[0]))
  finally:
    observer.close()
  params = jax.tree.map(lambda x: np.asarray(host.host_value(x)), state.params)
  checkpoint = None
  if save_checkpoint:
    dtype = None if checkpoint_dtype is None else jnp.dtype(checkpoint_dtype)
    checkpoint = t5x_writer.save_t5x_checkpoint(params, model_dir, train_steps, dtype=dtype, overwrite=True)
    observer.message(f'saved the T5X checkpoint {checkpoint}')
  return ModelTuningResult(model_dir, train_steps, config, params, eval_result, checkpoint)
