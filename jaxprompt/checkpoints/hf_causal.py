"""Reader for Hugging Face causal LM folders (Llama, Mistral, Qwen2, GPT-2 safetensors) into `CausalTransformer` params.

A folder holds `config.json` (its `architectures` picks the name map, `hf_causal_names`) and `model.safetensors`
or `model.safetensors.index.json` + shards. Each parameter is read from its tensor's bytes only where a local
device holds a slice of it (`common.materialize` with shardings: no host assembles the whole model) and cast to
`config.param_dtype`. A tied model may store `lm_head.weight` too; like transformers, the embedding wins.
"""
from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping
from typing import Any

from jaxprompt.checkpoints import common, hf_causal_names
from jaxprompt.checkpoints.hf_names import Entry
from jaxprompt.checkpoints.huggingface import CONFIG_FILE, INDEX_FILE, SINGLE_FILE, HFSource, _locate
from jaxprompt.errors import CheckpointError, ConfigError
from jaxprompt.models.decoder_config import DecoderConfig


def config_file(path: str) -> str:
  """config.json of a model folder, or of the folder holding a given file."""
  return os.path.join(path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path)), CONFIG_FILE)


def read_hf_config(path: str | os.PathLike, kind: str = 'causal LM') -> dict[str, Any]:
  """The parsed config.json of a Hugging Face model folder (or of the folder holding a given file); `kind` names
  the model the error expects there."""
  file = config_file(os.fspath(path))
  if not os.path.isfile(file):
    raise CheckpointError(f'{file}: no such file; a Hugging Face {kind} folder names its architecture there')
  return common.read_json_object(file)


def hf_causal_config(path: str | os.PathLike) -> DecoderConfig:
  """The DecoderConfig a Hugging Face causal LM folder's config.json describes (float32, layers unscanned)."""
  config, _ = hf_causal_names.decoder_config(read_hf_config(path), config_file(os.fspath(path)))
  return config


def locate_tensors(path: str) -> tuple[dict[str, Any], str]:
  """(the tensors of a folder / safetensors file / index, the file that lists them, for errors)."""
  tensors, folder = _locate(path)
  if not os.path.isdir(path):
    return tensors, path
  return tensors, os.path.join(folder, SINGLE_FILE if os.path.isfile(os.path.join(folder, SINGLE_FILE)) else INDEX_FILE)


def _hf_shape(entry: Entry) -> tuple[int, ...]:
  """The shape the HF tensor must have for `entry` (before it is sliced and transposed)."""
  shape = entry.shape
  if entry.part is not None:
    shape = shape[:-1] + (shape[-1] * entry.part[1],)
  return shape[::-1] if entry.transpose else shape


def plan_sources(plan: Mapping[str, Entry], tensors: Mapping[str, Any], config: Any, where: str, origin: str, *,
                 tolerated: Collection[str] = (), ignored: re.Pattern = hf_causal_names.IGNORED) -> dict[str, HFSource]:
  """Checks the file's tensors against `plan` (missing, unexpected, shapes); stacks layers when scanned.

  `tolerated` tensors and those `ignored` matches may be in the file without the plan reading them.
  """
  missing = sorted({e.key for e in plan.values()} - set(tensors))
  if missing:
    raise CheckpointError(f"{where}: tensor '{missing[0]}' is missing ({len(missing)} the config needs are: "
                          f'{", ".join(missing[:5])})')
  wanted = {e.key for e in plan.values()} | set(tolerated)
  unexpected = sorted(k for k in set(tensors) - wanted if not ignored.fullmatch(k))
  if unexpected:
    raise CheckpointError(f'{where}: {len(unexpected)} tensors do not fit {origin} ({config.num_layers} layers): '
                          f'{", ".join(unexpected[:5])}')
  sources = {}
  for path, entry in plan.items():
    tensor = tensors[entry.key]
    if tuple(tensor.shape) != _hf_shape(entry):
      raise CheckpointError(f"{tensor.file}: tensor '{entry.key}' has shape {list(tensor.shape)} but {origin} "
                            f'implies {list(_hf_shape(entry))} (for {path})')
    sources[path] = HFSource(path, entry, tensor)
  return common.stack_layer_sources(sources) if config.scan_layers else sources


def causal_sources(path: str | os.PathLike,
                   config: DecoderConfig | None = None) -> tuple[dict[str, common.ArraySource], DecoderConfig]:
  """({param path: its tensor's source}, config) of a Hugging Face causal LM folder, every tensor checked against
  the config (`load_hf_causal`'s arguments) by its header alone: nothing is read yet."""
  path = os.fspath(path)
  where = config_file(path)
  implied, arch = hf_causal_names.decoder_config(read_hf_config(path), where)
  if config is None:
    config, origin = implied, where
  else:
    if not isinstance(config, DecoderConfig):
      raise ConfigError(f'{path}: a causal LM needs a DecoderConfig, got {type(config).__name__}')
    hf_causal_names.check_config(config, implied, where)
    origin = 'the given config'
  tensors, weights = locate_tensors(path)
  prefix = 'transformer.' if arch == hf_causal_names.GPT2 and 'transformer.wte.weight' in tensors else ''
  plan = hf_causal_names.causal_plan(config, arch, prefix)
  tolerated = (hf_causal_names.HEAD_KEY,) if config.tie_word_embeddings else ()
  return plan_sources(plan, tensors, config, weights, origin, tolerated=tolerated), config


def load_hf_causal(path: str | os.PathLike, *, config: DecoderConfig | None = None,
                   shardings: common.ShardingsArg = None,
                   expected_shapes: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], DecoderConfig]:
  """Reads a Hugging Face causal LM (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, GPT2LMHeadModel).

  Args:
    path: a folder with config.json and `model.safetensors` or `model.safetensors.index.json` (+ shards).
    config: the model config; its architecture fields must match config.json's. None: config.json's (float32,
      unscanned, no dropout).
    shardings: None (numpy leaves), one Sharding for all, or a tree of Shardings like the params; each array
      is built from the slices its local devices hold.
    expected_shapes: optional tree of shapes / ShapeDtypeStructs the params must match exactly.

  Returns:
    (params, config): the `CausalTransformer` param tree (`layers` stacked when `config.scan_layers`), every
    floating leaf in `config.param_dtype`.
  """
  sources, config = causal_sources(path, config)
  params = common.materialize(sources, dtype=config.param_dtype, shardings=shardings, expected_shapes=expected_shapes,
                              ckpt=os.fspath(path))
  return params, config
