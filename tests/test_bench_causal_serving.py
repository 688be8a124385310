"""bench/causal_serving.py measures equal work: on a tiny Llama and a stream of 8 tasks with prompts of different
lengths, the bank with every task's prompt once per batch, the bank with each row's prompt inserted, and PEFT's
8 PROMPT_TUNING adapters (grouped by adapter) give every request the same prediction and score."""
import pytest

pytest.importorskip('torch')
pytest.importorskip('transformers')
pytest.importorskip('peft')

from bench import causal_serving  # pylint: disable=g-import-not-at-top


@pytest.mark.slow
def test_the_bank_naive_and_peft_modes_answer_alike():
  result = causal_serving.main(['--quick', '--rounds', '1', '--peft-threads', '1'])
  assert result['requests'] == 16 and len(set(result['prompt_lengths'])) > 1
  assert set(result['agreement']) == {'naive', 'peft_1t'}
  for name, a in result['agreement'].items():
    assert a['same_predictions'] == a['of'] == 16, name
    assert a['max_abs_diff'] < 1e-3, name
  assert set(result['ratios']) == {'once', 'naive', 'peft_1t'}
  assert result['positions']['once'] <= result['positions']['naive'] < result['positions']['peft']
  assert all(t['wall'] > 0 for t in result['total'].values())
