"""A task head (`jaxprompt.models.heads`) as the tensors of a transformers *For* model's head, both ways.

The head's parameter names are transformers': `classifier/kernel` [e, n] is `classifier.weight` [n, e] (torch's
Linear stores [out, in]) and `classifier/bias` is `classifier.bias`; RoBERTa's sequence head is
`classifier.dense.*` and `classifier.out_proj.*`. BertFor{SequenceClassification, TokenClassification,
MultipleChoice} and RobertaFor{TokenClassification, MultipleChoice} use the one-layer `classifier`.

BertForSequenceClassification computes the same two layers on the first row as its pooler (`bert.pooler.dense`,
tanh) and its one-layer `classifier`, so a two-layer head on a BERT goes there as those tensors
(`as_bert_pooled`) and comes back from them (`from_bert_pooled`).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from jaxprompt.errors import CheckpointError

HEAD_PREFIX = 'classifier'
BERT_POOLER = 'bert.pooler.dense'  # BertModel's pooler: this dense layer and tanh on the first row
_TORCH = {'kernel': 'weight', 'bias': 'bias'}
_DENSE, _OUT = f'{HEAD_PREFIX}.dense', f'{HEAD_PREFIX}.out_proj'


def head_to_hf(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The head's parameters ({'classifier': ...}) as transformers tensors by name (float32 numpy)."""
  out = {}
  for path, leaf in traverse_util.flatten_dict(dict(params)).items():
    leaf = np.asarray(leaf, np.float32)
    out['.'.join(path[:-1] + (_TORCH[path[-1]],))] = leaf.T if path[-1] == 'kernel' else leaf
  return out


def head_from_hf(tensors: Mapping[str, Any], source: str = 'the checkpoint') -> dict:
  """The `classifier.*` tensors of a transformers *For* model as the head's parameters ({'classifier': ...});
  one CheckpointError naming `source` when it has none."""
  back = {v: k for k, v in _TORCH.items()}
  tree = {}
  for name, value in tensors.items():
    parts = tuple(name.split('.'))
    if parts[0] != HEAD_PREFIX or parts[-1] not in back:
      continue
    value = np.asarray(value, np.float32)
    tree[parts[:-1] + (back[parts[-1]],)] = value.T if parts[-1] == 'weight' else value
  if not tree:
    raise CheckpointError(f"{source} has no '{HEAD_PREFIX}.*' head tensors (a transformers *ForSequenceClassification"
                          ', *ForTokenClassification or *ForMultipleChoice model has them)')
  return traverse_util.unflatten_dict(tree)


def saved_module(name: str) -> str:
  """The module of a *For* model that holds the head tensor `name` (what PEFT's modules_to_save lists: PEFT wraps
  each module whose name ends with an entry): BERT's `pooler` for `bert.pooler.dense.*`, else `classifier`."""
  return 'pooler' if name.startswith(BERT_POOLER + '.') else name.split('.', 1)[0]


def as_bert_pooled(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A two-layer head's tensors (`classifier.dense.*`, `classifier.out_proj.*`) renamed to BERT's pooled sequence
  head, which computes the same: `bert.pooler.dense.*` and `classifier.*`."""
  renames = {_DENSE: BERT_POOLER, _OUT: HEAD_PREFIX}
  return {renames[k.rsplit('.', 1)[0]] + '.' + k.rsplit('.', 1)[1]: v for k, v in tensors.items()}


def from_bert_pooled(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """`as_bert_pooled` undone: a pooler's and a one-layer classifier's tensors as the two-layer head's names."""
  renames = {BERT_POOLER: _DENSE, HEAD_PREFIX: _OUT}
  return {renames[k.rsplit('.', 1)[0]] + '.' + k.rsplit('.', 1)[1]: v for k, v in tensors.items()}
