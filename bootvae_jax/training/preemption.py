"""Stopping a run cleanly on SIGTERM / SIGINT, at a step every process agrees on.

Preemptible TPU / GPU VMs get SIGTERM some time before they go away; Ctrl-C is SIGINT. Either
way the trainer finishes its current step, saves a checkpoint of it and returns (exit 0); a
second Ctrl-C ends the process at once (killed by SIGINT, no checkpoint):

    stop = StopSignal()             # installs the handlers (main thread only)
    for step in ...:
      ...                           # one training step
      if (reason := stop.reason(step)) is not None:
        ...                         # save step, log reason, leave the loop
    stop.close()

One process: a Python handler records the signal. Several processes: a signal reaches one
host, or all hosts at different steps, so the step is agreed through JAX's preemption sync
point (`multihost_utils.reached_preemption_sync_point`, the coordination service of
`jax.distributed`): its C++ SIGTERM handler spreads the notice, every process keeps training
to the first step all of them can reach (the largest current step + 1) and stops there.
SIGINT is forwarded to that handler as SIGTERM.
"""

from __future__ import annotations

import os
import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _preemption_service():
  """The distributed runtime's preemption sync manager, or None (one process, or disabled)."""
  from jax._src import distributed  # pylint: disable=g-import-not-at-top

  if distributed.global_state.client is None:
    return None
  return distributed.global_state.preemption_sync_manager


class StopSignal:
  """Records SIGTERM / SIGINT and says at which step the run stops (`reason`)."""

  def __init__(self):
    self.received: str | None = None  # the signal this process got, e.g. 'SIGTERM'
    self._interrupted = False  # a first SIGINT came
    self._previous = {}
    self._multi_process = jax.process_count() > 1
    if threading.current_thread() is not threading.main_thread():
      return  # signal handlers can only be installed there (e.g. a notebook's worker thread)
    if self._multi_process:
      if _preemption_service() is None:
        logging.warning(
            "the JAX preemption service is off (jax_enable_preemption_service): SIGTERM ends"
            " this multi-process run without a checkpoint"
        )
        return
      # SIGTERM stays with JAX's own handler (the sync point's source); SIGINT joins it.
      self._install(signal.SIGINT, self._forward_as_sigterm)
    else:
      for signum in _SIGNALS:
        self._install(signum, self._record)

  def _install(self, signum, handler) -> None:
    self._previous[signum] = signal.signal(signum, handler)

  def _record(self, signum, frame) -> None:
    del frame
    if signum == signal.SIGINT and self._interrupted:
      # A second Ctrl-C interrupts at once. Not by raising KeyboardInterrupt: the main thread
      # may be inside a callback (XLA's garbage-collection hook, a finaliser) whose
      # exceptions Python prints and ignores, and the run would go on to save and exit 0.
      logging.warning("second Ctrl-C: stopping at once, without a checkpoint")
      signal.signal(signal.SIGINT, signal.SIG_DFL)
      os.kill(os.getpid(), signal.SIGINT)
      return
    self._interrupted |= signum == signal.SIGINT
    self.received = signal.Signals(signum).name
    logging.warning(
        "received %s: finishing the current step, then saving a checkpoint (Ctrl-C again to"
        " stop at once)",
        self.received,
    )

  def _forward_as_sigterm(self, signum, frame) -> None:
    self._record(signum, frame)
    os.kill(os.getpid(), signal.SIGTERM)

  def reason(self, step: int) -> str | None:
    """Why the run stops after `step` (None: it goes on). Every process calls this once per
    step with the same step numbers (the sync point's contract)."""
    if self._multi_process:
      if _preemption_service() is None:
        return None
      if multihost_utils.reached_preemption_sync_point(step):
        here = f"; this process got {self.received}" if self.received else ""
        return f"a preemption notice (SIGTERM/SIGINT) reached the processes{here}"
      return None
    return None if self.received is None else f"received {self.received}"

  def close(self) -> None:
    """Puts the previous handlers back."""
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}
