"""Word tags onto sub-word tokens and back: transformers' token-classification convention, without transformers.

Each word is tokenized alone with a space in front (`vocabulary.encode(' ' + word)`): what transformers' fast
tokenizers do with `is_split_into_words=True` and `add_prefix_space=True`, which byte-level BPE (RoBERTa) needs
for words in the middle of a text to get their usual `Ġ` tokens; WordPiece (BERT) drops the space. The word's label
id goes to its first sub-token, `IGNORE_LABEL` to the rest, and the tokenizer's own specials ([CLS] ... [SEP],
<s> ... </s>) go around the sentence with `IGNORE_LABEL` too. A word that tokenizes to nothing (a zero-width
character under BERT's normalizer) has no label position.

A sentence longer than `length` tokens (specials included) is cut before its closing special, never silently:
`tagging_features` counts the cut sentences and logs them once, as `data/truncation.py` reports a split. The words
cut away (and words with no tokens) read back as O in `word_tags`, so the entity metrics count them as missed.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxprompt.data.conll import Sentence
from jaxprompt.data.hf_vocab import HfVocabulary
from jaxprompt.data.span_metrics import OUTSIDE
from jaxprompt.data.truncation import SPECIALS_COUNTED, Truncation
from jaxprompt.errors import ConfigError, DataError
from jaxprompt.models.features import IGNORE_LABEL, TAGGING_FEATURES

TOKENS, MASK, LABELS = TAGGING_FEATURES


@dataclasses.dataclass(frozen=True)
class Aligned:
  """One sentence on tokens: ids, labels and word ids [n] (n <= length), and its token count before cutting."""
  tokens: np.ndarray  # int32
  labels: np.ndarray  # int32: a word's label id on its first sub-token, IGNORE_LABEL elsewhere
  word_ids: np.ndarray  # int32: the word each token comes from (transformers' `word_ids()`), -1 for specials
  words: int
  size: int


def word_pieces(vocabulary: HfVocabulary, words: Sequence[str],
                label_ids: Sequence[int] | None = None) -> tuple[list[int], list[int], list[int]]:
  """(tokens, labels, word ids) of a sentence without specials: each word tokenized alone after a space, its label id
  on its first sub-token and IGNORE_LABEL on the rest (all IGNORE_LABEL without `label_ids`)."""
  tokens, labels, word_ids = [], [], []
  for i, word in enumerate(words):
    pieces = vocabulary.encode(' ' + word)
    tokens += pieces
    word_ids += [i] * len(pieces)
    first = IGNORE_LABEL if label_ids is None else int(label_ids[i])
    labels += ([first] + [IGNORE_LABEL] * (len(pieces) - 1)) if pieces else []
  return tokens, labels, word_ids


class TagAligner:
  """Aligns sentences of one tag set to one tokenizer at one length (tokens, specials included)."""

  def __init__(self, vocabulary: HfVocabulary, labels: Sequence[str], length: int):
    self.vocabulary, self.labels, self.length = vocabulary, tuple(labels), length
    self.label_ids = {tag: i for i, tag in enumerate(self.labels)}
    self.before, self.after = map(list, vocabulary.specials_around)
    if length <= len(self.before) + len(self.after):
      raise ConfigError(f'tagging length {length} leaves no room for a word beside the tokenizer\'s '
                        f'{len(self.before) + len(self.after)} special tokens: give a longer length')

  def align(self, words: Sequence[str], tags: Sequence[str] | None = None) -> Aligned:
    """`words` (with their `tags`, or none: every label IGNORE_LABEL) on tokens, cut to the length."""
    if tags is not None and len(tags) != len(words):
      raise DataError(f'{len(words)} words but {len(tags)} tags')
    ids = None if tags is None else [self._label_id(tag) for tag in tags]
    pieces, piece_labels, piece_words = word_pieces(self.vocabulary, words, ids)
    tokens = list(self.before) + pieces
    labels = [IGNORE_LABEL] * len(self.before) + piece_labels
    word_ids = [-1] * len(self.before) + piece_words
    size, keep = len(tokens) + len(self.after), self.length - len(self.after)
    tokens, labels, word_ids = tokens[:keep] + self.after, labels[:keep], word_ids[:keep]
    labels += [IGNORE_LABEL] * len(self.after)
    word_ids += [-1] * len(self.after)
    as_array = lambda v: np.asarray(v, np.int32)  # noqa: E731
    return Aligned(as_array(tokens), as_array(labels), as_array(word_ids), len(words), size)

  def _label_id(self, tag: str) -> int:
    if tag not in self.label_ids:
      raise DataError(f'tag {tag!r} is not in the label list {list(self.labels)}')
    return self.label_ids[tag]

  def features(self, aligned: Aligned) -> dict[str, np.ndarray]:
    """The model features of one sentence [length] int32: ids (padded with the tokenizer's PAD), mask, labels."""
    pad = self.length - len(aligned.tokens)
    pad_id = self.vocabulary.pad_id or 0  # any id: the mask says what is padding
    return {
        TOKENS: np.pad(aligned.tokens, (0, pad), constant_values=pad_id),
        MASK: np.pad(np.ones_like(aligned.tokens), (0, pad)),
        LABELS: np.pad(aligned.labels, (0, pad), constant_values=IGNORE_LABEL),
    }

  def word_tags(self, aligned: Aligned, predicted: Sequence[int]) -> list[str]:
    """Each word's tag from label ids predicted per token [>= n]: its first sub-token's; O for a word with none."""
    predicted, ids = np.asarray(predicted), aligned.word_ids
    tags = [OUTSIDE] * aligned.words
    for position in np.flatnonzero((ids >= 0) & (ids != np.concatenate([[-1], ids[:-1]]))):  # first sub-tokens
      label = int(predicted[position])
      if not 0 <= label < len(self.labels):
        raise DataError(f'predicted label id {label} at token {position} is outside the {len(self.labels)} labels')
      tags[aligned.word_ids[position]] = self.labels[label]
    return tags

  def tagging_features(self, sentences: Sequence[Sentence],
                       split: str = 'tagging data') -> tuple[list[Aligned], list[dict[str, np.ndarray]], Truncation]:
    """Every sentence aligned and as features; the sentences cut to the length are counted and logged once."""
    aligned = [self.align(s.words, s.tags) for s in sentences]
    truncation = Truncation.count(split, {'inputs': self.length}, {'inputs': [a.size for a in aligned]},
                                  SPECIALS_COUNTED).report()
    return aligned, [self.features(a) for a in aligned], truncation
