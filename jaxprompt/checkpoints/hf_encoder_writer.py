"""A frozen BERT / RoBERTa and a task head trained on it as one transformers folder: `*ForSequenceClassification`,
`*ForTokenClassification` or `*ForMultipleChoice`, which `AutoModelFor*.from_pretrained` loads with no missing or
unexpected key (`jaxprompt export --format hf_model --checkpoint RUN` of an encoder run).

Which class a head is (`transformers_class`), as transformers builds each one:

  head (jaxprompt)                               BERT                              RoBERTa
  classification / regression, use_pooler       BertForSequenceClassification     -  (its head reads <s>, no pooler)
  classification / regression on row 0          BertForSequenceClassification *   RobertaForSequenceClassification
  tagging                                       BertForTokenClassification        RobertaForTokenClassification
  multiple choice, use_pooler                   BertForMultipleChoice             RobertaForMultipleChoice
  multiple choice on row 0                      -                                 -

jaxprompt's sequence head on row 0 is RoBERTa's two layers (dense, tanh, out_proj). * BERT's sequence class is
the same two layers, its pooler (dense, tanh on row 0) then one linear layer, so on a BERT that head's dense layer
is written as the folder's pooler (`hf_head.as_bert_pooled`): the frozen encoder's own pooler is not needed there.
The crossed cells have no transformers class and are refused in one line naming the setting that has one
(`HeadConfig.use_pooler`).

The folder: `config.json` (`hf_encoder_names.bert_hf_config` of the architecture, plus `num_labels`, `id2label` /
`label2id` from the task's label names, `problem_type`), `model.safetensors` (the encoder under `bert.` / `roberta.`,
its pooler only when the class has one, and the head as `classifier.*`, `head_tensors`), and the base
folder's tokenizer files when it has them (`AutoTokenizer` then loads the folder too).
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

from jaxprompt.checkpoints import common, hf_encoder_names, hf_head, hf_writer
from jaxprompt.checkpoints.hf_names import Entry
from jaxprompt.errors import CheckpointError
from jaxprompt.models.encoder_config import EncoderConfig
from jaxprompt.models.heads import HeadConfig

_CLASSES = {
    'classification': 'ForSequenceClassification', 'regression': 'ForSequenceClassification',
    'tagging': 'ForTokenClassification', 'multiple_choice': 'ForMultipleChoice'
}
# The classes whose encoder keeps its pooler (transformers builds the others with add_pooling_layer=False).
_POOLED = ('BertForSequenceClassification', 'BertForMultipleChoice', 'RobertaForMultipleChoice')
Params = Mapping[str, Any]  # a nested parameter tree
TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'vocab.txt', 'vocab.json',
                   'merges.txt')


def is_roberta(config: EncoderConfig) -> bool:
  """RoBERTa numbers positions from pad_id + 1, BERT from 0 (`hf_encoder_names.encoder_config`)."""
  return config.position_offset > 0


def is_roberta_class(head: HeadConfig, roberta: bool | None) -> bool:
  """Whether `head` goes to a RoBERTa class: `roberta` when the encoder is known, else (None) whichever the head
  fits: RoBERTa's for a sequence head on row 0, BERT's for the others."""
  if roberta is not None:
    return roberta
  return head.kind in ('classification', 'regression') and not head.use_pooler


def transformers_class(head: HeadConfig, roberta: bool | None) -> str:
  """The transformers class computing `head` on a RoBERTa (`roberta`) or BERT encoder (None: whichever the head
  fits), or one CheckpointError naming the setting that has one (module docstring)."""
  sequence = head.kind in ('classification', 'regression')
  if head.kind == 'multiple_choice' and not head.use_pooler:
    raise CheckpointError('a multiple-choice head on the first token (USE_POOLER=False) has no transformers class: '
                          'BertForMultipleChoice and RobertaForMultipleChoice read the pooler; train with '
                          'USE_POOLER=True (a model with a pooler) or export with --format file')
  roberta = is_roberta_class(head, roberta)
  if sequence and roberta and head.use_pooler:
    raise CheckpointError(f'a {head.kind} head on the pooler (USE_POOLER=True) has no RoBERTa class: '
                          "RobertaForSequenceClassification reads <s> through two layers, jaxprompt's USE_POOLER=False "
                          'head; train with USE_POOLER=False or export with --format file')
  return ('Roberta' if roberta else 'Bert') + _CLASSES[head.kind]


def config_json(config: EncoderConfig, head: HeadConfig, arch: str,
                label_names: Sequence[str] | None) -> dict[str, Any]:
  """config.json of the encoder with `head` as `arch`: labels and problem type added."""
  out = hf_encoder_names.bert_hf_config(config, arch)
  if head.kind == 'multiple_choice':
    return out
  names = list(label_names or [])
  if head.kind == 'regression' or len(names) != head.outputs:
    names = [f'LABEL_{i}' for i in range(head.outputs)]  # transformers' own names
  out.update(num_labels=head.outputs, id2label={str(i): n for i, n in enumerate(names)},
             label2id={n: i for i, n in enumerate(names)})
  if head.kind != 'tagging':
    out['problem_type'] = 'regression' if head.kind == 'regression' else 'single_label_classification'
  return out


def pools_head(head: HeadConfig, roberta: bool) -> bool:
  """Whether `head` goes to transformers with its first layer as BERT's pooler (module docstring's *)."""
  return not roberta and head.kind in ('classification', 'regression') and not head.use_pooler


def head_tensors(head: HeadConfig, head_params: Params, roberta: bool) -> dict[str, Any]:
  """The head's tensors by transformers name, for a RoBERTa (`roberta`) or BERT *For* class: `classifier.*`, and
  `bert.pooler.dense.*` when the head `pools_head`."""
  tensors = hf_head.head_to_hf(head_params)
  return hf_head.as_bert_pooled(tensors) if pools_head(head, roberta) else tensors


def _head_plan(tensors: Mapping[str, Any]) -> tuple[dict[str, Entry], dict[str, Any]]:
  """(the head's plan entries, its tensors by plan path) of `head_tensors`."""
  tensors = {f'head/{k}': v for k, v in tensors.items()}
  return {path: Entry(path[len('head/'):], tuple(v.shape)) for path, v in tensors.items()}, tensors


def save_hf_encoder_with_head(encoder: Params, config: EncoderConfig, head: HeadConfig, head_params: Params,
                              output: str | os.PathLike, *, label_names: Sequence[str] | None = None,
                              tokenizer_dir: str | None = None, overwrite: bool = False) -> dict[str, Any]:
  """Writes the frozen `encoder` (BertEncoder params of `config`) and `head` ({'classifier': ...}) as one
  transformers folder (module docstring); returns a summary."""
  output = os.fspath(output)
  arch = transformers_class(head, is_roberta(config))
  prefix = 'roberta.' if is_roberta(config) else 'bert.'
  pooled_head = pools_head(head, is_roberta(config))  # the head writes the pooler
  kept = config.replace(pooler=config.pooler and arch in _POOLED and not pooled_head)
  if arch in _POOLED and not config.pooler and not pooled_head:
    raise CheckpointError(f'{arch} has a pooler, but this encoder has none (EncoderConfig.pooler=False): its pooler '
                          'would be random in transformers')
  plan = {f'encoder/{k}': v for k, v in hf_encoder_names.encoder_plan(kept, prefix).items()}
  head_plan, head_arrays = _head_plan(head_tensors(head, head_params, is_roberta(config)))
  plan.update(head_plan)
  params = {**{f'encoder/{k}': v for k, v in common.flatten_params(encoder).items()}, **head_arrays}
  params = {k: v for k, v in params.items() if k in plan}  # a pooler the class drops

  def copy_tokenizer(staging: str) -> list[str]:
    names = [n for n in TOKENIZER_FILES if tokenizer_dir and os.path.isfile(os.path.join(tokenizer_dir, n))]
    for name in names:
      shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(staging, name))
    return names

  files, total, stored = hf_writer.save_hf_folder(params, plan, lambda _: config_json(config, head, arch, label_names),
                                                  output, write_extra=copy_tokenizer, overwrite=overwrite)
  return {
      'output': output, 'format': 'hf_model', 'architecture': arch, 'files': sorted(files), 'tensors': len(plan),
      'bytes': total, 'dtype': stored, 'num_labels': None if head.kind == 'multiple_choice' else head.outputs
  }
