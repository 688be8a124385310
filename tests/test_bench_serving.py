"""bench/serving.py measures equal work: on a tiny model, the mixed-task prompt bank, the one-prompt servers of
the split modes (groups padded to the batch and to powers of two) and PEFT's adapters give every request the
same prediction and score."""
import numpy as np
import pytest

pytest.importorskip('torch')
pytest.importorskip('transformers')
pytest.importorskip('peft')

from bench import lengths as lengths_lib  # pylint: disable=g-import-not-at-top
from bench import (
    serving,  # pylint: disable=g-import-not-at-top
    serving_modes,  # pylint: disable=g-import-not-at-top
)


@pytest.mark.slow
def test_mixed_split_and_peft_give_the_same_answers(tmp_path):
  # Few shapes keep the compiles (seconds each on CPU) down: inputs within one 64-token bucket, batches of 4.
  stream = serving_modes.make_stream(lengths_lib.calibrate(), requests=8, tasks=2, batch=4, inputs=64)
  assert set(stream.tasks) == {0, 1}
  assert [len(x) for x in stream.labels(0)] == [2, 2] and [len(x) for x in stream.labels(1)] == [4, 2]
  setup = serving.build(serving_modes.QUICK_CONFIG, stream, str(tmp_path), varied=False, torch_threads=2)
  plans = {name: mode.plan() for name, mode in setup.modes.items()}
  assert set(plans) == {'mixed', 'split32', 'split_pow2', 'peft', 'peft_1t'}
  for name, calls in plans.items():  # every request answered exactly once
    assert sorted(np.concatenate([c.requests for c in calls]).tolist()) == list(range(stream.size)), name
  assert [c.rows for c in plans['mixed']] == [4, 4]
  assert all(c.rows == 4 for c in plans['split32'])
  assert [c.rows for c in plans['split_pow2']] == [serving_modes.next_pow2(len(c.requests)) for c in plans['split32']]
  for name in ('peft', 'peft_1t'):
    assert [c.rows for c in plans[name]] == [len(c.requests) for c in plans['split32']]

  results = {name: serving_modes.serve(calls, stream.size) for name, calls in plans.items()}
  best, score = results['mixed']
  assert set(best.tolist()) <= {0, 1} and np.isfinite(score).all()
  for name, (b, s) in results.items():
    np.testing.assert_array_equal(b, best, err_msg=name)
    np.testing.assert_allclose(s, score, rtol=1e-5, atol=1e-4, err_msg=name)
  report = serving.agreement(results, 'mixed')
  assert all(r['same_predictions'] == stream.size for r in report.values())
