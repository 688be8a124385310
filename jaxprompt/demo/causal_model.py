"""The causal demo model: a tiny Llama pretrained by jaxprompt on the demo's skills, shipped as a Hugging Face folder.

The shipped folder (`jaxprompt/assets/demo_causal_model/`, written by
`python -m jaxprompt.demo.pretrain --family causal`) is what `checkpoints/hf_causal.py` and `data/hf_vocab.py` read
from any Llama download:
  config.json            LlamaForCausalLM (RMSNorm, rotary, SwiGLU, 4 query heads sharing 2 kv heads, untied head)
  model.safetensors      float32, transformers' tensor names and layouts
  tokenizer.model        the T5 demo's SentencePiece vocabulary (the same 768 pieces: the demo tasks reuse it)
  tokenizer_config.json  no BOS (the vocabulary has none), EOS `</s>` = 1, PAD `<pad>` = 0
  pretraining.json       the recipe and the per-skill validation accuracies
gin (gin_configs/models/demo_causal.gin): `@jaxprompt.demo.causal_architecture()` (what pretraining builds),
`@jaxprompt.demo.causal_model_dir()` (the folder, HF_MODEL_DIR of models/hf_causal.gin).
"""
from __future__ import annotations

import functools
import importlib.resources
import json
import os
from collections.abc import Mapping
from typing import Any

import gin
import numpy as np

from jaxprompt.demo import model as demo_model
from jaxprompt.errors import CheckpointError
from jaxprompt.models.base import ModelConfig
from jaxprompt.models.decoder_config import DecoderConfig

ARCHITECTURE = 'LlamaForCausalLM'
VOCAB_FILE = 'tokenizer.model'
TOKENIZER_CONFIG_FILE = 'tokenizer_config.json'
CONFIG_FILE = 'config.json'
WEIGHTS_FILE = 'model.safetensors'
INFO_FILE = 'pretraining.json'
PAD_ID, EOS_ID = 0, 1  # the demo vocabulary's (`vocabularies.SP_OPTIONS`); it has no BOS piece

# Llama architecture sized to pretrain on a CPU in minutes (~1 M parameters, 4 MB in float32).
CAUSAL_CONFIG = DecoderConfig(vocab_size=demo_model.VOCAB_SIZE, emb_dim=128, num_heads=4, num_kv_heads=2, head_dim=32,
                              mlp_dim=384, num_layers=4, mlp_activations=('silu', 'linear'), norm='rms',
                              norm_epsilon=1e-6, positions='rotary', max_positions=256, rope_theta=10000.0,
                              tie_word_embeddings=False, eos_id=EOS_ID, pad_id=PAD_ID)


def asset_dir() -> str:
  """`jaxprompt/assets/demo_causal_model` inside the installed package."""
  return str(importlib.resources.files('jaxprompt') / 'assets' / 'demo_causal_model')


@gin.configurable(module=demo_model.GIN_MODULE)
def causal_architecture(**overrides) -> ModelConfig:  # MODEL_CONFIG's check reads the annotation
  """`CAUSAL_CONFIG` (what pretraining builds, a DecoderConfig), with optional field overrides."""
  return CAUSAL_CONFIG.replace(**overrides) if overrides else CAUSAL_CONFIG


def checked_folder(path: str, family: str) -> str:
  """`path` when it holds a demo model's config.json, else one CheckpointError saying how to make one."""
  if not os.path.isfile(os.path.join(path, CONFIG_FILE)):
    raise CheckpointError(f'{path} holds no {family} demo model (no {CONFIG_FILE}): run python -m '
                          f'jaxprompt.demo.pretrain --family {family} --output <dir>, or reinstall jaxprompt')
  return path


@gin.configurable(module=demo_model.GIN_MODULE)
def causal_model_dir(model_dir: str | None = None) -> str:
  """The causal demo model's Hugging Face folder (default: the shipped one)."""
  return checked_folder(model_dir or asset_dir(), 'causal')


@functools.cache
def _load_vocabulary(path: str) -> Any:
  from jaxprompt.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  return vocab_lib.get_vocabulary(path)  # a folder: its tokenizer (`data.hf_vocab.HfVocabulary`)


def vocabulary(model_dir: str | None = None) -> Any:
  """The folder's tokenizer as the causal LM reads it (one object per folder; default: the shipped one)."""
  path = model_dir or asset_dir()
  if not os.path.isfile(os.path.join(path, VOCAB_FILE)):
    raise CheckpointError(f'causal demo vocabulary {os.path.join(path, VOCAB_FILE)} does not exist')
  return _load_vocabulary(os.path.abspath(path))


def read_info(model_dir: str | None = None) -> dict[str, Any]:
  """The recipe and accuracies (`pretraining.json`) of a causal demo folder (default: the shipped one)."""
  with open(os.path.join(causal_model_dir(model_dir), INFO_FILE)) as f:
    return json.load(f)


def hf_config(config: DecoderConfig) -> dict[str, Any]:
  """config.json of `config` as transformers' LlamaConfig writes it."""
  return {
      'architectures': [ARCHITECTURE], 'model_type': 'llama', 'vocab_size': config.vocab_size,
      'hidden_size': config.emb_dim, 'intermediate_size': config.mlp_dim, 'num_hidden_layers': config.num_layers,
      'num_attention_heads': config.num_heads, 'num_key_value_heads': config.num_kv_heads, 'head_dim': config.head_dim,
      'max_position_embeddings': config.max_positions, 'rms_norm_eps': config.norm_epsilon, 'rope_theta':
          config.rope_theta, 'hidden_act': config.mlp_activations[0], 'attention_bias': config.qkv_bias, 'mlp_bias':
              config.mlp_bias, 'tie_word_embeddings': config.tie_word_embeddings, 'bos_token_id': config.bos_id,
      'eos_token_id': config.eos_id, 'pad_token_id': config.pad_id, 'torch_dtype': 'float32'
  }


# transformers' LlamaTokenizer would put its default `<s>` in front of every text: the demo vocabulary has none.
TOKENIZER_CONFIG = {
    'tokenizer_class': 'LlamaTokenizer', 'add_bos_token': False, 'add_eos_token': False, 'bos_token': None,
    'eos_token': '</s>', 'unk_token': '<unk>', 'pad_token': '<pad>', 'legacy': False
}


def write_json(path: str, value: Any) -> None:
  with open(path, 'w') as f:
    f.write(json.dumps(value, indent=1, sort_keys=True) + '\n')


def write_model(params: Mapping[str, Any], config: DecoderConfig, output: str) -> list[str]:
  """config.json, model.safetensors (transformers' names, [out, in] kernels) of the unscanned `params`, and
  tokenizer_config.json, beside the tokenizer.model pretraining wrote (kept); returns the files written."""
  from jaxprompt.checkpoints import hf_causal_names, hf_writer  # pylint: disable=g-import-not-at-top

  def tokenizer_config(staging: str) -> list[str]:
    write_json(os.path.join(staging, TOKENIZER_CONFIG_FILE), TOKENIZER_CONFIG)
    return [TOKENIZER_CONFIG_FILE]

  files, _, _ = hf_writer.save_hf_folder(params, hf_causal_names.causal_plan(config,
                                                                             ARCHITECTURE), lambda _: hf_config(config),
                                         output, write_extra=tokenizer_config, overwrite=True, dtype=np.float32)
  return files


def write_info(output: str, info: Mapping[str, Any]) -> str:
  path = os.path.join(output, INFO_FILE)
  write_json(path, info)
  return path
