"""The t5x fixture checkpoints, read in both formats, reproduce t5x's outputs: forward, loss, decodes."""
import numpy as np
import pytest

from jaxprompt.checkpoints import load_t5x_checkpoint
from jaxprompt.models.config import get_config
from jaxprompt.models.families import build_model


@pytest.fixture(scope='module', params=['classic_checkpoint_0', 'orbax_checkpoint_0'])
def setup(fixtures_dir, request):
  """The t5x fixture model loaded through our reader from each format t5x writes."""
  data = dict(np.load(fixtures_dir / 't5x_tiny' / 'reference_step0.npz'))
  params = load_t5x_checkpoint(str(fixtures_dir / 't5x_tiny' / request.param))
  batch = {k: data[k] for k in ('encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens')}
  return data, params, batch, build_model(get_config('t5x_tiny'))


def test_greedy_matches_t5x(setup):
  data, params, batch, model = setup
  decodes, scores = model.predict_batch(params, None, batch, method='sample', temperature=0.0, rescale_log_probs=False)
  np.testing.assert_array_equal(decodes, data['greedy_decodes'])
  np.testing.assert_allclose(scores, data['greedy_scores'], atol=1e-5)


@pytest.mark.parametrize('beams', [1, 4])
def test_beam_search_matches_t5x(setup, beams):
  data, params, batch, model = setup
  decodes, scores = model.predict_batch(params, None, batch, method='beam', num_decodes=beams, alpha=0.6,
                                        return_all_decodes=beams > 1)
  np.testing.assert_array_equal(decodes, data[f'beam{beams}_decodes'])
  np.testing.assert_allclose(scores, data[f'beam{beams}_scores'], atol=1e-5)


def test_forward_loss_and_scores_match_t5x(setup):
  data, params, batch, model = setup
  logits = model.logits(params, None, batch)
  np.testing.assert_allclose(logits, data['logits'], atol=1e-5, rtol=0)
  encoded, _ = model.encode(params, None, batch['encoder_input_tokens'])
  np.testing.assert_allclose(encoded, data['encoder_output'], atol=1e-5, rtol=0)
  loss, metrics = model.loss_fn(params, None, dict(batch, decoder_loss_weights=data['decoder_loss_weights']))
  np.testing.assert_allclose(loss, data['loss'], atol=1e-5, rtol=1e-6)
  np.testing.assert_allclose(metrics['z_loss'], data['z_loss'], atol=1e-6)
  scores = model.score_batch(params, None, dict(batch, decoder_loss_weights=data['decoder_loss_weights']),
                             return_intermediates=True)
  np.testing.assert_allclose(scores, data['token_scores'], atol=1e-5)
