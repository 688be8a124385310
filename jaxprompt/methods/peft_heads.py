"""PEFT adapters of an encoder-only run with a task head (BERT / RoBERTa, `with_head.py`), both ways.

`PeftModelForSequenceClassification` (task_type SEQ_CLS: classification and regression heads) and
`PeftModelForTokenClassification` (TOKEN_CLS: tagging) train the base model's head beside the prompt as PEFT's
`modules_to_save` and save it in the adapter file under `base_model.<module>.<tensor>`, which is what we write:
`base_model.classifier.weight` / `.bias` (RoBERTa's sequence head: `base_model.classifier.dense.*` and
`base_model.classifier.out_proj.*`), checked against peft 0.21's `save_pretrained`. The prompt or prefix is
written as for the other families (`peft_adapters`, `peft_layouts`: one submodule, an encoder_self prefix).

The head's transformers class (`checkpoints.hf_encoder_writer.transformers_class`) must be the one PEFT wraps, so a
head transformers has no class for (a RoBERTa sequence head on the pooler) is refused, and so is multiple choice,
for which PEFT has no task type. The pooler a pooled head reads is the frozen encoder's (jaxprompt never trains
it): it is the base model's, not the adapter's. A BERT sequence head on [CLS] (two layers) is BERT's pooler and its
classifier (`hf_head.as_bert_pooled`), so both go to modules_to_save: `base_model.bert.pooler.dense.*` beside
`base_model.classifier.*`, as PEFT saves a model that trains its pooler (modules_to_save ['pooler']).

Reading back (`head_arrays`): an adapter with a head is a task head file's arrays (`with_head.head_arrays`):
TOKEN_CLS is a tagging head; SEQ_CLS a regression head when it has one output, else a classification head, on the
pooler when it is one layer (BertForSequenceClassification), on the first token when it is two (RoBERTa's), or
when a one-layer classifier comes with BERT's pooler (the two layers again).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxprompt.checkpoints import hf_encoder_writer, hf_head
from jaxprompt.errors import CheckpointError, PromptError
from jaxprompt.methods import kv_prefix, peft_layouts, registry, with_head
from jaxprompt.methods.peft_adapters import Adapter
from jaxprompt.models.heads import HeadConfig

MODULE_PREFIX = 'base_model.'  # PeftModel.save_pretrained's name of a prompt-learning model's modules_to_save


def known_roberta(model: Mapping[str, Any]) -> bool | None:
  """Whether what is known of a frozen encoder (`model`: its 'position_offset', if known) says RoBERTa (positions
  from pad_id + 1), BERT, or nothing (None)."""
  offset = model.get('position_offset')
  return None if offset is None else offset > 0


def target(base: registry.PeftTarget, kind: registry.FileKind, head_file: registry.Arrays, source: str,
           model: Mapping[str, Any]) -> registry.PeftTarget:
  """`base` with the head of `head_file` (a run's head.npz arrays): its task type and modules_to_save tensors, or
  one PromptError saying what PEFT or transformers cannot represent. `model`: what is known of the frozen encoder
  ('position_offset': RoBERTa's > 0; 'kv_prefix_shifts_positions'); `kind` the method's file kind."""
  head, params = with_head.parse_head(head_file, source)
  refuse = f'cannot export {source} as a PEFT adapter: '
  if head.kind == 'multiple_choice':
    raise PromptError(refuse + 'PEFT has no multiple-choice task type (its encoder tasks are SEQ_CLS and TOKEN_CLS); '
                      'export the prompt and head with --format file, or --format hf_head / hf_model for '
                      'transformers\' *ForMultipleChoice')
  roberta = known_roberta(model)
  try:
    hf_encoder_writer.transformers_class(head, roberta)
  except CheckpointError as e:
    raise PromptError(refuse + str(e)) from e
  if kind.name == kv_prefix.FILE_KIND and model.get('kv_prefix_shifts_positions') is False:
    raise PromptError(refuse + 'the model ran with kv_prefix_shifts_positions=False (tokens from position 0 after '
                      'the prefix), but transformers numbers the tokens after PEFT\'s past keys from P')
  task = peft_layouts.TOKEN_CLS if head.kind == 'tagging' else peft_layouts.SEQ_CLS
  roberta = hf_encoder_writer.is_roberta_class(head, roberta)
  modules = {MODULE_PREFIX + k: v for k, v in hf_encoder_writer.head_tensors(head, params, roberta).items()}
  sizes = {**base.sizes, 'family': task.family}
  return registry.PeftTarget(base.output, base.source, sizes, base.base_model, base.fingerprint, task.name, modules)


def head_arrays(adapter: Adapter, folder: str) -> dict[str, np.ndarray] | None:
  """The task head file arrays of a SEQ_CLS / TOKEN_CLS adapter (module docstring); None for other task types."""
  task_type = adapter.config.get('task_type')
  if task_type not in [t.name for t in peft_layouts.HEAD_TASKS]:
    return None
  tensors = {k[len(MODULE_PREFIX):]: v for k, v in (adapter.modules or {}).items() if k.startswith(MODULE_PREFIX)}
  pooler = any(k.startswith(hf_head.BERT_POOLER + '.') for k in tensors)
  sequence = task_type == peft_layouts.SEQ_CLS.name
  known = (hf_head.HEAD_PREFIX + '.',) + ((hf_head.BERT_POOLER + '.',) if sequence else ())
  others = sorted(k for k in adapter.modules or {} if not k[len(MODULE_PREFIX):].startswith(known))
  if others:  # e.g. a RoBERTa pooler PEFT trained: jaxprompt would run its frozen one and score differently
    raise PromptError(f'PEFT adapter {folder}: it saves {others} beside the classifier; jaxprompt reads a head that is '
                      "the classifier on the frozen encoder (modules_to_save ['classifier']), with BERT's pooler "
                      "for a sequence head (modules_to_save ['pooler'])")
  if pooler:  # BERT's pooler and its one-layer classifier: the two-layer head on [CLS]
    want = sorted(f'{m}.{t}' for m in (hf_head.BERT_POOLER, hf_head.HEAD_PREFIX) for t in ('weight', 'bias'))
    if sorted(tensors) != want:
      raise PromptError(f"PEFT adapter {folder}: BERT's pooler and classifier are {want}; it saves {sorted(tensors)}")
    tensors = hf_head.from_bert_pooled(tensors)
  try:
    params = hf_head.head_from_hf(tensors, f'PEFT adapter {folder}')
  except CheckpointError as e:
    raise PromptError(f'{e}; a {task_type} adapter keeps its head in modules_to_save (base_model.classifier.*)') from e
  out = params[hf_head.HEAD_PREFIX].get('out_proj', params[hf_head.HEAD_PREFIX])
  width = int(out['kernel'].shape[-1])
  two_layers = 'out_proj' in params[hf_head.HEAD_PREFIX]
  if task_type == peft_layouts.TOKEN_CLS.name:
    head = HeadConfig('tagging', width)
  else:
    head = HeadConfig('regression' if width == 1 else 'classification', None if width == 1 else width,
                      use_pooler=not two_layers)
  return with_head.head_arrays(head, params)


def join(adapter: Adapter, folder: str, method: Any, params: Any, context: registry.ReadContext) -> tuple[Any, Any]:
  """(method, params) read from an adapter's prompt or prefix, with its head joined when it has one (SEQ_CLS /
  TOKEN_CLS: `with_head.join_head`, checked against `context.config`)."""
  arrays = head_arrays(adapter, folder)
  if arrays is None:
    return method, params
  return with_head.join_head(arrays, method, params, context)  # parse_head drops the marker
