"""Reader for Hugging Face BERT / RoBERTa folders (safetensors) into `jaxprompt.models.bert.BertEncoder` params.

A folder holds `config.json` (its `architectures` and `model_type` pick BERT or RoBERTa, `hf_encoder_names`) and
`model.safetensors` or `model.safetensors.index.json` + shards, read as the causal reader reads them
(`hf_causal.plan_sources`, `common.materialize`: each parameter only where a local device holds a slice of it, cast
to `config.param_dtype`). The encoder is read, its pooler when the file has one; a head the file holds is not.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from jaxprompt.checkpoints import common, hf_encoder_names
from jaxprompt.checkpoints.hf_causal import config_file, locate_tensors, plan_sources, read_hf_config
from jaxprompt.errors import ConfigError
from jaxprompt.models.encoder_config import EncoderConfig

KIND = 'BERT / RoBERTa'
MODEL_TYPES = ('bert', 'roberta')  # config.json's model_type of the folders read here


def _read(path: str) -> tuple[EncoderConfig, str, dict[str, Any], str, str]:
  """(the config the folder implies, its architecture, its tensors by today's names, their prefix, the file listing
  them)."""
  where = config_file(path)
  hf = read_hf_config(path, KIND)
  arch = hf_encoder_names.architecture(hf, where)
  tensors, weights = locate_tensors(path)
  tensors = hf_encoder_names.canonical_names(tensors)
  prefix = hf_encoder_names.tensor_prefix(tensors, arch)
  implied, _ = hf_encoder_names.encoder_config(hf, where, hf_encoder_names.has_pooler(tensors, prefix))
  return implied, arch, tensors, prefix, weights


def hf_encoder_config(path: str | os.PathLike) -> EncoderConfig:
  """The EncoderConfig a Hugging Face BERT / RoBERTa folder describes (float32, layers unscanned, no dropout)."""
  return _read(os.fspath(path))[0]


def load_hf_encoder(path: str | os.PathLike, *, config: EncoderConfig | None = None,
                    shardings: common.ShardingsArg = None,
                    expected_shapes: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], EncoderConfig]:
  """Reads a Hugging Face BERT / RoBERTa model (`hf_encoder_names.SUPPORTED`: the bare model or one with a head).

  Args:
    path: a folder with config.json and `model.safetensors` or `model.safetensors.index.json` (+ shards).
    config: the model config; its architecture fields must match the folder's. None: the folder's (float32,
      unscanned, no dropout).
    shardings: None (numpy leaves), one Sharding for all, or a tree of Shardings like the params.
    expected_shapes: optional tree of shapes / ShapeDtypeStructs the params must match exactly.

  Returns:
    (params, config): the `BertEncoder` param tree (`layers` stacked when `config.scan_layers`), every floating
    leaf in `config.param_dtype`.
  """
  path = os.fspath(path)
  implied, _, tensors, prefix, weights = _read(path)
  origin = config_file(path)
  if config is None:
    config = implied
  else:
    if not isinstance(config, EncoderConfig):
      raise ConfigError(f'{path}: a BERT / RoBERTa model needs an EncoderConfig, got {type(config).__name__}')
    hf_encoder_names.check_config(config, implied, origin)
    origin = 'the given config'
  plan = hf_encoder_names.encoder_plan(config, prefix)
  sources = plan_sources(plan, tensors, config, weights, origin, ignored=hf_encoder_names.IGNORED)
  params = common.materialize(sources, dtype=config.param_dtype, shardings=shardings, expected_shapes=expected_shapes,
                              ckpt=path)
  return params, config
