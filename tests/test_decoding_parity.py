"""Greedy and beam-search decodes of the t5x fixture model equal t5x's exactly."""
import numpy as np
import pytest
from flax.traverse_util import unflatten_dict

from jaxprompt.models.config import get_config
from jaxprompt.models.prompt_model import PromptModel


@pytest.fixture(scope='module')
def setup(fixtures_dir):
  data = dict(np.load(fixtures_dir / 't5x_tiny' / 'reference_step0.npz'))
  params = unflatten_dict({tuple(k[6:].split('/')): v for k, v in data.items() if k.startswith('param/')})
  batch = {k: data[k] for k in ('encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens')}
  return data, params, batch, PromptModel(get_config('t5x_tiny'), prompt=None)


def test_greedy_matches_t5x(setup):
  data, params, batch, model = setup
  decodes, scores = model.predict_batch(params, None, batch, method='sample', temperature=0.0,
                                        rescale_log_probs=False)
  np.testing.assert_array_equal(decodes, data['greedy_decodes'])
  np.testing.assert_allclose(scores, data['greedy_scores'], atol=1e-5)


@pytest.mark.parametrize('beams', [1, 4])
def test_beam_search_matches_t5x(setup, beams):
  data, params, batch, model = setup
  decodes, scores = model.predict_batch(params, None, batch, method='beam', num_decodes=beams, alpha=0.6,
                                        return_all_decodes=beams > 1)
  np.testing.assert_array_equal(decodes, data[f'beam{beams}_decodes'])
  np.testing.assert_allclose(scores, data[f'beam{beams}_scores'], atol=1e-5)
