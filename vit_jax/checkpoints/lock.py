"""One run per workdir: a lock file naming the run that writes there, on any path epath serves.

Two runs on one workdir would delete each other's checkpoints and interleave their metrics. The
lock (WORKDIR/lock.json: host, pid, start and heartbeat times) is taken before anything is written
and released when the run ends. A holder refreshes its heartbeat from a background thread, so a
lock whose process died is recognised and taken over: at once on the same host (the pid is gone,
or is this process's own: a restarted container), after STALE_SECONDS without a heartbeat
otherwise. Object stores have no exclusive create, so taking the lock writes it and reads it back:
of two runs starting in the same instant, the one whose token is not read back gives way.
"""
from __future__ import annotations

import os
import socket
import threading
import time
import uuid

from absl import logging

from vit_jax.checkpoints import workdir as workdir_lib

HEARTBEAT_SECONDS = 60.0
STALE_SECONDS = 5 * HEARTBEAT_SECONDS


def _process_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Alive, another user's.
    return True
  return True


class WorkdirLock:
  """The lock of one workdir; use as a context manager around everything that writes there."""

  def __init__(self, workdir: workdir_lib.Workdir):
    self._path = workdir.lock
    self._workdir = workdir
    self._record = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
                    "started": time.time()}
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def _holder_is_gone(self, held: dict) -> bool:
    silent = time.time() - float(held.get("heartbeat", 0)) > STALE_SECONDS
    if held.get("host") == self._record["host"]:
      pid = int(held.get("pid", -1))
      # This process's own pid in another run's lock: a restarted container (same host name)
      # numbers its processes the same way; that run is gone. A silent one's pid may be reused.
      return pid == os.getpid() or not _process_alive(pid) or silent
    return silent

  def _refuse(self, held: dict) -> ValueError:
    age = time.time() - float(held.get("heartbeat", 0))
    return ValueError(
        f"--workdir={self._workdir} is in use by pid {held.get('pid')} on host {held.get('host')} "
        f"(its last heartbeat {age:.0f} s ago, {self._path}); wait for that run to end or stop "
        "it, or choose another --workdir. The lock of a run that died is taken over by itself.")

  def _write(self) -> None:
    workdir_lib.write_json(self._path, {**self._record, "heartbeat": time.time()})

  def acquire(self) -> None:
    """Takes the lock or raises ValueError naming the run that holds it."""
    try:
      held = workdir_lib.read_json(self._path)
    except ValueError:
      held = None  # A damaged lock file protects nothing.
    if held and held.get("token") != self._record["token"]:
      if not self._holder_is_gone(held):
        raise self._refuse(held)
      logging.warning("Taking over the lock of %s: pid %s on %s is gone.", self._workdir,
                      held.get("pid"), held.get("host"))
    self._write()
    read_back = workdir_lib.read_json(self._path)
    if read_back.get("token") != self._record["token"]:
      raise self._refuse(read_back)
    self._thread = threading.Thread(target=self._beat, name="workdir-lock-heartbeat",
                                    daemon=True)
    self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_SECONDS):
      try:
        self._write()
      except OSError as e:  # A storage hiccup must not kill the run; the next beat retries.
        logging.warning("Could not refresh the workdir lock %s: %s", self._path, e)

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    try:
      held = workdir_lib.read_json(self._path)
    except ValueError:
      held = None
    if held and held.get("token") == self._record["token"]:
      self._path.unlink()

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *_) -> None:
    self.release()
