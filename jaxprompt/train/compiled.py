"""The train / eval steps jitted over a ('data', 'model') mesh with explicit in/out shardings.

Frozen params are sharded by t5x's logical rules, the batch over 'data', and the prompt by the prompt rules
(replicated by default). The optimizer state and step counters are prompt-sized and replicated.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxprompt.parallel import partitioning
from jaxprompt.models.wrapper import PROMPT_KEY, PromptModel
from jaxprompt.train import step as step_lib
from jaxprompt.train.optim import PromptOptimizer


class ShardedSteps:
  """Builds and runs the partitioned steps for one model, optimizer and mesh."""

  def __init__(self, model: PromptModel, optimizer: PromptOptimizer, mesh: Mesh, rules: partitioning.LogicalRules,
               num_microbatches: int = 1, input_length: int = 8, target_length: int = 4):
    self.model, self.optimizer, self.mesh, self.rules = model, optimizer, mesh, rules
    self.num_microbatches = num_microbatches
    boxed = model.init_abstract(1, input_length, target_length)['params']
    shardings = partitioning.logical_to_shardings(partitioning.logical_specs(boxed), mesh, rules)
    self.frozen_shardings = {k: v for k, v in shardings.items() if k != PROMPT_KEY}
    self.prompt_shardings = shardings.get(PROMPT_KEY)
    self.replicated = partitioning.replicated(mesh)
    self.batch_sharding = partitioning.batch_sharding(mesh)
    self._train = None
    self._eval = None

  def state_shardings(self, state: step_lib.TrainState) -> step_lib.TrainState:
    return step_lib.TrainState(step=self.replicated, prompt=self.prompt_shardings,
                               opt_state=jax.tree.map(lambda _: self.replicated, state.opt_state),
                               rng=self.replicated)

  def place_frozen(self, frozen: Any) -> Any:
    """Puts host (numpy) frozen params onto the mesh with their rule shardings."""
    return jax.device_put(frozen, self.frozen_shardings)

  def place_state(self, state: step_lib.TrainState) -> step_lib.TrainState:
    return jax.device_put(state, self.state_shardings(state))

  def shard_batch(self, batch: Mapping[str, np.ndarray]) -> dict:
    """This process's rows of the global batch -> global arrays split over 'data' (works multi-host)."""
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v))
            for k, v in batch.items()}

  def _jit(self, fn: Callable, in_shardings, out_shardings, donate=()) -> Callable:
    jitted = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings, donate_argnums=donate)

    @functools.wraps(fn)
    def run(*args):
      with partitioning.use_mesh(self.mesh, self.rules):
        return jitted(*args)

    run.lower = lambda *args: _lower_in_mesh(jitted, self.mesh, self.rules, *args)
    return run

  def train_step(self, state: step_lib.TrainState, frozen: Any, batch: Mapping[str, jax.Array]):
    """(new_state, metrics); the old state's buffers are donated."""
    if self._train is None:
      fn = functools.partial(step_lib.train_step, self.model, self.optimizer,
                             num_microbatches=self.num_microbatches)
      state_sh = self.state_shardings(state)
      self._train = self._jit(fn, (state_sh, self.frozen_shardings, self.batch_sharding),
                              (state_sh, self.replicated), donate=(0,))
    return self._train(state, frozen, batch)

  def eval_step(self, prompt: Any, frozen: Any, batch: Mapping[str, jax.Array]) -> dict:
    if self._eval is None:
      fn = functools.partial(step_lib.eval_step, self.model)
      self._eval = self._jit(fn, (self.prompt_shardings, self.frozen_shardings, self.batch_sharding),
                             self.replicated)
    return self._eval(prompt, frozen, batch)

  def lower_train_step(self, state, frozen, batch):
    """Lowers the train step for abstract (ShapeDtypeStruct) or concrete args: `.compile().memory_analysis()`."""
    fn = functools.partial(step_lib.train_step, self.model, self.optimizer, num_microbatches=self.num_microbatches)
    state_sh = self.state_shardings(state)
    jitted = jax.jit(fn, in_shardings=(state_sh, self.frozen_shardings, self.batch_sharding),
                     out_shardings=(state_sh, self.replicated), donate_argnums=(0,))
    return _lower_in_mesh(jitted, self.mesh, self.rules, state, frozen, batch)


def _lower_in_mesh(jitted, mesh, rules, *args):
  with partitioning.use_mesh(mesh, rules):
    return jitted.lower(*args)


def batch_partition_spec() -> PartitionSpec:
  return PartitionSpec('data')


def named(mesh: Mesh, spec: PartitionSpec) -> NamedSharding:
  return NamedSharding(mesh, spec)
