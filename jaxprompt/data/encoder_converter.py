"""The encoder-only family's features inside tf.data: `encoder.py`'s rows (layout, 'longest_first' cut, padding)
from tokenized label-task examples, unbatched: one text or a pair as each example's `is_pair` says (a mixture of
single-text and pair tasks streams the rows each task makes alone), with `labels` and / or `label_values`; a tagging
task's sentence (`inputs` with its per-token `token_labels`, `tagging_seqio.py`) as `token_labels.TagAligner` makes
its rows. Rows are never packed: a head reads each row's first token ([CLS] / <s>), and a packed row has one for
its first example only.

A training stream's cut rows are counted here, as they are built (`truncation.StreamCount.record`; the map runs
sequentially then, so the counts do not race); nothing cuts the examples before.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from jaxprompt.data import encoder
from jaxprompt.data.encoder import FIRST, IS_PAIR, LABEL, LABEL_VALUE, SECOND, EncoderLayout, EncoderTokens, Template
from jaxprompt.errors import ConfigError
from jaxprompt.models.features import CLASS_LABEL, IGNORE_LABEL, REGRESSION_LABEL, TAGGING_FEATURES, TOKEN_TYPES

TAG_LABELS = TAGGING_FEATURES[-1]  # 'token_labels'


def _longest_first(a: tf.Tensor, b: tf.Tensor, budget: int) -> tuple[tf.Tensor, tf.Tensor]:
  """`encoder.longest_first` of two sizes (int32 scalars)."""
  fits = a + b <= budget
  short = tf.minimum(tf.minimum(a, b), budget // 2)  # the shorter text's share (the first's on a tie)
  keep_a = tf.where(fits, a, tf.where(a > b, budget - short, short))
  keep_b = tf.where(fits, b, tf.where(a > b, short, budget - short))
  return keep_a, keep_b


def _row(template: Template, texts: list[tf.Tensor], length: int, pad: int,
         labels: tf.Tensor | None = None) -> tuple[tf.Tensor, ...]:
  """(ids, mask, types) [length] of 1 or 2 texts, the row's size before cutting, and (a tagged text's per-token
  `labels` given) its label row [length]: IGNORE_LABEL on the specials, the cut tokens and padding."""
  sizes = [tf.size(t, tf.int32) for t in texts]
  budget = length - template.added
  if budget <= 0:
    raise ConfigError(f'TASK_FEATURE_LENGTHS inputs={length} leaves no room for text beside the tokenizer\'s '
                      f'{template.added} special tokens: give a longer length')
  keep = [tf.minimum(sizes[0], budget)] if len(texts) == 1 else _longest_first(*sizes, budget)
  constant = lambda values: tf.constant(values, tf.int32, [len(values)])  # noqa: E731
  ids, types = [constant(template.specials[0])], [constant(template.special_types[0])]
  for i, (text, k) in enumerate(zip(texts, keep)):
    ids += [tf.cast(text[:k], tf.int32), constant(template.specials[i + 1])]
    types += [tf.fill([k], template.text_types[i]), constant(template.special_types[i + 1])]
  ids, types = tf.concat(ids, 0), tf.concat(types, 0)
  fill = length - tf.size(ids)
  row = [
      tf.pad(ids, [[0, fill]], constant_values=pad),
      tf.pad(tf.ones_like(ids), [[0, fill]]),
      tf.pad(types, [[0, fill]])
  ]
  if labels is not None:
    before, after = (tf.fill([len(template.specials[i])], IGNORE_LABEL) for i in (0, 1))
    tagged = tf.concat([before, tf.cast(labels[:keep[0]], tf.int32), after], 0)
    row.append(tf.pad(tagged, [[0, fill]], constant_values=IGNORE_LABEL))
  size = template.added + tf.add_n(sizes)
  return tuple(tf.ensure_shape(x, [length]) for x in row[:3]) + (size,) + tuple(
      tf.ensure_shape(x, [length]) for x in row[3:])


def convert(ds: tf.data.Dataset, feature_lengths: Mapping[str, int], pack: bool, prompt_slots: int,
            tokens: EncoderTokens | EncoderLayout, passthrough: Mapping[str, Any] | None) -> tf.data.Dataset:
  """Label-task examples -> encoder features (`data/encoder.py`), plus the `passthrough` features as they are."""
  del prompt_slots  # unpacked rows: the method inserts its prompt
  if pack:
    raise ConfigError('the encoder-only family does not pack rows (a head reads each row\'s [CLS] / <s>, and a '
                      'packed row has one for its first example only): set PACK=False')
  layout, count, length = encoder.layout_of(tokens), getattr(tokens, 'count', None), int(feature_lengths['inputs'])
  keys = ds.element_spec
  choices = encoder.choice_keys(keys)
  pair = SECOND in keys

  def features(example: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    if choices:
      rows = [_row(layout.pair, [example[FIRST], example[c]], length, pad=layout.pad) for c in choices]
      ids, mask, types = (tf.stack([r[i] for r in rows]) for i in range(3))
      size = tf.reduce_max(tf.stack([r[3] for r in rows]))
    elif TAG_LABELS in example:  # a tagging task's sentence: one text, a label per token
      ids, mask, types, size, tags = _row(layout.single, [example[FIRST]], length, layout.pad, example[TAG_LABELS])
    elif pair and IS_PAIR in example:  # one text or a pair, told per example (a mixture of both kinds)
      ids, mask, types, size = tf.cond(example[IS_PAIR] > 0,
                                       lambda: _row(layout.pair, [example[FIRST], example[SECOND]], length, layout.pad),
                                       lambda: _row(layout.single, [example[FIRST]], length, layout.pad))
    else:
      texts = [example[FIRST]] + ([example[SECOND]] if pair else [])
      ids, mask, types, size = _row(layout.template(len(texts)), texts, length, layout.pad)
    out = {encoder.TOKENS: ids, encoder.MASK: mask, TOKEN_TYPES: types}
    if TAG_LABELS in example:
      out[TAG_LABELS] = tags
    if LABEL in example:
      label = example[LABEL]
      out.update({REGRESSION_LABEL: tf.cast(label, tf.float32)} if label.dtype.
                 is_floating else {CLASS_LABEL: tf.cast(label, tf.int32)})
    if LABEL_VALUE in example:
      out[REGRESSION_LABEL] = tf.cast(example[LABEL_VALUE], tf.float32)
    out.update({k: example[k] for k in passthrough or {}})
    if count is None:
      return out
    with tf.control_dependencies(count.record({'inputs': tf.cast(size, tf.int64)})):
      return {k: tf.identity(v) for k, v in out.items()}

  return ds.map(features, num_parallel_calls=None if count is not None else tf.data.AUTOTUNE)
