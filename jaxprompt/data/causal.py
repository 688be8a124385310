"""Decoder-only (causal LM) features of examples, in numpy: the twin of `causal_converter.CausalFeatureConverter`.

One example is one token stream, built as PEFT's causal-LM recipe builds it (inputs and targets tokenized apart and
concatenated; the loss on the targets only) with BOS exactly once:

  stream                 [slot x P] [BOS] inputs targets          targets end in EOS; BOS only when the tokenizer adds
                                                                  it (`StreamTokens.of`); P prompt slots only in packed
                                                                  rows (the method's prompt copy; unpacked rows get the
                                                                  prompt from the method itself)
  decoder_input_tokens   stream[:-1]                              what the model reads
  decoder_target_tokens  stream[1:]                               the next token at every position
  decoder_loss_weights   1 where that next token is a target (EOS included), else 0 (slots, BOS, inputs, padding)
  decoder_input_mask     1 on the stream, 0 on padding

Row length: TASK_FEATURE_LENGTHS['inputs'] + ['targets'] (+ P when packed): t5x's PrefixLM converter's `targets`
length. BOS takes the column the last token leaves (nothing predicts past EOS), so a full-length example fits. Inputs
and targets are cut to their own lengths first, and counted, as for T5 (`data/truncation.py`). When a task appends
EOS to its inputs too (T5's tasks do), that EOS is dropped: the stream reads as one text.

Inference on text (`to_causal_prompts`): [BOS] inputs, right-aligned in rows of inputs (+1 for BOS) columns with the
mask and transformers' positions (0 at the first real token), for decoding from the left-padded prompt;
`to_causal_inference` is what rank classification and decoding read: those prompts and the decode length.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxprompt.models.features import PROMPT_SLOT_ID

Batch = dict[str, np.ndarray]
TARGET_ROLE, INPUT_ROLE = 2, 1  # the converter's per-position marks (non-zero: seqio packing reads 0 as padding)


@dataclasses.dataclass(frozen=True)
class StreamTokens:
  """The special ids a stream needs: `bos` put in front of each example (None: none), `inputs_eos` dropped from the
  end of its inputs (None: the task appends no EOS to its inputs)."""
  bos: int | None = None
  inputs_eos: int | None = None

  @classmethod
  def of(cls, vocabulary: Any, inputs_add_eos: bool = False) -> StreamTokens:
    """From the task's vocabulary: BOS when its tokenizer adds one itself (`HfVocabulary.adds_bos`: Llama yes,
    GPT-2 no; a SentencePiece vocabulary never); `inputs_add_eos`: whether the task's inputs feature appends EOS."""
    bos = vocabulary.bos_id if getattr(vocabulary, 'adds_bos', False) else None
    return cls(bos, vocabulary.eos_id if inputs_add_eos else None)


def row_length(feature_lengths: Mapping[str, int], prompt_slots: int = 0) -> int:
  """Columns of a causal row: inputs + targets (+ the prompt slots of packed rows)."""
  return int(feature_lengths['inputs']) + int(feature_lengths['targets']) + int(prompt_slots)


def stream(inputs: Sequence[int], targets: Sequence[int], tokens: StreamTokens,
           prompt_slots: int = 0) -> tuple[np.ndarray, int]:
  """(the example's token stream, the index in it of its first target token)."""
  inputs = np.asarray(inputs, np.int32)
  if tokens.inputs_eos is not None and inputs.size and inputs[-1] == tokens.inputs_eos:
    inputs = inputs[:-1]
  head = [PROMPT_SLOT_ID] * prompt_slots + ([] if tokens.bos is None else [tokens.bos])
  return np.concatenate([np.asarray(head, np.int32), inputs, np.asarray(targets, np.int32)]), len(head) + inputs.size


def to_causal_features(inputs: Sequence[Sequence[int]], targets: Sequence[Sequence[int]] | None,
                       feature_lengths: Mapping[str, int], tokens: StreamTokens | None = None) -> Batch:
  """Unpacked causal features [n, inputs + targets] of token-id rows (targets with EOS), as
  `CausalFeatureConverter(pack=False)` makes them (the module docstring). Without targets (inference on a
  right-padded batch) decoder_input_tokens is the whole [BOS] + inputs, and targets and weights are zeros."""
  tokens = tokens or StreamTokens()
  width = row_length(feature_lengths)
  out = {k: np.zeros((len(inputs), width), np.int32) for k in ('decoder_input_tokens', 'decoder_target_tokens')}
  weights = np.zeros((len(inputs), width), np.float32)
  mask = np.zeros((len(inputs), width), np.int32)
  for i, row_inputs in enumerate(inputs):
    if targets is None:
      ids = stream(row_inputs, (), tokens)[0][:width]
      out['decoder_input_tokens'][i, :ids.size] = ids
      mask[i, :ids.size] = 1
      continue
    ids, first_target = stream(row_inputs, targets[i], tokens)
    n = min(max(ids.size - 1, 0), width)
    out['decoder_input_tokens'][i, :n] = ids[:-1][:n]
    out['decoder_target_tokens'][i, :n] = ids[1:][:n]
    weights[i, max(first_target - 1, 0):n] = 1.0
    mask[i, :n] = 1
  return dict(out, decoder_loss_weights=weights, decoder_input_mask=mask)


def prompt_width(feature_lengths: Mapping[str, int], tokens: StreamTokens | None = None) -> int:
  """Columns of a left-padded prompt row: the inputs (+1 for BOS)."""
  return int(feature_lengths['inputs']) + (tokens is not None and tokens.bos is not None)


def to_causal_prompts(inputs: Sequence[Sequence[int]], feature_lengths: Mapping[str, int],
                      tokens: StreamTokens | None = None) -> Batch:
  """Left-padded prompts for decoding: [BOS] + inputs right-aligned in [n, `prompt_width`] rows (a longer row keeps
  its last columns: the text nearest the answer); `decoder_input_mask` 1 on real tokens, `decoder_positions` 0 at
  each row's first real token (transformers' `cumsum(mask) - 1`; 0 on padding)."""
  tokens = tokens or StreamTokens()
  width = prompt_width(feature_lengths, tokens)
  ids = np.zeros((len(inputs), width), np.int32)
  mask = np.zeros((len(inputs), width), np.int32)
  for i, row in enumerate(inputs):
    prompt = stream(row, (), tokens)[0][-width:]
    if prompt.size:
      ids[i, width - prompt.size:] = prompt
      mask[i, width - prompt.size:] = 1
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32) * mask
  return {'decoder_input_tokens': ids, 'decoder_input_mask': mask, 'decoder_positions': positions}


def to_causal_inference(inputs: Sequence[Sequence[int]], feature_lengths: Mapping[str, int],
                        tokens: StreamTokens | None = None) -> Batch:
  """A causal LM's inference features: the left-padded prompts of `to_causal_prompts` (`decoder_input_tokens`,
  `decoder_input_mask`; the model numbers the positions itself) and an all-zero `decoder_target_tokens`
  [n, targets] whose width is the decode length (and the label candidates' length)."""
  prompts = to_causal_prompts(inputs, feature_lengths, tokens)
  return {
      'decoder_input_tokens': prompts['decoder_input_tokens'], 'decoder_input_mask': prompts['decoder_input_mask'],
      'decoder_target_tokens': np.zeros((len(inputs), int(feature_lengths['targets'])), np.int32)
  }
