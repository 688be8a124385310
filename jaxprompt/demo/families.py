"""The demo's two model families, side by side: what pretraining and `jaxprompt demo` do differently for each.

  t5      the small T5 1.1 (`demo.model`): a T5X checkpoint + vocab.model + config.json (assets/demo_model)
  causal  the tiny Llama (`demo.causal_model`): a Hugging Face folder (assets/demo_causal_model)

Everything else (the skills, the tasks, the trainer, the three phases of the demo, the quality bar) is shared.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from jaxprompt.demo import causal_model
from jaxprompt.demo import model as demo_model
from jaxprompt.errors import ConfigError
from jaxprompt.models.base import ModelConfig

Writer = Callable[[Mapping[str, Any], ModelConfig, str, int, dict[str, Any]], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class DemoFamily:
  """One demo model family.

  model_gin: its models/*.gin (DEMO_MODEL_DIR: another model dir, None the shipped one).
  pretrain_gin: the pretraining run file (`demo.pretrain`).
  architecture: the gin hook pretraining builds the model from.
  vocab_file: where pretraining writes the SentencePiece vocabulary in the model dir.
  vocabulary(model_dir): the vocabulary the tasks are registered with (None: the shipped model's).
  model_config() / checkpoint(): the frozen model's config and where its weights are, as gin binds DEMO_MODEL_DIR.
  write(params, config, output, step, info): writes the pretrained model and the recipe; returns what it recorded.
  """
  name: str
  model_gin: str
  pretrain_gin: tuple[str, ...]
  architecture: Callable[[], ModelConfig]
  vocab_file: str
  vocabulary: Callable[[str | None], Any]
  model_config: Callable[[], ModelConfig]
  checkpoint: Callable[[], str]
  write: Writer


def write_t5x_checkpoint(params: Mapping[str, Any], output: str, step: int) -> str:
  """`output/checkpoint_<step>/checkpoint`: a T5X classic checkpoint whose arrays are all inline in the msgpack
  (T5X's layout for arrays it does not partition). No zarr folders: their `.zarray` dot-files would be left out
  of the wheel by setuptools, breaking the installed model."""
  from jaxprompt.checkpoints import t5x_writer  # pylint: disable=g-import-not-at-top
  path = os.path.join(output, f'checkpoint_{int(step)}', 'checkpoint')
  return t5x_writer.save_t5x_checkpoint(params, path, step, layout='msgpack', overwrite=True)


def _write_t5(params: Mapping[str, Any], config: ModelConfig, output: str, step: int,
              info: dict[str, Any]) -> dict[str, Any]:
  """T5X checkpoint + config.json (the T5Config beside the recipe and accuracies)."""
  checkpoint = write_t5x_checkpoint(params, output, step)
  info = dict(info, model_config=demo_model.config_to_json(config),
              checkpoint=os.path.basename(os.path.dirname(checkpoint)))
  with open(os.path.join(output, demo_model.CONFIG_FILE), 'w') as f:
    f.write(json.dumps(info, indent=1, sort_keys=True) + '\n')
  return info


def _write_causal(params: Mapping[str, Any], config: ModelConfig, output: str, step: int,
                  info: dict[str, Any]) -> dict[str, Any]:
  """A Hugging Face Llama folder + pretraining.json (recipe and accuracies)."""
  del step  # the folder holds one model; pretraining.json records its steps
  causal_model.write_model(params, config, output)
  causal_model.write_info(output, info)
  return info


def _causal_config() -> ModelConfig:
  from jaxprompt.checkpoints.hf_causal import hf_causal_config  # pylint: disable=g-import-not-at-top
  return hf_causal_config(causal_model.causal_model_dir())


FAMILIES: dict[str, DemoFamily] = {
    't5': DemoFamily('t5', 'models/demo.gin', ('runs/demo_pretrain.gin',), demo_model.architecture,
                     demo_model.VOCAB_FILE, demo_model.vocabulary, demo_model.model_config, demo_model.checkpoint_path,
                     _write_t5),
    'causal': DemoFamily('causal', 'models/demo_causal.gin', ('runs/demo_causal_pretrain.gin',),
                         causal_model.causal_architecture, causal_model.VOCAB_FILE, causal_model.vocabulary,
                         _causal_config, causal_model.causal_model_dir, _write_causal),
}


def get(name: str) -> DemoFamily:
  if name not in FAMILIES:
    raise ConfigError(f'unknown demo model family {name!r}; known: {", ".join(FAMILIES)}')
  return FAMILIES[name]
