"""Pure train and eval steps. Gradients and optimizer state exist for the prompt only.

The frozen T5 parameters are an ordinary, non-differentiated argument: `jax.value_and_grad` is taken with
respect to the prompt tree alone, so no gradient buffers, no optimizer state and no weight-gradient matmuls
are ever made for the frozen weights (the reference implementation computes all of them, then masks).
"""
from __future__ import annotations

from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import optax

from jaxprompt.errors import ConfigError
from jaxprompt.models.wrapper import PromptModel
from jaxprompt.train.optim import PromptOptimizer

Array = jax.Array
Batch = Mapping[str, Array]


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; kilobytes for a prompt. `rng` feeds dropout."""
  step: Array  # int32 []
  prompt: Any  # {'prompt': [length, embed]}
  opt_state: Any
  rng: Array  # uint32 [2] PRNG key data


def init_train_state(prompt: Any, optimizer: PromptOptimizer, rng: Array) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), prompt=prompt, opt_state=optimizer.tx.init(prompt),
                    rng=jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng)


def _split_microbatches(batch: Batch, num_microbatches: int) -> Batch:
  """[b, ...] -> [m, b/m, ...]."""
  size = next(iter(batch.values())).shape[0]
  if size % num_microbatches:
    raise ConfigError(f'batch size {size} is not divisible by num_microbatches={num_microbatches}')
  return {k: v.reshape((num_microbatches, size // num_microbatches) + v.shape[1:]) for k, v in batch.items()}


def compute_gradients(model: PromptModel, prompt: Any, frozen: Any, batch: Batch, dropout_rng: Array | None,
                      num_microbatches: int = 1) -> tuple[Array, dict, Any]:
  """(loss, metrics, grads) for the prompt, summing over `num_microbatches` sequential microbatches.

  Per-microbatch losses are summed (t5x's accumulation), so with `reduction='sum'` the result equals the
  full-batch gradient; with 'mean' it is the sum of per-microbatch means.
  """
  grad_fn = jax.value_and_grad(model.loss_fn, has_aux=True)
  if num_microbatches <= 1:
    (loss, metrics), grads = grad_fn(prompt, frozen, batch, dropout_rng)
    return loss, metrics, grads

  micro = _split_microbatches(batch, num_microbatches)

  def body(carry, xs):
    index, mb = xs
    rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, index)
    (loss, metrics), grads = grad_fn(prompt, frozen, mb, rng)
    acc = jax.tree.map(jnp.add, carry, (loss, metrics, grads))
    return acc, None

  (loss0, metrics0), grads0 = jax.eval_shape(grad_fn, prompt, frozen, jax.tree.map(lambda x: x[0], micro),
                                             dropout_rng)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (loss0, metrics0, grads0))
  (loss, metrics, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(num_microbatches), micro))
  metrics = dict(metrics, token_accuracy=metrics['token_accuracy'] / num_microbatches)
  return loss, metrics, grads


def guarded_update(optimizer: PromptOptimizer, grads: Any, opt_state: Any, params: Any,
                   loss: Array) -> tuple[Any, Any, Array, Array]:
  """One optax update of `params` -> (new params, new optimizer state, gradient global norm, finite).

  `finite` is False when the loss or the gradient is NaN / inf; callers then keep their old state (with
  `keep_if_finite`), so nothing already learned is lost.
  """
  updates, opt_state = optimizer.tx.update(grads, opt_state, params)
  grad_norm = optax.global_norm(grads)
  return optax.apply_updates(params, updates), opt_state, grad_norm, jnp.isfinite(loss) & jnp.isfinite(grad_norm)


def keep_if_finite(new_state: Any, old_state: Any, finite: Array) -> Any:
  """`new_state` where `finite`, else `old_state`, leaf by leaf."""
  return jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, old_state)


def train_step(model: PromptModel, optimizer: PromptOptimizer, state: TrainState, frozen: Any, batch: Batch,
               num_microbatches: int = 1) -> tuple[TrainState, dict]:
  """One optimizer update of the prompt. A non-finite loss or gradient leaves the state unchanged and is
  reported in `metrics['finite']` (the trainer stops and names the step)."""
  rng = jax.random.wrap_key_data(state.rng)
  step_rng = jax.random.fold_in(rng, state.step)
  dropout_rng = step_rng if model.config.dropout_rate > 0 else None
  loss, metrics, grads = compute_gradients(model, state.prompt, frozen, batch, dropout_rng, num_microbatches)
  prompt, opt_state, grad_norm, finite = guarded_update(optimizer, grads, state.opt_state, state.prompt, loss)
  new_state = keep_if_finite(TrainState(step=state.step + 1, prompt=prompt, opt_state=opt_state, rng=state.rng),
                             state, finite)
  metrics = dict(metrics, loss=loss, grad_norm=grad_norm, prompt_norm=optax.global_norm(new_state.prompt),
                 learning_rate=jnp.asarray(optimizer.learning_rate(state.step), jnp.float32), finite=finite)
  return new_state, metrics


def eval_step(model: PromptModel, prompt: Any, frozen: Any, batch: Batch) -> dict:
  """Summed loss and token accuracy on a batch, no dropout."""
  _, metrics = model.loss_fn(prompt, frozen, batch, None)
  return metrics
