"""Reading what a method trained, for `eval` / `infer`: its inference file or a training checkpoint's copy of
it, checked against the model, as (method, parameters); and the frozen-model fingerprint each source records.

  prompt.npy                        float32 [P, d] input prompt: prompt tuning, P-tuning (its computed prompt)
  prefix.npz / *.safetensors        K/V prefixes: prefix tuning, P-tuning v2 (`jaxprompt.methods.kv_prefix`)
  per_layer_prompts.npz             per-layer prompts (`jaxprompt.methods.per_layer_prompts`)
  a PEFT adapter folder             PROMPT_TUNING / P_TUNING (a prompt), PREFIX_TUNING (a decoder_self prefix)
                                    (`jaxprompt.methods.peft_adapters`)
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
from etils import epath

from jaxprompt.errors import ConfigError, PromptError
from jaxprompt.formats import fingerprint_files
from jaxprompt.formats.keys import PROMPT_FILE, PROMPT_KEY
from jaxprompt.formats.npy_io import npy_shape, read_npz
from jaxprompt.methods import initializers, multitask, prompt_bank
from jaxprompt.methods import peft_adapters
from jaxprompt.methods import per_layer_prompts as per_layer_lib
from jaxprompt.methods import prefix_tuning as prefix_lib
from jaxprompt.methods.base import Method
from jaxprompt.methods.prompt_tuning import PromptTuning
from jaxprompt.models.config import T5Config
from jaxprompt.train import checkpoint_files, checkpoints

# The inference files a training step leaves beside its checkpoint (`Method.numpy_copy`), by preference.
STEP_FILES = (PROMPT_FILE, prefix_lib.PREFIX_FILE, per_layer_lib.NUMPY_FILE, multitask.MULTITASK_FILE)


def load_tuned(*, prompt_file: str | None, checkpoint: str | None, step: int | None, prompt_length: int | None,
               config: T5Config, combine: str = 'prefix', eos_id: int = 1) -> tuple[Method, Any]:
  """(method, host parameters) of a trained method, from its file or from a training checkpoint (MODEL_DIR or a
  step dir; its numpy copy of `step`, default the latest). `prompt_length` and `combine` apply to input
  prompts; the other files carry their own shapes and options."""
  if (prompt_file is None) == (checkpoint is None):
    raise ConfigError('give exactly one of --prompt_file (a prompt .npy, prefix .npz / .safetensors, '
                      'per_layer_prompts.npz or a PEFT adapter folder) or --checkpoint (a training MODEL_DIR or step '
                      f'dir); got prompt_file={prompt_file!r}, checkpoint={checkpoint!r}')
  path = None if prompt_file is None else os.fspath(prompt_file)
  if path is not None and peft_adapters.is_adapter_dir(path):
    return load_adapter(path, config, prompt_length=prompt_length, combine=combine, eos_id=eos_id)
  if checkpoint is not None and not epath.Path(os.fspath(checkpoint)).is_file():
    numpy_dir, _ = checkpoint_files.checkpoint_step(os.fspath(checkpoint), step)
    found = [numpy_dir / n for n in STEP_FILES if numpy_dir is not None and (numpy_dir / n).exists()]
    path = os.fspath(found[0]) if found and found[0].name != PROMPT_FILE else None
  elif checkpoint is not None:
    path = os.fspath(checkpoint)
  if path is None or path.endswith('.npy'):  # a prompt (a checkpoint's orbax state holds one too)
    prompt = load_prompt(prompt_file=path, checkpoint=None if path else checkpoint, step=step,
                         prompt_length=prompt_length, embed_dim=config.emb_dim)
    method = PromptTuning(length=prompt.shape[0], embed_dim=config.emb_dim, combine=combine, eos_id=eos_id,
                          dtype=config.dtype)
    return method, {PROMPT_KEY: prompt}
  if path.endswith('.npz') and multitask.is_multitask_file(path):  # every task's prompt: served as a bank
    return prompt_bank.build_bank(multitask.read_multitask_file(path, config, eos_id, combine), config, eos_id)
  if path.endswith('.safetensors') or (path.endswith('.npz') and not _is_per_layer(path)):
    return prefix_lib.read_prefix_file(path, config)
  if path.endswith('.npz'):
    return per_layer_lib.read_per_layer_file(path, config, eos_id=eos_id)
  if os.path.isdir(path):
    raise PromptError(f'prompt file {path} is a folder without {peft_adapters.CONFIG_FILE}: not a PEFT adapter (for '
                      'a training MODEL_DIR or step dir use --checkpoint)')
  raise PromptError(f'prompt file {path}: unknown kind; expected a prompt .npy, a prefix .npz / .safetensors, '
                    'a per_layer_prompts .npz or a PEFT adapter folder')


def load_adapter(folder: str, config: T5Config, *, prompt_length: int | None = None, combine: str = 'prefix',
                 eos_id: int = 1) -> tuple[Method, Any]:
  """(method, host parameters) of a PEFT adapter folder: PromptTuning for PROMPT_TUNING / P_TUNING, the plain
  decoder_self PrefixTuning (relpos 'positions') for PREFIX_TUNING; shapes checked against `config`."""
  adapter = peft_adapters.read_adapter(folder, config)
  if adapter.kind == 'prefix':
    key, value = adapter.arrays['decoder_self/key'], adapter.arrays['decoder_self/value']
    method = prefix_lib.PrefixTuning.for_config(config, length=key.shape[1], kinds=('decoder_self',),
                                                projection=False, relpos='positions')
    return method, {'decoder_self': {'key': key, 'value': value}}
  prompt = adapter.arrays[PROMPT_KEY]
  if prompt_length is not None and prompt_length != prompt.shape[0]:
    raise PromptError(f'PEFT adapter {folder} holds a prompt of {prompt.shape[0]} virtual tokens but '
                      f'PROMPT_LENGTH is {prompt_length}')
  method = PromptTuning(length=prompt.shape[0], embed_dim=config.emb_dim, combine=combine, eos_id=eos_id,
                        dtype=config.dtype)
  return method, {PROMPT_KEY: prompt}


def recorded_fingerprint(source: str | os.PathLike, step: int | None = None) -> dict | None:
  """The frozen-model fingerprint recorded for a prompt source, None when it records none: a file's
  `<file>.fingerprint.json` sidecar (else a step dir's `fingerprint.json` beside it, for a file inside a numpy
  step dir), a PEFT adapter folder's safetensors metadata, or a training checkpoint's (MODEL_DIR at `step`,
  default the latest, or a step dir) numpy step dir `fingerprint.json`."""
  source = os.fspath(source)
  if peft_adapters.is_adapter_dir(source):
    return peft_adapters.read_fingerprint(source)
  if epath.Path(source).is_file():
    recorded = fingerprint_files.read(fingerprint_files.sidecar_path(source))
    beside = os.path.join(os.path.dirname(source), fingerprint_files.STEP_FILE)
    return recorded if recorded is not None else fingerprint_files.read(beside)
  if '://' not in source and not os.path.exists(source):
    raise PromptError(f'prompt source {source} does not exist')
  return fingerprint_files.read(step_numpy_dir(source, step) / fingerprint_files.STEP_FILE)


def step_numpy_dir(checkpoint: str, step: int | None = None) -> epath.Path:
  """The numpy step dir (`numpy_checkpoints/checkpoint_<step>`) of a MODEL_DIR or either kind of step dir; it may
  not exist (only process 0 writes it)."""
  numpy_dir, orbax_dir = checkpoint_files.checkpoint_step(checkpoint, step)
  if numpy_dir is not None:
    return numpy_dir
  return orbax_dir.parent.parent / checkpoints.NUMPY_CHECKPOINTS / f'{checkpoints.NUMPY_PREFIX}{orbax_dir.name}'


def _is_per_layer(path: str) -> bool:
  """A per-layer prompts .npz holds 'prompt' and 'layers'; a prefix .npz holds '<kind>/key' tensors."""
  return per_layer_lib.LAYERS_KEY in read_npz(path)


def load_prompt(*, prompt_file: str | None, checkpoint: str | None, step: int | None,
                prompt_length: int | None, embed_dim: int) -> np.ndarray:
  """The float32 [P, d] prompt from a .npy file or a training checkpoint, checked against the model.

  `prompt_length` None takes the file's length; the embedding size must always match the model's.
  """
  if (prompt_file is None) == (checkpoint is None):
    raise ConfigError('give exactly one of --prompt_file (a .npy) or --checkpoint (a training MODEL_DIR or '
                      f'step dir); got prompt_file={prompt_file!r}, checkpoint={checkpoint!r}')
  if prompt_file is not None:
    prompt_file = os.fspath(prompt_file)
    shape = npy_shape(prompt_file)
    length = prompt_length if prompt_length is not None else (shape[0] if len(shape) == 2 else -1)
    if length <= 0:
      raise PromptError(f'prompt file {prompt_file} has shape {shape}; a prompt must be [length, embed]')
    return np.asarray(initializers.from_file(prompt_file)(None, (length, embed_dim)), np.float32)
  from jaxprompt.train.checkpoint_files import load_prompt_from_checkpoint  # pylint: disable=g-import-not-at-top
  array = load_prompt_from_checkpoint(checkpoint, step=step)
  wanted = (prompt_length if prompt_length is not None else array.shape[0], embed_dim)
  if array.shape != wanted:
    raise PromptError(f'checkpoint {checkpoint} holds a prompt of shape {array.shape} but the model needs '
                      f'{wanted} (PROMPT_LENGTH, embed)')
  return array
