"""Model tuning: every weight of the network is trainable (the baseline prompt tuning is measured against, and
pretraining from scratch). No hooks; the trainable tree is the network's own parameter tree and the frozen
tree is empty."""
from __future__ import annotations

import dataclasses

import gin

from jaxprompt.methods.base import Array, Method, Params
from jaxprompt.models.base import ModelConfig


@dataclasses.dataclass(frozen=True)
class ModelTuning(Method):
  """Trains the network itself, starting from the weights it is given (loaded, or freshly initialised)."""
  trains_network = True

  def init(self, rng: Array, frozen: Params) -> Params:
    del rng
    return frozen

  def abstract(self, network: Params) -> Params:
    return network

  def network_params(self, frozen: Params, trainable: Params) -> Params:
    del frozen
    return trainable


@gin.configurable(module='jaxprompt.methods')
def model_tuning(config: ModelConfig, eos_id: int = 1) -> ModelTuning:
  """The method factory gin binds (`METHOD = @jaxprompt.methods.model_tuning`, methods/model_tuning.gin)."""
  del config, eos_id
  return ModelTuning()
