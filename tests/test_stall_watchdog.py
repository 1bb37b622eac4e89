"""The stall watchdog: a process whose main thread stops making progress ends with the stuck part
named, its stack printed and its before-forced-exit actions run, even when its log cannot be
written; one that keeps reporting progress is left alone. Each case is a real process (the
watchdog ends it with os._exit)."""
import subprocess
import sys
import textwrap

from helpers import REPO

_SCRIPT = """
import sys, time
from vit_jax.runtime import distributed, stall

def stuck_in_a_read():
  time.sleep(120)  # Stands for a read that never returns.

release = lambda: open(sys.argv[1], "w").write("released")
with distributed.before_forced_exit(release), stall.StallWatchdog(1.0, 6) as watchdog:
  for i in range(int(sys.argv[2])):  # Steps that report progress.
    watchdog.progress(f"running step {i}")
    time.sleep(0.2)
  watchdog.progress("reading the batch of step 99")
  if sys.argv[3] == "hang":
    stuck_in_a_read()
  while sys.argv[3] == "full stderr":  # Blocks once the pipe is full: a log on a hung filesystem.
    sys.stderr.write("x" * 65536)
    sys.stderr.flush()
print("finished")
"""


def _run(tmp_path, steps: int, mode: str) -> subprocess.CompletedProcess:
  script = tmp_path / "script.py"
  script.write_text(textwrap.dedent(_SCRIPT))
  return subprocess.run(
      [sys.executable, str(script), str(tmp_path / "released"), str(steps),
       mode], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_a_stuck_main_thread_ends_the_process_naming_where_and_what(tmp_path):
  result = _run(tmp_path, steps=0, mode="hang")
  assert result.returncode == 6, result.stderr[-3000:]
  assert "finished" not in result.stdout and "Traceback" not in result.stderr
  last_line = result.stderr.strip().splitlines()[-1]
  assert last_line.startswith("error: no progress for 1 s while reading the batch of step 99; ")
  assert "the main thread is stuck in stuck_in_a_read (" in last_line
  assert "--stall_timeout_seconds" in last_line
  assert "time.sleep(120)" in result.stderr  # The main thread's stack.
  assert (tmp_path / "released").read_text() == "released"


def test_steps_that_each_finish_within_the_timeout_are_left_alone(tmp_path):
  result = _run(tmp_path, steps=15, mode="finish")  # 3 s in all, each step 0.2 s: timeout 1 s.
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip() == "finished" and not (tmp_path / "released").exists()


def test_a_log_that_cannot_be_written_does_not_keep_the_process_or_its_lock(tmp_path):
  script = tmp_path / "script.py"
  script.write_text(textwrap.dedent(_SCRIPT))
  process = subprocess.Popen(  # Its stderr is read only once it has ended: the pipe fills up.
      [sys.executable, str(script), str(tmp_path / "released"), "0", "full stderr"], cwd=REPO,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  try:
    assert process.wait(timeout=30) == 6
  finally:
    process.kill()
    process.communicate()
  assert (tmp_path / "released").read_text() == "released"
