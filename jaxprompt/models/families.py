"""The model families and how a config picks one: `build_model(config, method)` is how every layer above builds
a model, so none of them names a family.

A family registers its model class under its configs' `family` name (`T5Config.family == 'encoder_decoder'`),
with its named configs (`named_config` finds a name among every family's: MODEL_CONFIG's `@jaxprompt.model_config()`).
Adding a family is: a config class with that name and the `ModelConfig` properties, a network, a `BaseModel`
subclass, and one `register` line here.
"""
from __future__ import annotations

from collections.abc import Mapping

from jaxprompt.errors import ConfigError
from jaxprompt.formats import validation
from jaxprompt.models import config as t5_config
from jaxprompt.models import decoder_config
from jaxprompt.models.base import BaseModel, LossConfig, ModelConfig, Tuning
from jaxprompt.models.decoder_only import DecoderOnlyModel
from jaxprompt.models.encoder_decoder import EncoderDecoderModel

_MODELS: dict[str, type[BaseModel]] = {}
_NAMED: dict[str, Mapping[str, ModelConfig]] = {}


def register(family: str, model_class: type[BaseModel], configs: Mapping[str, ModelConfig] | None = None) -> None:
  """Makes configs whose `family` is `family` build `model_class`; `configs`: the family's named configs."""
  _MODELS[family] = model_class
  _NAMED[family] = dict(configs or {})


def named_config(name: str, **overrides) -> ModelConfig:
  """The config named `name` in any family (T5's `t5_1_1_base`, a causal LM's `llama3_1_8b`, ...) with `overrides`
  applied (e.g. `dtype=jnp.bfloat16`); one ConfigError with the closest names and every family's list otherwise."""
  for configs in _NAMED.values():
    if name in configs:
      return configs[name].replace(**overrides) if overrides else configs[name]
  known = [n for configs in _NAMED.values() for n in configs]
  lists = '; '.join(f'{family}: {", ".join(sorted(configs))}' for family, configs in _NAMED.items())
  hint = validation.did_you_mean(name, known)
  raise ConfigError(f'unknown model config {name!r}{hint} (known configs by family, {lists})')


def registered() -> dict[str, type[BaseModel]]:
  """Every family's model class by family name."""
  return dict(_MODELS)


def is_model_config(value: object) -> bool:
  """True for a config of a registered family (what MODEL_CONFIG must hold)."""
  return getattr(type(value), 'family', None) in _MODELS


def model_class(config: ModelConfig) -> type[BaseModel]:
  """The model class of a config's family; one ConfigError naming the known families otherwise."""
  family = getattr(config, 'family', None)
  if family not in _MODELS:
    raise ConfigError(f'{type(config).__name__} names model family {family!r}; known families: '
                      f'{", ".join(sorted(_MODELS))}')
  return _MODELS[family]


def build_model(config: ModelConfig, method: Tuning | None = None, loss: LossConfig | None = None,
                eos_id: int = 1) -> BaseModel:
  """The model of `config`'s family running `method` (None: the plain network; loss None: t5x's defaults)."""
  return model_class(config)(config, method, loss=loss or LossConfig(), eos_id=eos_id)


register('encoder_decoder', EncoderDecoderModel, t5_config.CONFIGS)
register('decoder_only', DecoderOnlyModel, decoder_config.CONFIGS)
