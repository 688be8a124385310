"""The encoder demo model: a tiny BERT pretrained by jaxprompt with masked LM on the demo's review text, shipped as a
Hugging Face BertForMaskedLM folder.

The shipped folder (`jaxprompt/assets/demo_encoder_model/`, written by
`python -m jaxprompt.demo.pretrain --family encoder`) is what `checkpoints/hf_encoder.py` and `data/hf_vocab.py`
read from any BERT download, and what transformers' `BertForMaskedLM` / `AutoTokenizer` load:
  config.json            BertForMaskedLM (post-LayerNorm, learned positions, erf GELU, pooler, tied MLM decoder)
  model.safetensors      float32, transformers' names: `bert.*` (encoder, pooler) and `cls.predictions.*` (MLM head)
  tokenizer.json         a lower-cased WordPiece trained on the same text ([PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3,
                         [MASK] 4), [CLS] ... [SEP] around a text
  tokenizer_config.json  BertTokenizer, its special tokens and lower-casing
  pretraining.json       the recipe, the measured time and the held-out masked-LM accuracy beside a unigram baseline
"""
from __future__ import annotations

import functools
import importlib.resources
import json
import os
import shutil
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxprompt.demo import causal_model, vocabularies
from jaxprompt.errors import CheckpointError
from jaxprompt.models.base import ModelConfig
from jaxprompt.models.encoder_config import EncoderConfig

ARCHITECTURE = 'BertForMaskedLM'
VOCAB_FILE = 'tokenizer.json'
TOKENIZER_CONFIG_FILE = 'tokenizer_config.json'
CONFIG_FILE = causal_model.CONFIG_FILE
WEIGHTS_FILE = 'model.safetensors'
INFO_FILE = causal_model.INFO_FILE
ENCODER_KEY, HEAD_KEY = 'encoder', 'mlm_head'  # the two subtrees of the pretrained parameters
MAX_VOCAB = 256  # WordPiece tokens at most (the generated reviews need 174); the embedding has this many rows

# BERT sized to pretrain on a CPU in minutes (~0.87 M parameters, 3.5 MB in float32).
ENCODER_CONFIG = EncoderConfig(vocab_size=MAX_VOCAB, emb_dim=128, num_heads=4, head_dim=32, mlp_dim=512, num_layers=4,
                               activation='gelu_exact', norm_epsilon=1e-12, max_positions=128, type_vocab_size=2,
                               pooler=True, pad_id=0, dropout_rate=0.0)
TOKENIZER_CONFIG = {
    'tokenizer_class': 'BertTokenizer', 'do_lower_case': True, 'unk_token': '[UNK]', 'sep_token': '[SEP]',
    'pad_token': '[PAD]', 'cls_token': '[CLS]', 'mask_token': '[MASK]', 'model_max_length': 128
}


def asset_dir() -> str:
  """`jaxprompt/assets/demo_encoder_model` inside the installed package."""
  return str(importlib.resources.files('jaxprompt') / 'assets' / 'demo_encoder_model')


def encoder_architecture(**overrides) -> ModelConfig:
  """`ENCODER_CONFIG` (what pretraining builds), with optional field overrides."""
  return ENCODER_CONFIG.replace(**overrides) if overrides else ENCODER_CONFIG


def encoder_model_dir(model_dir: str | None = None) -> str:
  """The encoder demo model's Hugging Face folder (default: the shipped one)."""
  return causal_model.checked_folder(model_dir or asset_dir(), 'encoder')


@functools.cache
def _load_vocabulary(path: str) -> Any:
  from jaxprompt.data.hf_vocab import HfVocabulary  # pylint: disable=g-import-not-at-top
  return HfVocabulary(path)


def vocabulary(model_dir: str | None = None) -> Any:
  """The folder's WordPiece tokenizer (`data.hf_vocab.HfVocabulary`, one object per folder; default: shipped)."""
  path = model_dir or asset_dir()
  if not os.path.isfile(os.path.join(path, VOCAB_FILE)):
    raise CheckpointError(f'encoder demo vocabulary {os.path.join(path, VOCAB_FILE)} does not exist')
  return _load_vocabulary(os.path.abspath(path))


def train_vocabulary(seed: int, path: str) -> dict[str, Any]:
  """The WordPiece tokenizer.json of `seed` at `path`, and tokenizer_config.json beside it."""
  info = vocabularies.train_wordpiece(seed, path, MAX_VOCAB)
  causal_model.write_json(os.path.join(os.path.dirname(path), TOKENIZER_CONFIG_FILE), TOKENIZER_CONFIG)
  return info


def read_info(model_dir: str | None = None) -> dict[str, Any]:
  """The recipe and accuracies (`pretraining.json`) of an encoder demo folder (default: the shipped one)."""
  with open(os.path.join(encoder_model_dir(model_dir), INFO_FILE)) as f:
    return json.load(f)


def write_model(params: Mapping[str, Any], config: EncoderConfig, output: str) -> list[str]:
  """config.json and model.safetensors of {ENCODER_KEY: BertEncoder params, HEAD_KEY: MlmHead params} in `output`,
  beside the tokenizer files pretraining wrote there (kept); returns the files written."""
  from jaxprompt.checkpoints import hf_encoder_names, hf_writer  # pylint: disable=g-import-not-at-top
  plan = {f'{ENCODER_KEY}/{k}': v for k, v in hf_encoder_names.encoder_plan(config, 'bert.').items()}
  plan.update({f'{HEAD_KEY}/{k}': v for k, v in hf_encoder_names.mlm_head_plan(config).items()})
  tokenizer = [name for name in (VOCAB_FILE, TOKENIZER_CONFIG_FILE) if os.path.isfile(os.path.join(output, name))]

  def keep_tokenizer(staging: str) -> list[str]:  # the writer replaces a folder's tokenizer files: carry them over
    for name in tokenizer:
      shutil.copy(os.path.join(output, name), os.path.join(staging, name))
    return tokenizer

  files, _, _ = hf_writer.save_hf_folder(params, plan, lambda _: hf_encoder_names.bert_hf_config(config, ARCHITECTURE),
                                         output, write_extra=keep_tokenizer, overwrite=True, dtype=np.float32)
  return files


def read_pretrained(model_dir: str | None = None) -> tuple[dict[str, Any], EncoderConfig]:
  """({ENCODER_KEY: BertEncoder params, HEAD_KEY: MlmHead params}, config) of an encoder demo folder (default: the
  shipped one): the encoder through the package's BERT reader, the head from its `cls.predictions.*` tensors."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

  from jaxprompt.checkpoints import common, hf_encoder, hf_encoder_names  # pylint: disable=g-import-not-at-top
  path = encoder_model_dir(model_dir)
  encoder, config = hf_encoder.load_hf_encoder(path)
  tensors = load_file(os.path.join(path, WEIGHTS_FILE))
  head = {
      ours: tensors[entry.key].T if entry.transpose else tensors[entry.key]
      for ours, entry in hf_encoder_names.mlm_head_plan(config).items()
  }
  return {ENCODER_KEY: encoder, HEAD_KEY: common.unflatten_params(head)}, config


write_info = causal_model.write_info  # pretraining.json, as the causal folder's
