"""Turn decoded model outputs (and targets) into what the metrics compare, as T5's postprocessors do.

seqio calls `postprocess_fn(text, example=example, is_target=...)` twice per example: on the model's
decoded prediction (`is_target=False`) and on the decoded target string (`is_target=True`), with `example`
the preprocessed example (its string features still bytes). Every function here accepts `str` or `bytes`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Text = str | bytes

# Words ignored when comparing a generated WSC referent with the candidate ("the trophy" == "trophy").
_WSC_DETERMINERS = frozenset({
    'a', 'an', 'few', 'her', 'his', 'each', 'every', 'many', 'much', 'my', 'our', 'some', 'that', 'the', 'their',
    'these', 'this', 'those', 'which', 'whose', 'your'
})


def as_text(value: Text) -> str:
  """UTF-8 decodes bytes (and numpy bytes); returns str unchanged."""
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def string_to_float(string: Text, default: float = -1.0, **unused_kwargs) -> float:
  """float(string), or `default` when the text is not a number (STS-B)."""
  try:
    return float(as_text(string))
  except ValueError:
    return default


def string_label_to_class_id(string_label: Text, label_classes: Sequence[str], default: int = -1,
                             **unused_kwargs) -> int:
  """Index of the label text in `label_classes`, or `default` (-1: an invalid prediction)."""
  text = as_text(string_label)
  return list(label_classes).index(text) if text in label_classes else default


def multirc(string_label: Text, example: Mapping[str, Any] | None = None, is_target: bool = False) -> dict:
  """{'value': 0/1/-1}; targets also carry 'group' = the question index (for exact match per question)."""
  result = {'value': string_label_to_class_id(string_label, label_classes=('False', 'True'))}
  if is_target:
    result['group'] = example['idx/question']
  return result


def record(answer: Text, example: Mapping[str, Any] | None = None, is_target: bool = False) -> dict:
  """Prediction -> {'value': answer}; target -> {'value': all gold answers, 'group': (passage, query)}.

  The group lets the metric score each query once although the task repeats it once per gold answer.
  """
  if is_target:
    return {
        'value': [as_text(a) for a in example['answers']],
        'group': (int(example['idx/passage']), int(example['idx/query'])),
    }
  return {'value': as_text(answer)}


def _clean_referent(text: Text) -> str:
  words = as_text(text).strip().lower().split(' ')
  return ' '.join(w for w in words if w not in _WSC_DETERMINERS)


def wsc_simple(prediction: Text, example: Mapping[str, Any] | None = None, is_target: bool = False) -> int:
  """WSC simple: target -> the 0/1 label; prediction -> 1 if it names the candidate referent, else 0.

  The generated text and the candidate (`targets_pretokenized`) match when, ignoring case and determiners,
  one's words are a subset of the other's ("fuzzy bunny" ~ "bunny"), unless only one is possessive.
  An empty prediction gives -1 so that it never equals a label.
  """
  if is_target:
    return int(example['label'])
  predicted = _clean_referent(prediction)
  if not predicted:
    return -1
  referent = _clean_referent(example['targets_pretokenized'])
  if ("'" in predicted) != ("'" in referent):
    return 0
  predicted_words, referent_words = set(predicted.split(' ')), set(referent.split(' '))
  return int(predicted_words <= referent_words or referent_words <= predicted_words)
