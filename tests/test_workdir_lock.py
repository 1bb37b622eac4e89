"""The workdir lock (vit_jax.checkpoints.lock) against the holders it meets: a live run here or
elsewhere is refused, a dead or silent one is taken over, and so is a lock naming this process's
own pid (a restarted container numbers its processes as before)."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from vit_jax.checkpoints import lock as lock_lib
from vit_jax.checkpoints import workdir as workdir_lib


@pytest.fixture
def workdir(tmp_path):
  return workdir_lib.Workdir(str(tmp_path / "run"))


@pytest.fixture(scope="module")
def other_process():
  """A live process of this host that is not this one."""
  child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
  yield child.pid
  child.kill()
  child.wait()


def _held_by(workdir, *, pid, host=None, heartbeat_age=0.0):
  workdir.lock.parent.mkdir(parents=True, exist_ok=True)
  workdir.lock.write_text(json.dumps({
      "host": host or socket.gethostname(), "pid": pid, "token": "another run",
      "started": time.time() - 3600, "heartbeat": time.time() - heartbeat_age}))


def _taken(workdir) -> bool:
  lock = lock_lib.WorkdirLock(workdir)
  try:
    lock.acquire()
  except ValueError as e:
    assert f"--workdir={workdir} is in use by pid" in str(e)
    assert json.loads(workdir.lock.read_text())["token"] == "another run"  # Left as it was.
    return False
  assert json.loads(workdir.lock.read_text())["pid"] == os.getpid()
  lock.release()
  return True


def test_a_live_run_on_this_host_is_refused(workdir, other_process):
  _held_by(workdir, pid=other_process)
  assert not _taken(workdir)


def test_a_dead_run_on_this_host_is_taken_over(workdir):
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  _held_by(workdir, pid=int(dead.stdout))
  assert _taken(workdir)


def test_a_lock_naming_this_process_from_another_run_is_taken_over(workdir):
  _held_by(workdir, pid=os.getpid())  # The run before a container restart, same host name.
  assert _taken(workdir)


def test_a_silent_holder_is_taken_over_here_or_elsewhere(workdir, other_process):
  _held_by(workdir, pid=other_process, heartbeat_age=lock_lib.STALE_SECONDS + 1)
  assert _taken(workdir)  # The pid lives on, reused by another program.
  _held_by(workdir, pid=other_process, host="elsewhere", heartbeat_age=lock_lib.STALE_SECONDS + 1)
  assert _taken(workdir)


def test_a_run_on_another_host_with_a_fresh_heartbeat_is_refused(workdir):
  _held_by(workdir, pid=os.getpid(), host="elsewhere")
  assert not _taken(workdir)
