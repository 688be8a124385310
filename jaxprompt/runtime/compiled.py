"""The one place steps are compiled under the mesh: jit with explicit shardings, run inside the mesh and the
logical axis rules.

Frozen params are sharded by t5x's logical rules, the batch over 'data', the trainable tree by its own logical
axes (a prompt is replicated by the default rules; model tuning shards like the frozen weights), the optimizer
state like its parameters where shapes match and replicated otherwise, step and rng replicated.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

from jaxprompt.models.base import BaseModel
from jaxprompt.parallel import partitioning
from jaxprompt.runtime import step as step_lib
from jaxprompt.runtime.optim import Optimizer
from jaxprompt.runtime.state import TrainState


def jit_on_mesh(fn: Callable, mesh: Mesh, rules: partitioning.LogicalRules, in_shardings: Any, out_shardings: Any,
                donate: Sequence[int] = ()) -> Callable:
  """`fn` jitted with these shardings; calls (and `.lower(...)`) run under the mesh and logical rules."""
  jitted = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings, donate_argnums=tuple(donate))

  @functools.wraps(fn)
  def run(*args):
    with partitioning.use_mesh(mesh, rules):
      return jitted(*args)

  def lower(*args):
    with partitioning.use_mesh(mesh, rules):
      return jitted.lower(*args)

  run.lower = lower
  return run


class ShardedSteps:
  """The partitioned train / eval steps (and any other function of the model) for one model and mesh."""

  def __init__(self, model: BaseModel, optimizer: Optimizer | None, mesh: Mesh, rules: partitioning.LogicalRules,
               num_microbatches: int = 1, input_length: int = 8, target_length: int = 4):
    self.model, self.optimizer, self.mesh, self.rules = model, optimizer, mesh, rules
    self.num_microbatches = num_microbatches
    network = model.init_abstract(1, input_length, target_length)['params']
    to_shardings = lambda boxed: partitioning.logical_to_shardings(partitioning.logical_specs(boxed), mesh, rules)
    method = model.method
    trains_network = method is None or method.trains_network
    self.network_shardings = to_shardings(network)
    self.frozen_shardings = {} if method is not None and trains_network else self.network_shardings
    trainable = None if method is None else method.abstract(network)
    self.trainable_dtypes = None if method is None else jax.tree.map(lambda a: a.dtype, nn.meta.unbox(trainable))
    self.trainable_shardings = None if method is None else to_shardings(trainable)
    self.replicated = partitioning.replicated(mesh)
    self.batch_sharding = partitioning.batch_sharding(mesh)
    self._compiled: dict[tuple[Callable, int], Callable] = {}
    self._train: Callable | None = None
    # One object for the life of these steps, so every eval batch finds the same compiled function.
    self._eval_fn = functools.partial(step_lib.eval_step, model)

  def state_shardings(self, state: TrainState) -> TrainState:
    return TrainState(
        step=self.replicated, trainable=self.trainable_shardings,
        opt_state=_like_params(state.opt_state, state.trainable, self.trainable_shardings,
                               self.replicated), rng=self.replicated)

  def place_frozen(self, frozen: Any) -> Any:
    """Puts host (numpy) frozen params onto the mesh with their rule shardings."""
    return jax.device_put(frozen, self.frozen_shardings)

  def place_trainable(self, trainable: Any) -> Any:
    """A host trainable tree (e.g. {'prompt': [P, d]} read from a file) on the mesh, in the method's dtypes."""
    cast = jax.tree.map(lambda x, dtype: np.asarray(x, dtype), trainable, self.trainable_dtypes)
    return jax.device_put(cast, self.trainable_shardings)

  def place_state(self, state: TrainState) -> TrainState:
    return jax.device_put(state, self.state_shardings(state))

  def shard_batch(self, batch: Mapping[str, np.ndarray]) -> dict:
    """This process's rows of the global batch -> global arrays split over 'data' (works multi-host)."""
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v)) for k, v in batch.items()}

  def compiled(self, fn: Callable, replicated_args: int = 0) -> Callable:
    """`fn(frozen, trainable, batch, *replicated)` on the mesh, replicated results; compiled once per `fn`.

    The cache is keyed by `fn` itself, so `fn` must be hashable and equal only to a function that computes the
    same thing: a module-level function, a `functools.partial` kept by its caller, or a frozen dataclass holding
    its static options (`jaxprompt.eval.evaluation`'s). A fresh lambda per call compiles per call.
    """
    key = (fn, replicated_args)
    if key not in self._compiled:
      in_shardings = (self.frozen_shardings, self.trainable_shardings, self.batch_sharding)
      self._compiled[key] = jit_on_mesh(fn, self.mesh, self.rules, in_shardings + (self.replicated,) * replicated_args,
                                        self.replicated)
    return self._compiled[key]

  def _train_fn(self, state: TrainState) -> Callable:
    fn = functools.partial(step_lib.train_step, self.model, self.optimizer, num_microbatches=self.num_microbatches)
    state_sh = self.state_shardings(state)
    return jit_on_mesh(fn, self.mesh, self.rules, (state_sh, self.frozen_shardings, self.batch_sharding),
                       (state_sh, self.replicated), donate=(0,))

  def train_step(self, state: TrainState, frozen: Any, batch: Mapping[str, jax.Array]):
    """(new_state, metrics); the old state's buffers are donated."""
    if self._train is None:
      self._train = self._train_fn(state)
    return self._train(state, frozen, batch)

  def eval_step(self, frozen: Any, trainable: Any, batch: Mapping[str, jax.Array]) -> dict:
    return self.compiled(self._eval_fn)(frozen, trainable, batch)

  def lower_train_step(self, state, frozen, batch):
    """Lowers the train step for abstract (ShapeDtypeStruct) or concrete args: `.compile().memory_analysis()`."""
    return self._train_fn(state).lower(state, frozen, batch)


def _like_params(opt_state: Any, params: Any, param_shardings: Any, replicated: Any) -> Any:
  """Optimizer-state shardings: a subtree shaped like the params (Adam moments) is sharded like them; every
  other leaf (factored Adafactor rows, counts) is replicated."""
  params_struct = jax.tree.structure(params)
  param_shapes = [np.shape(x) for x in jax.tree.leaves(params)]

  def is_param_like(x):
    try:
      return jax.tree.structure(x) == params_struct and [np.shape(y) for y in jax.tree.leaves(x)] == param_shapes
    except Exception:  # pylint: disable=broad-except  (not a pytree of the same kind)
      return False

  return jax.tree.map(lambda x: param_shardings if is_param_like(x) else replicated, opt_state, is_leaf=is_param_like)
