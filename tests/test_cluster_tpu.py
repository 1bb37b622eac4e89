"""TPU pods end to end on this machine: the command the TPU launcher sends to every worker of a
slice runs as 2 local "workers", with the environment a GKE TPU slice gives its hosts (JAX's TPU
cluster detection reads it on CPU processes too), trains, is preempted (SIGTERM to both workers),
and resumes when launched again to the same final params as a single-process run."""
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from helpers import REPO, final_params, metric_rows, tiny_config, tiny_config_file, xla_flags
from vit_jax.checkpoints import manager
from vit_jax.study import launchers, sweep
from vit_jax.training import loop

pytestmark = pytest.mark.slow  # Two 2-worker runs and a reference run.


def _worker_env(worker: int, bin_dir) -> dict[str, str]:
  """What a GKE TPU slice of 2 hosts sets (DESIGN.md); the coordinator listens on port 8482."""
  return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
          "JAX_FORCE_TPU_INIT": "1", "JAX_PLATFORMS": "cpu",
          "TPU_WORKER_HOSTNAMES": "localhost,localhost", "TPU_WORKER_ID": str(worker),
          "MEGASCALE_COORDINATOR_ADDRESS": "localhost", "MEGASCALE_NUM_SLICES": "1",
          "MEGASCALE_SLICE_ID": "0", "XLA_FLAGS": xla_flags(2)}


def test_a_tpu_trial_runs_on_two_workers_is_preempted_and_resumes(data_root, tmp_path):
  overrides = dict(total_steps=120, checkpoint_every_steps=40, mesh=(("data", -1),))
  config_file = tiny_config_file(tmp_path / "tiny.py", data_root, **overrides)
  study = sweep.Study("pod", str(config_file), sweep.trials([{}]))
  launcher = launchers.TpuLauncher(tpu_names=["pod"], zone="z", workdir_root=str(tmp_path / "runs"),
                                   repo_url="u", revision="r", remote_dir=REPO, skip_setup=True)
  command = launcher.remote_command(study, study.trials[0], bench=False)
  assert command.startswith(f"cd {REPO} && python3 -m vit_jax.train ")
  bin_dir = tmp_path / "bin"  # `python3` on the workers is this interpreter.
  bin_dir.mkdir()
  (bin_dir / "python3").symlink_to(sys.executable)
  trial = tmp_path / "runs" / "default"

  def start_workers():
    return [subprocess.Popen(["bash", "-c", command], env=_worker_env(i, bin_dir),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i in range(2)]

  workers = start_workers()
  deadline = time.time() + 300
  while not (manager.saved_steps(trial / "checkpoints") and max(
      r["step"] for r in metric_rows(str(trial))) > manager.saved_steps(trial / "checkpoints")[-1]):
    assert all(w.poll() is None for w in workers), workers[0].communicate()[0][-3000:]
    assert time.time() < deadline
    time.sleep(0.05)
  for worker in workers:  # The slice is preempted: every host gets SIGTERM.
    worker.send_signal(signal.SIGTERM)
  outputs = [w.communicate(timeout=300)[0] for w in workers]
  assert [w.returncode for w in workers] == [3, 3], outputs[0][-3000:] + outputs[1][-3000:]
  stopped_at = manager.saved_steps(trial / "checkpoints")[-1]
  assert all(f"at step {stopped_at} after saving" in out for out in outputs)

  workers = start_workers()  # Launched again: resumes from the checkpoint both saved.
  outputs = [w.communicate(timeout=300)[0] for w in workers]
  assert [w.returncode for w in workers] == [0, 0], outputs[0][-3000:]
  assert trial.joinpath("summary.json").exists()
  reference = tmp_path / "reference"
  loop.train_and_evaluate(tiny_config(data_root, **overrides), str(reference),
                          devices=jax.devices()[:4])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               final_params(str(trial)), final_params(str(reference)))
