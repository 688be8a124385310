"""Model families' batch features, keyed by the model config's `family` string: the one place the data layer tells
an encoder-decoder batch from a decoder-only or an encoder-only one.

  'encoder_decoder'  T5: seqio's `EncDecFeatureConverter` (`models.features.FEATURES`); packed rows reserve the
                     prompt slots in front of each example's inputs
  'decoder_only'     causal LMs (Llama, GPT-2, ...): `CausalFeatureConverter` (`CAUSAL_FEATURES`, `data/causal.py`);
                     packed rows reserve the prompt slots in front of each example's stream
  'encoder_only'     BERT / RoBERTa: label-task examples (`data/label_tasks.py`, `data/tagging_tasks.py`) as
                     `[CLS] a [SEP] b [SEP]` rows with their label (`data/encoder.py`, `encoder_converter.py`); never
                     packed

The pipeline (`data/pipeline.py`) takes a `family` (default 'encoder_decoder') and asks `get(family)` for its
`convert` (tf.data examples -> features), `to_features` (numpy rows -> the same features), `inference_features`
(inputs alone -> what rank classification and decoding read), `batch_keys`, `inputs_eos` and `tokens_of`; a new
family is one more `register(Family(...))` here.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxprompt.data import causal, encoder
from jaxprompt.errors import ConfigError
from jaxprompt.models.features import (
    CAUSAL_FEATURES,
    CAUSAL_PACKING_FEATURES,
    CLASS_LABEL,
    ENCODER_FEATURES,
    FEATURES,
    PROMPT_SLOT_ID,
    REGRESSION_LABEL,
    SEGMENT_FEATURES,
    TAGGING_FEATURES,
    TOKEN_TYPES,
)

if TYPE_CHECKING:
  import tensorflow as tf

Batch = dict[str, np.ndarray]
ENCODER_DECODER, DECODER_ONLY, ENCODER_ONLY = 'encoder_decoder', 'decoder_only', 'encoder_only'
DEFAULT = ENCODER_DECODER


@dataclasses.dataclass(frozen=True)
class Family:
  """How one model family's batches are made.

  convert(ds, feature_lengths, pack, prompt_slots, tokens, passthrough) -> unbatched features of tokenized
    {'inputs', 'targets'} examples (cut to the lengths), packed with `prompt_slots` reserved per example when `pack`;
    `passthrough` {name: seqio FeatureSpec} features carried through unpacked rows (task ids).
  to_features(inputs, targets, feature_lengths, tokens) -> the same features, unpacked, of numpy id rows (targets
    None: inference).
  inference_features(inputs, feature_lengths, tokens) -> the features of inputs alone that rank classification and
    decoding read (the model's `DECODE_FEATURES`: T5's encoder inputs, a causal LM's left-padded prompt), with a
    `decoder_target_tokens` of the targets length (the decode length).
  batch_keys: the features a batch keeps (packed rows add their segment features).
  inputs_eos: whether the family's tasks end their inputs with EOS (T5 reads it; a causal stream runs on from the
    inputs into the targets, so a task re-tokenized for it has none: `data/retokenized.py`).
  tokens_of(vocabulary, inputs_add_eos, count=None) -> the `tokens` its functions take (a causal stream's BOS /
    inputs EOS; the encoder family's specials layout).
  counts_rows: `convert` counts the rows it cuts itself (the `count` given to `tokens_of`, a training stream's
    `truncation.StreamCount`); nothing cuts the examples before it.
  """
  name: str
  convert: Callable[..., tf.data.Dataset]
  to_features: Callable[..., Batch]
  inference_features: Callable[..., Batch]
  batch_keys: tuple[str, ...]
  inputs_eos: bool = True
  tokens_of: Callable[
      ..., Any] = lambda vocabulary, inputs_add_eos, count=None: causal.StreamTokens.of(vocabulary, inputs_add_eos)
  counts_rows: bool = False


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> None:
  _FAMILIES[family.name] = family


def get(name: str) -> Family:
  """The family `name` (a model config's `family`); ConfigError naming the known ones otherwise."""
  if name not in _FAMILIES:
    raise ConfigError(f'unknown model family {name!r}: the data pipeline knows {sorted(_FAMILIES)}')
  return _FAMILIES[name]


def names() -> list[str]:
  return sorted(_FAMILIES)


# ------------------------------------------------------------------------------------------------ encoder-decoder


def reserve_prompt_slots(ds: tf.data.Dataset, slots: int) -> tf.data.Dataset:
  """Puts `slots` placeholder ids in front of every example's `inputs` (room for its own prompt copy)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def add(example):
    inputs = example['inputs']
    return dict(example, inputs=tf.concat([tf.fill([slots], tf.cast(PROMPT_SLOT_ID, inputs.dtype)), inputs], 0))

  return ds.map(add, num_parallel_calls=tf.data.AUTOTUNE)


def _encdec_convert(ds: tf.data.Dataset, feature_lengths: Mapping[str, int], pack: bool, prompt_slots: int,
                    tokens: causal.StreamTokens | None, passthrough: Mapping[str, Any] | None) -> tf.data.Dataset:
  """seqio's `EncDecFeatureConverter`; packed rows are `inputs + prompt_slots` wide (a full-length example fits)."""
  del tokens  # T5 rows need no BOS: the decoder starts from id 0
  import seqio  # pylint: disable=g-import-not-at-top
  lengths = dict(feature_lengths)
  if pack and prompt_slots:
    ds = reserve_prompt_slots(ds, prompt_slots)
    lengths['inputs'] = lengths['inputs'] + prompt_slots
  return seqio.EncDecFeatureConverter(pack=pack, passthrough_features=passthrough or None)(ds, lengths)


def pad_rows(rows: Sequence[np.ndarray], length: int) -> np.ndarray:
  """int32 [len(rows), length]: each row cut to `length` and zero-padded on the right."""
  out = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    row = np.asarray(row, np.int32)[:length]
    out[i, :len(row)] = row
  return out


def encdec_features(inputs: Sequence[np.ndarray], targets: Sequence[np.ndarray] | None,
                    feature_lengths: Mapping[str, int], tokens: causal.StreamTokens | None = None) -> Batch:
  """Unpacked encoder-decoder features, as `seqio.EncDecFeatureConverter(pack=False)` makes them.

  inputs / targets: token-id rows (EOS included) -> encoder_input_tokens [n, L_in], decoder_target_tokens,
  decoder_input_tokens (targets shifted right, BOS 0) and decoder_loss_weights (1 on real target tokens) [n, L_t].
  Without targets (inference) the target features are zeros.
  """
  del tokens
  encoder = pad_rows(inputs, feature_lengths['inputs'])
  if targets is None:
    targets_padded = np.zeros((len(inputs), feature_lengths['targets']), np.int32)
  else:
    targets_padded = pad_rows(targets, feature_lengths['targets'])
  decoder_inputs = np.pad(targets_padded[:, :-1], ((0, 0), (1, 0)))
  return {
      'encoder_input_tokens': encoder, 'decoder_input_tokens': decoder_inputs.astype(np.int32),
      'decoder_target_tokens': targets_padded, 'decoder_loss_weights': (targets_padded > 0).astype(np.float32)
  }


def encdec_inference(inputs: Sequence[np.ndarray], feature_lengths: Mapping[str, int],
                     tokens: causal.StreamTokens | None = None) -> Batch:
  """T5's inference features: `encdec_features` without targets (encoder inputs; zero targets of the decode length)."""
  return encdec_features(inputs, None, feature_lengths, tokens)


# ------------------------------------------------------------------------------------------------ decoder-only


def _causal_convert(ds: tf.data.Dataset, feature_lengths: Mapping[str, int], pack: bool, prompt_slots: int,
                    tokens: causal.StreamTokens | None, passthrough: Mapping[str, Any] | None) -> tf.data.Dataset:
  from jaxprompt.data.causal_converter import CausalFeatureConverter  # pylint: disable=g-import-not-at-top  (TF)
  converter = CausalFeatureConverter(tokens, prompt_slots if pack else 0, pack=pack, passthrough_features=passthrough or
                                     None)
  return converter(ds, feature_lengths)


register(Family(ENCODER_DECODER, _encdec_convert, encdec_features, encdec_inference, FEATURES + SEGMENT_FEATURES))
register(
    Family(DECODER_ONLY, _causal_convert, causal.to_causal_features, causal.to_causal_inference,
           CAUSAL_FEATURES + CAUSAL_PACKING_FEATURES, inputs_eos=False))

# ------------------------------------------------------------------------------------------------ encoder-only


def _encoder_convert(ds: tf.data.Dataset, feature_lengths: Mapping[str, int], pack: bool, prompt_slots: int,
                     tokens: encoder.EncoderTokens, passthrough: Mapping[str, Any] | None) -> tf.data.Dataset:
  from jaxprompt.data import encoder_converter  # pylint: disable=g-import-not-at-top  (TF)
  return encoder_converter.convert(ds, feature_lengths, pack, prompt_slots, tokens, passthrough)


register(
    Family(ENCODER_ONLY, _encoder_convert, encoder.to_encoder_features, encoder.encoder_inference,
           tuple(dict.fromkeys(ENCODER_FEATURES + (TOKEN_TYPES, CLASS_LABEL, REGRESSION_LABEL) + TAGGING_FEATURES)),
           inputs_eos=False, tokens_of=encoder.EncoderTokens.of, counts_rows=True))
