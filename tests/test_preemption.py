"""The preemption guard: SIGTERM (and optionally SIGINT) turn into a flag the train loop polls; handlers restored.
(The two-process case, a SIGTERM on one host stopping both at the same step, is in test_train_checkpoints.py.)"""
import os
import signal
import time

import pytest

from jaxprompt.errors import ConfigError
from jaxprompt.train.preemption import PreemptionGuard


def _wait_for(predicate, seconds=2.0):
  deadline = time.time() + seconds
  while not predicate() and time.time() < deadline:
    time.sleep(0.01)
  return predicate()


def test_preemption_guard_sigterm_sets_flag_and_restores_handler():
  calls = []
  previous = signal.signal(signal.SIGTERM, lambda *_: calls.append('old'))
  try:
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionGuard() as guard:
      assert guard.mode == 'local' and not guard.should_stop(0)
      os.kill(os.getpid(), signal.SIGTERM)
      assert _wait_for(guard.should_stop)
      assert guard.received_signal == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before and calls == []
    os.kill(os.getpid(), signal.SIGTERM)
    assert _wait_for(lambda: calls == ['old'])
  finally:
    signal.signal(signal.SIGTERM, previous)


def test_preemption_guard_sigint_is_optional_and_second_one_interrupts():
  before = signal.getsignal(signal.SIGINT)
  with PreemptionGuard() as guard:
    assert signal.getsignal(signal.SIGINT) is before  # not handled unless asked
  with pytest.raises(KeyboardInterrupt):
    with PreemptionGuard(sigint=True) as guard:
      os.kill(os.getpid(), signal.SIGINT)
      assert _wait_for(guard.should_stop) and guard.received_signal == signal.SIGINT
      os.kill(os.getpid(), signal.SIGINT)
      _wait_for(lambda: False, 1.0)
  assert signal.getsignal(signal.SIGINT) is before
  with pytest.raises(ConfigError, match='outside its `with` block'):
    PreemptionGuard().should_stop(0)
  with pytest.raises(ConfigError, match="mode must be .* got 'cluster'"):
    PreemptionGuard(mode='cluster')
  with PreemptionGuard(mode='jax') as guard:  # without jax.distributed there is no preemption notice
    assert not guard.should_stop(5)
    with pytest.raises(ConfigError, match='needs the current `step`'):
      guard.should_stop()
