"""Examples longer than TASK_FEATURE_LENGTHS: cut as seqio cuts them, counted per split and said once.

A split is read whole (`tokens + EOS`, nothing cut), each example's token count is measured, then each feature
is cut to its length the way seqio's `append_eos_after_trim` does (the first `length - 1` tokens and the EOS),
so what the model sees is unchanged. A `Truncation` holds one split's counts: how many of its examples were cut
(any feature, and per feature) and the longest of each feature. `report()` says it once, as one log line
naming the split, `n of N examples`, the longest lengths and the `--gin.TASK_FEATURE_LENGTHS` that keeps them
whole; `metrics()` is what eval writes under `truncation` (docs/data.md, "Truncation").

A training stream is endless and shuffled: `StreamCount` counts its examples inside tf.data as they are read
(per example, before packing), and the command reports the count of the examples read so far once.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
  import tensorflow as tf

log = logging.getLogger('jaxprompt')

GROUPS = ('inputs', 'targets')
ROUND_TO = 8  # derived and suggested lengths are multiples of this (they fall on length buckets)
AUTO_LIMIT = 512  # the longest derived length: T5's pretraining input length (attention cost grows with its square)
EOS_COUNTED, SPECIALS_COUNTED = 'EOS', 'special tokens'  # what a row's token count includes beside its text


def round_up(length: int, multiple: int = ROUND_TO) -> int:
  return max(multiple, int(math.ceil(length / multiple)) * multiple)


def fitting_lengths(longest: Mapping[str, int], limit: int | None = AUTO_LIMIT) -> dict[str, int]:
  """Feature lengths holding `longest` tokens (EOS included): rounded up to a multiple of 8, at most `limit`."""
  return {k: round_up(v) if limit is None else min(round_up(v), limit) for k, v in longest.items()}


def cut(ids: np.ndarray, length: int, eos: bool) -> np.ndarray:
  """`ids` cut to `length`; a row ending in EOS (`eos`: the feature appends one) keeps it last."""
  if len(ids) <= length:
    return ids
  return np.concatenate([ids[:length - 1], ids[-1:]]) if eos else ids[:length]


def _cut_tf(ids: tf.Tensor, length: int, eos: bool) -> tf.Tensor:
  """`cut` inside tf.data."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (infer on text loads no TensorFlow)
  if not eos:
    return ids[:length]
  return tf.cond(tf.size(ids) > length, lambda: tf.concat([ids[:length - 1], ids[-1:]], 0), lambda: ids)


@dataclasses.dataclass(frozen=True)
class Truncation:
  """How many examples of one split were longer than the feature lengths.

  split: what was read, as the log line names it; lengths: the feature lengths counted against; examples: N;
  truncated: the examples with any feature cut; cut / longest: per counted feature, the examples cut and the
  longest token count before cutting; includes: what that count includes besides the text (T5 and causal rows:
  EOS; an encoder's rows: its tokenizer's special tokens, [CLS] / [SEP] or <s> / </s>).
  """
  split: str
  lengths: Mapping[str, int]
  examples: int
  truncated: int
  cut: Mapping[str, int]
  longest: Mapping[str, int]
  includes: str = EOS_COUNTED

  @classmethod
  def count(cls, split: str, lengths: Mapping[str, int], sizes: Mapping[str, Sequence[int]],
            includes: str = EOS_COUNTED) -> Truncation:
    """The counts of one split from each counted feature's token counts [N] (`includes` included)."""
    sizes = {k: np.asarray(v, np.int64) for k, v in sizes.items()}
    over = {k: v > lengths[k] for k, v in sizes.items()}
    examples = len(next(iter(sizes.values()))) if sizes else 0
    either = np.any(np.stack(list(over.values())), axis=0) if over else np.zeros(0, bool)
    return cls(split, dict(lengths), examples, int(either.sum()), {k: int(v.sum()) for k, v in over.items()},
               {k: int(v.max(initial=0)) for k, v in sizes.items()}, includes)

  def metrics(self) -> dict[str, int]:
    """`examples`, `truncated`, and per feature `truncated/<f>`, `longest/<f>`, `length/<f>`."""
    out = {'examples': self.examples, 'truncated': self.truncated}
    for k in self.cut:
      out.update({f'truncated/{k}': self.cut[k], f'longest/{k}': self.longest[k], f'length/{k}': self.lengths[k]})
    return out

  def suggestion(self) -> dict[str, int]:
    """TASK_FEATURE_LENGTHS that keep every counted example whole (the others unchanged)."""
    return {k: max(v, round_up(self.longest.get(k, 0))) if self.cut.get(k) else v for k, v in self.lengths.items()}

  def message(self) -> str | None:
    """The log line, None when nothing was cut."""
    if not self.truncated:
      return None
    per_feature = '; '.join(f'{k}: {self.cut[k]} cut, the longest {self.longest[k]} tokens' for k in self.cut)
    return (
        f'{self.split}: {self.truncated} of {self.examples} examples were truncated, longer than '
        f'TASK_FEATURE_LENGTHS {dict(self.lengths)} ({per_feature}; {self.includes} included); to keep them whole set '
        f'--gin.TASK_FEATURE_LENGTHS="{self.suggestion()}"')

  def report(self) -> Truncation:
    """Logs the line once (warning) when an example was cut; returns self."""
    message = self.message()
    if message:
      log.warning('%s', message)
    return self


class StreamCount:
  """Counts a tf.data stream's examples longer than `lengths` as they are read (tf.Variables updated by the
  pipeline, which must not run this map in parallel), and cuts them; `truncation()` reads the counts so far."""

  def __init__(self, split: str, lengths: Mapping[str, int], eos: Mapping[str, bool], counted: Sequence[str] = GROUPS):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  (infer on text loads no TensorFlow)
    self.split, self.lengths, self.eos = split, dict(lengths), dict(eos)
    self.counted = [k for k in counted if k in self.lengths]
    zero = lambda: tf.Variable(0, dtype=tf.int64, trainable=False)  # noqa: E731
    self._examples, self._truncated = zero(), zero()
    self._cut = {k: zero() for k in self.counted}
    self._longest = {k: zero() for k in self.counted}
    self._reported = False
    self.includes = EOS_COUNTED  # what a size counts beside the text (`Truncation.includes`)

  def record(self, sizes: Mapping[str, tf.Tensor], includes: str = SPECIALS_COUNTED) -> list[tf.Operation]:
    """The updates counting one example of these sizes (int64 scalars, counted features only, `includes` counted
    too), for a map that cuts its rows itself (the encoder family's `encoder_converter`); run it sequentially."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  (infer on text loads no TensorFlow)
    self.includes = includes
    over = {k: tf.cast(v > self.lengths[k], tf.int64) for k, v in sizes.items()}
    updates = [self._examples.assign_add(1)]
    if over:
      updates.append(self._truncated.assign_add(tf.reduce_max(tf.stack(list(over.values())))))
    for k, v in sizes.items():
      updates += [self._cut[k].assign_add(over[k]), self._longest[k].assign(tf.maximum(self._longest[k], v))]
    return updates

  def _measure(self, example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  (infer on text loads no TensorFlow)
    sizes = {k: tf.cast(tf.size(example[k]), tf.int64) for k in self.counted if k in example}
    with tf.control_dependencies(self.record(sizes, EOS_COUNTED)):
      return {
          key: _cut_tf(value, self.lengths[key], self.eos.get(key, False))
               if key in self.lengths else tf.identity(value) for key, value in example.items()
      }

  def cut(self, ds: tf.data.Dataset) -> tf.data.Dataset:
    """`ds` (untrimmed examples) with every example counted, then cut to the lengths."""
    return ds.map(self._measure)  # sequential: the updates must not race

  def report_once(self) -> None:
    """Says the count of the examples read so far, on the first call only."""
    if not self._reported:
      self._reported = True
      self.truncation().report()

  def truncation(self) -> Truncation:
    """The counts of the examples read so far (this process's)."""
    examples = int(self._examples.numpy())
    return Truncation(f'{self.split} (the first {examples} examples read)', self.lengths, examples,
                      int(self._truncated.numpy()), {k: int(v.numpy()) for k, v in self._cut.items()},
                      {k: int(v.numpy()) for k, v in self._longest.items()}, self.includes)
