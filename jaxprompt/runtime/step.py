"""Pure train and eval steps, one pair for every tuning method. Gradients and optimizer state exist for the
method's trainable tree only.

The frozen parameters are an ordinary, non-differentiated argument: `jax.value_and_grad` is taken with respect
to the trainable tree alone, so for prompt methods no gradient buffers, no optimizer state and no
weight-gradient matmuls are ever made for the frozen weights (the reference implementation computes all of
them, then masks). Model tuning is the same step with the whole network as the trainable tree.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxprompt.errors import ConfigError
from jaxprompt.models.base import BaseModel
from jaxprompt.runtime import finite as finite_lib
from jaxprompt.runtime.optim import Optimizer
from jaxprompt.runtime.state import TrainState

Array = jax.Array
Batch = Mapping[str, Array]


def _split_microbatches(batch: Batch, num_microbatches: int) -> Batch:
  """[b, ...] -> [m, b/m, ...]."""
  size = next(iter(batch.values())).shape[0]
  if size % num_microbatches:
    raise ConfigError(f'batch size {size} is not divisible by num_microbatches={num_microbatches}')
  return {k: v.reshape((num_microbatches, size // num_microbatches) + v.shape[1:]) for k, v in batch.items()}


def compute_gradients(model: BaseModel, frozen: Any, trainable: Any, batch: Batch, dropout_rng: Array | None,
                      num_microbatches: int = 1) -> tuple[Array, dict, Any]:
  """(loss, metrics, grads) for the trainable tree, summing over `num_microbatches` sequential microbatches.

  Per-microbatch losses are summed (t5x's accumulation), so with `reduction='sum'` the result equals the
  full-batch gradient; with 'mean' it is the sum of per-microbatch means.
  """
  grad_fn = jax.value_and_grad(model.loss_fn, argnums=1, has_aux=True)  # the trainable tree only
  if num_microbatches <= 1:
    (loss, metrics), grads = grad_fn(frozen, trainable, batch, dropout_rng)
    return loss, metrics, grads

  micro = _split_microbatches(batch, num_microbatches)

  def body(carry, xs):
    index, mb = xs
    rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, index)
    (loss, metrics), grads = grad_fn(frozen, trainable, mb, rng)
    acc = jax.tree.map(jnp.add, carry, (loss, metrics, grads))
    return acc, None

  (loss0, metrics0), grads0 = jax.eval_shape(grad_fn, frozen, trainable, jax.tree.map(lambda x: x[0], micro),
                                             dropout_rng)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (loss0, metrics0, grads0))
  (loss, metrics, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(num_microbatches), micro))
  metrics = dict(metrics, token_accuracy=metrics['token_accuracy'] / num_microbatches)
  return loss, metrics, grads


def guarded_update(optimizer: Optimizer, grads: Any, opt_state: Any, params: Any,
                   loss: Array) -> tuple[Any, Any, Array, Array]:
  """One optax update of `params` -> (new params, new optimizer state, gradient global norm, finite).

  `finite` is False when the loss, the gradient, the updated parameters or the new optimizer state hold NaN / inf
  (a finite gradient times a huge learning rate can overflow); callers then keep their old state (with
  `keep_if_finite`), so nothing already learned is lost.
  """
  updates, opt_state = optimizer.tx.update(grads, opt_state, params)
  grad_norm = optax.global_norm(grads)
  params = optax.apply_updates(params, updates)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & finite_lib.all_finite((params, opt_state))
  return params, opt_state, grad_norm, finite


def keep_if_finite(new_state: Any, old_state: Any, finite: Array) -> Any:
  """`new_state` where `finite`, else `old_state`, leaf by leaf."""
  return jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, old_state)


def train_step(model: BaseModel, optimizer: Optimizer, state: TrainState, frozen: Any, batch: Batch,
               num_microbatches: int = 1) -> tuple[TrainState, dict]:
  """One optimizer update of the trainable tree. A non-finite loss, gradient or update leaves the state unchanged
  and is reported in `metrics['finite']` (the trainer stops and names the step)."""
  rng = jax.random.wrap_key_data(state.rng)
  step_rng = jax.random.fold_in(rng, state.step)
  uses_dropout = model.method is not None and model.method.uses_dropout
  dropout_rng = step_rng if model.config.dropout_rate > 0 or uses_dropout else None
  loss, metrics, grads = compute_gradients(model, frozen, state.trainable, batch, dropout_rng, num_microbatches)
  trainable, opt_state, grad_norm, finite = guarded_update(optimizer, grads, state.opt_state, state.trainable, loss)
  new_state = keep_if_finite(TrainState(step=state.step + 1, trainable=trainable, opt_state=opt_state, rng=state.rng),
                             state, finite)
  metrics = dict(metrics, loss=loss, grad_norm=grad_norm, param_norm=optax.global_norm(new_state.trainable),
                 learning_rate=jnp.asarray(optimizer.learning_rate(state.step), jnp.float32), finite=finite)
  return new_state, metrics


def eval_step(model: BaseModel, frozen: Any, trainable: Any, batch: Batch) -> dict:
  """Summed loss and token accuracy on a batch, no dropout."""
  _, metrics = model.loss_fn(frozen, trainable, batch, None)
  return metrics
