"""Encoder-only (BERT / RoBERTa) features of examples, in numpy: the twin of `encoder_converter.convert`.

A row is one text or a text pair between the tokenizer's own specials, as transformers' fast tokenizers build it
(`tokenizer(a)` / `tokenizer(a, b)`), right-padded to TASK_FEATURE_LENGTHS['inputs'] columns (specials included):

  BERT     [CLS] a [SEP]         [CLS] a [SEP] b [SEP]       types 0 ... 0, then 1 on b [SEP]
  RoBERTa  <s> a </s>            <s> a </s></s> b </s>       types all 0

The layout is read from the tokenizer's post-processor (`EncoderLayout.of`: a probe text encoded alone and as a
pair), never assumed. A row longer than the length is cut as transformers' `truncation=True` cuts a pair
('longest_first': the shorter text keeps up to half the room, the longer the rest; the specials stay), and the cut
rows are counted and said once (`data/truncation.py`).

Task examples carry their texts' ids without specials: `inputs` (the first text), `inputs_pair` (the second) and
`is_pair` (int32 1: a pair; 0: one text, its `inputs_pair` empty), and both labels: `label` (int32 class id; -1, no
class, on a regression's examples) and `label_value` (float32, a regression's value: STS-B; 0 on a classification's).
Every single-text or pair, classification or regression task's examples have that one structure, so any of them
share a seqio Mixture (`label_tasks.register_mixture`). Multiple choice has `choice_<i>` instead (each choice's
second text; the row of choice i is `inputs` + `choice_<i>`, [b, choices, l]) and `label`, the right choice.
An example without `is_pair` is a pair when it has `inputs_pair`; one with a float `label` is a regression's.
Features (`models/features.py`): encoder_input_tokens (padded with the tokenizer's PAD), encoder_input_mask,
encoder_token_types, and `labels` int32 and / or `label_values` float32 (a row carries both when its example
does: the head of the other kind gives it no weight, `models/task_heads.py`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxprompt.data import truncation
from jaxprompt.errors import ConfigError, DataError
from jaxprompt.models.features import CLASS_LABEL, ENCODER_FEATURES, REGRESSION_LABEL, TOKEN_TYPES

Batch = dict[str, np.ndarray]
TOKENS, MASK = ENCODER_FEATURES
FIRST, SECOND, LABEL = 'inputs', 'inputs_pair', 'label'  # a task example's texts and label
LABEL_VALUE, IS_PAIR = 'label_value', 'is_pair'  # a regression's label; 1 when `inputs_pair` is a second text
NO_CLASS = -1  # the `label` of a regression's example: no class, weight 0 under a classification head
CHOICE_PREFIX = 'choice_'
PROBE = 'a'


@dataclasses.dataclass(frozen=True)
class Template:
  """Where the specials go around 1 or 2 texts: `specials[i]` (ids) and `special_types[i]` before text i (the last:
  after the last text); `text_types[i]` the type id of text i's tokens."""
  specials: tuple[tuple[int, ...], ...]
  special_types: tuple[tuple[int, ...], ...]
  text_types: tuple[int, ...]

  @property
  def added(self) -> int:
    return sum(len(s) for s in self.specials)

  def row(self, texts: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, types) [n] of `texts` (already cut) between the specials."""
    ids, types = list(self.specials[0]), list(self.special_types[0])
    for i, text in enumerate(texts):
      ids += [int(t) for t in text] + list(self.specials[i + 1])
      types += [self.text_types[i]] * len(text) + list(self.special_types[i + 1])
    return np.asarray(ids, np.int32), np.asarray(types, np.int32)


def _template(ids: Sequence[int], types: Sequence[int], probe: Sequence[int], texts: int) -> Template:
  """The template of an encoding of `texts` copies of the probe's ids."""
  specials, special_types, text_types, start = [], [], [], 0
  for _ in range(texts):
    at = next((i for i in range(start, len(ids) - len(probe) + 1) if list(ids[i:i + len(probe)]) == list(probe)), None)
    if at is None or not probe:
      raise DataError(f'cannot tell the tokenizer\'s specials apart from the text {PROBE!r} it encodes to {probe}')
    specials.append(tuple(ids[start:at]))
    special_types.append(tuple(types[start:at]))
    text_types.append(int(types[at]))
    start = at + len(probe)
  return Template(
      tuple(specials) + (tuple(ids[start:]),),
      tuple(special_types) + (tuple(types[start:]),), tuple(text_types))


@dataclasses.dataclass(frozen=True)
class EncoderLayout:
  """The tokenizer's templates for one text and for a pair, and its PAD id (padding; the mask tells it)."""
  single: Template
  pair: Template
  pad: int = 0

  @classmethod
  def of(cls, vocabulary: Any) -> EncoderLayout:
    """From a Hugging Face tokenizer (`HfVocabulary`): its post-processor's output for a probe text and pair."""
    if not hasattr(vocabulary, 'encode_with_types'):
      raise ConfigError(f'the encoder-only family reads its tasks with the model\'s Hugging Face tokenizer, not '
                        f'{type(vocabulary).__name__}: set VOCABULARY to the model folder (jaxprompt.HfVocabulary)')
    probe = vocabulary.encode(PROBE)
    single = _template(*vocabulary.encode_with_types(PROBE), probe, 1)
    try:
      pair = _template(*vocabulary.encode_with_types(PROBE, PROBE), probe, 2)
    except DataError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (the Rust post-processor raises plain Exception)
      raise DataError(f'{vocabulary!r}: its post-processor cannot encode a text pair ({type(e).__name__}: {e}); '
                      f'give the model\'s own tokenizer.json') from e
    return cls(single, pair, int(vocabulary.pad_id or 0))

  def template(self, texts: int) -> Template:
    return self.single if texts == 1 else self.pair


@dataclasses.dataclass(frozen=True)
class EncoderTokens:
  """The family's `tokens` (`converters.Family`): the tokenizer's layout, and a training stream's
  `truncation.StreamCount` (the converter counts the rows it cuts; None elsewhere)."""
  layout: EncoderLayout
  count: Any = None

  @classmethod
  def of(cls, vocabulary: Any, inputs_add_eos: bool = False, count: Any = None) -> EncoderTokens:
    del inputs_add_eos  # label tasks append no EOS: the specials end a row
    return cls(EncoderLayout.of(vocabulary), count)


def layout_of(tokens: EncoderTokens | EncoderLayout | None) -> EncoderLayout:
  if tokens is None:
    raise ConfigError('the encoder-only features need the tokenizer\'s layout (EncoderTokens.of(vocabulary))')
  return tokens.layout if isinstance(tokens, EncoderTokens) else tokens


def longest_first(sizes: Sequence[int], budget: int) -> tuple[int, ...]:
  """How many tokens of each text (1 or 2) fit `budget`, as `tokenizers`' 'longest_first' keeps them (what
  transformers' fast tokenizers do with `truncation=True`): the shorter text (the first on a tie) keeps at most
  half the budget, the longer the rest."""
  budget = max(budget, 0)
  if len(sizes) == 1:
    return (min(sizes[0], budget),)
  a, b = sizes
  if a + b <= budget:
    return a, b
  if a > b:
    return budget - min(b, budget // 2), min(b, budget // 2)
  return min(a, budget // 2), budget - min(a, budget // 2)


def encode_row(layout: EncoderLayout, texts: Sequence[np.ndarray], length: int) -> tuple[np.ndarray, np.ndarray, int]:
  """(ids, types) of one row of 1 or 2 texts cut to `length`, and the row's size before cutting."""
  template = layout.template(len(texts))
  if length <= template.added:
    raise ConfigError(f'TASK_FEATURE_LENGTHS inputs={length} leaves no room for text beside the tokenizer\'s '
                      f'{template.added} special tokens: give a longer length')
  keep = longest_first([len(t) for t in texts], length - template.added)
  ids, types = template.row([np.asarray(t)[:k] for t, k in zip(texts, keep)])
  return ids, types, template.added + sum(len(t) for t in texts)


def _texts(example: Any) -> tuple[np.ndarray, ...]:
  """One example's texts: a row of ids (one text) or a tuple / list of 1 or 2 rows."""
  if isinstance(example, np.ndarray) and example.ndim == 1 or not len(example) or np.isscalar(example[0]):
    return (np.asarray(example, np.int32),)
  if len(example) not in (1, 2):
    raise DataError(f'an encoder row holds 1 or 2 texts, got {len(example)}')
  return tuple(np.asarray(t, np.int32) for t in example)


def _pad(rows: Sequence[np.ndarray], length: int, value: int) -> np.ndarray:
  out = np.full((len(rows), length), value, np.int32)
  for i, row in enumerate(rows):
    out[i, :len(row)] = row
  return out


def label_feature(labels: Sequence[Any]) -> Batch:
  """{'labels': int32 [n]} for class ids, {'label_values': float32 [n]} for float (regression) labels."""
  values = np.asarray(labels)
  if np.issubdtype(values.dtype, np.floating):
    return {REGRESSION_LABEL: values.astype(np.float32)}
  return {CLASS_LABEL: values.astype(np.int32)}


def to_encoder_features(inputs: Sequence[Any], targets: Sequence[Any] | None, feature_lengths: Mapping[str, int],
                        tokens: EncoderTokens | EncoderLayout, where: str = 'encoder rows') -> Batch:
  """Unpacked features [n, inputs] of examples' texts (each a row of ids or 1-2 rows), with their labels (None:
  inference, no label feature); the rows cut are counted and logged once (`where` names them)."""
  length, layout = int(feature_lengths['inputs']), layout_of(tokens)
  rows = [encode_row(layout, _texts(x), length) for x in inputs]
  truncation.Truncation.count(where, {'inputs': length}, {'inputs': [r[2] for r in rows]},
                              truncation.SPECIALS_COUNTED).report()
  out = {
      TOKENS: _pad([r[0] for r in rows], length, layout.pad),
      MASK: _pad([np.ones_like(r[0]) for r in rows], length, 0),
      TOKEN_TYPES: _pad([r[1] for r in rows], length, 0),
  }
  return out if targets is None else dict(out, **label_feature(targets))


def encoder_inference(inputs: Sequence[Any], feature_lengths: Mapping[str, int],
                      tokens: EncoderTokens | EncoderLayout) -> Batch:
  """What the heads read at inference: `to_encoder_features` without labels."""
  return to_encoder_features(inputs, None, feature_lengths, tokens)


def choice_features(choices: Sequence[Sequence[Any]], labels: Sequence[int] | None, feature_lengths: Mapping[str, int],
                    tokens: EncoderTokens | EncoderLayout, where: str = 'multiple-choice rows') -> Batch:
  """Multiple-choice features [n, choices, inputs] (every example the same number of choices, each a row of ids
  or 1-2 rows) and `labels` [n], the right choice (None: inference)."""
  counts = {len(c) for c in choices}
  if len(counts) != 1:
    raise DataError(f'{where}: every example needs the same number of choices, got {sorted(counts)}')
  flat = to_encoder_features([c for example in choices for c in example], None, feature_lengths, tokens, where)
  per_example = counts.pop()
  out = {k: v.reshape(len(choices), per_example, -1) for k, v in flat.items()}
  return out if labels is None else dict(out, **label_feature(np.asarray(labels, np.int32)))


def choice_keys(example: Mapping[str, Any]) -> list[str]:
  """The `choice_<i>` features of an example, in order."""
  return sorted((k for k in example if k.startswith(CHOICE_PREFIX) and k[len(CHOICE_PREFIX):].isdigit()),
                key=lambda k: int(k[len(CHOICE_PREFIX):]))


def is_pair(example: Mapping[str, Any]) -> bool:
  """Whether a (not multiple-choice) example's row holds two texts (module docstring)."""
  return SECOND in example and bool(int(example.get(IS_PAIR, 1)))


def example_texts(example: Mapping[str, Any]) -> tuple[Any, ...]:
  """A (not multiple-choice) example's texts: (inputs,) or (inputs, inputs_pair)."""
  return (example[FIRST], example[SECOND]) if is_pair(example) else (example[FIRST],)


def target(example: Mapping[str, Any], regression: bool) -> Any:
  """An example's label for its task's metrics: the value of a regression's, else the class (or choice) id."""
  return example[LABEL_VALUE] if regression and LABEL_VALUE in example else example[LABEL]


def example_features(examples: Sequence[Mapping[str, Any]], feature_lengths: Mapping[str, int],
                     tokens: EncoderTokens | EncoderLayout, where: str = 'encoder rows') -> Batch:
  """The features of a label task's tokenized examples (as its seqio task yields them: `inputs`, `inputs_pair`,
  `is_pair`, `label`, `label_value`, or `choice_<i>`); a test split's rows keep its -1 labels (evaluation skips
  them)."""
  if not examples:
    raise DataError(f'{where}: no examples')
  labels = [ex[LABEL] for ex in examples] if LABEL in examples[0] else None
  choices = choice_keys(examples[0])
  if choices:
    rows = [[(ex[FIRST], ex[c]) for c in choices] for ex in examples]
    return choice_features(rows, labels, feature_lengths, tokens, where)
  out = to_encoder_features([example_texts(ex) for ex in examples], labels, feature_lengths, tokens, where)
  if LABEL_VALUE in examples[0]:
    out[REGRESSION_LABEL] = np.asarray([ex[LABEL_VALUE] for ex in examples], np.float32)
  return out
