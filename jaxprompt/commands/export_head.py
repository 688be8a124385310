"""`jaxprompt export` of a step whose method trained a task head beside it (`methods/with_head.py`).

--format file: ONE folder holding the step's files by their step names (the method's `prefix.npz` / `prompt.npy`
  ... and `head.npz`) and `fingerprint.json`: the layout of a numpy step dir, which `--prompt_file=<folder>` reads
  whole (`prompt_files.folder_file`, then the head joined by name as in a step dir). A folder rather than one .npz
  holding both: the registry reads one kind per file (one marker each) and joins a head by name, so each file stays
  readable alone (`inspect`), a prompt stays a plain .npy, and nothing in `methods/registry.py` changes.
--format hf_head: the head alone as transformers' `classifier.*` tensors (`checkpoints/hf_head.py`; on a BERT, a
  sequence head on [CLS] as `bert.pooler.dense.*` and `classifier.*`, `hf_encoder_writer.head_tensors`) in one
  .safetensors file (metadata: `head_kind`, `use_pooler`), to load into a *ForSequenceClassification /
  *ForTokenClassification / *ForMultipleChoice beside the frozen encoder.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from safetensors.numpy import save as save_safetensors

from jaxprompt.checkpoints import hf_encoder_writer
from jaxprompt.errors import PromptError, UsageError
from jaxprompt.formats import files, fingerprint_files, npy_io
from jaxprompt.methods import peft_heads, registry, with_head

FILE_SUFFIXES = ('.npy', '.npz', '.safetensors')


def head_file(paths: Sequence[str]) -> str | None:
  """The task head among a step's files (its `head.npz`), None when it has none."""
  return next((p for p in paths if os.path.basename(p).endswith(with_head.HEAD_FILE)), None)


def export_folder(kind: registry.FileKind, arrays: registry.Arrays, joined: Sequence[str], output: str, source: str,
                  recorded: Mapping[str, Any] | None) -> dict[str, Any]:
  """Writes the method's `arrays` and its `joined` files (the head) into the new folder `output` (module
  docstring); returns what was written."""
  if output.endswith(FILE_SUFFIXES):
    raise UsageError(f'{source} trained a task head beside its {kind.step_file}: --format file writes both into one '
                     f'folder; give --output a folder (e.g. {os.path.splitext(output)[0]}), not the file {output}')
  listdir = files.gfile().listdir if files.is_remote(output) else os.listdir
  if files.exists(output) and (not files.isdir(output) or listdir(output)):
    raise UsageError(f'--output {output} exists and is not an empty folder: give a new folder for the method and '
                     'its head (nothing is overwritten)')
  written = [registry.write(kind, arrays, os.path.join(output, kind.step_file))]
  for path in joined:
    other = registry.read_arrays(path)
    other_kind = registry.kind_of(other, path)
    written.append(registry.write(other_kind, registry.unmarked(other), os.path.join(output, other_kind.step_file)))
  out: dict[str, Any] = {'checkpoint': source, 'output': output, 'files': [os.path.basename(p) for p in written]}
  out['fingerprint_id'] = (recorded or {}).get('id')
  if recorded:
    out['fingerprint'] = fingerprint_files.write(os.path.join(output, fingerprint_files.STEP_FILE), recorded)
  return out


def export_hf_head(head: str | None, output: str, source: str,
                   known: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Writes the task head file `head` as transformers' `classifier.*` tensors to `output` (.safetensors); on a BERT
  (`known` position_offset 0) a sequence head on [CLS] as BERT's pooler and classifier
  (`hf_encoder_writer.head_tensors`)."""
  head = _needed(head, source, 'hf_head')
  if not output.endswith('.safetensors'):
    raise UsageError(f'--format hf_head writes a .safetensors file; got --output {output}')
  config, params = with_head.parse_head(registry.read_arrays(head), head)
  roberta = hf_encoder_writer.is_roberta_class(config, peft_heads.known_roberta(known or {}))
  tensors = {k: np.ascontiguousarray(v) for k, v in hf_encoder_writer.head_tensors(config, params, roberta).items()}
  metadata = {'format': 'pt', 'head_kind': config.kind, 'use_pooler': str(config.use_pooler)}
  npy_io.write_bytes(save_safetensors(tensors, metadata=metadata), output, what='task head file')
  return {
      'checkpoint': source, 'output': output, 'format': 'hf_head', 'head_kind': metadata['head_kind'],
      'shapes': {k: list(v.shape) for k, v in tensors.items()}
  }


def _needed(head: str | None, source: str, format: str) -> str:  # pylint: disable=redefined-builtin
  if head is None:
    raise PromptError(f'{source} has no task head ({with_head.HEAD_FILE}): --format {format} of a run exports the '
                      'head an encoder-only run trains (heads/*.gin)' +
                      (', with its encoder; a T5 folder is the frozen model the gin files name (no --checkpoint)'
                       if format == 'hf_model' else ''))
  return head


def peft_target(target: registry.PeftTarget, kind: registry.FileKind, head: str,
                known: Mapping[str, Any]) -> registry.PeftTarget:
  """The PEFT target of a method trained with the head file `head`: SEQ_CLS / TOKEN_CLS with the head in
  modules_to_save (`methods/peft_heads.py`); `known`: what is known of the frozen encoder (`peft_heads.target`)."""
  return peft_heads.target(target, kind, registry.read_arrays(head), target.source, known)


def export_hf_encoder(head: str | None, output: str, source: str, overwrite: bool) -> dict[str, Any]:
  """The frozen encoder gin names (MODEL_CONFIG, HF_MODEL_DIR) and the run's head `head` as one transformers
  folder (`checkpoints/hf_encoder_writer.py`), labels from MIXTURE_OR_TASK_NAME's names."""
  from jaxprompt.checkpoints import hf_encoder, hf_writer  # pylint: disable=g-import-not-at-top
  from jaxprompt.commands import configs  # pylint: disable=g-import-not-at-top  (gin: bound by the CLI's files)
  from jaxprompt.data import task_heads  # pylint: disable=g-import-not-at-top
  config, folder = configs.macro_value('MODEL_CONFIG'), configs.macro_value('HF_MODEL_DIR')
  head_config, params = with_head.parse_head(registry.read_arrays(_needed(head, source, 'hf_model')), head)
  if folder is None or config is None:
    raise UsageError('export --format hf_model of an encoder run writes its frozen encoder: give the run\'s model '
                     f'gin files, e.g. --gin_file={os.path.join(source, "config.gin")} (HF_MODEL_DIR is not set)')
  hf_encoder_writer.transformers_class(head_config, hf_encoder_writer.is_roberta(config))  # before anything is read
  hf_writer.check_output(output, overwrite)
  encoder, config = hf_encoder.load_hf_encoder(folder, config=config.replace(scan_layers=False))
  head_config.check_network(config.pooler, os.fspath(folder))  # a pooled head needs the encoder's pooler
  task = configs.macro_value('MIXTURE_OR_TASK_NAME')
  labels = task_heads.head_labels(task) if isinstance(task, str) else None
  summary = hf_encoder_writer.save_hf_encoder_with_head(encoder, config, head_config, params, output,
                                                        label_names=labels.names if labels else None,
                                                        tokenizer_dir=os.fspath(folder), overwrite=overwrite)
  return {'checkpoint': source, 'encoder': os.fspath(folder), **summary}
