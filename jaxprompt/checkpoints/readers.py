"""Which reader a frozen model's checkpoint goes to, by the model config's family (`config.family`).

  'encoder_decoder'  T5: a T5X checkpoint in any format (`t5x.py`), or a Hugging Face T5 safetensors folder
                     (`huggingface.py`)
  'decoder_only'     causal LMs (Llama, Mistral, Qwen2, GPT-2): a Hugging Face folder (`hf_causal.py`); no T5X reader
  'encoder_only'     BERT / RoBERTa: a Hugging Face folder (`hf_encoder.py`); no T5X reader

`load(path, config, ...)` reads the weights straight into their shards, checked against the config. A checkpoint
of the other family is one CheckpointError naming the path, what it holds and what reads it. A new family is one
more `register(family, reader)`.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from jaxprompt.checkpoints import common, hf_causal, hf_causal_names, hf_encoder, t5x
from jaxprompt.checkpoints.huggingface import CONFIG_FILE, INDEX_FILE, SINGLE_FILE, load_hf_t5
from jaxprompt.errors import CheckpointError
from jaxprompt.models.base import ModelConfig

# reader(path, config, shardings, expected_shapes) -> the network's params
Reader = Callable[[str, ModelConfig, common.ShardingsArg, Mapping[str, Any] | None], dict]
_READERS: dict[str, Reader] = {}


def register(family: str, reader: Reader) -> None:
  """Makes configs whose `family` is `family` read their weights with `reader`."""
  _READERS[family] = reader


def is_hf_checkpoint(path: str) -> bool:
  """A Hugging Face safetensors checkpoint (folder or file) rather than a T5X one."""
  if path.endswith('.safetensors') or path.endswith('.safetensors.index.json'):
    return True
  return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f)) for f in (SINGLE_FILE, INDEX_FILE))


def causal_architecture(path: str) -> str | None:
  """The causal LM architecture a Hugging Face folder's config.json names (e.g. 'LlamaForCausalLM'), else None."""
  folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
  if not os.path.isfile(os.path.join(folder, CONFIG_FILE)):
    return None
  names = hf_causal.read_hf_config(folder).get('architectures') or []
  return next((a for a in names if a in hf_causal_names.SUPPORTED), None)


def load(path: str | os.PathLike, config: ModelConfig, *, shardings: common.ShardingsArg = None,
         expected_shapes: Mapping[str, Any] | None = None) -> dict:
  """The network's params of `config`'s family from `path`, each leaf in `config.param_dtype`."""
  family = getattr(config, 'family', None)
  if family not in _READERS:
    raise CheckpointError(f'no checkpoint reader for model family {family!r}; readers: {", ".join(sorted(_READERS))}')
  return _READERS[family](os.fspath(path), config, shardings, expected_shapes)


def _encoder_decoder(path: str, config: Any, shardings: common.ShardingsArg,
                     expected_shapes: Mapping[str, Any] | None) -> dict:
  if is_hf_checkpoint(path):
    arch = causal_architecture(path)
    if arch is not None:
      raise CheckpointError(f'{path} is a Hugging Face causal LM ({arch}) but MODEL_CONFIG is a T5 config '
                            f'({type(config).__name__}): use a causal LM models/*.gin (e.g. models/llama3_2_1b.gin) or '
                            'MODEL_CONFIG = @jaxprompt.hf_model_config() (models/hf_causal.gin)')
    return load_hf_t5(path, config=config, dtype=config.param_dtype, shardings=shardings,
                      expected_shapes=expected_shapes)[0]
  return t5x.load_t5x_checkpoint(path, dtype=config.param_dtype, shardings=shardings, expected_shapes=expected_shapes,
                                 scan_layers=config.scan_layers)


def _is_t5x(path: str) -> bool:
  try:
    t5x.latest_checkpoint(path)  # a checkpoint, or a model dir holding one
  except CheckpointError:
    return False
  return True


def _refuse_t5x(path: str, config: Any, family: str) -> None:
  if not is_hf_checkpoint(path) and os.path.exists(path) and _is_t5x(path):
    raise CheckpointError(f'{path} is a T5X checkpoint but MODEL_CONFIG is a {family} config '
                          f'({type(config).__name__}): a {family} model reads a Hugging Face folder (config.json, '
                          'model.safetensors or its index, tokenizer.json); a T5X checkpoint needs a T5 models/*.gin')


def _decoder_only(path: str, config: Any, shardings: common.ShardingsArg,
                  expected_shapes: Mapping[str, Any] | None) -> dict:
  _refuse_t5x(path, config, 'decoder-only')
  return hf_causal.load_hf_causal(path, config=config, shardings=shardings, expected_shapes=expected_shapes)[0]


def _encoder_only(path: str, config: Any, shardings: common.ShardingsArg,
                  expected_shapes: Mapping[str, Any] | None) -> dict:
  _refuse_t5x(path, config, 'encoder-only')
  return hf_encoder.load_hf_encoder(path, config=config, shardings=shardings, expected_shapes=expected_shapes)[0]


register('encoder_decoder', _encoder_decoder)
register('decoder_only', _decoder_only)
register('encoder_only', _encoder_only)
