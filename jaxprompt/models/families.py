"""The model families and how a config picks one: `build_model(config, method)` is how every layer above builds
a model, so none of them names a family.

A family registers its model class under its configs' `family` name (`T5Config.family == 'encoder_decoder'`).
Adding a family is: a config class with that name and the `ModelConfig` properties, a network, a `BaseModel`
subclass, and one `register` line here.
"""
from __future__ import annotations

from jaxprompt.errors import ConfigError
from jaxprompt.formats import validation
from jaxprompt.models import config as t5_configs
from jaxprompt.models import decoder_config, encoder_config
from jaxprompt.models.base import BaseModel, LossConfig, ModelConfig, Tuning
from jaxprompt.models.decoder_only import DecoderOnlyModel
from jaxprompt.models.encoder_decoder import EncoderDecoderModel
from jaxprompt.models.encoder_only import EncoderOnlyModel

_MODELS: dict[str, type[BaseModel]] = {}


def register(family: str, model_class: type[BaseModel]) -> None:
  """Makes configs whose `family` is `family` build `model_class`."""
  _MODELS[family] = model_class


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


def named_configs() -> dict[str, ModelConfig]:
  """Every family's named configs (T5 1.0 / 1.1 / mT5 sizes, the Llama / Mistral / Qwen2 / GPT-2 sizes, BERT /
  RoBERTa)."""
  return {**t5_configs.CONFIGS, **decoder_config.CONFIGS, **encoder_config.CONFIGS}


def named_config(name: str, **overrides) -> ModelConfig:
  """The named config of any family with `overrides` applied (e.g. `dtype=jnp.bfloat16`); one ConfigError with
  the closest names otherwise."""
  known = named_configs()
  if name not in known:
    by_family = {f: sorted(n for n, c in known.items() if type(c).family == f) for f in _MODELS}
    lists = '; '.join(f'{family}: {", ".join(names)}' for family, names in by_family.items() if names)
    raise ConfigError(f'unknown model config {name!r}{validation.did_you_mean(name, known)} (named configs by '
                      f'family, {lists})')
  return known[name].replace(**overrides) if overrides else known[name]


def build_model(config: ModelConfig, method: Tuning | None = None, loss: LossConfig | None = None,
                eos_id: int = 1) -> BaseModel:
  """The model of `config`'s family running `method` (None: the plain network; loss None: t5x's defaults)."""
  return model_class(config)(config, method, loss=loss or LossConfig(), eos_id=eos_id)


register('encoder_decoder', EncoderDecoderModel)
register('decoder_only', DecoderOnlyModel)
register('encoder_only', EncoderOnlyModel)
