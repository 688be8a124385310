"""`jaxprompt export`: a training checkpoint's inference file, what `eval` / `infer` take as `--prompt_file`.

The step's file is read by what it holds (`jaxprompt.methods.registry`), and its method's `FileKind` says the rest:
format 'file' (the default): the suffixes `--output` may have and how the file is written (a prompt: a plain
  float32 [P, d] .npy; a prefix: .npz or .safetensors by the output's extension; other files: an .npz with their
  marker), plus `<output>.fingerprint.json`, the frozen model's fingerprint the step recorded (when it recorded one).
format 'peft': a Hugging Face PEFT adapter folder (`jaxprompt.methods.peft_adapters`) by the kind's writer (its
  PEFT type chosen from what the run trained: P-tuning's prompt.npy is P_TUNING, prompt tuning's PROMPT_TUNING),
  or the kind's one-line reason there is none. The adapter's model sizes come from gin's MODEL_CONFIG when bound,
  else from the step's fingerprint, else from the shapes (PEFT fills the rest).
Reads only that file (or, for a prompt, the prompt leaf of the orbax state): neither the frozen model nor the
optimizer state.
A step whose method trained a task head beside it (encoder-only runs, `head.npz`): format 'file' writes the
  method's file and the head into one folder, format 'hf_head' the head as transformers' `classifier.*` tensors,
  format 'peft' a SEQ_CLS / TOKEN_CLS adapter with the head in modules_to_save, format 'hf_model' the frozen encoder
  the gin files name and the head as one transformers *For* folder (`commands/export_head.py`).
format 'hf_model' without --checkpoint: not a run's file but the frozen model the gin files name, as a Hugging Face
  T5 folder (`commands/export_model.py`).
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxprompt.commands import export_head, export_model, prompt_files
from jaxprompt.errors import PromptError, UsageError
from jaxprompt.formats import fingerprint_files
from jaxprompt.formats.keys import PROMPT_FILE, PROMPT_KEY, RUN_CONFIG_FILE
from jaxprompt.methods import registry
from jaxprompt.models.config import T5Config
from jaxprompt.train import step_dirs
from jaxprompt.train.checkpoint_files import checkpoint_step, load_prompt_from_checkpoint

FORMATS = ('file', 'peft', 'hf_model', 'hf_head')


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
  adapter folder there (`base_model` its base_model_name_or_path); returns what was written. What a file is
  written as, and whether and how it becomes a PEFT adapter, is its method's (`registry.FileKind`).
  format='hf_model' writes gin's frozen model as a Hugging Face folder instead (`overwrite`: into a non-empty one)."""
  if format not in FORMATS:
    raise UsageError(f'export --format must be one of {", ".join(FORMATS)}; got {format!r}')
  if format == 'hf_model' and checkpoint is not None and not isinstance(_gin_model_config(), T5Config):
    # an encoder run: its frozen encoder and its head
    if base_model is not None:
      raise UsageError('--base_model is written into a PEFT adapter: it needs --format peft')
    found = prompt_files.step_file(os.fspath(checkpoint), step)
    joined = [] if found is None else prompt_files.beside_files(found) + [found]
    return export_head.export_hf_encoder(export_head.head_file(joined), output_file, os.fspath(checkpoint),
                                         bool(overwrite))
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
  method_file, found = None, source
  if not os.path.isfile(source):
    found = prompt_files.step_file(source, step)
    method_file = None if found is None or os.path.basename(found) == PROMPT_FILE else found
  joined = [] if found is None else prompt_files.beside_files(found)  # the task head beside the method's file
  recorded = prompt_files.recorded_fingerprint(source, step)
  if format == 'hf_head':
    return export_head.export_hf_head(export_head.head_file(joined + [method_file or '']), output_file, source,
                                      _encoder_known(recorded))
  if method_file is None:  # a prompt: the orbax state's prompt leaf, or the step's prompt.npy
    arrays = {PROMPT_KEY: _prompt(source, step, output_file)}
  else:
    arrays = registry.read_arrays(method_file)
  kind = registry.kind_of(arrays, method_file or source)
  if format == 'peft':
    kind = registry.trained_kind(kind, _trained_run(source, step))
    target = registry.PeftTarget(output_file, method_file or source, _model_sizes(recorded), base_model, recorded)
    head = export_head.head_file(joined)
    if head is not None and callable(kind.peft):  # an encoder's head: SEQ_CLS / TOKEN_CLS, in modules_to_save
      target = export_head.peft_target(target, kind, head, _encoder_known(recorded))
    return _export_peft(kind, arrays, target, source)
  if joined:
    return export_head.export_folder(kind, arrays, joined, output_file, source, recorded)
  if not output_file.endswith(kind.suffixes):
    name = os.path.basename(method_file) if method_file else kind.step_file
    raise UsageError(f'{name} of {source} exports as {" or ".join(kind.suffixes)}; got --output {output_file}')
  written = {'checkpoint': source, 'output': registry.write(kind, arrays, output_file)}
  if method_file is None:
    written['shape'] = list(arrays[PROMPT_KEY].shape)
  else:
    written['shapes'] = {k: list(v.shape) for k, v in arrays.items() if v.size}
  return _with_fingerprint(written, recorded)


def _prompt(source: str, step: int | None, output: str) -> np.ndarray:
  prompt = np.asarray(load_prompt_from_checkpoint(source, step=step), np.float32)
  if prompt.ndim != 2:
    raise PromptError(f'cannot export a prompt of shape {prompt.shape} to {output}: expected [length, embed]')
  return prompt


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


def _export_peft(kind: registry.FileKind, arrays: registry.Arrays, target: registry.PeftTarget,
                 checkpoint: str) -> dict[str, Any]:
  """A PEFT adapter folder by the kind's writer, or the kind's one-line reason there is none."""
  if isinstance(kind.peft, str):
    raise PromptError(f'cannot export {target.source} as a PEFT adapter: {kind.peft}')
  peft_type, shape = kind.peft(arrays, target)
  fingerprint_id = (target.fingerprint or {}).get('id')
  task = {'task_type': target.task_type} if target.task_type else {}  # an encoder's head: SEQ_CLS / TOKEN_CLS
  return {
      'checkpoint': checkpoint, 'output': target.output, 'format': 'peft', 'fingerprint_id': fingerprint_id,
      'peft_type': peft_type, 'shape': shape, **task
  }


def _model_sizes(recorded: Mapping[str, Any] | None) -> dict[str, Any]:
  """The frozen model's sizes: gin's MODEL_CONFIG when bound (gin flags given), else the fingerprint's record."""
  config = _gin_model_config()
  if config is not None:
    return registry.model_sizes(config)
  return dict((recorded or {}).get('config') or {})


def _encoder_known(recorded: Mapping[str, Any] | None) -> dict[str, Any]:
  """What is known of a run's frozen encoder, for its head's transformers / PEFT names: `position_offset` (RoBERTa's
  > 0) and `kv_prefix_shifts_positions` from gin's MODEL_CONFIG when it is bound, else the fingerprint's record of
  the offset; {} when neither says."""
  config = _gin_model_config()
  if config is not None and hasattr(config, 'position_offset'):
    return {'position_offset': config.position_offset, 'kv_prefix_shifts_positions': config.kv_prefix_shifts_positions}
  offset = ((recorded or {}).get('config') or {}).get('position_offset')
  return {} if offset is None else {'position_offset': offset}


def _gin_model_config() -> Any:
  """The evaluated MODEL_CONFIG macro, or None when gin is not in use or the macro is unbound."""
  if 'gin' not in sys.modules:  # no gin flags were parsed: nothing is bound
    return None
  from jaxprompt.commands import configs  # pylint: disable=g-import-not-at-top  (imports gin)
  return configs.macro_value('MODEL_CONFIG')


def _trained_run(source: str, step: int | None) -> registry.TrainedRun:
  """What the run of `source` trained (`registry.TrainedRun`): its orbax state's trainable names, its config.gin."""
  if os.path.isfile(source):
    return registry.TrainedRun()  # a bare file says nothing about how it was trained
  numpy_dir, orbax_dir = checkpoint_step(source, step)
  if orbax_dir is None:  # a numpy step dir: its orbax twin, model_dir/checkpoints/<step>
    step_number = step_dirs.parse_step(numpy_dir.name, step_dirs.NUMPY_PREFIX)
    orbax_dir = numpy_dir.parent.parent / step_dirs.CHECKPOINTS / str(step_number)
  keys = _trainable_keys(orbax_dir) if (orbax_dir / 'state').exists() else set()
  gin_file = orbax_dir.parent.parent / RUN_CONFIG_FILE
  return registry.TrainedRun(frozenset(keys) or None, gin_file.read_text() if gin_file.exists() else '')


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
