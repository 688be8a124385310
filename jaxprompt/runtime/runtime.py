"""The frozen network and its method placed on a mesh, with the partitioned steps to run them: what `train`,
`evaluate` and `infer` share. Frozen weights are read straight into their shards by the family's reader
(`jaxprompt.checkpoints.readers`)."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax

from jaxprompt.checkpoints import readers
from jaxprompt.checkpoints.readers import is_hf_checkpoint  # noqa: F401  (commands tell checkpoints apart with it)
from jaxprompt.errors import ConfigError
from jaxprompt.formats import validation
from jaxprompt.methods.base import Method
from jaxprompt.models.base import BaseModel, LossConfig, ModelConfig
from jaxprompt.models.families import build_model
from jaxprompt.parallel import partitioning
from jaxprompt.runtime import position_limit
from jaxprompt.runtime.compiled import ShardedSteps
from jaxprompt.runtime.optim import Optimizer


@dataclasses.dataclass
class Runtime:
  """The frozen model placed on its mesh, and the partitioned steps to run it. Made by `build_runtime` only:
  its fields must agree with each other (the steps' model, mesh and rules are these), which it sees to."""
  config: ModelConfig
  model: BaseModel
  mesh: jax.sharding.Mesh
  rules: Any
  steps: ShardedSteps
  network: Any  # the network's weights as loaded (or initialised), on the mesh
  # The frozen model's `jaxprompt.models.fingerprint` when training records it (it needs the task's vocabulary,
  # which the runtime does not know); None otherwise.
  fingerprint: dict[str, Any] | None = None

  @property
  def frozen(self) -> Any:
    """What the steps take as frozen: the network, or nothing when the method trains the network."""
    return {} if self.method is not None and self.method.trains_network else self.network

  @property
  def data_parallel(self) -> int:
    return self.mesh.shape['data']

  @property
  def method(self) -> Method | None:
    return self.model.method

  def place_trainable(self, trainable: Any) -> Any:
    return self.steps.place_trainable(trainable)


def data_parallel_size(model_parallel: int) -> int:
  """Size of the mesh's 'data' axis for `model_parallel`, known before anything is loaded."""
  validation.check_positive(model_parallel=model_parallel)
  if jax.device_count() % model_parallel:
    raise ConfigError(f'model_parallel={model_parallel} must divide the number of devices ({jax.device_count()})')
  return jax.device_count() // model_parallel


def network_abstract(model: BaseModel, feature_lengths: Mapping[str, int]) -> dict:
  """Unboxed ShapeDtypeStructs of the network's parameters."""
  boxed = model.init_abstract(1, feature_lengths['inputs'], feature_lengths['targets'])['params']
  return nn.meta.unbox(boxed)


def load_network(path: str, model: BaseModel, shardings: Any, feature_lengths: Mapping[str, int]) -> Any:
  """Reads the network's weights with its family's reader (`checkpoints.readers`: T5X or HF T5 for T5, an HF folder
  for a causal LM), checked against the model's shapes."""
  return readers.load(path, model.config, shardings=shardings, expected_shapes=network_abstract(model, feature_lengths))


def build_runtime(config: ModelConfig, method: Method | None, checkpoint_path: str | None,
                  feature_lengths: Mapping[str, int], *, optimizer: Optimizer | None = None,
                  loss: LossConfig | None = None, model_parallel: int = 1, num_microbatches: int = 1, eos_id: int = 1,
                  seed: int = 0, network: Any = None) -> Runtime:
  """Model + mesh + partitioned steps + network weights loaded straight into their shards.

  `network`: weights already in memory (host arrays, or another runtime's on an equal mesh, which stay where
  they are) instead of `checkpoint_path`'s. Neither initialises the network from `seed` (pretraining from
  scratch, model tuning only).
  """
  if network is not None and checkpoint_path is not None:
    raise ConfigError(f'give the network weights or a checkpoint to read them from ({checkpoint_path}), not both')
  validation.check_positive(num_microbatches=num_microbatches)
  data_parallel_size(model_parallel)
  model = build_model(config, method, loss=loss or LossConfig(), eos_id=eos_id)
  position_limit.check_positions(model, feature_lengths)  # before any weight is read
  mesh = partitioning.create_mesh(model_parallel)
  rules = partitioning.prompt_logical_axis_rules()
  steps = ShardedSteps(model, optimizer, mesh, rules, num_microbatches, feature_lengths['inputs'],
                       feature_lengths['targets'])
  if network is not None:
    network = jax.device_put(network, steps.network_shardings)
  elif checkpoint_path is None:
    if method is not None and not method.trains_network:
      raise ConfigError('INITIAL_CHECKPOINT_PATH is not set: a frozen model needs its weights')
    init = jax.jit(model.init_params, out_shardings=steps.network_shardings)
    with partitioning.use_mesh(mesh, rules):
      network = init(jax.random.PRNGKey(seed))
  else:
    network = load_network(os.fspath(checkpoint_path), model, steps.network_shardings, feature_lengths)
  return Runtime(config, model, mesh, rules, steps, network)
