"""Multi-process start-up: `jax.distributed.initialize()` on clusters it configures itself, and a
watchdog that ends the run cleanly when a process dies.

TPU pods, SLURM and Open MPI set environment variables from which JAX finds the coordinator and its
own process index; a run started by hand names them (`--coordinator_address` and friends). A
single process starts nothing.

Why a watchdog of our own: when a process dies (OOM killer, SIGKILL, a lost host), the others block
in their next collective (gloo on CPU: still blocked after 90 s), and JAX's coordination service
notices only after its heartbeat timeout (100 s by default); its reaction is a C++ fatal error in
every survivor (exit 134, "Check failure stack trace", Python's fatal-error dump). That reaction,
the client's missed-heartbeat callback, cannot be a Python function in jax 0.10 (the binding
fails to pass it the status: std::bad_cast, then abort). So each process publishes a counter in
the coordination service's key-value store; process 0 watches everyone's, the others watch
process 0's and the "lost" record process 0 writes. A process whose counter has not moved for
`peer_timeout_seconds` is lost: every survivor prints one line naming it and exits with
`os._exit` (a collective it is blocked in never returns). JAX's timeouts are set well above ours,
so its abort stays a backstop only.

Process 0 hosts the coordination service, and the others' JAX clients abort the moment it goes
away. Hence process 0 exits last: after publishing the lost processes it waits (briefly) for the
others to say they are leaving. For the same reason the death of process 0 itself cannot end the
survivors cleanly: JAX aborts them at once (bounded, but with XLA's fatal-error output).
"""
from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
import time
from typing import Any, Callable, Collection, Iterator, NoReturn, Sequence

from absl import logging
import jax
from jax._src import distributed as jax_distributed  # The client: not public API.

_KEYS = "vit_jax/peer_watchdog"  # Key-value store directory of the watchdog.


def _cluster_detected() -> bool:
  """True on launchers that jax.distributed.initialize() configures itself (SLURM, TPU pods,
  MPI)."""
  def count(var):
    try:
      return int(os.environ.get(var, "1"))
    except ValueError:
      return 1
  tpu_workers = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return count("SLURM_NTASKS") > 1 or count("OMPI_COMM_WORLD_SIZE") > 1 or "," in tpu_workers


def jax_heartbeat_timeout(peer_timeout_seconds: float) -> int:
  """JAX's heartbeat timeout for a given watchdog timeout: late enough that the watchdog always
  acts first. JAX beats every timeout/2, so it declares a dead process between timeout/2 and
  timeout after the death; the watchdog within peer_timeout + one beat (<= peer_timeout / 10)."""
  return int(3 * peer_timeout_seconds) + 10


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *,
               peer_timeout_seconds: float,
               peer_lost_exit_code: int = 1) -> None:
  """Starts multi-process JAX when asked to (explicit address) or when a cluster is detected, and
  the watchdog that stops every process `peer_timeout_seconds` after one of them stopped
  responding (exit code `peer_lost_exit_code`)."""
  # JAX's own reactions to a lost process (its heartbeat timeout, and the wait at exit for every
  # process, after which it aborts too) come only after the watchdog's.
  backstop = jax_heartbeat_timeout(peer_timeout_seconds)
  timeouts = dict(heartbeat_timeout_seconds=backstop, shutdown_timeout_seconds=backstop)
  if coordinator_address:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id, **timeouts)
  elif _cluster_detected():
    jax.distributed.initialize(**timeouts)
  else:
    return
  logging.info("Process %d of %d; %d local / %d global devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  client = _client()
  if jax.process_count() > 1 and client is not None:
    watchdog = PeerWatchdog(client, jax.process_index(), jax.process_count(),
                            peer_timeout_seconds, exit_code=peer_lost_exit_code)
    watchdog.start()
    global _peer_watchdog
    _peer_watchdog = watchdog
    # atexit runs last-registered first: `leave` comes before JAX's own shutdown (registered at
    # import), which waits for every process.
    atexit.register(watchdog.leave)
    _stop_beating_after_jax_shutdown(watchdog)


def _stop_beating_after_jax_shutdown(watchdog: PeerWatchdog) -> None:
  """Makes JAX's distributed shutdown (the last thing at exit) end by stopping the watchdog's
  beat thread: a call to the coordination service still in flight when Python finalizes aborts
  the process as it returns ("terminate called ... exception not rethrown"), after a clean run."""
  state = jax_distributed.global_state
  jax_shutdown = state.shutdown
  def shutdown() -> None:
    try:
      jax_shutdown()
    finally:
      watchdog.stop()
  state.shutdown = shutdown


# Run (each bounded, best effort) when a watchdog (this module's, or vit_jax.runtime.stall's) ends
# this process with os._exit, which skips every `finally`: e.g. releasing the workdir lock, so a
# rerun on other hosts is not refused.
_BEFORE_FORCED_EXIT: list[Callable[[], Any]] = []
_EXITING = threading.Lock()  # Taken by the first forced_exit, never released.
_peer_watchdog: PeerWatchdog | None = None  # Of a multi-process run.


@contextlib.contextmanager
def before_forced_exit(action: Callable[[], Any]) -> Iterator[None]:
  """Within the block, `action` runs if a watchdog ends this process (forced_exit)."""
  _BEFORE_FORCED_EXIT.append(action)
  try:
    yield
  finally:
    _BEFORE_FORCED_EXIT.remove(action)


def forced_exit(exit_code: int, message: str, then: Callable[[], Any] | None = None) -> NoReturn:
  """Ends this process at once (os._exit: a call its main thread is blocked in never returns):
  runs the before-forced-exit actions, prints `message`, then runs `then`. Each part is bounded:
  a log on a hung filesystem must not keep the process, and its workdir lock, alive. A second
  watchdog's call waits for the first's exit."""
  _EXITING.acquire()
  for action in list(_BEFORE_FORCED_EXIT):
    _bounded(action, timeout_s=5.0)
  for stream in (sys.stdout, sys.stderr):
    _bounded(stream.flush)
  if message:
    _bounded(lambda: os.write(2, (message + "\n").encode()))
  if then is not None:
    then()
  os._exit(exit_code)


def announce_stall() -> None:
  """This process is ending on its stall timeout (vit_jax.runtime.stall): in a multi-process run,
  the others stop at once naming it, and process 0 (whose exit would abort them) waits for them."""
  if _peer_watchdog is not None:
    _peer_watchdog.stalled()


def _client() -> Any:
  """The coordination-service client of jax.distributed (None if it moved: no watchdog)."""
  return getattr(getattr(jax_distributed, "global_state", None), "client", None)


def lost_message(lost: Sequence[int], num_processes: int, timeout_s: float,
                 stalled: Collection[int] = ()) -> str:
  """The one line every survivor prints; `stalled`: the processes that ended on their stall
  timeout."""
  names = (f"process {lost[0]}" if len(lost) == 1 else
           f"processes {', '.join(str(p) for p in lost)}")
  why = ("made no progress for --stall_timeout_seconds (its log says where it is stuck)"
         if set(lost) <= set(stalled) else f"stopped responding (no heartbeat for {timeout_s:g} s)")
  return (f"error: {names} of {num_processes} {why}; this run is stopping; rerun the same command "
          "(all processes) to resume from the last checkpoint.")


class PeerWatchdog:
  """Stops this process, with one message, when another process of the run stops responding.

  A beat thread publishes this process's counter and reads what it watches: on process 0 every
  record, elsewhere process 0's counter and the lost processes process 0 published. A watch thread,
  which never blocks on the network, judges. A counter is stale when reads spanning `timeout_s`
  saw it unchanged, so a process whose own threads were starved does not blame the others.

  At exit (`leave`, from atexit) a process stops beating but keeps watching: JAX's shutdown then
  waits for every process, and a process that exits early (an exception) would wait for peers
  stuck in a collective with it, then be aborted by JAX when process 0 goes. Once process 0 has
  declared a process lost (or, on process 0, once every other process left or went quiet), a
  leaving process ends at once with exit code 1, its own error already printed.
  """

  def __init__(self, client: Any, process_id: int, num_processes: int, timeout_s: float,
               exit_code: int, beat_s: float | None = None):
    self._client = client
    self._me, self._n = process_id, num_processes
    self.timeout_s = timeout_s
    self.beat_s = beat_s or min(max(timeout_s / 10, 0.2), 10.0)
    self._exit_code = exit_code
    self._others = [p for p in range(num_processes) if p != process_id]
    self._watched = self._others if process_id == 0 else [0]
    now = time.monotonic()
    self._lock = threading.Lock()
    self._seen = {p: ("", now) for p in self._watched}  # Last counter value, when it changed.
    self._last_read = now  # When the beat thread last read the records.
    self._rpc_since: float | None = None  # When the beat thread's pending call started.
    self._records: dict[str, set[int]] = {"lost": set(), "stalled": set(), "leaving": set(),
                                          "exiting": set()}
    self._leaving = threading.Event()
    self._stopped = threading.Event()  # Set once JAX's shutdown is over (`stop`).
    self._beat_thread: threading.Thread | None = None
    self._ending = threading.Lock()  # Held by the thread that ends the process.

  def start(self) -> None:
    self._beat_thread = threading.Thread(target=self._beat, name="peer-beat", daemon=True)
    self._beat_thread.start()
    threading.Thread(target=self._watch, name="peer-watch", daemon=True).start()

  def stop(self, timeout_s: float = 5.0) -> None:
    """Ends the beat thread and waits (bounded) until its pending call has returned."""
    self._stopped.set()
    if self._beat_thread is not None:
      self._beat_thread.join(timeout_s)

  def leave(self) -> None:
    """This process reached its exit: stop beating and say so (see the class docstring)."""
    self._leaving.set()
    _bounded(lambda: self._client.key_value_set(f"{_KEYS}/exiting/{self._me}", "1", True))

  def _call(self, method: str, *args) -> Any:
    with self._lock:
      self._rpc_since = time.monotonic()
    try:
      return getattr(self._client, method)(*args)
    finally:
      with self._lock:
        self._rpc_since = None

  def _read(self) -> tuple[dict[str, str], dict[str, set[int]]]:
    """The watched counters (key -> value) and the records (kind -> processes)."""
    if self._me == 0:
      entries = dict(self._call("key_value_dir_get", f"{_KEYS}/"))
    else:
      entries = dict(self._call("key_value_dir_get", f"{_KEYS}/lost/"))
      entries[f"{_KEYS}/beat/0"] = self._call("key_value_try_get", f"{_KEYS}/beat/0")
    records = {kind: set() for kind in self._records}
    for key, value in entries.items():
      kind, process = key[len(_KEYS) + 1:].split("/")
      if kind in records:
        records[kind].add(int(process))
      if kind == "lost" and value == "stalled":  # Published by the process itself (`stalled`).
        records["stalled"].add(int(process))
    return entries, records

  def _beat(self) -> None:
    count = 0
    while not self._stopped.is_set() and _client() is not None:
      count += 1
      try:
        if not self._leaving.is_set():
          self._call("key_value_set", f"{_KEYS}/beat/{self._me}", str(count), True)
        entries, records = self._read()
      except Exception:  # pylint: disable=broad-except  (no news: the watch thread judges)
        self._stopped.wait(self.beat_s)
        continue
      now = time.monotonic()
      with self._lock:
        for p in self._watched:
          value = entries.get(f"{_KEYS}/beat/{p}", "")
          if value != self._seen[p][0]:
            self._seen[p] = (value, now)
        self._last_read = now
        self._records = records
      self._stopped.wait(self.beat_s)

  def _watch(self) -> None:
    while True:
      time.sleep(self.beat_s)
      now = time.monotonic()
      with self._lock:
        stale = [p for p, (_, t) in self._seen.items() if self._last_read - t > self.timeout_s]
        if (self._me != 0 and not stale and self._rpc_since is not None and
            now - self._rpc_since > self.timeout_s):
          stale = [0]  # The coordination service (on process 0) stopped answering.
        records = self._records
      if not self._leaving.is_set():
        published = records["lost"] - {self._me}
        lost = (sorted(published) if self._me != 0 and published else
                sorted(set(stale) | (records["stalled"] - {self._me})))
        if lost:
          self._end(lost, records)
      elif (records["lost"] if self._me != 0 else
            set(self._others) <= records["leaving"] | set(stale)):
        self._end([], records)

  def _end(self, lost: list[int], records: dict[str, set[int]]) -> None:
    """Ends this process: with the message and the peer-lost exit code when others are `lost`,
    quietly with code 1 when this process was leaving anyway. Process 0 goes last: it first
    publishes the lost processes and waits for the others to leave."""
    if not self._ending.acquire(blocking=False):
      return
    if self._me == 0 and lost:
      _best_effort(lambda: [self._client.key_value_set(f"{_KEYS}/lost/{p}", "1", True)
                            for p in lost if p not in records["lost"]])  # Keeps "stalled".
      alive = (set(self._others) - set(lost)) | (set(lost) & records["exiting"])
      _best_effort(lambda: self._wait_until_left(alive))
    # "leaving" comes last: process 0 exits once it has every one, and JAX then aborts the others.
    forced_exit(self._exit_code if lost else 1,
                lost_message(lost, self._n, self.timeout_s, records["stalled"]) if lost else "",
                then=self._say_leaving if self._me != 0 else None)

  def stalled(self) -> None:
    """This process ends on its stall timeout: published as lost, so that the others stop at once;
    process 0 then waits for them to leave (its exit would abort them), the others say they
    leave."""
    _bounded(lambda: self._client.key_value_set(f"{_KEYS}/lost/{self._me}", "stalled", True))
    if self._me == 0:
      _best_effort(lambda: self._wait_until_left(set(self._others)))
    else:
      self._say_leaving()

  def _say_leaving(self) -> None:
    _bounded(lambda: self._client.key_value_set(f"{_KEYS}/leaving/{self._me}", "1", True))

  def _wait_until_left(self, processes: set[int]) -> None:
    deadline = time.monotonic() + max(3 * self.beat_s, 2.0)
    while processes and time.monotonic() < deadline:
      time.sleep(0.05)
      processes = processes - {int(key.rsplit("/", 1)[1]) for key, _ in
                               self._client.key_value_dir_get(f"{_KEYS}/leaving/")}
    time.sleep(0.2)  # Their os._exit follows their "leaving" record.


def _best_effort(action: Callable[[], Any]) -> None:
  """Runs a call to the coordination service that may fail as the run ends; ignores failures."""
  try:
    action()
  except Exception:  # pylint: disable=broad-except
    pass


def _bounded(action: Callable[[], Any], timeout_s: float = 1.0) -> None:
  """`_best_effort`, given up on after `timeout_s` (the service may be unreachable)."""
  thread = threading.Thread(target=_best_effort, args=(action,), daemon=True)
  thread.start()
  thread.join(timeout_s)
