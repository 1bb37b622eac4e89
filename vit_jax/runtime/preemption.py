"""Stop requests: SIGTERM / Ctrl-C (and TPU preemption notices) become a flag checked every step."""
from __future__ import annotations

import signal

from absl import logging
import jax
from jax.experimental import multihost_utils


class StopRequests:
  """Turns SIGTERM / SIGINT into a flag checked after every step (a second Ctrl-C aborts).

  Multi-process runs leave SIGTERM to JAX's preemption service, whose sync point makes every process
  stop at the same step. Use as a context manager: the previous handlers come back on exit.
  """

  def __init__(self):
    self.signal_name = None
    self._previous = {}

  def __enter__(self) -> "StopRequests":
    signals = [signal.SIGINT] + ([signal.SIGTERM] if jax.process_count() == 1 else [])
    for sig in signals:
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread (e.g. embedded use): no graceful stop.
        pass
    return self

  def __exit__(self, *_) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _handle(self, signum, frame):
    del frame
    if self.signal_name is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signal_name = signal.Signals(signum).name
    logging.warning("%s received: finishing this step, saving a checkpoint, then exiting "
                    "(Ctrl-C again to abort).", self.signal_name)

  def should_stop(self, step: int) -> bool:
    """Whether to stop after `step`; all processes must call it at every step."""
    if jax.process_count() > 1 and multihost_utils.reached_preemption_sync_point(step):
      self.signal_name = self.signal_name or "SIGTERM"
    return self.signal_name is not None
