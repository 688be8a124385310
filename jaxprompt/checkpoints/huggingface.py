"""Reader for Hugging Face T5 / mT5 checkpoints (`model.safetensors`, possibly sharded) into the T5X tree.

Only safetensors is read (no torch at run time). Names, config.json fields and activations map through
`hf_names` (the map `hf_writer` writes with).

Output layer, as transformers 5.x runs it: the decoder output is scaled by `d_model ** -0.5` when
`config.json` has `scale_decoder_outputs` (newer files) or else `tie_word_embeddings` (default true); the
head is `lm_head.weight` when stored and different from `shared.weight`, otherwise `shared.weight`. Scaled +
shared is exactly t5x's `logits_via_embedding` (T5 1.0); the two rare mixed cases become a `logits_dense`
kernel (with the scale folded in when needed).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np
from safetensors import safe_open

from jaxprompt.checkpoints import common, hf_names
from jaxprompt.checkpoints.hf_names import t5x_plan
from jaxprompt.errors import CheckpointError
from jaxprompt.models.config import T5Config

SINGLE_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'
CONFIG_FILE = 'config.json'

_DTYPES = {
    'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16, 'I64': np.int64,
    'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8, 'BOOL': np.bool_
}
_HF_SOURCES = {
    'num_decoder_layers': 'num_decoder_layers', 'mlp_activations': 'feed_forward_proj',
    'logits_via_embedding': 'tie_word_embeddings / scale_decoder_outputs and lm_head.weight'
}
_ARCH_FIELDS = tuple(hf_names.HF_FIELDS) + tuple(_HF_SOURCES)

# ------------------------------------------------------------------------------------------ safetensors


@dataclasses.dataclass(frozen=True)
class _Tensor:
  """Where one tensor lives: file, dtype, shape and absolute byte range."""
  file: str
  key: str
  dtype: Any
  shape: tuple[int, ...]
  start: int
  end: int

  def array(self) -> np.ndarray:
    """A read-only memory map of the tensor: slicing it reads only the bytes needed."""
    buf = np.memmap(self.file, dtype=np.uint8, mode='r')
    return buf[self.start:self.end].view(self.dtype).reshape(self.shape)


def _read_header(file: str) -> dict[str, _Tensor]:
  """Tensors of one safetensors file (validated by the safetensors library; offsets from the header)."""
  try:
    with safe_open(file, framework='numpy') as f:
      keys = set(f.keys())
    with open(file, 'rb') as f:
      (size,) = struct.unpack('<Q', f.read(8))
      header = json.loads(f.read(size))
  except Exception as e:  # safetensors raises SafetensorError / OSError on damaged headers
    raise CheckpointError(f'{file}: not a readable safetensors file ({type(e).__name__}: {e})') from e
  tensors = {}
  for key in keys:
    info = header[key]
    if info['dtype'] not in _DTYPES:
      raise CheckpointError(f"{file}: tensor '{key}' has dtype {info['dtype']}, which this reader does not "
                            f"support ({', '.join(_DTYPES)})")
    begin, end = info['data_offsets']
    tensors[key] = _Tensor(file, key, _DTYPES[info['dtype']], tuple(info['shape']), 8 + size + begin, 8 + size + end)
  return tensors


def _read_index(index_file: str) -> dict[str, _Tensor]:
  """Tensors of a sharded checkpoint, checking every shard named in the index exists and holds its keys."""
  try:
    with open(index_file) as f:
      weight_map = json.load(f)['weight_map']
    if not isinstance(weight_map, dict):
      raise TypeError(f'weight_map is a {type(weight_map).__name__}, not a map')
  except (ValueError, KeyError, TypeError) as e:
    raise CheckpointError(f'{index_file}: not a safetensors index (expected {{"weight_map": {{key: file}}}}; '
                          f'{type(e).__name__}: {e})') from e
  folder = os.path.dirname(index_file)
  tensors: dict[str, _Tensor] = {}
  headers: dict[str, dict[str, _Tensor]] = {}
  for key, shard in sorted(weight_map.items()):
    file = os.path.join(folder, shard)
    if file not in headers:
      if not os.path.isfile(file):
        raise CheckpointError(f"{index_file}: shard '{shard}' (holding '{key}') is missing from {folder}")
      headers[file] = _read_header(file)
    if key not in headers[file]:
      raise CheckpointError(f"{index_file}: lists '{key}' in shard '{shard}', but {file} has no such tensor")
    tensors[key] = headers[file][key]
  return tensors


def _locate(path: str) -> tuple[dict[str, _Tensor], str]:
  """Reads the tensor index of `path` (folder, safetensors file or index json); returns it and the folder."""
  if not os.path.exists(path):
    raise CheckpointError(f'{path}: no such file or directory')
  if os.path.isdir(path):
    if os.path.isfile(os.path.join(path, SINGLE_FILE)):
      return _read_header(os.path.join(path, SINGLE_FILE)), path
    if os.path.isfile(os.path.join(path, INDEX_FILE)):
      return _read_index(os.path.join(path, INDEX_FILE)), path
    found = ', '.join(sorted(os.listdir(path))[:10]) or 'nothing'
    raise CheckpointError(f'{path}: no {SINGLE_FILE} or {INDEX_FILE} in this directory (found: {found}); only '
                          f'safetensors checkpoints are read (re-save with save_pretrained(safe_serialization=True))')
  folder = os.path.dirname(os.path.abspath(path))
  if path.endswith('.index.json'):
    return _read_index(path), folder
  return _read_header(path), folder


# ----------------------------------------------------------------------------------------------- config


def _read_hf_config(file: str) -> dict[str, Any]:
  hf = common.read_json_object(file)
  if hf.get('model_type', 't5') not in ('t5', 'mt5'):
    raise CheckpointError(f"{file}: model_type {hf['model_type']!r} is not supported (only 't5' and 'mt5')")
  return hf


def _config_fields(hf: dict[str, Any], where: str) -> dict[str, Any]:
  """The architecture fields (all but `logits_via_embedding`) that config.json implies, with HF defaults."""
  fields = {name: hf.get(key, default) for name, (key, default) in hf_names.HF_FIELDS.items()}
  fields['num_decoder_layers'] = hf.get('num_decoder_layers') or fields['num_encoder_layers']
  fields['mlp_activations'] = hf_names.activations(hf.get('feed_forward_proj', 'relu'), where)
  return fields


def _scales_decoder_output(hf: dict[str, Any]) -> bool:
  """Whether HF multiplies the decoder output by d_model**-0.5 before the head (transformers 5.x rule)."""
  if 'scale_decoder_outputs' in hf:
    return bool(hf['scale_decoder_outputs'])
  return hf.get('tie_word_embeddings', True) is not False


def _check_config(config: T5Config, implied: dict[str, Any], where: str) -> None:
  for name in _ARCH_FIELDS:
    ours, theirs = getattr(config, name), implied[name]
    same = math.isclose(ours, theirs, rel_tol=1e-6) if isinstance(ours, float) else ours == theirs
    if not same:
      hf_name = hf_names.HF_FIELDS[name][0] if name in hf_names.HF_FIELDS else _HF_SOURCES[name]
      raise CheckpointError(f'{where}: the checkpoint implies {name}={theirs!r} (HF {hf_name}) but the given '
                            f'config has {name}={ours!r}')


# ------------------------------------------------------------------------------------------ output head


def _same_tensor(a: _Tensor, b: _Tensor) -> bool:
  return a.shape == b.shape and np.array_equal(a.array(), b.array())


def _head(tensors: Mapping[str, _Tensor], scale: bool, emb_dim: int) -> tuple[bool, str | None, float | None]:
  """(logits_via_embedding, HF key of the logits_dense kernel, factor folded into it), as HF runs the file.

  `scale`: config.json's verdict on multiplying the decoder output by emb_dim**-0.5.
  """
  lm_head = tensors.get('lm_head.weight')
  distinct = lm_head is not None and not _same_tensor(lm_head, tensors['shared.weight'])
  if scale and not distinct:
    return True, None, None
  if scale:
    return False, 'lm_head.weight', emb_dim**-0.5
  return False, ('lm_head.weight' if lm_head is not None else 'shared.weight'), None


# ---------------------------------------------------------------------------------------------- sources


class HFSource(common.ArraySource):
  """A T5X parameter read from one HF tensor (transposed / sliced / rescaled as its plan entry says)."""

  def __init__(self, name: str, entry: hf_names.Entry, tensor: _Tensor):
    self.name, self.entry, self.tensor = name, entry, tensor
    self.where = f"{tensor.file} ('{tensor.key}')"
    shape = tuple(tensor.shape[::-1] if entry.transpose else tensor.shape)
    if entry.part is not None and shape:
      shape = shape[:-1] + (shape[-1] // entry.part[1],)
    self._shape = shape

  @property
  def shape(self) -> tuple[int, ...]:
    return self._shape

  def start_read(self, index: common.Index) -> common.Reader:

    def read() -> np.ndarray:
      array = self.tensor.array()
      array = array.T if self.entry.transpose else array
      if self.entry.part is not None:
        k, width = self.entry.part[0], self._shape[-1]
        array = array[..., k * width:(k + 1) * width]
      array = np.array(array[tuple(index)])
      if self.entry.factor is not None:
        array = (array.astype(np.float32) * self.entry.factor).astype(array.dtype)
      return array

    return read


def _sources(plan: Mapping[str, hf_names.Entry], tensors: Mapping[str, _Tensor], config: T5Config, where: str,
             origin: str = 'the config') -> dict[str, HFSource]:
  """Checks the checkpoint's key set and shapes against `plan`; stacks layers when `config.scan_layers`."""
  missing = [(path, e.key) for path, e in plan.items() if e.key not in tensors]
  if missing:
    listing = ', '.join(f"'{k}' (for {p})" for p, k in missing[:5])
    raise CheckpointError(f'{where}: {len(missing)} tensors the config needs are missing: {listing}')
  unexpected = sorted(set(tensors) - {e.key for e in plan.values()} - hf_names.IGNORED - {'lm_head.weight'})
  if unexpected:
    raise CheckpointError(f'{where}: {len(unexpected)} tensors do not fit the config '
                          f'({config.num_encoder_layers} encoder / {config.num_decoder_layers} decoder layers, '
                          f'mlp {config.mlp_activations}): {", ".join(unexpected[:5])}')
  sources = {}
  for path, entry in plan.items():
    tensor = tensors[entry.key]
    got = tensor.shape[::-1] if entry.transpose else tensor.shape
    if tuple(got) != entry.shape:
      raise CheckpointError(f"{where}: '{entry.key}' of shape {list(tensor.shape)} gives '{path}' shape "
                            f'{list(got)}, but {origin} implies {list(entry.shape)}')
    sources[path] = HFSource(path, entry, tensor)
  return common.stack_layer_sources(sources) if config.scan_layers else sources


# ---------------------------------------------------------------------------------------------- loading


def load_hf_t5(path: str | os.PathLike, *, config: T5Config | None = None, dtype: Any = None,
               shardings: common.ShardingsArg = None,
               expected_shapes: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], T5Config]:
  """Reads a Hugging Face T5 / mT5 safetensors checkpoint as jaxprompt `Transformer` params.

  Args:
    path: a directory with `model.safetensors` or `model.safetensors.index.json` (+ shards), a `.safetensors`
      file or an index json; `config.json` beside it describes the model.
    config: the model config; checked against config.json when there is one, required when there is not.
      Without it the config is inferred from config.json (dropout 0, float32; `scan_layers` off).
    dtype: cast floating parameters to this dtype; None keeps the stored dtype (e.g. bfloat16).
    shardings: None (numpy leaves), one Sharding for all, or a tree of Shardings / None like the params;
      each sharded array is assembled from only the slices its local devices hold.
    expected_shapes: optional tree of shapes / ShapeDtypeStructs the params must match exactly.

  Returns:
    (params, config): the T5X param tree (`layers` stacked when `config.scan_layers`) and the config.
  """
  path = os.fspath(path)
  tensors, folder = _locate(path)
  if 'shared.weight' not in tensors:
    keys = ', '.join(sorted(tensors)[:5]) or 'none'
    raise CheckpointError(f"{path}: not a Hugging Face T5 checkpoint: it has no 'shared.weight' "
                          f'({len(tensors)} tensors, e.g. {keys})')
  config_file = os.path.join(folder, CONFIG_FILE)
  hf = _read_hf_config(config_file) if os.path.isfile(config_file) else None
  inferred = None
  if hf is None and config is None:
    raise CheckpointError(f'{path}: no {CONFIG_FILE} in {folder}; pass config= to describe the model')
  if hf is not None:
    implied = _config_fields(hf, config_file)
    tied, head_key, factor = _head(tensors, _scales_decoder_output(hf), implied['emb_dim'])
    implied['logits_via_embedding'] = tied
    if config is None:
      config = inferred = T5Config(**implied)
    else:
      _check_config(config, implied, config_file)
  else:
    _, head_key, factor = _head_from_config(tensors, config, path)
  plan = t5x_plan(config, head_key, factor)
  origin = config_file if hf is not None and config is inferred else 'the given config'
  sources = _sources(plan, tensors, config, path, origin)
  params = common.materialize(sources, dtype=dtype, shardings=shardings, expected_shapes=expected_shapes, ckpt=path)
  return params, config


def _head_from_config(tensors: Mapping[str, _Tensor], config: T5Config,
                      where: str) -> tuple[bool, str | None, float | None]:
  """Without config.json: the given config's `logits_via_embedding` decides, and the file must agree."""
  lm_head = tensors.get('lm_head.weight')
  distinct = lm_head is not None and not _same_tensor(lm_head, tensors['shared.weight'])
  if config.logits_via_embedding and distinct:
    raise CheckpointError(f"{where}: config.logits_via_embedding=True but 'lm_head.weight' differs from "
                          f"'shared.weight' (an untied T5 1.1-style head)")
  if not config.logits_via_embedding and lm_head is None:
    raise CheckpointError(f"{where}: config.logits_via_embedding=False but there is no 'lm_head.weight' "
                          f'(a tied T5 1.0-style head)')
  return (True, None, None) if config.logits_via_embedding else (False, 'lm_head.weight', None)
