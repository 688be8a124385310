"""Hugging Face PEFT adapter folders (`PeftModel.from_pretrained(model, folder)`), written and read, for T5
(SEQ_2_SEQ_LM), causal LMs (CAUSAL_LM) and BERT / RoBERTa with a task head (SEQ_CLS, TOKEN_CLS: the head's tensors
beside the prompt as PEFT's modules_to_save, `peft_heads`).

  adapter_config.json         the PEFT config dataclass as JSON; only fields every PEFT since 0.10 accepts
  adapter_model.safetensors   one float32 tensor 'prompt_embeddings'; metadata {'format': 'pt'} plus, when the
                              frozen model is known, 'jaxprompt_fingerprint' (`jaxprompt.models.fingerprint`)

What maps to what (checked against peft 0.21 `peft_model.py` and transformers 5; the tensor layouts of each task
type are `jaxprompt.methods.peft_layouts`):

  PROMPT_TUNING, P_TUNING   jaxprompt's prompt [P, d] (combine='prefix') <-> prompt_embeddings [P, d] (CAUSAL_LM) or
                            [2P, d] (SEQ_2_SEQ_LM: two copies, of which PEFT puts the first P rows in front of the
                            encoder's embedded input). PEFT puts them in front of the embedded input without scaling,
                            with P ones in front of the attention mask; on a causal LM the tokens' positions then
                            start at P. A prompt-learning adapter always loads with inference_mode (PEFT refuses
                            is_trainable=True for them), so a P_TUNING adapter loads without its MLP/LSTM and its
                            embedding *is* the prompt: PEFT's own P-tuning saves the computed prompt there, and so do
                            we.
  PREFIX_TUNING             jaxprompt's decoder_self prefix [L, P, h, hd] at relpos 'positions' <-> prompt_embeddings
                            [P, L*2*h*hd], h the model's key/value heads (PEFT's GQA layout). T5: PEFT's doubled axis
                            makes decoder layers i and i+L/2 share rows for an even L (`peft_layouts`); token_dim is
                            written as h*hd (PEFT derives head_dim = token_dim // heads, so d_model would break T5
                            1.0 3B/11B-style models where h*hd != d_model) and num_layers as the decoder's depth.

An adapter of another task type than the model's family (a T5 adapter given to a Llama, or the reverse) and
anything else PEFT cannot represent is refused with one PromptError naming the folder.
"""
from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from jaxprompt.checkpoints import hf_head
from jaxprompt.errors import PromptError
from jaxprompt.formats import fingerprint_files, npy_io
from jaxprompt.methods import kv_prefix, peft_layouts
from jaxprompt.methods.peft_layouts import prefix_tensor
from jaxprompt.models.base import ModelConfig
from jaxprompt.models.hooks import STACK_OF_KIND

CONFIG_FILE = 'adapter_config.json'
WEIGHTS_FILE = 'adapter_model.safetensors'
PICKLE_FILE = 'adapter_model.bin'  # older PEFT default (torch.save); read only with weights_only
TENSOR_KEY = 'prompt_embeddings'
FINGERPRINT_KEY = 'jaxprompt_fingerprint'
PROMPT_TYPES = ('PROMPT_TUNING', 'P_TUNING')
PREFIX_TYPE = peft_layouts.PREFIX_TYPE
SUPPORTED_TYPES = (*PROMPT_TYPES, PREFIX_TYPE)
PREFIX_KIND = peft_layouts.PREFIX_KIND
PREFIX_RELPOS = peft_layouts.PREFIX_RELPOS
WHAT = 'PEFT adapter'


class Adapter(NamedTuple):
  """What a PEFT folder holds, in jaxprompt's terms.

  kind         'prompt' (PROMPT_TUNING, P_TUNING) or 'prefix' (PREFIX_TUNING)
  arrays       prompt: {'prompt': float32 [P, d]}; prefix: a prefix file's arrays (`kv_prefix.file_arrays`):
               'decoder_self/key' and '/value' float32 [L, P, h, hd] and the 'relpos/positions' marker
  config       adapter_config.json as a dict
  fingerprint  the recorded frozen-model fingerprint, or None
  modules      the other tensors (PEFT's modules_to_save: an encoder's head, `peft_heads`) by their file names
  """
  kind: str
  arrays: dict[str, np.ndarray]
  config: dict[str, Any]
  fingerprint: dict[str, Any] | None
  modules: dict[str, np.ndarray] | None = None


def _folder(path: str | os.PathLike) -> str:
  return os.fspath(path).rstrip('/') or '/'


def _exists(path: str) -> bool:
  if '://' in path:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  (remote paths only: a slow import)
    return tf.io.gfile.exists(path)
  return os.path.exists(path)


def is_adapter_dir(path: str | os.PathLike) -> bool:
  """True when `path` is a folder holding an adapter_config.json."""
  return _exists(os.path.join(_folder(path), CONFIG_FILE))


# ------------------------------------------------------------------------------------------- writing


def _base_config(peft_type: str, task: peft_layouts.Task, length: int, token_dim: int, num_layers: int | None,
                 num_heads: int | None, base_model: str | None) -> dict[str, Any]:
  """The fields of PEFT's PromptLearningConfig; None values are filled by PEFT from the base model's config."""
  return {
      'peft_type': peft_type, 'task_type': task.name, 'base_model_name_or_path': base_model, 'revision': None,
      'inference_mode': True, 'num_virtual_tokens': int(length), 'token_dim': int(token_dim),
      'num_transformer_submodules': task.submodules, 'num_attention_heads': num_heads, 'num_layers': num_layers
  }


def _write(folder: str, config: Mapping[str, Any], tensor: np.ndarray, fingerprint: Mapping[str, Any] | None,
           modules: Mapping[str, Any] | None = None) -> str:
  """Writes the two files of an adapter folder (created if needed); returns the folder. `modules`: the tensors of
  PEFT's modules_to_save (an encoder's head, `peft_heads`) by their adapter-file names, listed in the config."""
  config, tensors = dict(config), {TENSOR_KEY: tensor}
  if modules:
    config['modules_to_save'] = sorted({hf_head.saved_module(name.split('.', 1)[1]) for name in modules})
    tensors.update(modules)
  metadata = {'format': 'pt'}
  if fingerprint:
    metadata[FINGERPRINT_KEY] = fingerprint_files.to_json(fingerprint)
  try:
    if '://' in folder:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      tf.io.gfile.makedirs(folder)
    else:
      if os.path.isfile(folder):
        raise OSError('it is a file; a PEFT adapter is a folder')
      os.makedirs(folder, exist_ok=True)
    weights = save_safetensors({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, metadata=metadata)
    npy_io.write_bytes(weights, os.path.join(folder, WEIGHTS_FILE), what=WHAT)
    npy_io.write_bytes(
        json.dumps(dict(config), indent=2, sort_keys=True).encode(), os.path.join(folder, CONFIG_FILE), what=WHAT)
  except Exception as e:  # OSError locally, tf errors remotely
    raise PromptError(f'cannot write {WHAT} {folder}: {e}') from e
  return folder


def write_prompt(folder: str | os.PathLike, prompt: Any, *, peft_type: str = 'PROMPT_TUNING', family: str | None = None,
                 num_layers: int | None = None, num_heads: int | None = None, base_model: str | None = None,
                 fingerprint: Mapping[str, Any] | None = None, task: peft_layouts.Task | None = None,
                 modules: Mapping[str, Any] | None = None) -> str:
  """Writes an input prompt [P, d] as a PROMPT_TUNING or P_TUNING adapter for a model of `family` (None: T5), or
  for `task` (an encoder's head task, whose head tensors are `modules`: `_write`). `num_layers` / `num_heads` (of
  the stack the prompt enters) may be None: PEFT fills them from the model."""
  folder = _folder(folder)
  if peft_type not in PROMPT_TYPES:
    raise PromptError(f'a prompt exports as one of {PROMPT_TYPES}, not {peft_type!r}')
  prompt = np.asarray(prompt, np.float32)
  if prompt.ndim != 2 or not prompt.size:
    raise PromptError(f'cannot export a prompt of shape {prompt.shape} to {WHAT} {folder}: expected [length, embed]')
  length, dim = prompt.shape
  task = task or peft_layouts.task_of_family(family)
  config = _base_config(peft_type, task, length, dim, num_layers, num_heads, base_model)
  if peft_type == 'PROMPT_TUNING':
    config.update(prompt_tuning_init='RANDOM', prompt_tuning_init_text=None, tokenizer_name_or_path=None,
                  tokenizer_kwargs=None)
  else:  # the encoder fields are required by the dataclass but unused: inference_mode builds no encoder
    config.update(encoder_reparameterization_type='MLP', encoder_hidden_size=int(dim), encoder_num_layers=2,
                  encoder_dropout=0.0)
  return _write(folder, config, peft_layouts.prompt_tensor(prompt, task), fingerprint, modules)


def write_prefix(folder: str | os.PathLike, rows: Mapping[str, tuple[Any,
                                                                     Any]], relpos: str, *, family: str | None = None,
                 base_model: str | None = None, fingerprint: Mapping[str, Any] | None = None, source: str | None = None,
                 task: peft_layouts.Task | None = None, modules: Mapping[str, Any] | None = None) -> str:
  """Writes a decoder_self prefix [L, P, kv heads, hd] as a PREFIX_TUNING adapter for a model of `family` (None:
  T5), or `task`'s prefix kind for `task` (an encoder's: encoder_self, its head tensors `modules`); see
  `peft_layouts.prefix_tensor` for what is refused."""
  folder = _folder(folder)
  task = task or peft_layouts.task_of_family(family)
  tensor = prefix_tensor(rows, relpos, source or 'this prefix', task)
  layers, length, heads, head_dim = np.shape(rows[task.prefix_kind][0])
  config = _base_config(PREFIX_TYPE, task, length, heads * head_dim, layers, heads, base_model)
  config.update(encoder_hidden_size=int(heads * head_dim), prefix_projection=False)
  return _write(folder, config, tensor, fingerprint, modules)


# ------------------------------------------------------------------------------------------- reading


def _metadata(data: bytes, path: str) -> dict[str, str]:
  """The metadata of a .safetensors file's bytes: its header is 8 bytes of length, then JSON."""
  try:
    return json.loads(data[8:8 + int.from_bytes(data[:8], 'little')]).get('__metadata__') or {}
  except Exception as e:  # truncated, or not safetensors
    raise PromptError(f'cannot read {path} as .safetensors ({e})') from e


def _parse_safetensors(data: bytes, path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """(tensors, metadata) of a .safetensors file's bytes."""
  metadata = _metadata(data, path)
  try:
    return dict(load_safetensors(data)), metadata
  except Exception as e:  # damaged, or a dtype numpy lacks
    raise PromptError(f'cannot read {path} as .safetensors ({e})') from e


def _read_pickle(path: str) -> dict[str, np.ndarray]:
  """An adapter_model.bin through torch's weights-only unpickler (tensors and plain containers only)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise PromptError(f'{path} is a PyTorch pickle; reading it safely needs torch (torch.load with weights_only=True), '
                      'which is not installed: install torch, or re-save the adapter with save_pretrained('
                      'safe_serialization=True)') from e
  data = npy_io.read_bytes(path, what=WHAT + ' file')
  try:
    state = torch.load(io.BytesIO(data), map_location='cpu', weights_only=True)
  except Exception as e:  # UnpicklingError for anything but tensors, or a damaged file
    raise PromptError(f'refusing {path}: it cannot be loaded with weights_only=True (it holds more than tensors, or is '
                      f'damaged): {str(e).splitlines()[0]}') from e
  if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
    raise PromptError(f'{path}: expected a dict of tensors, got {type(state).__name__}')
  return {k: v.detach().float().numpy() for k, v in state.items()}


def _load(folder: str) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any] | None]:
  """(config, tensors, fingerprint) of an adapter folder, each file checked to exist and parse."""
  config_path = os.path.join(folder, CONFIG_FILE)
  if not _exists(config_path):
    raise PromptError(f'{folder} is not a {WHAT} folder: it has no {CONFIG_FILE}'
                      if _exists(folder) else f'{WHAT} {folder} does not exist')
  try:
    config = json.loads(npy_io.read_bytes(config_path, what=WHAT + ' config'))
  except ValueError as e:
    raise PromptError(f'{WHAT} {folder}: {CONFIG_FILE} is not JSON ({e})') from e
  if not isinstance(config, dict):
    raise PromptError(f'{WHAT} {folder}: {CONFIG_FILE} holds a {type(config).__name__}, expected an object')
  check_type(config, folder)
  weights = os.path.join(folder, WEIGHTS_FILE)
  if _exists(weights):
    tensors, metadata = _parse_safetensors(npy_io.read_bytes(weights, what=WHAT + ' file'), weights)
  elif _exists(os.path.join(folder, PICKLE_FILE)):
    tensors, metadata = _read_pickle(os.path.join(folder, PICKLE_FILE)), {}
  else:
    raise PromptError(f'{WHAT} {folder}: no {WEIGHTS_FILE} (nor {PICKLE_FILE}) beside its {CONFIG_FILE}')
  recorded = metadata.get(FINGERPRINT_KEY)
  return config, tensors, (None if recorded is None else fingerprint_files.from_json(recorded, f'{weights} metadata'))


def check_type(config: Mapping[str, Any], folder: str) -> str:
  """The adapter's peft_type, or one PromptError naming it and the supported ones."""
  peft_type = config.get('peft_type')
  if peft_type not in SUPPORTED_TYPES:
    raise PromptError(f'{WHAT} {folder}: peft_type {peft_type!r} is not supported; jaxprompt reads the prompt-'
                      f'learning types {", ".join(SUPPORTED_TYPES)} (weight adapters such as LORA change the frozen '
                      'model itself)')
  return peft_type


def _field(config: Mapping[str, Any], name: str, folder: str, *, optional: bool = False) -> int | None:
  value = config.get(name)
  if value is None and optional:
    return None
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise PromptError(f'{WHAT} {folder}: {CONFIG_FILE} field {name!r} is {value!r}; expected a positive integer')
  return value


def _mismatch(folder: str, key: str, found: Any, expected: Any) -> PromptError:
  """The one shape error: the folder, the key, what was found and what the model (or the config) needs."""
  return PromptError(f'{WHAT} {folder}: {key} is {found} but {expected}')


def _tensor(tensors: Mapping[str, np.ndarray], folder: str) -> np.ndarray:
  if TENSOR_KEY not in tensors:
    raise PromptError(f'{WHAT} {folder}: its weights have no {TENSOR_KEY!r} tensor (found {sorted(tensors)})')
  tensor = tensors[TENSOR_KEY]
  if tensor.ndim != 2 or not np.issubdtype(tensor.dtype, np.floating):
    raise PromptError(f'{WHAT} {folder}: {TENSOR_KEY!r} has shape {tensor.shape} dtype {tensor.dtype}; expected a '
                      'float [rows, columns] tensor')
  if not np.isfinite(tensor).all():
    raise PromptError(f'{WHAT} {folder}: {TENSOR_KEY!r} holds {int((~np.isfinite(tensor)).sum())} non-finite values')
  return np.asarray(tensor, np.float32)


def _read_prompt(config: Mapping[str, Any], tensor: np.ndarray, folder: str, model: ModelConfig | None) -> np.ndarray:
  length = _field(config, 'num_virtual_tokens', folder)
  token_dim = _field(config, 'token_dim', folder, optional=True) or tensor.shape[1]
  if tensor.shape[0] < length or tensor.shape[1] != token_dim:
    raise _mismatch(folder, f'the shape of {TENSOR_KEY!r}', tensor.shape,
                    f'its config needs [>= num_virtual_tokens {length}, token_dim {token_dim}]')
  if model is not None and token_dim != model.emb_dim:
    raise _mismatch(folder, f'the width (token_dim) of {TENSOR_KEY!r} {tensor.shape}', token_dim,
                    f'the model\'s emb_dim is {model.emb_dim} (an adapter for another model size?)')
  return tensor[:length]  # PEFT uses the first num_virtual_tokens rows in front of the encoder input


def _read_prefix(config: Mapping[str, Any], tensor: np.ndarray, folder: str, model: ModelConfig | None,
                 task: peft_layouts.Task) -> dict[str, np.ndarray]:
  length, token_dim = _field(config, 'num_virtual_tokens', folder), _field(config, 'token_dim', folder)
  layers, heads = _field(config, 'num_layers', folder), _field(config, 'num_attention_heads', folder)
  if token_dim % heads:
    raise PromptError(f'{WHAT} {folder}: token_dim {token_dim} is not a multiple of num_attention_heads {heads}')
  head_dim = token_dim // heads
  if model is not None:
    depth = model.stack_depth(STACK_OF_KIND[task.prefix_kind])
    for name, found, want, ours in (('num_layers', layers, depth, f'num_{STACK_OF_KIND[task.prefix_kind]}_layers'),
                                    ('num_attention_heads', heads, model.num_kv_heads, 'num_kv_heads'),
                                    ('token_dim // num_attention_heads', head_dim, model.head_dim, 'head_dim')):
      if found != want:
        raise _mismatch(folder, f'{CONFIG_FILE} {name}', found,
                        f'the model\'s {ours} is {want} (an adapter for another model size?)')
  wanted = (length, layers * 2 * token_dim)
  if tensor.shape != wanted:
    raise _mismatch(folder, f'the shape of {TENSOR_KEY!r}', tensor.shape,
                    f'its config needs {wanted} [num_virtual_tokens, num_layers * 2 * token_dim]')
  rows = {task.prefix_kind: peft_layouts.prefix_rows(tensor, layers, heads, task)}
  return kv_prefix.file_arrays(rows, task.prefix_relpos or PREFIX_RELPOS)


def read_adapter(folder: str | os.PathLike, model: ModelConfig | None = None) -> Adapter:
  """Reads a PEFT adapter folder, checked against `model` (the frozen model's config: its family's task type, its
  sizes) when given."""
  folder = _folder(folder)
  config, tensors, recorded = _load(folder)
  task = peft_layouts.task_of_adapter(config, f'{WHAT} {folder}')
  if model is not None:
    peft_layouts.check_task(task, model.family, f'{WHAT} {folder}')
  tensor = _tensor(tensors, folder)
  modules = {k: np.asarray(v, np.float32) for k, v in tensors.items() if k != TENSOR_KEY}
  if config['peft_type'] == PREFIX_TYPE:
    return Adapter('prefix', _read_prefix(config, tensor, folder, model, task), config, recorded, modules)
  return Adapter('prompt', {'prompt': _read_prompt(config, tensor, folder, model)}, config, recorded, modules)


def read_fingerprint(folder: str | os.PathLike) -> dict[str, Any] | None:
  """The frozen-model fingerprint recorded in an adapter's safetensors metadata (None: none recorded)."""
  folder = _folder(folder)
  weights = os.path.join(folder, WEIGHTS_FILE)
  if not _exists(weights):
    if not is_adapter_dir(folder):
      raise PromptError(f'{folder} is not a {WHAT} folder: it has no {CONFIG_FILE}')
    return None  # a .bin adapter records nothing
  recorded = _metadata(npy_io.read_bytes(weights, what=WHAT + ' file'), weights).get(FINGERPRINT_KEY)
  return None if recorded is None else fingerprint_files.from_json(recorded, f'{weights} metadata')
