"""Synthetic text-to-text skills the demo model is pretrained on, generated offline and deterministically.

Every example is a pair of strings `(inputs, targets)`. The texts are short reviews built from word lists:
each has one topic (its nouns) and one sentiment (its adjectives), e.g.
`the soup was really wonderful and the chef was lovely.` (topic food, sentiment positive).

Skills, each written as a natural-language instruction (the pretraining mixture):
  sentiment    'sentiment: <review>'                -> 'positive' | 'negative'
  topic        'topic: <review>'                    -> 'sports' | 'food' | 'music' | 'travel' | 'movies'
  continue     '<raw text cut at a word>'           -> the next words (prefix language modelling, no instruction)
  parity       'is even: 37'                        -> 'no'
  bigger       'bigger: 12 or 7'                    -> '12'
  first_word   'first word: <review>'               -> its first word
  last_word    'last word: <review>'                -> its last word

The demo's held-out formulation (`heldout_examples`) is a classification skill WITHOUT its instruction: the
raw review, which the frozen model reads as text to continue, must be mapped to its topic (or sentiment).
All functions are pure: the same (seed, count) gives the same examples on every machine.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from jaxprompt.errors import ConfigError

Example = tuple[str, str]

TOPICS: dict[str, tuple[str, ...]] = {
    'sports': ('match', 'team', 'coach', 'striker', 'goal', 'stadium', 'referee', 'season', 'race', 'player', 'league',
               'trophy'),
    'food':
        ('soup', 'pizza', 'chef', 'dessert', 'menu', 'bread', 'salad', 'curry', 'noodles', 'waiter', 'cake', 'sauce'),
    'music': ('album', 'band', 'singer', 'concert', 'song', 'guitar', 'drummer', 'chorus', 'melody', 'piano', 'lyrics',
              'orchestra'),
    'travel': ('hotel', 'flight', 'beach', 'train', 'luggage', 'airport', 'museum', 'island', 'guide', 'cruise',
               'resort', 'ferry'),
    'movies': ('film', 'actor', 'plot', 'director', 'scene', 'script', 'cinema', 'sequel', 'trailer', 'villain', 'cast',
               'ending'),
}
SENTIMENTS: dict[str, tuple[str, ...]] = {
    'positive': ('great', 'wonderful', 'excellent', 'lovely', 'fantastic', 'superb', 'brilliant', 'amazing',
                 'delightful', 'perfect', 'charming', 'pleasant'),
    'negative': ('awful', 'terrible', 'boring', 'dreadful', 'horrible', 'poor', 'disappointing', 'bland', 'weak',
                 'annoying', 'dull', 'mediocre'),
}
TOPIC_LABELS = tuple(TOPICS)
SENTIMENT_LABELS = tuple(SENTIMENTS)
INTENSIFIERS = ('really', 'very', 'quite', 'truly', 'so', 'rather')
_OPENERS = ('honestly', 'overall', 'today', 'last night', 'this time', 'in the end', 'to be fair', 'again')
# {n}, {m}: topic nouns; {a}, {b}: adjectives of one polarity; {x}: intensifier; {o}: opener.
_TEMPLATES = (
    'the {n} was {a}.',
    'the {n} was {x} {a}.',
    'the {n} was {a} and the {m} was {b}.',
    'i found the {n} {a}.',
    'what a {a} {n}!',
    '{o}, the {n} felt {a}.',
    'we thought the {n} and the {m} were {a}.',
    '{o}, the {n} was {x} {a} and the {m} seemed {b}.',
    'the {n} looked {a}, {o}.',
    'such a {a} {n}, and a {b} {m} too.',
)


def stream(seed: int, *names: str) -> np.random.Generator:
  """A generator for one (seed, stream) pair; streams never overlap for different names."""
  digest = hashlib.sha256('/'.join((str(int(seed)),) + names).encode()).digest()
  return np.random.default_rng(int.from_bytes(digest[:8], 'little'))


def _pick(rng: np.random.Generator, items: Sequence[str]) -> str:
  return items[int(rng.integers(len(items)))]


def review(rng: np.random.Generator, topic: str, sentiment: str) -> str:
  """One review sentence about `topic` with `sentiment` (every adjective in it has that polarity)."""
  nouns, adjectives = TOPICS[topic], SENTIMENTS[sentiment]
  n, m = _two(rng, len(nouns))
  a, b = _two(rng, len(adjectives))
  return _pick(rng, _TEMPLATES).format(n=nouns[n], m=nouns[m], a=adjectives[a], b=adjectives[b],
                                       x=_pick(rng, INTENSIFIERS), o=_pick(rng, _OPENERS))


def _two(rng: np.random.Generator, size: int) -> tuple[int, int]:
  """Two distinct indices below `size`, uniformly (cheaper than rng.choice for one pair)."""
  first, offset = (int(v) for v in rng.integers(0, (size, size - 1)))
  return first, (first + 1 + offset) % size


def labelled_review(rng: np.random.Generator) -> tuple[str, str, str]:
  """(review, topic, sentiment) with a uniformly drawn topic and sentiment."""
  topic, sentiment = _pick(rng, TOPIC_LABELS), _pick(rng, SENTIMENT_LABELS)
  return review(rng, topic, sentiment), topic, sentiment


def _words(text: str) -> list[str]:
  return [w.strip('.,!') for w in text.split() if w.strip('.,!')]


# ------------------------------------------------------------------------------------------------ skills


def sentiment_example(rng: np.random.Generator) -> Example:
  text, _, sentiment = labelled_review(rng)
  return f'sentiment: {text}', sentiment


def topic_example(rng: np.random.Generator) -> Example:
  text, topic, _ = labelled_review(rng)
  return f'topic: {text}', topic


def continue_example(rng: np.random.Generator, max_target_words: int = 5) -> Example:
  """Prefix LM on raw text (two or three reviews): inputs end at a word boundary, targets are the next words.

  Half of the cuts fall at a sentence end, so a whole raw review is, to the model, text to continue.
  """
  sentences = [labelled_review(rng)[0] for _ in range(int(rng.integers(2, 4)))]
  if rng.random() < 0.5:
    cut = int(rng.integers(1, len(sentences)))
    prefix, rest = ' '.join(sentences[:cut]), ' '.join(sentences[cut:]).split()
  else:
    words = ' '.join(sentences).split()
    cut = int(rng.integers(2, len(words) - 1))
    prefix, rest = ' '.join(words[:cut]), words[cut:]
  return prefix, ' '.join(rest[:max_target_words])


def parity_example(rng: np.random.Generator) -> Example:
  number = int(rng.integers(0, 1000))
  return f'is even: {number}', 'yes' if number % 2 == 0 else 'no'


def bigger_example(rng: np.random.Generator) -> Example:
  a, b = _two(rng, 100)
  return f'bigger: {a} or {b}', str(max(a, b))


def first_word_example(rng: np.random.Generator) -> Example:
  text = labelled_review(rng)[0]
  return f'first word: {text}', _words(text)[0]


def last_word_example(rng: np.random.Generator) -> Example:
  text = labelled_review(rng)[0]
  return f'last word: {text}', _words(text)[-1]


SKILLS: dict[str, Callable[[np.random.Generator], Example]] = {
    'sentiment': sentiment_example,
    'topic': topic_example,
    'continue': continue_example,
    'parity': parity_example,
    'bigger': bigger_example,
    'first_word': first_word_example,
    'last_word': last_word_example,
}
# Mixing rates of the pretraining mixture (relative).
# (The word-list skills are learned within a few hundred steps; the number skills need the most examples.)
SKILL_RATES: dict[str, float] = {
    'sentiment': 1.0, 'topic': 1.0, 'continue': 2.0, 'parity': 1.5, 'bigger': 2.0, 'first_word': 1.0, 'last_word': 1.0
}
# Label sets of the classification skills (rank classification, class-label prompt init).
SKILL_LABELS: dict[str, tuple[str,
                              ...]] = {'sentiment': SENTIMENT_LABELS, 'topic': TOPIC_LABELS, 'parity': ('no', 'yes')}


def iter_skill_examples(skill: str, count: int, seed: int, split: str = 'train') -> Iterator[Example]:
  """`count` examples of one pretraining skill, the same for the same (skill, count, seed, split)."""
  if skill not in SKILLS:
    raise ConfigError(f'unknown demo skill {skill!r}; known: {", ".join(SKILLS)}')
  rng = stream(seed, 'skill', skill, split)
  make = SKILLS[skill]
  for _ in range(count):
    yield make(rng)


def skill_examples(skill: str, count: int, seed: int, split: str = 'train') -> list[Example]:
  return list(iter_skill_examples(skill, count, seed, split))


# ------------------------------------------------------------------------------------------------ held out

HELDOUT_SKILLS = ('topic', 'sentiment')


def heldout_examples(skill: str, count: int, seed: int, split: str = 'train') -> list[Example]:
  """The demo's held-out formulation: the raw review (no instruction) -> its topic / sentiment label.

  Drawn from streams disjoint from the pretraining ones, and balanced over labels (round robin).
  """
  if skill not in HELDOUT_SKILLS:
    raise ConfigError(f'held-out demo skill must be one of {HELDOUT_SKILLS}, got {skill!r}')
  rng = stream(seed, 'heldout', skill, split)
  labels = TOPIC_LABELS if skill == 'topic' else SENTIMENT_LABELS
  examples = []
  for i in range(count):
    label = labels[i % len(labels)]
    topic = label if skill == 'topic' else _pick(rng, TOPIC_LABELS)
    sentiment = label if skill == 'sentiment' else _pick(rng, SENTIMENT_LABELS)
    examples.append((review(rng, topic, sentiment), label))
  order = rng.permutation(count)
  return [examples[i] for i in order]


def iter_review_texts(count: int, seed: int, split: str = 'train') -> Iterator[str]:
  """Raw text of one to three reviews each, no instruction and no label (the encoder's masked-LM pretraining)."""
  rng = stream(seed, 'text', split)
  for _ in range(count):
    yield ' '.join(labelled_review(rng)[0] for _ in range(int(rng.integers(1, 4))))


def corpus(seed: int, examples_per_skill: int = 2000) -> list[str]:
  """Every string the skills produce (inputs and targets), for training the SentencePiece vocabulary."""
  texts = []
  for skill in SKILLS:
    for inputs, targets in skill_examples(skill, examples_per_skill, seed, 'vocab'):
      texts += [inputs, targets]
  return texts
