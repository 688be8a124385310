"""Length buckets: each batch is cut to the smallest of a fixed set of lengths that holds its longest row.

A T5 batch's padding is masked, so cutting the all-padding columns off the right changes no result; it only
removes work. Buckets keep the number of distinct batch shapes (each one compiled once) small and known.

Specs (`LENGTH_BUCKETS`, gin `length_buckets=`), for each feature group (`inputs` = encoder_*, `targets` =
decoder_*):
  64                 multiples of 64 below the batch's width, and the width itself (the default)
  [32, 64, 128]      these lengths below the width, and the width itself
  {'inputs': 32, 'targets': None}   per group; a missing or None group is never cut
  None               fixed-length batches: nothing is cut (t5x's behaviour)
A causal-LM batch (`decoder_only`) is one group, its stream: every `decoder_*` feature, cut by the `targets` buckets
at the last column its `decoder_input_mask` marks real (its ids cannot tell: 0 is a real token there). A causal LM's
inference batch (rank classification, decoding) holds its left-padded prompt: the group `prompt`
(`decoder_input_tokens` and `decoder_input_mask`, cut from the left by the `inputs` buckets; its
`decoder_target_tokens` is the decode length and stays). `INFERENCE_GROUPS` cut either family's inference batch.
The width of a batch is its feature length (`TASK_FEATURE_LENGTHS`, or that plus the prompt slots of packed
rows), so the largest bucket is always the t5x maximum and a bucket never cuts a token (an example longer than
the maximum was cut when read, and counted: `jaxprompt.data.truncation`).
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxprompt.formats import validation

log = logging.getLogger('jaxprompt')

Batch = dict[str, np.ndarray]
DEFAULT = 64  # every entry point's LENGTH_BUCKETS unless set
GROUPS = validation.FEATURE_GROUPS
_PREFIX = {'inputs': 'encoder_', 'targets': 'decoder_'}
# The feature that tells how long each row really is (the rest of its group is cut to the same width).
LENGTH_FEATURES = {'inputs': 'encoder_input_tokens', 'targets': 'decoder_target_tokens'}
# A group's mask, where its batches have one (causal LMs): it tells the real columns instead of non-zero ids.
MASK_FEATURES = {'targets': 'decoder_input_mask'}
PROMPT = 'prompt'  # a causal LM's left-padded inference prompt: these features, cut from the left by `inputs`
PROMPT_FEATURES = ('decoder_input_tokens', 'decoder_input_mask')
INFERENCE_GROUPS = ('inputs', PROMPT)  # T5's encoder inputs, or a causal LM's prompt (a batch has one of them)


def last_real_column(tokens: np.ndarray) -> int:
  """1 + the index of the last non-zero column of [rows, width] ids, or [rows, choices, width] (multiple choice),
  0 for an all-padding batch."""
  tokens = np.asarray(tokens)
  nonzero = np.flatnonzero(np.any(tokens.reshape(-1, tokens.shape[-1]) != 0, axis=0))
  return int(nonzero[-1]) + 1 if nonzero.size else 0


@dataclasses.dataclass(frozen=True)
class LengthBuckets:
  """Per feature group: a step (multiples of it), a tuple of lengths, or None (that group is never cut)."""
  inputs: int | tuple[int, ...] | None = 64
  targets: int | tuple[int, ...] | None = 64

  @classmethod
  def from_spec(cls, spec: Any) -> LengthBuckets:
    """The buckets of a `LENGTH_BUCKETS` value (see the module docstring); a LengthBuckets passes through."""
    if isinstance(spec, LengthBuckets):
      return spec
    return cls(**validation.length_buckets(spec))  # the rule the macro table checks LENGTH_BUCKETS by

  @property
  def fixed(self) -> bool:
    return self.inputs is None and self.targets is None

  def lengths(self, group: str, width: int) -> tuple[int, ...]:
    """Every length a batch of `width` columns may be cut to, ascending (`width` last)."""
    spec = getattr(self, 'inputs' if group == PROMPT else group)
    if spec is None:
      return (width,)
    below = range(spec, width, spec) if isinstance(spec, int) else (x for x in spec if x < width)
    return tuple(below) + (width,)

  def bucket(self, group: str, longest: int, width: int) -> int:
    """The smallest length of the group's set that holds `longest` columns (at least 1)."""
    return next(x for x in self.lengths(group, width) if x >= max(longest, 1))

  def longest(self, batch: Mapping[str, np.ndarray], groups: Sequence[str] = GROUPS) -> dict[str, int]:
    """{group: columns up to the last real token of any row} for the groups this batch has (with PROMPT among
    `groups`, a prompt's: columns from the first real token of any row)."""
    out = {
        g: last_real_column(batch.get(MASK_FEATURES.get(g), batch[f])) for g, f in LENGTH_FEATURES.items() if f in batch
    }
    if PROMPT in groups and PROMPT_FEATURES[1] in batch:
      out[PROMPT] = last_real_column(np.asarray(batch[PROMPT_FEATURES[1]])[:, ::-1])
    return out

  def trim(self, batch: Mapping[str, np.ndarray], longest: Mapping[str, int] | None = None,
           groups: Sequence[str] = GROUPS) -> Batch:
    """The batch with each group in `groups` cut to its bucket.

    `longest` overrides the batch's own longest rows, e.g. with the maximum over every host's rows (all
    hosts must cut a global batch to the same shape).
    """
    longest = dict(self.longest(batch, groups), **(longest or {}))
    out = dict(batch)
    for group in groups:
      if group == PROMPT:
        out.update(self._trim_prompt(batch, longest))
        continue
      feature = LENGTH_FEATURES[group]
      if feature not in batch or group not in longest:
        continue
      width = np.shape(batch[feature])[-1]  # columns are the last axis ([b, choices, l] too)
      length = self.bucket(group, longest[group], width)
      if length < width:
        for k, v in batch.items():
          if k.startswith(_PREFIX[group]):
            out[k] = v[..., :length]
    return out

  def _trim_prompt(self, batch: Mapping[str, np.ndarray], longest: Mapping[str, int]) -> Batch:
    """A left-padded prompt's features cut to its bucket from the left (none when the batch holds no prompt)."""
    if PROMPT not in longest or PROMPT_FEATURES[0] not in batch:
      return {}
    width = np.shape(batch[PROMPT_FEATURES[0]])[1]
    length = self.bucket(PROMPT, longest[PROMPT], width)
    return {k: batch[k][:, width - length:] for k in PROMPT_FEATURES if k in batch}


class ShapeLog:
  """Cuts batches to `buckets` and logs each new batch shape once (each is a compilation), with the bound the
  buckets put on their number."""

  def __init__(self, name: str, buckets: LengthBuckets):
    self.name, self.buckets = name, buckets
    self.seen: set[tuple] = set()

  def cut(self, batch: Mapping[str, np.ndarray], longest: Mapping[str, int] | None = None,
          groups: Sequence[str] = GROUPS) -> Batch:
    """`buckets.trim(batch, longest, groups)`, logged when its shape is new."""
    widths = _widths(batch, groups)
    batch = self.buckets.trim(batch, longest, groups)
    self._note(batch, widths, groups)
    return batch

  def _note(self, batch: Mapping[str, np.ndarray], widths: Mapping[str, int], groups: Sequence[str]) -> None:
    shape = tuple(_widths(batch, groups).items())
    if shape in self.seen:
      return
    self.seen.add(shape)
    bound = int(np.prod([len(self.buckets.lengths(g, widths[g])) for g, _ in shape]))
    log.info('%s: new batch shape %s (%d of at most %d with these length buckets)', self.name,
             ' '.join(f'{g}={n}' for g, n in shape), len(self.seen), bound)


def _widths(batch: Mapping[str, np.ndarray], groups: Sequence[str]) -> dict[str, int]:
  """{group: its width} of the batch's length features (the prompt's when `groups` cut one)."""
  features = dict(LENGTH_FEATURES, **({PROMPT: PROMPT_FEATURES[1]} if PROMPT in groups else {}))
  return {g: np.shape(batch[f])[-1] for g, f in features.items() if f in batch}


def bucketed(batches: Any, buckets: LengthBuckets, *, name: str = 'batches',
             agree: Callable[[dict[str, int]], dict[str, int]] | None = None, groups: Sequence[str] = GROUPS) -> Any:
  """Yields each batch of `batches` cut to its buckets (unchanged when the buckets are fixed).

  `agree` maps this host's longest rows to the global ones (multi-host training: each host holds its own rows
  of the global batch, and all must feed the same shape).
  """
  shapes = ShapeLog(name, buckets)
  for batch in batches:
    if buckets.fixed:
      yield batch
      continue
    longest = buckets.longest(batch)
    yield shapes.cut(batch, agree(longest) if agree is not None else longest, groups)
