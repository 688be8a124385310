"""The one training state, for every tuning method: what the method trains, its optimizer state, step, rng."""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

Array = jax.Array


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training. For prompt methods it is kilobytes; for model tuning it holds the
  whole network. `trainable` is the method's parameter tree (prompt tuning: {'prompt': [P, d]})."""
  step: Array  # int32 []
  trainable: Any
  opt_state: Any
  rng: Array  # uint32 [2] PRNG key data (feeds dropout)


def init_train_state(trainable: Any, tx: optax.GradientTransformation, rng: Array) -> TrainState:
  """Step 0: the optimizer's initial state for `trainable`; `rng` as raw key data (orbax saves plain arrays)."""
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)
  return TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable, opt_state=tx.init(trainable), rng=rng)
