"""Optimizers and learning-rate schedules for a method's trainable tree, built from optax pieces, bound from gin.

The paper's setting (Lester et al. 2021, Sec. 3): Adafactor, decay rate 0.8, no parameter scaling, weight
decay 1e-5, constant learning rate 0.3. These only ever see the prompt's parameters, so their state is
prompt-sized.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import gin
import jax.numpy as jnp
import optax

from jaxprompt.errors import ConfigError

Schedule = Callable[[int], float]


@gin.configurable(module='jaxprompt')
def constant_schedule(value: float = 0.3) -> Schedule:
  """The same learning rate at every step."""
  return optax.constant_schedule(value)


@gin.configurable(module='jaxprompt')
def rsqrt_schedule(value: float = 1.0, warmup_steps: int = 10000, linear_warmup: bool = True) -> Schedule:
  """t5x's `rsqrt_decay`: value / sqrt(max(step, warmup)); with `linear_warmup`, ramps linearly to the
  plateau value / sqrt(warmup) over the first `warmup_steps` instead of staying flat."""
  if warmup_steps <= 0:
    raise ConfigError(f'rsqrt_schedule warmup_steps must be positive, got {warmup_steps}')

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    decay = value / jnp.sqrt(jnp.maximum(step, warmup_steps))
    if linear_warmup:
      decay = decay * jnp.minimum(1.0, (step + 1.0) / warmup_steps)
    return decay

  return schedule


@gin.configurable(module='jaxprompt')
def cosine_schedule(value: float = 0.3, total_steps: int = 30000, warmup_steps: int = 0,
                    end_value: float = 0.0) -> Schedule:
  """Linear warmup from 0, then cosine decay to `end_value` at `total_steps`."""
  return optax.warmup_cosine_decay_schedule(0.0, value, warmup_steps, total_steps, end_value)


@gin.configurable(module='jaxprompt')
def adafactor(learning_rate: Schedule | float = 0.3, decay_rate: float = 0.8, multiply_by_parameter_scale: bool = False,
              weight_decay_rate: float | None = 1e-5, clipping_threshold: float | None = 1.0,
              min_dim_size_to_factor: int = 128, momentum: float | None = None) -> optax.GradientTransformation:
  """Adafactor with the paper's defaults (optax's implementation; factored second moments for dims >= 128).

  optax applies `weight_decay_rate` as `param * rate` added to the update before the sign flip, i.e. not
  scaled by the learning rate.
  """
  return optax.adafactor(learning_rate=learning_rate, decay_rate=decay_rate,
                         multiply_by_parameter_scale=multiply_by_parameter_scale, weight_decay_rate=weight_decay_rate,
                         clipping_threshold=clipping_threshold, min_dim_size_to_factor=min_dim_size_to_factor,
                         momentum=momentum)


@gin.configurable(module='jaxprompt')
def adam(learning_rate: Schedule | float = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
         weight_decay: float = 0.0) -> optax.GradientTransformation:
  """Adam, or AdamW (decoupled decay scaled by the learning rate) when `weight_decay` > 0."""
  if weight_decay:
    return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)


class Optimizer(NamedTuple):
  """An optax transformation and the learning-rate schedule inside it (kept for logging)."""
  tx: optax.GradientTransformation
  learning_rate: Schedule


@gin.configurable(module='jaxprompt')
def make_optimizer(optimizer: Callable[..., optax.GradientTransformation] = adafactor,
                   learning_rate: Schedule | float | None = None, max_grad_norm: float | None = None) -> Optimizer:
  """The optimizer of the trainable tree: optional global-norm gradient clipping, then `optimizer(learning_rate=...)`.

  `optimizer` is a factory (`adafactor`, `adam`, ...; in gin `@jaxprompt.adafactor`, not a call);
  `learning_rate` defaults to the paper's constant 0.3.
  """
  if learning_rate is None:
    learning_rate = constant_schedule(0.3)
  elif not callable(learning_rate):
    learning_rate = constant_schedule(float(learning_rate))
  tx = optimizer(learning_rate=learning_rate)
  if max_grad_norm is not None:
    if max_grad_norm <= 0:
      raise ConfigError(f'max_grad_norm must be positive, got {max_grad_norm}')
    tx = optax.chain(optax.clip_by_global_norm(max_grad_norm), tx)
  return Optimizer(tx, learning_rate)
