"""Stops of a real 2-process x 2-device run (jax.distributed over localhost, gloo collectives).

A SIGTERM to every process (a pod or SLURM preemption), or a Ctrl-C to one of them, stops all of
them at the same step, checkpointed, with exit code 3, and the rerun resumes exactly. A process
that dies (SIGKILL) or fails alone (an exception) makes the other one exit within
--peer_timeout_seconds with one message naming it, instead of blocking in its next collective
until JAX aborts it (a C++ fatal error and a stack dump, ~90 s later with JAX's defaults); one
whose main thread is stuck ends after --stall_timeout_seconds, naming where.

The processes run `vit_jax.train` through a launcher that holds every process after step
PAUSE_STEP until the test has sent its signals, so the signals land mid-run however loaded the
machine is; the steps after it are slowed down so the run cannot end before the stop is agreed
(JAX's preemption notifier looks for SIGTERM once a second). The runs share the test session's
persistent compilation cache (tests/conftest.py): only the first one compiles.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from helpers import REPO, final_params, losses, tiny_config, tiny_config_file, xla_flags
from vit_jax import cli
from vit_jax.training import loop

pytestmark = pytest.mark.slow  # Several 2-process training runs and a reference run.

TOTAL_STEPS = 12
PAUSE_STEP = 3
PEER_TIMEOUT_S = 5
# What JAX's own reaction to a lost process prints (a C++ fatal error, then Python's dump).
_CRASHES = ("Fatal Python error", "Check failure", "terminate called", "Terminating process")
OVERRIDES = dict(mesh=(("data", -1),), total_steps=TOTAL_STEPS, checkpoint_every_steps=100)

LAUNCHER = f"""
import os, sys, time
sys.path.insert(0, {REPO!r})
import jax
from vit_jax.training import metrics

_log = metrics.ProgressLine.log

def log(self, step, values):
  _log(self, step, values)
  if step == {PAUSE_STEP}:
    print("PAUSED", flush=True)
    deadline = time.time() + 120
    while not os.path.exists(os.environ["GO_FILE"]) and time.time() < deadline:
      time.sleep(0.02)
    if os.environ.get("FAIL_PROCESS") == str(jax.process_index()):
      raise RuntimeError("injected failure")
    if os.environ.get("HANG_PROCESS") == str(jax.process_index()):
      time.sleep(600)  # Stands for a read from a hung filesystem.
  elif step > {PAUSE_STEP}:
    time.sleep(0.3)

metrics.ProgressLine.log = log
from vit_jax import train
train.run()
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


class TwoProcesses:
  """`vit_jax.train` on 2 processes; output in files, so it can be watched while they run."""

  def __init__(self, tmp_path, config_file, workdir, name, paused=True, flags=(), **env):
    self.go_file = tmp_path / f"{name}.go"
    self.logs = [tmp_path / f"{name}.{i}.log" for i in range(2)]
    env = dict(os.environ, XLA_FLAGS=xla_flags(2), JAX_PLATFORMS="cpu",
               GO_FILE=str(self.go_file), **env)
    program = [str(config_file.parent / "launch.py")] if paused else ["-m", "vit_jax.train"]
    address = f"localhost:{_free_port()}"
    self.procs = []
    for i, log in enumerate(self.logs):
      with open(log, "w") as out:
        self.procs.append(subprocess.Popen(
            [sys.executable, *program, f"--config={config_file}", f"--workdir={workdir}",
             f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}",
             f"--peer_timeout_seconds={PEER_TIMEOUT_S}", *flags],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT))

  def output(self, i: int) -> str:
    return self.logs[i].read_text()

  def wait_until_paused(self, timeout_s=300) -> None:
    deadline = time.monotonic() + timeout_s
    while not all("PAUSED" in self.output(i) for i in range(2)):
      assert time.monotonic() < deadline, self.output(0)[-3000:]
      assert all(p.poll() is None for p in self.procs), self.output(0)[-3000:]
      time.sleep(0.05)

  def go(self) -> None:
    self.go_file.touch()

  def wait(self, timeout_s=300) -> list[int]:
    return [p.wait(timeout=timeout_s) for p in self.procs]


@pytest.fixture(scope="module")
def config_file(data_root, tmp_path_factory):
  path = tmp_path_factory.mktemp("config") / "tiny_config.py"
  tiny_config_file(path, data_root, **OVERRIDES)
  (path.parent / "launch.py").write_text(LAUNCHER)
  return path


def _stop_step(output: str) -> int:
  found = re.findall(r"Stopped by SIG\w+ at step (\d+) after saving a checkpoint", output)
  assert len(found) == 1, output[-3000:]
  return int(found[0])


def _stop(tmp_path, config_file, workdir, signalled: list[int], sig=signal.SIGTERM) -> int:
  """Runs until PAUSE_STEP, sends `sig` to the `signalled` processes; returns the stop step."""
  run = TwoProcesses(tmp_path, config_file, workdir, "stopped")
  run.wait_until_paused()
  for i in signalled:
    run.procs[i].send_signal(sig)
  run.go()
  codes = run.wait()
  outputs = [run.output(i) for i in range(2)]
  assert codes == [cli.EXIT_STOPPED] * 2, outputs[0][-3000:] + outputs[1][-3000:]
  steps = [_stop_step(out) for out in outputs]
  assert steps[0] == steps[1] and PAUSE_STEP <= steps[0] < TOTAL_STEPS, steps
  assert os.path.isdir(os.path.join(workdir, "checkpoints", str(steps[0])))
  return steps[0]


def test_sigterm_to_all_processes_stops_at_one_step_and_resumes_exactly(
    tmp_path, config_file, data_root):
  workdir = str(tmp_path / "two_processes")
  stop_step = _stop(tmp_path, config_file, workdir, signalled=[0, 1])
  assert not os.path.exists(os.path.join(workdir, "summary.json"))

  rerun = TwoProcesses(tmp_path, config_file, workdir, "resumed", paused=False)
  codes = rerun.wait()
  assert codes == [0, 0], rerun.output(0)[-3000:] + rerun.output(1)[-3000:]
  assert f"Resumed from {workdir}/checkpoints/{stop_step}" in rerun.output(0)

  reference = str(tmp_path / "one_process")
  loop.train_and_evaluate(tiny_config(data_root, **OVERRIDES), reference,
                           devices=jax.devices()[:4])
  got, expected = losses(workdir), losses(reference)
  assert sorted(got) == sorted(expected) == list(range(1, TOTAL_STEPS + 1))
  np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(got)],
                             rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               final_params(workdir), final_params(reference))


def test_signal_to_one_process_stops_all_at_one_step(tmp_path, config_file):
  # JAX's preemption service passes the notice on, so the other process stops at the same step;
  # a process stopping alone would leave the other one waiting in its next collective. Ctrl-C
  # takes the path of a SIGTERM to one process: the process sends itself one.
  _stop(tmp_path, config_file, str(tmp_path / "two_processes"), signalled=[1], sig=signal.SIGINT)


def test_dead_process_stops_the_other_with_one_message(tmp_path, config_file):
  run = TwoProcesses(tmp_path, config_file, str(tmp_path / "two_processes"), "killed")
  run.wait_until_paused()
  run.procs[1].kill()
  killed_at = time.monotonic()
  run.go()  # Process 0 goes on into step PAUSE_STEP + 1, whose gradient sum waits for process 1.
  code = run.procs[0].wait(timeout=PEER_TIMEOUT_S + 60)
  elapsed = time.monotonic() - killed_at
  output = run.output(0)
  assert code == cli.EXIT_PEER_LOST, output[-3000:]
  assert elapsed < PEER_TIMEOUT_S + 5, elapsed
  message = [line for line in output.splitlines() if "stopped responding" in line]
  assert message == [
      f"error: process 1 of 2 stopped responding (no heartbeat for {PEER_TIMEOUT_S} s); this run "
      "is stopping; rerun the same command (all processes) to resume from the last checkpoint."]
  for crash in _CRASHES + ("Traceback",):
    assert crash not in output, output[-3000:]
  # The survivor (process 0) released the workdir: a rerun on other hosts may start at once.
  assert not (tmp_path / "two_processes" / "lock.json").exists()
  print(f"survivor exited {elapsed:.1f} s after the kill (--peer_timeout_seconds={PEER_TIMEOUT_S})")


def test_failing_process_stops_the_other_and_exits_with_its_error(tmp_path, config_file):
  # Process 0 fails alone (an exception); process 1 is left waiting in the next step's gradient
  # sum. Process 0 hosts the coordination service: it must not leave before process 1 did, or
  # JAX would abort process 1; and JAX's wait at exit for process 1 must not abort process 0.
  run = TwoProcesses(tmp_path, config_file, str(tmp_path / "two_processes"), "failed",
                     FAIL_PROCESS="0")
  run.wait_until_paused()
  run.go()
  codes = run.wait(timeout_s=PEER_TIMEOUT_S + 60)
  outputs = [run.output(i) for i in range(2)]
  assert codes == [1, cli.EXIT_PEER_LOST], outputs[0][-3000:] + outputs[1][-3000:]
  assert "RuntimeError: injected failure" in outputs[0]
  assert [line for line in outputs[1].splitlines() if "stopped responding" in line] == [
      f"error: process 0 of 2 stopped responding (no heartbeat for {PEER_TIMEOUT_S} s); this run "
      "is stopping; rerun the same command (all processes) to resume from the last checkpoint."]
  for output in outputs:
    for crash in _CRASHES:
      assert crash not in output, output[-3000:]


@pytest.mark.parametrize("stuck", [1, 0])
def test_a_stuck_process_ends_the_run_naming_where_it_is_stuck(tmp_path, config_file, stuck):
  # One process's main thread stops (its heartbeat thread still beats, so the peer watchdog alone
  # would wait forever); the other waits in the next step's gradient sum. After the stall timeout
  # the stuck one names what it was doing and where and tells the other, which stops at once
  # naming it (its own stall clock started 3 s later); process 0, host of the coordination
  # service, leaves last either way (its exit would abort the other). The workdir is released.
  other = 1 - stuck
  stall_timeout_s = 30
  workdir = tmp_path / "two_processes"
  run = TwoProcesses(tmp_path, config_file, str(workdir), "stuck", HANG_PROCESS=str(stuck),
                     flags=[f"--stall_timeout_seconds={stall_timeout_s}"])
  run.wait_until_paused()
  time.sleep(3)
  run.go()
  codes = run.wait(timeout_s=stall_timeout_s + 60)
  outputs = [run.output(i) for i in range(2)]
  assert codes[stuck] == cli.EXIT_STALLED and codes[other] == cli.EXIT_PEER_LOST, (
      outputs[0][-3000:] + outputs[1][-3000:])
  assert re.search(rf"^error: no progress for \d+ s while running step {PAUSE_STEP}; the main "
                   r"thread is stuck in log \(.* With 2 processes this may be a wait for another "
                   "one", outputs[stuck], re.MULTILINE), outputs[stuck][-3000:]
  assert [line for line in outputs[other].splitlines() if line.startswith("error:")] == [
      f"error: process {stuck} of 2 made no progress for --stall_timeout_seconds (its log says "
      "where it is stuck); this run is stopping; rerun the same command (all processes) to "
      "resume from the last checkpoint."]
  for output in outputs:
    for crash in _CRASHES + ("Traceback",):
      assert crash not in output, output[-3000:]
  assert not (workdir / "lock.json").exists() and not (workdir / "summary.json").exists()
