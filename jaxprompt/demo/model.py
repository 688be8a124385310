"""The demo model: its architecture, where the shipped checkpoint and vocabulary live, and gin hooks for them.

The shipped model (`jaxprompt/assets/demo_model/`, written by `python -m jaxprompt.demo.pretrain`):
  checkpoint_<step>/checkpoint  T5X classic checkpoint, every array inline in the msgpack, float32
  vocab.model                   SentencePiece (BPE, byte fallback; pad 0, eos 1, unk 2; no extra ids)
  config.json                   the T5Config, the pretraining recipe and its per-skill accuracies
gin (gin_configs/models/demo.gin): `@jaxprompt.demo.demo_model_config()`, `@jaxprompt.demo.checkpoint_path()`,
`@jaxprompt.demo.demo_vocabulary()`.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import os
from typing import Any

import gin
import jax.numpy as jnp

from jaxprompt.data import task_modules
from jaxprompt.data import vocab as vocab_lib
from jaxprompt.errors import CheckpointError, ConfigError
from jaxprompt.models.base import ModelConfig
from jaxprompt.models.config import T5Config

GIN_MODULE = 'jaxprompt.demo'
TASK_PREFIX = 'demo_'  # every demo task and mixture (`jaxprompt.demo.tasks`)
VOCAB_FILE = 'vocab.model'
CONFIG_FILE = 'config.json'
VOCAB_SIZE = 768  # SentencePiece pieces; a multiple of 128, so also the embedding size

# T5 1.1 architecture (gated GELU, untied logits, relative position buckets), sized to pretrain on a CPU.
DEMO_CONFIG = T5Config(vocab_size=VOCAB_SIZE, emb_dim=128, num_heads=4, head_dim=32, mlp_dim=512, num_encoder_layers=3,
                       num_decoder_layers=3, mlp_activations=('gelu', 'linear'), logits_via_embedding=False,
                       relpos_num_buckets=32, relpos_max_distance=128, dropout_rate=0.0)
# Ids below this are <pad>, </s>, <unk> and the 256 byte-fallback pieces; word pieces follow in BPE merge
# order (frequent first): the population for sampled-vocab prompt initialisation.
FIRST_WORD_PIECE = 259


def asset_dir() -> str:
  """`jaxprompt/assets/demo_model` inside the installed package."""
  return str(importlib.resources.files('jaxprompt') / 'assets' / 'demo_model')


def config_to_json(config: T5Config) -> dict[str, Any]:
  out = dataclasses.asdict(config)
  for key in ('dtype', 'param_dtype'):
    out[key] = jnp.dtype(out[key]).name
  out['mlp_activations'] = list(out['mlp_activations'])
  return out


def config_from_json(values: dict[str, Any]) -> T5Config:
  values = dict(values)
  for key in ('dtype', 'param_dtype'):
    if key in values:
      values[key] = jnp.dtype(values[key])
  known = {f.name for f in dataclasses.fields(T5Config)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise ConfigError(f'demo model config has unknown fields {unknown}')
  return T5Config(**values)


def read_model_info(model_dir: str | None = None) -> dict[str, Any]:
  """The `config.json` of a demo model dir (default: the shipped one)."""
  path = os.path.join(model_dir or asset_dir(), CONFIG_FILE)
  if not os.path.isfile(path):
    raise CheckpointError(f'{path} does not exist: the demo model is missing (run python -m '
                          'jaxprompt.demo.pretrain --output <dir>, or reinstall jaxprompt)')
  with open(path) as f:
    return json.load(f)


@gin.configurable(module=GIN_MODULE)
def architecture(**overrides) -> ModelConfig:
  """`DEMO_CONFIG` (what pretraining builds), with optional field overrides."""
  return DEMO_CONFIG.replace(**overrides) if overrides else DEMO_CONFIG


# The gin names are unique across jaxprompt (`jaxprompt.model_config` and `jaxprompt.vocabulary` exist): a run's
# config.gin uses short names, which must read back in any process, whatever it imported.
@gin.configurable('demo_model_config', module=GIN_MODULE)
def model_config(model_dir: str | None = None, dtype: Any = None) -> ModelConfig:
  """The T5Config of a demo model dir (default: the shipped model), from its config.json."""
  config = config_from_json(read_model_info(model_dir)['model_config'])
  return config.replace(dtype=jnp.dtype(dtype)) if dtype is not None else config


@gin.configurable(module=GIN_MODULE)
def checkpoint_path(model_dir: str | None = None) -> str:
  """The demo model dir (T5X `checkpoint_<step>` inside); `load_t5x_checkpoint` picks the latest step."""
  path = model_dir or asset_dir()
  if not os.path.isdir(path):
    raise CheckpointError(f'demo model dir {path} does not exist')
  return path


def vocabulary_path(model_dir: str | None = None) -> str:
  path = os.path.join(model_dir or asset_dir(), VOCAB_FILE)
  if not os.path.isfile(path):
    raise CheckpointError(f'demo vocabulary {path} does not exist')
  return path


@functools.cache
def _load_vocabulary(path: str) -> Any:
  return vocab_lib.get_vocabulary(path, extra_ids=0)  # fails now on a bad file


@gin.configurable('demo_vocabulary', module=GIN_MODULE)
def vocabulary(model_dir: str | None = None) -> Any:
  """The demo model's SentencePiece vocabulary, numbered as seqio does (one object per path)."""
  return _load_vocabulary(vocabulary_path(model_dir))


# The demo tasks register when a run first looks one up (text tasks: eval reads them without TensorFlow):
# models/demo.gin imports this module only.
task_modules.provide(TASK_PREFIX, 'jaxprompt.demo.tasks')
