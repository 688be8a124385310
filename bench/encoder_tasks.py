"""The encoder quality bench's two held-out tasks on the shipped demo encoder, read as a user's files are read.

`demo/encoder_tasks.write_tasks` writes the files (reviews the encoder was not pretrained on); this module reads
them back through the package's readers and turns them into model features and a scorer:

  classification   TSV `review<TAB>label` (`data/custom.read_examples`, 10 labels) -> `data/encoder`'s
                   [CLS] text [SEP] rows [n, length] and `labels` [n]; scored by accuracy (%)
  tagging          CoNLL `word<TAB>tag` (`data/tagging_tasks.TaggingTask`) -> sub-word aligned rows [n, length] with
                   `token_labels` (IGNORE_LABEL off first sub-tokens); scored by entity span F1 (%,
                   `data/span_metrics`) of each word's first sub-token's tag
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from jaxprompt.data import custom, encoder
from jaxprompt.data.tagging_tasks import TaggingTask
from jaxprompt.demo import encoder_model, encoder_tasks

TASKS = ('classification', 'tagging')
LENGTHS = {'classification': 24, 'tagging': 40}  # tokens with [CLS] / [SEP]: the longest are 17 and 32, none is cut


@dataclasses.dataclass(frozen=True)
class HeldOut:
  """One task: its head's kind and labels, its train / validation features, and `score(predictions)` of the
  validation split's predicted ids ([n] classes or [n, length] tags) -> {'metric': name, 'value': %, ...}."""
  name: str
  labels: tuple[str, ...]
  train: dict[str, np.ndarray]
  validation: dict[str, np.ndarray]
  score: Callable[[np.ndarray], dict[str, float]]
  metric: str


def _classification(paths: Mapping[str, str], vocabulary) -> HeldOut:
  labels = encoder_tasks.CLASSIFICATION_LABELS
  layout = encoder.EncoderTokens.of(vocabulary)

  def features(split: str) -> dict[str, np.ndarray]:
    texts, targets = custom.read_examples([paths[f'classification_{split}']], format=None, inputs_field='inputs',
                                          targets_field='targets', has_header=None, label_set=labels)
    rows = [vocabulary.encode(text) for text in texts]
    return encoder.to_encoder_features(rows, [labels.index(t) for t in targets], {'inputs': LENGTHS['classification']},
                                       layout, f'classification {split}')

  validation = features('validation')

  def score(predicted: np.ndarray) -> dict[str, float]:
    return {'accuracy': 100.0 * float(np.mean(np.asarray(predicted) == validation['labels']))}

  return HeldOut('classification', labels, features('train'), validation, score, 'accuracy')


def _tagging(paths: Mapping[str, str], vocabulary) -> HeldOut:
  task = TaggingTask('demo_encoder_tagging', {s: paths[f'tagging_{s}'] for s in ('train', 'validation')},
                     encoder_tasks.TAGS)
  length = LENGTHS['tagging']
  _, train, _ = task.features('train', vocabulary, length)
  aligned, validation, sentences = task.features('validation', vocabulary, length)

  def score(predicted: np.ndarray) -> dict[str, float]:
    return task.score(sentences, task.word_tags(aligned, np.asarray(predicted), vocabulary, length))

  return HeldOut('tagging', encoder_tasks.TAGS, train, validation, score, 'span_f1')


def held_out_tasks(directory: str, sizes: Mapping[str, int] | None = None,
                   model_dir: str | None = None) -> dict[str, HeldOut]:
  """Both tasks, their files written into `directory` (`sizes`: examples per split, default the generator's)."""
  paths = encoder_tasks.write_tasks(directory, sizes=sizes)
  vocabulary = encoder_model.vocabulary(model_dir)
  return {'classification': _classification(paths, vocabulary), 'tagging': _tagging(paths, vocabulary)}
