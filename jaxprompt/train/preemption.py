"""Stopping cleanly when a TPU VM is preempted (SIGTERM): finish the step, save, exit 0.

    with PreemptionGuard() as guard:
      for step in ...:
        state, metrics = train_step(...)
        if guard.should_stop(step):
          checkpointer.save(step, state, data_position=..., force=True)
          checkpointer.wait_until_finished()
          break

Three modes, chosen on entry:
- 'jax': `jax.distributed` is initialized with its preemption service (the default). JAX's runtime already
  owns SIGTERM (a C handler that notifies every host), so no Python handler is installed — it would replace
  JAX's — and `should_stop(step)` asks `multihost_utils.reached_preemption_sync_point(step)`, which turns
  True on every host at the same step. It must be called at every step, with the step, by every process.
- 'allgather': several processes without the preemption service. Handlers set a local flag and
  `should_stop` ORs it over all processes (a small collective: every process must call it at the same steps).
- 'local': one process. Handlers set a flag; `should_stop` reads it.
The previous signal handlers are restored on exit.
"""
from __future__ import annotations

import signal
import threading
from types import FrameType

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from jaxprompt.errors import ConfigError


def _jax_preemption_service_active() -> bool:
  try:
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    state = distributed.global_state
    return state.client is not None and state.preemption_sync_manager is not None
  except (ImportError, AttributeError):  # a jax without these internals: fall back to our own handler
    return False


class PreemptionGuard:
  """Context manager turning SIGTERM (and, with `sigint=True`, Ctrl-C) into a "stop after this step" flag.

  A second SIGINT while the flag is already set raises KeyboardInterrupt, so a stuck run can still be killed.
  `mode` forces one of the modes described in the module docstring (default: chosen on entry).
  """

  def __init__(self, *, sigint: bool = False, mode: str | None = None):
    if mode not in (None, 'jax', 'allgather', 'local'):
      raise ConfigError(f"PreemptionGuard mode must be 'jax', 'allgather', 'local' or None, got {mode!r}")
    self._sigint = sigint
    self._requested_mode = mode
    self.mode: str | None = None
    self.received_signal: int | None = None
    self._previous: dict[int, object] = {}

  def _handle(self, signum: int, frame: FrameType | None) -> None:
    del frame
    if signum == signal.SIGINT and self.received_signal is not None:
      raise KeyboardInterrupt
    if self.received_signal is None:
      self.received_signal = signum
      logging.warning('Received %s: stopping after the current step', signal.Signals(signum).name)

  def __enter__(self) -> PreemptionGuard:
    if threading.current_thread() is not threading.main_thread():
      raise ConfigError('PreemptionGuard must be entered from the main thread (Python delivers signals there)')
    if self._requested_mode:
      self.mode = self._requested_mode
    elif _jax_preemption_service_active():
      self.mode = 'jax'
    else:
      self.mode = 'allgather' if jax.process_count() > 1 else 'local'
    signals = [] if self.mode == 'jax' else [signal.SIGTERM]
    if self._sigint and self.mode == 'jax':
      # A flag set on one host only would make the hosts disagree about the step to save at.
      logging.warning("PreemptionGuard: SIGINT is not handled in 'jax' mode; Ctrl-C interrupts as usual")
    elif self._sigint:
      signals.append(signal.SIGINT)
    for signum in signals:
      self._previous[signum] = signal.getsignal(signum)
      signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      # None means the old handler was not set from Python; the default is the closest we can restore.
      signal.signal(signum, signal.SIG_DFL if handler is None else handler)
    self._previous.clear()

  def should_stop(self, step: int | None = None) -> bool:
    """True when training should save and exit now. `step` (the current step) is required in 'jax' mode."""
    if self.mode is None:
      raise ConfigError('PreemptionGuard.should_stop called outside its `with` block')
    local = self.received_signal is not None
    if self.mode == 'local':
      return local
    if self.mode == 'allgather':
      flags = multihost_utils.process_allgather(np.asarray(local, np.int32))
      return bool(np.any(flags))
    if step is None:
      raise ConfigError("PreemptionGuard.should_stop needs the current `step` in 'jax' mode (multi-host)")
    return bool(multihost_utils.reached_preemption_sync_point(int(step)))
