"""A task head (`jaxprompt.models.heads`) as the tensors of a transformers *For* model's head, both ways.

The head's parameter names are transformers': `classifier/kernel` [e, n] is `classifier.weight` [n, e] (torch's
Linear stores [out, in]) and `classifier/bias` is `classifier.bias`; RoBERTa's sequence head is
`classifier.dense.*` and `classifier.out_proj.*`. BertFor{SequenceClassification, TokenClassification,
MultipleChoice} and RobertaFor{TokenClassification, MultipleChoice} use the one-layer `classifier`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from jaxprompt.errors import CheckpointError

HEAD_PREFIX = 'classifier'
_TORCH = {'kernel': 'weight', 'bias': 'bias'}


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
