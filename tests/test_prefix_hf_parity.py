"""Parity with real code: a decoder self-attention prefix of `PrefixTuning` at relpos 'positions' gives the logits
of transformers' own T5 when the same rows are its past keys/values (a tiny random T5 whose heads x head_dim is
not d_model, and whose decoder is deeper than its encoder)."""
import dataclasses
import inspect

import jax
import numpy as np
import pytest

from jaxprompt.checkpoints.huggingface import load_hf_t5
from jaxprompt.methods.prefix_tuning import PrefixTuning
from jaxprompt.models.families import build_model

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
cache_utils = pytest.importorskip('transformers.cache_utils')

VOCAB, PLEN = 80, 4


@pytest.fixture(scope='module')
def hf(tmp_path_factory):
  """(transformers model, jaxprompt params, config) of one random T5 1.1-style model saved and read back."""
  torch.manual_seed(0)
  cfg = transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=6, num_heads=4, d_ff=48, num_layers=2,
                              num_decoder_layers=3, feed_forward_proj='gated-gelu', relative_attention_num_buckets=8,
                              relative_attention_max_distance=16, dropout_rate=0.0)
  model = transformers.T5ForConditionalGeneration(cfg).eval()
  path = tmp_path_factory.mktemp('hf_prefix') / 'model'
  model.save_pretrained(path, safe_serialization=True)
  params, config = load_hf_t5(path)
  assert config.num_heads * config.head_dim != config.emb_dim  # PEFT issue #385's case
  return model, params, config


def _batch():
  rng = np.random.RandomState(1)
  enc = rng.randint(2, VOCAB, (2, 7))
  enc[1, 4:] = 0
  targets = rng.randint(2, VOCAB, (2, 5))
  dec_in = np.concatenate([np.zeros((2, 1), targets.dtype), targets[:, :-1]], axis=1)
  return dict(encoder_input_tokens=enc, decoder_input_tokens=dec_in, decoder_target_tokens=targets)


def _hf_logits(model, batch, rows=None):
  """transformers' logits; `rows` ([layers, P, h, d] key and value) become every example's past keys/values."""
  kwargs = {}
  if rows is not None:
    past = cache_utils.DynamicCache()
    batch_size = len(batch['encoder_input_tokens'])
    for layer in range(rows[0].shape[0]):  # transformers keeps [b, h, P, d]
      key, value = (
          torch.tensor(np.asarray(r[layer])).transpose(0, 1)[None].expand(batch_size, -1, -1, -1) for r in rows)
      past.update(key.contiguous(), value.contiguous(), layer)
    # T5's encoder ignores past keys/values, so the cross-attention half stays empty.
    name = 'cache' if 'cache' in inspect.signature(model.forward).parameters else 'past_key_values'
    kwargs[name] = cache_utils.EncoderDecoderCache(past, cache_utils.DynamicCache())
  with torch.no_grad():
    out = model(input_ids=torch.tensor(batch['encoder_input_tokens']),
                attention_mask=torch.tensor(batch['encoder_input_tokens'] > 0),
                decoder_input_ids=torch.tensor(batch['decoder_input_tokens']), **kwargs)
  return out.logits.numpy()


# The inner loop checks the plain rows; the full suite the MLP-reparameterised ones too.
@pytest.mark.parametrize('projection', [pytest.param(True, marks=pytest.mark.slow), False])
def test_decoder_prefix_at_positions_matches_transformers_past_key_values(hf, projection):
  model, params, config = hf
  method = PrefixTuning.for_config(config, length=PLEN, kinds=('decoder_self',), projection=projection, hidden=16,
                                   relpos='positions')
  trainable = method.init(jax.random.PRNGKey(0), params)
  plain, rows = method.inference(trainable)  # the MLP's computed rows are what transformers is given
  batch = _batch()
  ours = np.asarray(build_model(config, method).logits(params, trainable, batch))
  theirs = _hf_logits(model, batch, (rows['decoder_self']['key'], rows['decoder_self']['value']))
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
  assert np.abs(theirs - _hf_logits(model, batch)).max() > 1e-2  # the prefix is in effect
  # relpos 'none' is a different model: zero bias for the prefix keys, which transformers cannot express.
  none = build_model(config, dataclasses.replace(plain, relpos='none'))
  assert np.abs(np.asarray(none.logits(params, rows, batch)) - theirs).max() > 1e-3
