"""Downstream tasks for the encoder demo model, over generated reviews it was not pretrained on (held-out streams):
written as files the package reads, for the quality bench of its heads.

  classification   a text of one review -> its topic and sentiment as one of 10 labels ('food_positive', ...):
                   TSV `text<TAB>label` (`data/custom.py`'s two-field form, no header)
  tagging          a text of one or two reviews, one word or punctuation mark a line with its BIO tag: the topic nouns
                   are entities of their topic (B-FOOD, ...), an opinion (an adjective, with its intensifier in
                   front: `really wonderful`) is B-POS I-POS / B-NEG I-NEG; CoNLL `word<TAB>tag`, a blank line
                   between sentences (`data/conll.py`)
`write_tasks(output_dir)` writes both, train and validation splits; each text is drawn from its own stream
(`data.stream(seed, 'encoder_task', task, split)`), disjoint from the pretraining texts'.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping

from jaxprompt.demo import data

SEED = 2  # neither the pretraining texts' (0) nor the demo's held-out ones (1)
SIZES = {'train': 2000, 'validation': 500}
CLASSIFICATION_LABELS = tuple(f'{t}_{s}' for t in data.TOPIC_LABELS for s in data.SENTIMENT_LABELS)
OPINIONS = {'positive': 'POS', 'negative': 'NEG'}
TAGS = ('O', *(f'B-{t.upper()}' for t in data.TOPIC_LABELS), *(f'{p}-{o}' for o in OPINIONS.values() for p in 'BI'))
_NOUN_TYPE = {noun: topic.upper() for topic, nouns in data.TOPICS.items() for noun in nouns}
_OPINION = {adjective: OPINIONS[s] for s, adjectives in data.SENTIMENTS.items() for adjective in adjectives}
_INTENSIFIERS = frozenset(data.INTENSIFIERS)
_WORDS = re.compile(r"[\w']+|[^\w\s]")


def classification_examples(count: int, seed: int = SEED, split: str = 'train') -> list[tuple[str, str]]:
  """(review, '<topic>_<sentiment>') pairs, balanced over the 10 labels (round robin, then shuffled)."""
  rng = data.stream(seed, 'encoder_task', 'classification', split)
  examples = []
  for i in range(count):
    topic, sentiment = CLASSIFICATION_LABELS[i % len(CLASSIFICATION_LABELS)].split('_')
    examples.append((data.review(rng, topic, sentiment), f'{topic}_{sentiment}'))
  return [examples[i] for i in rng.permutation(count)]


def tag_words(words: list[str]) -> list[str]:
  """BIO tags of a generated text's words (every tagged word belongs to one word list, so the tags are exact)."""
  tags = []
  for i, word in enumerate(words):
    if word in _NOUN_TYPE:
      tags.append(f'B-{_NOUN_TYPE[word]}')
    elif word in _INTENSIFIERS and i + 1 < len(words) and words[i + 1] in _OPINION:
      tags.append(f'B-{_OPINION[words[i + 1]]}')
    elif word in _OPINION:
      tags.append(f'I-{_OPINION[word]}' if tags and tags[-1] == f'B-{_OPINION[word]}' else f'B-{_OPINION[word]}')
    else:
      tags.append('O')
  return tags


def tagging_sentences(count: int, seed: int = SEED, split: str = 'train') -> list[tuple[list[str], list[str]]]:
  """(words, tags) of `count` texts of one or two reviews each."""
  rng = data.stream(seed, 'encoder_task', 'tagging', split)
  sentences = []
  for _ in range(count):
    text = ' '.join(data.labelled_review(rng)[0] for _ in range(int(rng.integers(1, 3))))
    words = _WORDS.findall(text)
    sentences.append((words, tag_words(words)))
  return sentences


def write_tasks(output_dir: str, seed: int = SEED, sizes: Mapping[str, int] | None = None) -> dict[str, str]:
  """Writes classification_{split}.tsv and tagging_{split}.conll into `output_dir`; returns {name: path}."""
  os.makedirs(output_dir, exist_ok=True)
  written = {}
  for split, count in (sizes or SIZES).items():
    path = written[f'classification_{split}'] = os.path.join(output_dir, f'classification_{split}.tsv')
    with open(path, 'w', encoding='utf-8') as f:
      f.writelines(f'{text}\t{label}\n' for text, label in classification_examples(count, seed, split))
    path = written[f'tagging_{split}'] = os.path.join(output_dir, f'tagging_{split}.conll')
    with open(path, 'w', encoding='utf-8') as f:
      f.write('\n'.join(''.join(f'{w}\t{t}\n' for w, t in zip(*s)) for s in tagging_sentences(count, seed, split)))
  return written
