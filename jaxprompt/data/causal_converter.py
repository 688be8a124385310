"""`CausalFeatureConverter`: a seqio FeatureConverter from tokenized {'inputs', 'targets'} examples to the causal
features of `models.features.CAUSAL_FEATURES` (layout: `data/causal.py`), unpacked or packed as seqio packs.

seqio's packing (and its `*_segment_ids`) reads id 0 as padding and cuts an example at its count of non-zero ids,
but 0 is a real token of GPT-2, Llama 3 and Qwen2. So each example's stream is packed as `id + 1` (never 0) beside a
per-position role (1: the next token is an input, 2: a target) and shifted back after: `decoder_input_mask` is where
the packed ids are non-zero, and the segments and positions are seqio's own. A packed example's prompt slots sit in
front of its BOS, with loss weight 0, so its positions count from its first slot (the prompt's, as PEFT numbers them).
"""
from __future__ import annotations

from collections.abc import Mapping

import seqio
import tensorflow as tf

from jaxprompt.data.causal import INPUT_ROLE, TARGET_ROLE, StreamTokens, row_length
from jaxprompt.models.features import PROMPT_SLOT_ID

_INPUTS, _TARGETS, _ROLE = 'stream_inputs', 'stream_targets', 'stream_roles'  # the packed intermediate features
_SPEC = seqio.FeatureConverter.FeatureSpec


class CausalFeatureConverter(seqio.FeatureConverter):
  """Decoder-only features with the loss on the targets; `prompt_slots` placeholder ids in front of each example of
  packed rows (unpacked rows get none: the method inserts its prompt); `tokens`: the stream's BOS and the inputs EOS
  to drop. Model lengths: every feature is `inputs + targets (+ prompt_slots when packed)` long."""

  TASK_FEATURES = {'inputs': _SPEC(dtype=tf.int32), 'targets': _SPEC(dtype=tf.int32)}
  MODEL_FEATURES = {
      'decoder_input_tokens': _SPEC(dtype=tf.int32), 'decoder_target_tokens': _SPEC(dtype=tf.int32),
      'decoder_loss_weights': _SPEC(dtype=tf.int32), 'decoder_input_mask': _SPEC(dtype=tf.int32)
  }
  PACKING_FEATURE_DTYPES = {'decoder_segment_ids': tf.int32, 'decoder_positions': tf.int32}

  def __init__(self, tokens: StreamTokens | None = None, prompt_slots: int = 0, **kwargs):
    self._tokens = tokens or StreamTokens()
    self._slots = int(prompt_slots)
    super().__init__(**kwargs)
    if self._slots and not self.pack:
      raise ValueError('prompt slots are reserved in packed rows only (unpacked, the method inserts its prompt)')

  def _stream(self, example: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    inputs, targets = example['inputs'], example['targets']
    eos = self._tokens.inputs_eos
    if eos is not None:
      inputs = tf.cond(tf.reduce_any(tf.equal(inputs[-1:], eos)), lambda: inputs[:-1], lambda: inputs)
    head = [PROMPT_SLOT_ID] * self._slots + ([] if self._tokens.bos is None else [self._tokens.bos])
    ids = tf.concat([tf.constant(head, tf.int32, [len(head)]), inputs, targets], 0)
    count = tf.maximum(tf.size(ids) - 1, 0)
    first_weighted = len(head) + tf.size(inputs) - 1
    roles = tf.where(tf.range(count) >= first_weighted, TARGET_ROLE, INPUT_ROLE)
    out = {_INPUTS: ids[:count] + 1, _TARGETS: ids[1:] + 1, _ROLE: tf.cast(roles, tf.int32)}
    out.update({k: example[k] for k in self._passthrough_features})
    return out

  def _convert_example(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    real = features[_INPUTS] > 0
    d = {
        'decoder_input_tokens': tf.where(real, features[_INPUTS] - 1, 0),
        'decoder_target_tokens': tf.where(real, features[_TARGETS] - 1, 0),
        'decoder_loss_weights': tf.cast(tf.equal(features[_ROLE], TARGET_ROLE), tf.int32),
        'decoder_input_mask': tf.cast(real, tf.int32),
    }
    if self.pack:
      d['decoder_segment_ids'] = features[f'{_INPUTS}_segment_ids']
      d['decoder_positions'] = features[f'{_INPUTS}_positions']
    d.update({k: features[k] for k in self._passthrough_features})
    return d

  def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    ds = ds.map(self._stream, num_parallel_calls=tf.data.AUTOTUNE)
    width = row_length(task_feature_lengths, self._slots)
    lengths = {_INPUTS: width, _TARGETS: width, _ROLE: width}
    lengths.update({k: task_feature_lengths[k] for k in self._passthrough_features})
    return self._pack_or_pad(ds, lengths).map(self._convert_example, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict[str, int]:
    width = row_length(task_feature_lengths, self._slots)
    lengths = {k: width for k in self.MODEL_FEATURES}
    if self.pack:
      lengths.update({k: width for k in self.PACKING_FEATURE_DTYPES})
    lengths.update({k: task_feature_lengths[k] for k in self._passthrough_features})
    return lengths
