"""`jaxprompt export --format hf_model --output DIR`: the frozen model the gin files name, as a Hugging Face T5
folder (`checkpoints/hf_writer.py`) for `T5ForConditionalGeneration.from_pretrained`, and so for a PEFT adapter
exported from the same run (`--format peft`).

  MODEL_CONFIG             the architecture (models/*.gin)
  INITIAL_CHECKPOINT_PATH  the weights: a T5X checkpoint (any format) or model dir, read tensor by tensor while the
                           folder is written; or a Hugging Face folder (read whole)
  VOCABULARY               its seqio SentencePiece vocabulary: the tokenizer files (`--gin.VOCABULARY=None`: none)
"""
from __future__ import annotations

import os
from typing import Any

from jaxprompt.checkpoints import common, hf_writer, t5x
from jaxprompt.errors import ConfigError, UsageError
from jaxprompt.formats import validation
from jaxprompt.models.config import T5Config
from jaxprompt.runtime import runtime as runtime_lib


def _weights(path: str, config: T5Config) -> dict[str, Any]:
  """The checkpoint's parameters: unread T5X sources (the writer reads one at a time), or an HF folder's."""
  if runtime_lib.is_hf_checkpoint(path):
    from jaxprompt.checkpoints.huggingface import load_hf_t5  # pylint: disable=g-import-not-at-top
    return load_hf_t5(path, config=config.replace(scan_layers=False))[0]
  return t5x.t5x_sources(t5x.latest_checkpoint(path))


def _sentencepiece(vocabulary: Any) -> tuple[bytes | None, int, str]:
  """(the SentencePiece model's bytes, seqio's extra ids, its path) of VOCABULARY; (None, 0, '') when unbound."""
  if vocabulary is None:
    return None, 0, ''
  path = getattr(vocabulary, 'sentencepiece_model_file', None)
  if path is None:
    raise ConfigError(f'VOCABULARY is a {type(vocabulary).__name__}, not a SentencePiece vocabulary: Hugging Face T5 '
                      'tokenizers are SentencePiece models (--gin.VOCABULARY=None exports the model alone)')
  return common.as_path(path).read_bytes(), int(vocabulary.extra_ids), os.fspath(path)


def export_hf_model(output: str, *, overwrite: bool = False) -> dict[str, Any]:
  """Writes gin's MODEL_CONFIG + INITIAL_CHECKPOINT_PATH (+ VOCABULARY's tokenizer) to the folder `output`;
  returns the writer's summary with the checkpoint it read."""
  from jaxprompt.commands import configs  # pylint: disable=g-import-not-at-top  (gin: bound by the CLI's files)
  config = configs.macro_value('MODEL_CONFIG')
  if config is None:
    raise UsageError('export --format hf_model writes the frozen model of a models/*.gin file: give it, e.g. '
                     '--gin_file=models/demo.gin (MODEL_CONFIG is not set)')
  if not isinstance(config, T5Config):
    raise ConfigError(f'MODEL_CONFIG must be a T5Config (e.g. @jaxprompt.model_config()), got {config!r}')
  checkpoint = os.fspath(
      validation.require(configs.macro_value('INITIAL_CHECKPOINT_PATH'), 'INITIAL_CHECKPOINT_PATH',
                         "\"'/path/to/checkpoint'\""))
  if not output:
    raise UsageError('export --format hf_model needs --output DIR')
  hf_writer.check_output(output, overwrite)  # before anything is read
  spm_model, extra_ids, spm_path = _sentencepiece(configs.macro_value('VOCABULARY'))
  summary = hf_writer.save_hf_t5(_weights(checkpoint, config), config, output, spm_model=spm_model, extra_ids=extra_ids,
                                 spm_where=spm_path, overwrite=overwrite)
  return {'checkpoint': checkpoint, **summary}
