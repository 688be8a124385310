"""The causal family's loose ends (issue 23): packing with a K/V prefix, inspect and fingerprints of any family, the
position limit of a learned table, and left padding with a prompt against transformers."""
import functools

import jax
import numpy as np
import pytest
import tensorflow as tf

from jaxprompt.data import causal, converters
from jaxprompt.data import pipeline as data
from jaxprompt.errors import ConfigError
from jaxprompt.methods import prefix_tuning
from jaxprompt.models.config import get_config
from jaxprompt.models.decoder_config import DecoderConfig
from jaxprompt.models.families import build_model
from tests import causal_helpers

LENGTHS = {'inputs': 6, 'targets': 3}
FAMILY = converters.DECODER_ONLY
# A Llama-shaped model (rotary, grouped-query attention) and a GPT-2-shaped one (learned positions, LayerNorm).
CONFIGS = {
    'rotary': DecoderConfig(vocab_size=40, emb_dim=32, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=48),
    'learned': DecoderConfig(vocab_size=40, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=48, mlp_activations=('gelu',),
                             norm='layer', positions='learned', max_positions=32, qkv_bias=True, out_bias=True,
                             mlp_bias=True, tie_word_embeddings=True),
}


def _examples(count: int = 7):
  rs = np.random.RandomState(0)
  return [(rs.randint(0, 40, rs.randint(1, LENGTHS['inputs'] + 1)).astype(np.int32),
           np.append(rs.randint(3, 40, rs.randint(0, LENGTHS['targets'])), 2).astype(np.int32)) for _ in range(count)]


def _packed(examples, tokens):
  """The training pipeline's packed rows (seqio's packing through `CausalFeatureConverter`)."""
  signature = {'inputs': tf.TensorSpec([None], tf.int32), 'targets': tf.TensorSpec([None], tf.int32)}
  ds = tf.data.Dataset.from_generator(lambda: iter([{'inputs': i, 'targets': t} for i, t in examples]),
                                      output_signature=signature)
  rows = list(data.convert_features(ds, LENGTHS, True, 0, FAMILY, tokens).as_numpy_iterator())
  return data.as_float_weights({k: np.stack([r[k] for r in rows]) for k in rows[0]}, FAMILY)


@pytest.mark.parametrize('positions', ['rotary', pytest.param('learned', marks=pytest.mark.slow)])
def test_packed_rows_under_a_kv_prefix_score_each_example_as_its_own_row(positions):
  """Every packed example sees the whole prefix and numbers its tokens from the prefix's end, as unpacked (P-tuning
  v2's rows; prefix tuning's MLP only computes them)."""
  config = CONFIGS[positions]
  method = prefix_tuning.p_tuning_v2(config, length=3, initializer='normal')
  assert method.packing_slots == 0  # relpos 'positions' (the default) packs on a model without relative bias
  model = build_model(config, method)
  frozen = causal_helpers.random_params(config)
  trainable = method.init(np.asarray([0, 1], np.uint32), frozen)
  examples, tokens = _examples(), causal.StreamTokens(bos=1)
  packed = _packed(examples, tokens)
  assert packed['decoder_segment_ids'].max() > 1  # several examples share a row
  unpacked = data.to_features([i for i, _ in examples], [t for _, t in examples], LENGTHS, FAMILY, tokens)
  score = jax.jit(functools.partial(model.score_batch, return_intermediates=True))
  alone = np.asarray(score(frozen, trainable, unpacked)).sum(-1)
  scores = np.asarray(score(frozen, trainable, packed))
  found = []
  for row, segments in enumerate(packed['decoder_segment_ids']):
    for segment in range(1, segments.max() + 1):
      at = segments == segment
      stream = packed['decoder_input_tokens'][row][at]
      match = [
          k for k in range(len(examples))
          if k not in found and np.array_equal(unpacked['decoder_input_tokens'][k][:at.sum()], stream)
      ]
      found.append(match[0])
      np.testing.assert_allclose(scores[row][at].sum(), alone[match[0]], rtol=1e-5, atol=1e-5)
  assert sorted(found) == list(range(len(examples)))


def test_t5_still_refuses_packing_with_a_relative_position_prefix():
  """T5's relative bias measures prefix distances from the row start: packed examples would see other ones."""
  config = get_config('t5x_tiny')
  with pytest.raises(ConfigError, match="relative-position bias.*PACK=False"):
    prefix_tuning.p_tuning_v2(config).packing_slots  # pylint: disable=expression-not-assigned
  assert prefix_tuning.p_tuning_v2(config, relpos='none').packing_slots == 0
