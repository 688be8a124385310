"""The demo's three model families, side by side: what pretraining and `jaxprompt demo` do differently for each.

  t5       the small T5 1.1 (`demo.model`): a T5X checkpoint + vocab.model + config.json (assets/demo_model)
  causal   the tiny Llama (`demo.causal_model`): a Hugging Face folder (assets/demo_causal_model)
  encoder  the tiny BERT (`demo.encoder_model`): a Hugging Face BertForMaskedLM folder (assets/demo_encoder_model),
           pretrained with masked LM (`demo.mlm_pretrain`) and a WordPiece vocabulary; no `jaxprompt demo` yet

Everything else (the generated text, the recipe's steps, the optimizer, what is recorded) is shared; t5 and causal
also share the skills' tasks, the trainer (`jaxprompt.train_model`), the three phases of the demo and the quality bar.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from jaxprompt.demo import causal_model, data, encoder_model, vocabularies
from jaxprompt.demo import model as demo_model
from jaxprompt.errors import ConfigError
from jaxprompt.models.base import ModelConfig

Writer = Callable[[Mapping[str, Any], ModelConfig, str, int, dict[str, Any]], dict[str, Any]]
Trainer = Callable[[ModelConfig, Any, int], tuple[int, Mapping[str, Any], Mapping[str, Any], Mapping[str, Any]]]


def train_on_skills(config: ModelConfig, vocabulary: Any, eval_examples: int) -> tuple[int, Any, Any, Any]:
  """`jaxprompt.train_model` on the `demo_pretrain` mixture, as the parsed gin file binds it (t5, causal)."""
  del vocabulary  # the tasks were registered with it
  import gin  # pylint: disable=g-import-not-at-top

  from jaxprompt.commands import train as trainer  # pylint: disable=g-import-not-at-top
  from jaxprompt.demo import tasks  # pylint: disable=g-import-not-at-top
  gin.bind_parameter('jaxprompt.ModelSource.config', config)
  gin.bind_parameter('jaxprompt.EvalConfig.max_examples', eval_examples)
  result = trainer.train_model()  # pylint: disable=no-value-for-parameter  (gin supplies the arguments)
  text = {
      'mixture': tasks.PRETRAIN_MIXTURE, 'skill_rates': data.SKILL_RATES, 'data_seed': tasks.DATA_SEED,
      'heldout_seed': tasks.HELDOUT_SEED
  }
  return result.step, result.trainable, result.eval_metrics or {}, text


@dataclasses.dataclass(frozen=True)
class DemoFamily:
  """One demo model family.

  model_gin: its models/*.gin (DEMO_MODEL_DIR: another model dir, None the shipped one); None: no `jaxprompt demo`.
  pretrain_gin: the pretraining run file (`demo.pretrain`).
  architecture: the gin hook pretraining builds the model from.
  vocab_file: where pretraining writes the vocabulary in the model dir.
  vocabulary(model_dir): the vocabulary the tasks are registered with (None: the shipped model's).
  model_config() / checkpoint(): the frozen model's config and where its weights are, as gin binds DEMO_MODEL_DIR.
  write(params, config, output, step, info): writes the pretrained model and the recipe; returns what it recorded.
  train_vocabulary(seed, path): writes the vocabulary file; returns what pretraining records of it.
  train(config, vocabulary, eval_examples): trains every parameter as the gin file configures -> (steps, parameters,
    validation metrics, what to record of its data); default: `jaxprompt.train_model` on the skills' mixture.
  """
  name: str
  model_gin: str | None
  pretrain_gin: tuple[str, ...]
  architecture: Callable[[], ModelConfig]
  vocab_file: str
  vocabulary: Callable[[str | None], Any]
  model_config: Callable[[], ModelConfig] | None
  checkpoint: Callable[[], str] | None
  write: Writer
  train_vocabulary: Callable[[int, str], dict[str, Any]] = vocabularies.train_sentencepiece
  train: Trainer = train_on_skills


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


def _hf_folder_writer(module: Any) -> Writer:
  """Writes a Hugging Face folder (`module.write_model`) + pretraining.json (recipe and accuracies)."""

  def write(params: Mapping[str, Any], config: ModelConfig, output: str, step: int, info: dict[str,
                                                                                               Any]) -> dict[str, Any]:
    del step  # the folder holds one model; pretraining.json records its steps
    module.write_model(params, config, output)
    module.write_info(output, info)
    return info

  return write


def _train_encoder(config: ModelConfig, vocabulary: Any, eval_examples: int) -> tuple[int, Any, Any, Any]:
  from jaxprompt.demo import mlm_pretrain  # pylint: disable=g-import-not-at-top  (jax, flax)
  return mlm_pretrain.train_masked_lm(config, vocabulary, eval_texts=eval_examples)  # pylint: disable=no-value-for-parameter


def _causal_config() -> ModelConfig:
  from jaxprompt.checkpoints.hf_causal import hf_causal_config  # pylint: disable=g-import-not-at-top
  return hf_causal_config(causal_model.causal_model_dir())


FAMILIES: dict[str, DemoFamily] = {
    't5': DemoFamily('t5', 'models/demo.gin', ('runs/demo_pretrain.gin',), demo_model.architecture,
                     demo_model.VOCAB_FILE, demo_model.vocabulary, demo_model.model_config, demo_model.checkpoint_path,
                     _write_t5),
    'causal': DemoFamily('causal', 'models/demo_causal.gin', ('runs/demo_causal_pretrain.gin',),
                         causal_model.causal_architecture, causal_model.VOCAB_FILE, causal_model.vocabulary,
                         _causal_config, causal_model.causal_model_dir, _hf_folder_writer(causal_model)),
    'encoder': DemoFamily('encoder', None, ('runs/demo_encoder_pretrain.gin',), encoder_model.encoder_architecture,
                          encoder_model.VOCAB_FILE, encoder_model.vocabulary, None, None,
                          _hf_folder_writer(encoder_model), encoder_model.train_vocabulary, _train_encoder),
}


def demo_families() -> tuple[str, ...]:
  """The families `jaxprompt demo --family` runs (those with a models/*.gin)."""
  return tuple(name for name, family in FAMILIES.items() if family.model_gin is not None)


def get(name: str) -> DemoFamily:
  if name not in FAMILIES:
    raise ConfigError(f'unknown demo model family {name!r}; known: {", ".join(FAMILIES)}')
  return FAMILIES[name]
