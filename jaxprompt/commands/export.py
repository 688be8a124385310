"""`jaxprompt export`: a training checkpoint's inference file, what `eval` / `infer` take as `--prompt_file`.

format 'file' (the default):
  prompt methods (prompt tuning, P-tuning)   float32 [P, d] .npy
  prefix methods (prefix tuning, P-tuning v2) prefix .npz, or .safetensors by the output's extension
  per-layer prompts                          per_layer_prompts .npz
  plus `<output>.fingerprint.json`, the frozen model's fingerprint the step recorded (when it recorded one).
format 'peft': a Hugging Face PEFT adapter folder (`jaxprompt.methods.peft_adapters`): PROMPT_TUNING for a
  prompt-tuning prompt, P_TUNING for a P-tuning run's computed prompt, PREFIX_TUNING for a decoder_self prefix at
  relpos 'positions' (anything else PEFT cannot represent is refused). Its config's model sizes come from gin's
  MODEL_CONFIG when bound, else from the step's fingerprint, else from the shapes (PEFT fills the rest).
Reads only that file (or, for a prompt, the prompt leaf of the orbax state): neither the frozen model nor the
optimizer state.
format 'hf_model': not a run's file but the frozen model the gin files name, as a Hugging Face T5 folder
  (`commands/export_model.py`).
"""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxprompt.commands import export_model, prompt_files
from jaxprompt.errors import PromptError, UsageError
from jaxprompt.formats import fingerprint_files
from jaxprompt.formats.keys import PROMPT_FILE, RUN_CONFIG_FILE
from jaxprompt.formats.npy_io import read_npz, write_npy, write_npz
from jaxprompt.methods import kv_prefix, peft_adapters
from jaxprompt.methods.multitask import MULTITASK_FILE
from jaxprompt.methods.per_layer_prompts import NUMPY_FILE as PER_LAYER_FILE
from jaxprompt.train import step_dirs
from jaxprompt.train.checkpoint_files import checkpoint_step, load_prompt_from_checkpoint

FORMATS = ('file', 'peft', 'hf_model')
_PREFIX_SUFFIXES = ('.npz', '.safetensors')
# A run's config.gin naming P-tuning as its method (the fallback when the orbax state is gone).
_P_TUNING_GIN = re.compile(r'^\s*(METHOD|(jaxprompt\.)?train\.method)\s*=\s*@(jaxprompt\.methods\.)?p_tuning\b', re.M)


def export(
    output_file: str,
    *,
    checkpoint: str | None = None,
    step: int | None = None,
    model_dir: str | None = None,
    format: str = 'file',  # pylint: disable=redefined-builtin
    base_model: str | None = None,
    overwrite: bool | None = None) -> dict[str, Any]:
  """Writes the inference file of `checkpoint` (a training MODEL_DIR or one of its step dirs; default
  `model_dir`) at `step` (default: the latest) to `output_file` (local or gs://), or with format='peft' a PEFT
  adapter folder there (`base_model` its base_model_name_or_path); returns what was written. format='hf_model'
  writes gin's frozen model as a Hugging Face folder instead (`overwrite`: into a non-empty one)."""
  if format not in FORMATS:
    raise UsageError(f'export --format must be one of {", ".join(FORMATS)}; got {format!r}')
  if format == 'hf_model':
    if checkpoint is not None or step is not None or base_model is not None:
      raise UsageError('--format hf_model exports the frozen model the gin files name (MODEL_CONFIG, '
                       'INITIAL_CHECKPOINT_PATH); it takes no --checkpoint, --step or --base_model')
    return export_model.export_hf_model(output_file, overwrite=bool(overwrite))
  if overwrite is not None:
    raise UsageError('--overwrite is for --format hf_model (a Hugging Face model folder)')
  if base_model is not None and format != 'peft':
    raise UsageError('--base_model is written into a PEFT adapter: it needs --format peft')
  source = checkpoint or model_dir
  if not source:
    raise UsageError('export needs --checkpoint (a training MODEL_DIR or step dir) or --gin.MODEL_DIR')
  source = os.fspath(source)
  method_file = None
  if not os.path.isfile(source):
    found = prompt_files.step_file(source, step)
    method_file = None if found is None or os.path.basename(found) == PROMPT_FILE else found
  recorded = prompt_files.recorded_fingerprint(source, step)
  if format == 'peft':
    return _export_peft(output_file, source, step, method_file, recorded, base_model)
  if method_file is None:
    prompt = _prompt(source, step, output_file)
    written = {'checkpoint': source, 'output': write_npy(prompt, output_file), 'shape': list(prompt.shape)}
    return _with_fingerprint(written, recorded)
  arrays = read_npz(method_file)
  is_prefix = any(k.endswith('/key') for k in arrays)
  if not output_file.endswith(_PREFIX_SUFFIXES if is_prefix else ('.npz',)):
    wanted = ' or '.join(_PREFIX_SUFFIXES) if is_prefix else '.npz'
    raise UsageError(f'{os.path.basename(method_file)} of {source} exports as {wanted}; got --output {output_file}')
  if is_prefix and output_file.endswith('.safetensors'):
    path = kv_prefix.save_prefix(output_file, *_prefix_rows(arrays))
  else:
    path = write_npz(arrays, output_file, what='export')
  shapes = {k: list(v.shape) for k, v in arrays.items() if v.size}
  return _with_fingerprint({'checkpoint': source, 'output': path, 'shapes': shapes}, recorded)


def _prompt(source: str, step: int | None, output: str) -> np.ndarray:
  prompt = np.asarray(load_prompt_from_checkpoint(source, step=step), np.float32)
  if prompt.ndim != 2:
    raise PromptError(f'cannot export a prompt of shape {prompt.shape} to {output}: expected [length, embed]')
  return prompt


def _prefix_rows(arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str]:
  """A prefix file's arrays as ({kind: (key, value)}, relpos)."""
  relpos = next(k.split('/', 1)[1] for k in arrays if k.startswith(kv_prefix.RELPOS_KEY + '/'))
  rows = {k[:-len('/key')]: (v, arrays[k[:-len('key')] + 'value']) for k, v in arrays.items() if k.endswith('/key')}
  return rows, relpos


def _with_fingerprint(written: dict[str, Any], recorded: Mapping[str, Any] | None) -> dict[str, Any]:
  """Writes `recorded` beside the exported file (`<output>.fingerprint.json`), removing a stale local one when
  the step recorded none."""
  sidecar = fingerprint_files.sidecar_path(written['output'])
  written['fingerprint_id'] = (recorded or {}).get('id')
  if recorded:
    written['fingerprint'] = fingerprint_files.write(sidecar, recorded)
  elif '://' not in sidecar and os.path.exists(sidecar):
    os.remove(sidecar)
  return written


# ------------------------------------------------------------------------------------------- --format peft


def _export_peft(output: str, source: str, step: int | None, method_file: str | None,
                 recorded: Mapping[str, Any] | None, base_model: str | None) -> dict[str, Any]:
  sizes = _model_sizes(recorded)
  written = {'checkpoint': source, 'output': output, 'format': 'peft', 'fingerprint_id': (recorded or {}).get('id')}
  if method_file is None:
    prompt = _prompt(source, step, output)
    if sizes.get('emb_dim') not in (None, prompt.shape[1]):
      raise PromptError(f'the prompt of {source} has shape {prompt.shape} but the model config has emb_dim '
                        f'{sizes["emb_dim"]}: the wrong MODEL_CONFIG for this run?')
    peft_type = 'P_TUNING' if _trained_p_tuning(source, step) else 'PROMPT_TUNING'
    peft_adapters.write_prompt(output, prompt, peft_type=peft_type, num_layers=sizes.get('num_encoder_layers'),
                               num_heads=sizes.get('num_heads'), base_model=base_model, fingerprint=recorded)
    return {**written, 'peft_type': peft_type, 'shape': list(prompt.shape)}
  if os.path.basename(method_file) == MULTITASK_FILE:
    raise PromptError(f'{method_file} holds every task of a multi-task run; a PEFT adapter holds one prompt: '
                      'export it with --format file and serve it as a prompt bank (--prompt NAME=FILE)')
  if os.path.basename(method_file) == PER_LAYER_FILE:
    raise PromptError(f'cannot export {method_file} as a PEFT adapter: PEFT has no per-layer prompt type (its '
                      'prompt-learning adapters are an input prompt or past keys/values); use --format file')
  arrays = read_npz(method_file)
  if not kv_prefix.holds_prefix(arrays):
    raise PromptError(f'cannot export {method_file} as a PEFT adapter: PEFT\'s prompt-learning adapters hold an input '
                      'prompt or a K/V prefix, and this file is neither; use --format file')
  rows, relpos = _prefix_rows(arrays)
  if 'decoder_self' in rows:  # anything else is refused by write_prefix, naming what PEFT cannot represent
    _check_prefix_sizes(rows['decoder_self'][0].shape, sizes, method_file)
  peft_adapters.write_prefix(output, rows, relpos, base_model=base_model, fingerprint=recorded, source=method_file)
  return {**written, 'peft_type': peft_adapters.PREFIX_TYPE, 'shape': list(rows['decoder_self'][0].shape)}


def _check_prefix_sizes(shape: tuple[int, ...], sizes: Mapping[str, Any], where: str) -> None:
  """The prefix rows [layers, P, heads, head_dim] against the model sizes known (gin or fingerprint)."""
  for axis, name in ((0, 'num_decoder_layers'), (2, 'num_heads'), (3, 'head_dim')):
    if sizes.get(name) not in (None, shape[axis]):
      raise PromptError(f'{where}: decoder_self/key has shape {tuple(shape)} [layers, P, heads, head_dim] but the '
                        f'model config has {name} {sizes[name]}: the wrong MODEL_CONFIG for this run?')


def _model_sizes(recorded: Mapping[str, Any] | None) -> dict[str, Any]:
  """The frozen model's sizes: gin's MODEL_CONFIG when bound (gin flags given), else the fingerprint's record."""
  config = _gin_model_config()
  if config is not None:
    return {
        k: getattr(config, k) for k in ('emb_dim', 'num_heads', 'head_dim', 'num_encoder_layers', 'num_decoder_layers')
    }
  return dict((recorded or {}).get('config') or {})


def _gin_model_config() -> Any:
  """The evaluated MODEL_CONFIG macro, or None when gin is not in use or the macro is unbound."""
  if 'gin' not in sys.modules:  # no gin flags were parsed: nothing is bound
    return None
  from jaxprompt.commands import configs  # pylint: disable=g-import-not-at-top  (imports gin)
  return configs.macro_value('MODEL_CONFIG')


def _trained_p_tuning(source: str, step: int | None) -> bool:
  """Whether the run trained P-tuning (its prompt.npy is the encoder's computed prompt): its orbax state holds the
  prompt encoder ('trainable/embedding' and 'trainable/mlp'); without the state, its config.gin names p_tuning."""
  if os.path.isfile(source):
    return False  # a bare prompt file says nothing about how it was trained
  numpy_dir, orbax_dir = checkpoint_step(source, step)
  if orbax_dir is None:  # a numpy step dir: its orbax twin, model_dir/checkpoints/<step>
    step_number = step_dirs.parse_step(numpy_dir.name, step_dirs.NUMPY_PREFIX)
    orbax_dir = numpy_dir.parent.parent / step_dirs.CHECKPOINTS / str(step_number)
  if (orbax_dir / 'state').exists():
    keys = _trainable_keys(orbax_dir)
    if keys:
      return 'embedding' in keys and 'mlp' in keys
  gin_file = orbax_dir.parent.parent / RUN_CONFIG_FILE
  return gin_file.exists() and bool(_P_TUNING_GIN.search(gin_file.read_text()))


def _trainable_keys(orbax_dir: Any) -> set[str]:
  """The top-level keys of the trainable tree in an orbax step's metadata (no array is read)."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  try:
    metadata = ocp.StandardCheckpointHandler().metadata(orbax_dir / 'state')
  except Exception:  # pylint: disable=broad-except  (unreadable metadata: fall back to config.gin)
    return set()
  leaves = jax.tree_util.tree_flatten_with_path(metadata)[0]
  paths = [jax.tree_util.keystr(path, simple=True, separator='/') for path, _ in leaves]
  return {p.split('/')[1] for p in paths if p.startswith('trainable/')}
