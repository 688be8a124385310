"""Text-to-text formatting of GLUE / SuperGLUE examples, string for string as T5's preprocessors.

Each function maps raw TFDS examples (the feature dicts of the `glue/*` and `super_glue/*` builders) to
`{'inputs': str, 'targets': str, ...}`. The formats follow T5 (Raffel et al. 2020), which Lester et al. 2021
prompt-tune on:

  inputs  = "<benchmark> <key1>: <text1> <key2>: <text2> ..."   e.g. "rte hypothesis: ... premise: ..."
  targets = the label's class name ("entailment", "True", "choice2", ...) or "<unk>" for label -1 (test).

The "taskless" variant of a task (prompt-tuning repo) drops the first word ("rte") with
`remove_first_text_token`, leaving the prompt to say which task it is.
SuperGLUE's special cases (ReCoRD, WSC, DPR) live in `jaxprompt.data.superglue`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import seqio
import tensorflow as tf

UNKNOWN_LABEL = '<unk>'  # T5's target for unlabeled (test split) examples, label == -1


def label_text(label: tf.Tensor, label_names: Sequence[str]) -> tf.Tensor:
  """Class name of an int label (scalar), or "<unk>" for -1."""
  return tf.cond(tf.equal(label, -1), lambda: tf.constant(UNKNOWN_LABEL),
                 lambda: tf.gather(tf.constant(list(label_names)), label))


def join_fields(prefix: str | None, example: Mapping[str, tf.Tensor], keys: Sequence[str]) -> tf.Tensor:
  """"<prefix> key1: <v1> key2: <v2> ..." joined with single spaces (values are scalar strings)."""
  parts = [prefix] if prefix else []
  for key in keys:
    parts += [f'{key}:', example[key]]
  return tf.strings.join(parts, separator=' ')


def _strip_multirc_html(text: tf.Tensor) -> tf.Tensor:
  # MultiRC paragraphs carry <br> line breaks and <b>Sent N: </b> markers; T5 drops the markup.
  text = tf.strings.regex_replace(text, '<br>', ' ')
  return tf.strings.regex_replace(text, '<(/)?b>', '')


@seqio.map_over_dataset
def glue(x: Mapping[str, tf.Tensor], benchmark_name: str, label_names: Sequence[str],
         feature_names: Sequence[str] | None = None, id_key: str | None = 'idx'):
  """T5's generic GLUE / SuperGLUE classification format.

  Args:
    x: a raw example: text features, int `label` (-1 when unlabeled) and `idx`.
    benchmark_name: first word of the inputs ("rte", "mnli", "boolq", ...).
    label_names: class names indexed by label id; the target is `label_names[label]`.
    feature_names: text features in output order; None takes every feature except label/idx, sorted by
      name, as T5 does (so SuperGLUE RTE reads "rte hypothesis: ... premise: ...").
    id_key: feature copied to the output `idx` (None: none); MultiRC instead keeps `idx/paragraph`,
      `idx/question`, `idx/answer` (the question groups its answers for exact match).

  Returns:
    {'inputs', 'targets', 'idx' | 'idx/...'}.
  """
  keys = list(feature_names or sorted(set(x.keys()) - {'label', 'idx'}))
  inputs = join_fields(benchmark_name, x, keys)
  out = {}
  if benchmark_name == 'multirc':
    inputs = _strip_multirc_html(inputs)
    for part in ('paragraph', 'question', 'answer'):
      out[f'idx/{part}'] = x['idx'][part]
  elif id_key:
    out['idx'] = x[id_key]
  out['inputs'] = inputs
  out['targets'] = label_text(x['label'], label_names)
  return out


@seqio.map_over_dataset
def stsb(x: Mapping[str, tf.Tensor]):
  """STS-B as text: the score in [0, 5] rounded to the nearest 0.2 and printed with one decimal ("3.4").

  T5 treats STS-B as a 26-way classification over "0.0", "0.2", ..., "5.0".
  """
  score = tf.round(tf.cast(x['label'], tf.float32) * 5) / 5
  return {
      'inputs': join_fields('stsb', x, ['sentence1', 'sentence2']),
      'targets': tf.as_string(score, precision=1),
      'idx': x['idx'],
  }


@seqio.map_over_dataset
def remove_first_text_token(x: Mapping[str, tf.Tensor], key: str = 'inputs'):
  """Drops everything up to and including the first space of `x[key]` ("rte premise: a" -> "premise: a").

  This turns a T5 task into the prompt-tuning repo's "taskless" task.
  """
  out = dict(x)
  out[key] = tf.strings.regex_replace(x[key], r'^[^ ]* ', '', replace_global=False)
  return out
