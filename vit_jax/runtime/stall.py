"""A watchdog that ends a run whose process stopped making progress: a read that never returns (a
hung network filesystem or bucket mount), a device or collective that never completes, a deadlock.

Without it such a run sits silent until its job's time limit, an overnight pod slice held for
nothing; the peer watchdog (vit_jax.runtime.distributed) cannot see it, since the stuck process's
heartbeat thread still beats, and its peers wait in their next collective with it. The loop says
what it is doing before each part of a step (`progress`); when one part has taken longer than
`timeout_s`, this process prints where its main thread is stuck and what it was doing, runs the
before-forced-exit actions (the workdir lock is released) and exits with `exit_code`, so that a
scheduler's retry or a rerun resumes from the last checkpoint. In a multi-process run it first
tells the others (vit_jax.runtime.distributed.announce_stall), which stop at once naming it.
"""
from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from types import FrameType

import jax

from vit_jax.runtime import distributed

# What start-up configures (cli.start_process): 0 = no watchdog.
_settings = {"timeout_s": 0.0, "exit_code": 1}


def configure(timeout_s: float, exit_code: int) -> None:
  """The timeout and exit code of every StallWatchdog made without its own."""
  _settings.update(timeout_s=timeout_s, exit_code=exit_code)


def stall_message(doing: str, stuck_s: float, where: str, exit_code: int,
                  num_processes: int = 1) -> str:
  peers = (f" With {num_processes} processes this may be a wait for another one that is stuck: "
           "the earliest of their 'no progress' lines names it." if num_processes > 1 else "")
  return (f"error: no progress for {stuck_s:.0f} s while {doing}; the main thread is stuck in "
          f"{where} (its stack, and those of the threads running vit_jax code, are above).{peers} "
          f"Stopping with exit code {exit_code}: rerun the same command to resume from the last "
          "checkpoint; if this part is legitimately that slow (a first compilation, a "
          "checkpoint save), raise --stall_timeout_seconds.")


class StallWatchdog:
  """Ends this process when one part of the run takes longer than `timeout_s` (0: never).

  Use as a context manager around the run, calling `progress(doing)` as each part begins; the
  clock runs from the first call. `doing` completes "no progress for N s while ...".
  """

  def __init__(self, timeout_s: float | None = None, exit_code: int | None = None):
    self.timeout_s = _settings["timeout_s"] if timeout_s is None else timeout_s
    self.exit_code = _settings["exit_code"] if exit_code is None else exit_code
    self._progress: tuple[str, float] | None = None  # (doing, since when): one atomic update.
    self._done = threading.Event()
    self._main = threading.get_ident()
    # Asked now: the watch thread must not wait for a lock the stuck main thread may hold.
    self._num_processes = jax.process_count()

  def __enter__(self) -> StallWatchdog:
    if self.timeout_s > 0:
      threading.Thread(target=self._watch, name="stall-watchdog", daemon=True).start()
    return self

  def __exit__(self, *_) -> None:
    self._done.set()

  def progress(self, doing: str) -> None:
    """This process is now `doing` this (e.g. "reading the batch of step 12")."""
    self._progress = (doing, time.monotonic())

  def _watch(self) -> None:
    poll_s = min(max(self.timeout_s / 20, 0.05), 5.0)
    while not self._done.wait(poll_s):
      progress = self._progress
      if progress is not None and time.monotonic() - progress[1] > self.timeout_s:
        self._end(progress[0], time.monotonic() - progress[1])

  def _end(self, doing: str, stuck_s: float) -> None:
    frames = sys._current_frames()  # pylint: disable=protected-access
    main = frames.get(self._main)
    where = (f"{main.f_code.co_name} ({main.f_code.co_filename}:{main.f_lineno})"
             if main is not None else "(no Python frame)")
    message = stall_message(doing, stuck_s, where, self.exit_code, self._num_processes)
    distributed.forced_exit(self.exit_code, _stacks(frames, self._main) + message,
                            then=distributed.announce_stall)


def _stacks(frames: dict[int, FrameType], main: int) -> str:
  """The main thread's stack and those of the other threads running this package's code (a reader
  thread blocked on a file names the file), most recent call last."""
  names = {thread.ident: thread.name for thread in threading.enumerate()}
  shown = []
  for ident, frame in frames.items():
    stack = traceback.extract_stack(frame)
    if ident == main or (ident != threading.get_ident() and
                         any(f"{os.sep}vit_jax{os.sep}" in f.filename for f in stack)):
      shown.append(f"Thread {names.get(ident, ident)!r}{' (main)' if ident == main else ''}, "
                   "most recent call last:\n" + "".join(traceback.format_list(stack)))
  return "".join(shown)
