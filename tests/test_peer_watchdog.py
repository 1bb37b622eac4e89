"""The peer watchdog at a clean exit: once JAX's distributed shutdown has returned, its beat thread
has ended and no call to the coordination service is in flight (one returning while Python
finalizes aborts the process after a good run). A real coordination service on localhost; the
watchdog's calls to it are slowed down so that one is nearly always pending at the shutdown."""
import socket
import subprocess
import sys
import textwrap

from helpers import REPO

_SCRIPT = """
import threading, time
import jax
from jax._src import distributed as jax_distributed
from vit_jax.runtime import distributed

jax.distributed.initialize(coordinator_address="localhost:{port}", num_processes=1, process_id=0)

class SlowClient:  # The real client; each call takes 0.5 s, as on a loaded service.
  def __init__(self, client):
    self.client, self.in_flight = client, 0
  def __getattr__(self, name):
    def call(*args):
      self.in_flight += 1
      try:
        time.sleep(0.5)
        return getattr(self.client, name)(*args)
      finally:
        self.in_flight -= 1
    return call

client = SlowClient(jax_distributed.global_state.client)
# Watches a second process that never beats, with a timeout far beyond this script's life.
watchdog = distributed.PeerWatchdog(client, 0, 2, timeout_s=600, exit_code=5, beat_s=0.01)
distributed._stop_beating_after_jax_shutdown(watchdog)
watchdog.start()
time.sleep(1.2)
jax.distributed.shutdown()
beating = [t.name for t in threading.enumerate() if t.name == "peer-beat"]
print(f"in flight {{client.in_flight}}, beat threads {{beating}}")
"""


def test_jax_shutdown_returns_with_no_watchdog_call_in_flight(tmp_path):
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  script = tmp_path / "script.py"
  script.write_text(textwrap.dedent(_SCRIPT.format(port=port)))
  result = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin",
                                            "PYTHONPATH": str(REPO)})
  assert result.returncode == 0, result.stderr[-3000:]
  assert "in flight 0, beat threads []" in result.stdout, result.stdout + result.stderr[-3000:]
