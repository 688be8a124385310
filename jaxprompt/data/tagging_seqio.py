"""A tagging task (`tagging_tasks.TaggingTask`) as a seqio Task, for training's tf.data stream (this module imports
TensorFlow and seqio).

Its examples are the sentences of a split (`words` strings, `tags` label ids), aligned to the task's vocabulary as
`token_labels.word_pieces` aligns them (each word after a space, its label on its first sub-token): `inputs` the
tokens without specials, `token_labels` a label per token. The encoder converter puts the specials around them and
cuts them to the length (`encoder_converter`), giving the rows `TagAligner.features` gives. The task reads with T5's
vocabulary until the pipeline re-reads it with the model's (`pipeline.get_provider(name, vocabulary,
'encoder_only')`).
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

from jaxprompt.data import tasks
from jaxprompt.data.encoder import FIRST
from jaxprompt.data.encoder_converter import TAG_LABELS
from jaxprompt.data.token_labels import word_pieces
from jaxprompt.data.vocab import get_default_vocabulary

WORDS, TAGS = 'words', 'tags'


def _dataset_fn(split: str, shuffle_files: bool, seed: int | None = None, *, task: Any) -> tf.data.Dataset:
  """tf.data of {'words': string [n], 'tags': int32 [n]}, a split's sentences in memory (shuffled whole when
  `shuffle_files`, with a fixed default seed so every host holds the same order before seqio shards it)."""
  ids = {tag: i for i, tag in enumerate(task.labels)}
  sentences = task.sentences(split)
  ds = tf.data.Dataset.from_generator(
      lambda: ({WORDS: list(s.words), TAGS: [ids[t] for t in s.tags]} for s in sentences),
      output_signature={WORDS: tf.TensorSpec([None], tf.string), TAGS: tf.TensorSpec([None], tf.int32)})
  if shuffle_files:
    ds = ds.shuffle(len(sentences), seed=0 if seed is None else seed, reshuffle_each_iteration=True)
  return ds


def align_words(ds: tf.data.Dataset, output_features: dict[str, seqio.Feature]) -> tf.data.Dataset:
  """Sentences -> `inputs` (tokens without specials) and `token_labels`, with the task's `inputs` vocabulary."""
  vocabulary = output_features[FIRST].vocabulary

  def align(words: np.ndarray, tags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tokens, labels, _ = word_pieces(vocabulary, [w.decode('utf-8') for w in words], tags)
    return np.asarray(tokens, np.int32), np.asarray(labels, np.int32)

  def fn(x):
    tokens, labels = tf.numpy_function(align, [x[WORDS], x[TAGS]], [tf.int32, tf.int32], stateful=False)
    return {**x, FIRST: tf.ensure_shape(tokens, [None]), TAG_LABELS: tf.ensure_shape(labels, [None])}

  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def register(task: Any) -> seqio.Task:
  """Enters `task` in seqio's registry under its name (replacing one of that name), with its tag names as its
  label set (`tasks.get_label_set`)."""
  vocabulary = get_default_vocabulary()
  features = {
      FIRST: seqio.Feature(vocabulary, add_eos=False),
      TAG_LABELS: seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32),
  }
  source = seqio.FunctionDataSource(functools.partial(_dataset_fn, task=task), splits=list(task.splits))
  made = seqio.Task(task.name, source, features, preprocessors=[align_words])
  seqio.TaskRegistry.remove(task.name)
  seqio.TaskRegistry.add_provider(task.name, made)
  tasks.register_label_set(task.name, task.labels)
  return made
