"""bench/causal_prompt_step.py measures equal work: on a tiny Llama, the prompt once per batch, the prompt in every
row and PEFT's CAUSAL_LM prompt tuning give the same first loss and the same rank-classification scores, and the
prompt once costs fewer FLOPs."""
import pytest

pytest.importorskip('torch')
pytest.importorskip('transformers')
pytest.importorskip('peft')

from bench import causal_prompt_step  # pylint: disable=g-import-not-at-top


@pytest.mark.slow
def test_the_modes_compute_the_same_and_the_prompt_once_costs_less():
  result = causal_prompt_step.main(['--quick', '--rounds', '1', '--peft-threads', '1'])
  first = result['train']['first_loss']
  assert set(first) == {'once', 'naive', 'peft'}
  assert max(first.values()) - min(first.values()) < 1e-4 * abs(first['once'])
  agreement = result['rank']['agreement']
  assert set(agreement) == {'naive', 'peft_1t'}
  for name, a in agreement.items():
    assert a['same_predictions'] == a['of'] == 8, name
    assert a['max_abs_diff'] < 1e-3, name
  for part in ('train', 'rank'):
    assert result[part]['gflop']['once'] < result[part]['gflop']['naive'], part
    assert set(result[part]['ratios']) == {'once', 'naive', 'peft_1t'}
