"""Writes a T5X parameter tree as a Hugging Face T5 folder that `T5ForConditionalGeneration.from_pretrained` loads
(the inverse of `huggingface.load_hf_t5`, through the same name map, `hf_names`).

  config.json                          the architecture (`hf_names.HF_FIELDS`, `feed_forward_proj`), ids, dropout
  generation_config.json               decoder start 0, eos 1, pad 0 (t5x's)
  model.safetensors                    every tensor, HF names and layouts (kernels transposed), the stored dtype;
  or model-0000i-of-0000n.safetensors  shards of at most `max_shard_bytes` (a larger tensor gets a shard of its
     + model.safetensors.index.json    own) and the index transformers reads them by
  spiece.model, tokenizer*.json, ...   with a SentencePiece model: `hf_tokenizer`

The output head. A T5 1.0-style model (`logits_via_embedding`: the decoder output times `d_model**-0.5`, then
the embedding) is written with no `lm_head.weight` and `tie_word_embeddings` and `scale_decoder_outputs` true:
transformers ties the missing head to `shared.weight` and scales. A T5 1.1-style model gets its own
`lm_head.weight` and both flags false. transformers 5 forces `tie_word_embeddings` to true for every T5
(config.json's value only decides `scale_decoder_outputs`) and ties a stored head that equals the embedding;
it keeps one that differs, logging "both are present in the checkpoints with different values, so we will NOT
tie them". A conversion that builds the torch model and copies the weights into it loses here: the model
is tied when built, so copying the head overwrites the embedding. Writing the file directly does not.

Memory: tensors are read one at a time (lazily for checkpoint sources: `common.ArraySource`) and a shard is
written as soon as the next tensor would overflow it, so the host holds at most one shard plus the tensor being
converted (its read, its transposed copy, the reader's buffers): about `max_shard_bytes` + 3 x the largest tensor,
never the model (bench/hf_export.py: t5_1_1_base, 944 MiB, +323 MiB with 64 MiB shards, +1102 MiB in one file).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from jaxprompt.checkpoints import common, hf_names, hf_tokenizer
from jaxprompt.checkpoints.huggingface import CONFIG_FILE, INDEX_FILE, SINGLE_FILE
from jaxprompt.errors import CheckpointError
from jaxprompt.models.config import T5Config

GENERATION_CONFIG_FILE = 'generation_config.json'
DEFAULT_SHARD_BYTES = 2 * 1024**3
# The files of a Hugging Face T5 folder this writer owns: `overwrite` replaces these and leaves anything else.
_OWN_FILES = re.compile(r'(config\.json|generation_config\.json|model\.safetensors(\.index\.json)?|'
                        r'model-\d{5}-of-\d{5}\.safetensors|spiece\.model|tokenizer\.json|tokenizer_config\.json|'
                        r'special_tokens_map\.json)')
_SHARD = 'model-{:05d}-of-{:05d}.safetensors'
Params = Mapping[str, Any]  # nested or flat {'a/b': leaf}

# ------------------------------------------------------------------------------------------------ config


def hf_config(config: T5Config, dtype: str) -> dict[str, Any]:
  """config.json for `config` (parameters stored as `dtype`, e.g. 'float32'): what `hf_names` reads back."""
  out: dict[str, Any] = {'architectures': ['T5ForConditionalGeneration'], 'model_type': 't5'}
  out.update({hf_key: getattr(config, field) for field, (hf_key, _) in hf_names.HF_FIELDS.items()})
  tied = bool(config.logits_via_embedding)
  out.update(num_decoder_layers=config.num_decoder_layers, feed_forward_proj=hf_names.feed_forward_proj(
      config.mlp_activations), tie_word_embeddings=tied, scale_decoder_outputs=tied, dropout_rate=config.dropout_rate,
             initializer_factor=1.0, is_encoder_decoder=True, use_cache=True, pad_token_id=hf_tokenizer.PAD_ID,
             eos_token_id=hf_tokenizer.EOS_ID, decoder_start_token_id=hf_tokenizer.PAD_ID, dtype=dtype)
  return out


def _generation_config() -> dict[str, int]:
  return {
      'decoder_start_token_id': hf_tokenizer.PAD_ID, 'eos_token_id': hf_tokenizer.EOS_ID,
      'pad_token_id': hf_tokenizer.PAD_ID
  }


# ------------------------------------------------------------------------------------------------ sources


class _Leaf(common.ArraySource):
  """An array already in memory (numpy or jax), converted to numpy only when read."""

  def __init__(self, name: str, value: Any):
    self.name, self.value, self.where = name, value, 'the parameters'

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(np.shape(self.value))

  def start_read(self, index: common.Index) -> common.Reader:
    return lambda: np.asarray(self.value[index])


class _Layer(common.ArraySource):
  """Layer `layer` of a scanned parameter (`[layers, ...]`): reads only that layer's slice."""

  def __init__(self, name: str, stacked: common.ArraySource, layer: int):
    self.name, self.stacked, self.layer, self.where = name, stacked, layer, stacked.where

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.stacked.shape[1:])

  def start_read(self, index: common.Index) -> common.Reader:
    read = self.stacked.start_read((slice(self.layer, self.layer + 1), *index))
    return lambda: read()[0]


def _sources(params: Params) -> dict[str, common.ArraySource]:
  """{unscanned T5X path: source} of a nested or flat tree of arrays / sources, scanned stacks split by layer."""
  out: dict[str, common.ArraySource] = {}
  for path, value in common.flatten_params(params).items():
    source = value if isinstance(value, common.ArraySource) else _Leaf(path, value)
    stack, *rest = path.split('/')
    if rest[:1] == ['layers'] and len(rest) > 1 and source.shape:  # `T5Config(scan_layers=True)`'s layout
      for i in range(source.shape[0]):
        name = '/'.join([stack, f'layers_{i}', *rest[1:]])
        out[name] = _Layer(name, source, i)
    else:
      out[path] = source
  return out


def _read(source: common.ArraySource) -> np.ndarray:
  return common.read_guarded(source, source.start_read(tuple(slice(0, d) for d in source.shape)))


# ------------------------------------------------------------------------------------------------ writing


def _save_shard(shard: Mapping[str, np.ndarray], folder: str, number: int) -> list[str]:
  save_file(dict(shard), os.path.join(folder, f'part-{number}'), metadata={'format': 'pt'})
  return list(shard)


def _write_tensors(plan: Mapping[str, hf_names.Entry], sources: Mapping[str, common.ArraySource], folder: str,
                   max_shard_bytes: int, dtype: Any) -> tuple[list[str], int, str]:
  """Writes every tensor in HF's names and layouts, shard by shard; returns (files, total bytes, the embedding's
  dtype name)."""
  shard: dict[str, np.ndarray] = {}
  written: list[list[str]] = []  # each shard's keys
  size = total = 0
  stored = ''
  for path, entry in plan.items():
    array = _read(sources[path])
    array = array.T if entry.transpose else array
    if dtype is not None and (np.issubdtype(array.dtype, np.floating) or array.dtype.name == 'bfloat16'):
      array = array.astype(dtype, copy=False)
    array = np.ascontiguousarray(array)
    stored = stored or array.dtype.name
    if shard and size + array.nbytes > max_shard_bytes:
      written.append(_save_shard(shard, folder, len(written)))
      shard, size = {}, 0  # the written arrays go now
    shard[entry.key] = array
    size += array.nbytes
    total += array.nbytes
  written.append(_save_shard(shard, folder, len(written)))
  names = [SINGLE_FILE] if len(written) == 1 else [_SHARD.format(i + 1, len(written)) for i in range(len(written))]
  for i, name in enumerate(names):
    os.rename(os.path.join(folder, f'part-{i}'), os.path.join(folder, name))
  if len(names) > 1:
    index = {'metadata': {'total_size': total}, 'weight_map': {k: n for n, keys in zip(names, written) for k in keys}}
    _write_json(os.path.join(folder, INDEX_FILE), index)
    names.append(INDEX_FILE)
  return names, total, stored


def _write_json(path: str, value: Any) -> None:
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(value, f, indent=2, sort_keys=True)
    f.write('\n')


def check_output(output: str, overwrite: bool) -> None:
  """A local folder that is absent, empty, or (with `overwrite`) to be refreshed."""
  if '://' in output:
    raise CheckpointError(f'{output}: a Hugging Face folder is written to a local path (copy it afterwards, e.g. '
                          'gsutil -m cp -r)')
  if os.path.exists(output) and not os.path.isdir(output):
    raise CheckpointError(f'{output} is a file; a Hugging Face model is a folder: give a folder path')
  entries = sorted(os.listdir(output)) if os.path.isdir(output) else []
  if entries and not overwrite:
    raise CheckpointError(f'{output} is not empty ({", ".join(entries[:3])}{", ..." if len(entries) > 3 else ""}): '
                          'pass --overwrite (overwrite=True) to replace the Hugging Face model files in it')


def _install(staging: str, output: str) -> None:
  """Moves the staged files into `output`: a new folder in one rename; an existing one file by file, then drops
  the model files of an earlier export that this one does not have (stale shards)."""
  if not os.path.exists(output):
    os.rename(staging, output)
    return
  new = set(os.listdir(staging))
  for name in new:
    os.replace(os.path.join(staging, name), os.path.join(output, name))
  for name in os.listdir(output):
    if name not in new and _OWN_FILES.fullmatch(name) and os.path.isfile(os.path.join(output, name)):
      os.remove(os.path.join(output, name))


def save_hf_folder(params: Params, plan: Mapping[str, hf_names.Entry], config_json: Callable[[str], dict[str, Any]],
                   output: str | os.PathLike, *, write_extra: Callable[[str], list[str]] | None = None,
                   overwrite: bool = False, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                   dtype: Any = None) -> tuple[list[str], int, str]:
  """Writes `params` (jaxprompt names, scanned or not) as a Hugging Face folder of any family; returns (its files,
  the tensors' bytes, their dtype name).

  Args:
    params: the parameter tree (arrays or unread `common.ArraySource`s).
    plan: {unscanned param path: Entry}, the tensors to write (the family's name map).
    config_json: the stored dtype name -> config.json's contents.
    output: a local folder, absent or empty unless `overwrite` (which replaces only an HF folder's files).
    write_extra: writes further files (a tokenizer) into the folder being staged; returns their names.
    max_shard_bytes: above this the tensors go into several files and an index.
    dtype: cast floating parameters to this dtype; None keeps the stored one.
  """
  output = os.fspath(output)
  check_output(output, overwrite)
  sources = _sources(params)
  common.check_shapes(sources, {path: entry.shape for path, entry in plan.items()}, 'the parameters')
  if max_shard_bytes <= 0:
    raise CheckpointError(f'max_shard_bytes must be positive, got {max_shard_bytes}')
  staging = f'{os.path.abspath(output)}.tmp-{int(time.time())}-{os.getpid()}'  # beside it: renames stay on one disk
  os.makedirs(staging)
  try:
    files, total, stored = _write_tensors(plan, sources, staging, max_shard_bytes, dtype)
    _write_json(os.path.join(staging, CONFIG_FILE), config_json(stored))
    for name in files:  # safetensors creates its files owner-only; give them the mode open() gives config.json
      shutil.copymode(os.path.join(staging, CONFIG_FILE), os.path.join(staging, name))
    files.append(CONFIG_FILE)
    if write_extra is not None:
      files += write_extra(staging)
    _install(staging, output)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return files, total, stored


def save_hf_t5(params: Params, config: T5Config, output: str | os.PathLike, *, spm_model: bytes | None = None,
               extra_ids: int = 0, spm_where: str = 'the SentencePiece model', overwrite: bool = False,
               max_shard_bytes: int = DEFAULT_SHARD_BYTES, dtype: Any = None) -> dict[str, Any]:
  """Writes `params` (T5X names; arrays or unread `common.ArraySource`s; scanned or not) as a Hugging Face T5
  folder; returns a summary.

  Args:
    params: the model's parameter tree, e.g. `load_t5x_checkpoint(path)` or `t5x.t5x_sources(ckpt)` (unread:
      each tensor is then read when written).
    config: its architecture; the parameters must have exactly the shapes it implies.
    output: a local folder, absent or empty unless `overwrite` (which replaces only an HF folder's files).
    spm_model: the bytes of the SentencePiece model the model was trained with (`spm_where` names it in errors)
      and seqio's `extra_ids`: the tokenizer files. None writes the model alone.
    max_shard_bytes: above this the tensors go into several files and an index.
    dtype: cast floating parameters to this dtype; None keeps the stored one.
  """
  output = os.fspath(output)
  check_output(output, overwrite)
  hf_names.feed_forward_proj(config.mlp_activations)  # a config HF cannot express fails before anything is read
  plan = hf_names.t5x_plan(config, None if config.logits_via_embedding else hf_names.HEAD_KEY)
  if spm_model is not None:
    ids = hf_tokenizer.piece_count(spm_model, spm_where) + extra_ids
    if ids > config.vocab_size:
      raise CheckpointError(f'{spm_where}: {ids} token ids with {extra_ids} extra ids, but the model embeds only '
                            f'{config.vocab_size}: the wrong vocabulary for this model?')

  def extra(staging: str) -> list[str]:
    _write_json(os.path.join(staging, GENERATION_CONFIG_FILE), _generation_config())
    tokenizer = [] if spm_model is None else hf_tokenizer.write_tokenizer(staging, spm_model, extra_ids, spm_where)
    return [GENERATION_CONFIG_FILE] + tokenizer

  files, total, stored = save_hf_folder(params, plan, lambda stored: hf_config(config, stored), output,
                                        write_extra=extra, overwrite=overwrite, max_shard_bytes=max_shard_bytes,
                                        dtype=dtype)
  return {
      'output': output, 'format': 'hf_model', 'files': sorted(files), 'tensors': len(plan), 'bytes': total,
      'dtype': stored, 'tied_head': bool(config.logits_via_embedding), 'tokenizer': spm_model is not None
  }
