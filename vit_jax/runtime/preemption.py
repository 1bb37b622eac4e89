"""Stop requests: SIGTERM / Ctrl-C (and TPU preemption notices) become a flag checked every step."""
from __future__ import annotations

import signal

from absl import logging
import jax
from jax._src import distributed as jax_distributed  # Whether the preemption service runs.
from jax.experimental import multihost_utils


def _preemption_service_running() -> bool:
  """Whether JAX's preemption service runs (jax.distributed.initialize starts it, and its C++
  SIGTERM handler, unless jax_enable_preemption_service is False)."""
  state = getattr(jax_distributed, "global_state", None)
  return getattr(state, "preemption_sync_manager", None) is not None


class StopRequests:
  """Turns SIGTERM / SIGINT into a stop after the current step (a second Ctrl-C aborts).

  One process: the handlers set a flag. Several processes must all stop at the same step (saving
  the checkpoint is collective), so JAX's preemption service decides: its SIGTERM handler tells
  the coordination service, which tells every process, and `reached_preemption_sync_point(step)`
  turns true on all of them at the same step (the one after the furthest step any process had
  reached). So a SIGTERM to every process (a pod or SLURM preemption) and a SIGTERM to one process
  both stop the whole run at one step, checkpointed. Ctrl-C on one process is passed on to that
  service as a SIGTERM to itself. With the service off (jax_enable_preemption_service=False) a
  multi-process run keeps the default actions: a signal ends that process without a checkpoint,
  and the others stop on their peer timeout (vit_jax.runtime.distributed).

  Use as a context manager: the previous handlers come back on exit.
  """

  def __init__(self):
    self.signal_name = None
    self._previous = {}
    self._multiprocess = False
    self._agreed = False

  def __enter__(self) -> "StopRequests":
    self._multiprocess = jax.process_count() > 1
    if self._multiprocess:
      self._agreed = _preemption_service_running()
      if not self._agreed:
        logging.warning("JAX's preemption service is off: SIGTERM and Ctrl-C end this process "
                        "without a checkpoint.")
      signals = [signal.SIGINT] if self._agreed else []
    else:
      signals = [signal.SIGINT, signal.SIGTERM]
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
    if self._multiprocess:
      signal.raise_signal(signal.SIGTERM)  # To the preemption service, which agrees on a step.

  def should_stop(self, step: int) -> bool:
    """Whether to stop after `step`; all processes must call it at every step."""
    if not self._multiprocess:
      return self.signal_name is not None
    if self._agreed and multihost_utils.reached_preemption_sync_point(step):
      self.signal_name = self.signal_name or "SIGTERM"
      return True
    return False
