"""SLURM end to end on this machine: fake `sbatch` / `srun` / `scontrol` programs run the job
script the launcher writes, unchanged, as local processes with the environment a real SLURM step
sets, so `jax.distributed.initialize()` configures itself from it. A trial trains on 2 processes
x 2 fake devices, one task is killed, the other one stops itself, the job is resubmitted, it
resumes, and its final params equal a single-process run."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from helpers import REPO, final_params, metric_rows, tiny_config, tiny_config_file, xla_flags
from vit_jax.checkpoints import manager
from vit_jax.training import loop

pytestmark = pytest.mark.slow  # Two 2-process jobs and a reference run.

SBATCH = textwrap.dedent("""\
    #!{python}
    # sbatch: reads the script's #SBATCH directives, starts it detached with a job's environment,
    # prints the job id (--parsable) and returns; a waiter records the job's exit status.
    import os, random, re, socket, subprocess, sys
    script = sys.argv[-1]
    directives = dict(re.findall(r"^#SBATCH --([\\w-]+)(?:=(.*))?$", open(script).read(), re.M))
    nodes, per_node = int(directives.get("nodes", 1)), int(directives.get("ntasks-per-node", 1))
    job = str(random.randint(10**5, 10**6))
    with socket.socket() as s:  # The coordinator's port: JAX_COORDINATOR_PORT, as a site may set.
      s.bind(("localhost", 0))
      port = s.getsockname()[1]
    env = dict(os.environ, SLURM_JOB_ID=job, SLURM_JOB_NAME=directives.get("job-name", ""),
               SLURM_JOB_NODELIST="localhost", SLURM_NODELIST="localhost",
               SLURM_JOB_NUM_NODES=str(nodes), SLURM_NNODES=str(nodes),
               SLURM_NTASKS=str(nodes * per_node), SLURM_NTASKS_PER_NODE=str(per_node),
               JAX_COORDINATOR_PORT=str(port))
    output = directives["output"].replace("%j", job)
    jobs = os.environ["FAKE_SLURM_JOBS"]
    waiter = ("import subprocess, sys; status = subprocess.call(['bash', sys.argv[1]], "
              "stdout=open(sys.argv[2], 'a'), stderr=subprocess.STDOUT); "
              "open(sys.argv[3], 'w').write(str(status))")
    subprocess.Popen([sys.executable, "-c", waiter, script, output, f"{{jobs}}/{{job}}.status"],
                     env=env, start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(job)
    """)

SRUN = textwrap.dedent("""\
    #!{python}
    # srun: one process per task with the step's environment; SIGTERM is forwarded to the tasks.
    # --kill-on-bad-exit=0 (the job script's): the step ends when every task has; its exit code
    # is the highest of the tasks', a task killed by signal N counting as 128 + N. The tasks get
    # FAKE_SRUN_FLAGS appended (a shorter --peer_timeout_seconds, for the test's time).
    import json, os, signal, subprocess, sys
    args = sys.argv[1:]
    assert args.pop(0) == "--kill-on-bad-exit=0", args
    args += os.environ.get("FAKE_SRUN_FLAGS", "").split()
    tasks = int(os.environ["SLURM_NTASKS"])
    procs = [subprocess.Popen(args, env=dict(
        os.environ, SLURM_PROCID=str(i), SLURM_LOCALID=str(i), SLURM_NODEID="0",
        SLURM_STEP_NODELIST="localhost", SLURM_STEP_NUM_TASKS=str(tasks),
        SLURM_STEP_NUM_NODES="1")) for i in range(tasks)]
    with open(f"{{os.environ['FAKE_SLURM_JOBS']}}/{{os.environ['SLURM_JOB_ID']}}.tasks", "a") as f:
      f.write(json.dumps([p.pid for p in procs]) + "\\n")
    signal.signal(signal.SIGTERM, lambda *_: [p.send_signal(signal.SIGTERM) for p in procs])
    codes = [p.wait() for p in procs]
    with open(f"{{os.environ['FAKE_SLURM_JOBS']}}/{{os.environ['SLURM_JOB_ID']}}.codes", "a") as f:
      f.write(json.dumps(codes) + "\\n")
    sys.exit(max(128 - c if c < 0 else c for c in codes))
    """)

SCONTROL = textwrap.dedent("""\
    #!{python}
    import os, sys
    with open(os.path.join(os.environ["FAKE_SLURM_JOBS"], "scontrol.calls"), "a") as f:
      f.write(" ".join(sys.argv[1:]) + "\\n")
    """)


@pytest.fixture
def slurm(tmp_path):
  """A PATH with the fake SLURM programs, and where they keep their jobs."""
  bin_dir, jobs = tmp_path / "bin", tmp_path / "jobs"
  bin_dir.mkdir()
  jobs.mkdir()
  for name, source in (("sbatch", SBATCH), ("srun", SRUN), ("scontrol", SCONTROL)):
    (bin_dir / name).write_text(source.format(python=sys.executable))
    (bin_dir / name).chmod(0o755)
  return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
          "FAKE_SLURM_JOBS": str(jobs), "FAKE_SRUN_FLAGS": "--peer_timeout_seconds=5",
          "XLA_FLAGS": xla_flags(2), "JAX_PLATFORMS": "cpu"}


def _wait_for(predicate, what, timeout=300):
  deadline = time.time() + timeout
  while not predicate():
    assert time.time() < deadline, f"timed out waiting for {what}"
    time.sleep(0.05)


def test_a_slurm_trial_survives_a_killed_task_and_resumes_when_resubmitted(slurm, data_root,
                                                                           tmp_path):
  # Long enough to be killed between checkpoints (a step takes ~10 ms here).
  overrides = dict(total_steps=120, checkpoint_every_steps=40, mesh=(("data", -1),))
  config_file = tiny_config_file(tmp_path / "tiny.py", data_root, **overrides)
  study = tmp_path / "study.py"
  study.write_text("from vit_jax.study import sweep\n\n"
                   "def get_sweep():\n"
                   f"  return sweep.Study('slurm', {str(config_file)!r}, sweep.trials([{{}}]))\n")
  sweep_dir = tmp_path / "sweep"
  trial = sweep_dir / "default"
  trial.mkdir(parents=True)
  (trial / "bench.json").write_text("{}")  # Profiled before: the job only trains.
  jobs = tmp_path / "jobs"

  def submit() -> str:
    result = subprocess.run(
        [sys.executable, "-m", "vit_jax.sweep", str(study), "--launcher=slurm",
         f"--sweep_dir={sweep_dir}", "--nodes=1", "--gpus_per_node=2"],
        cwd=REPO, env=slurm, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split("submitted job ")[1].split()[0]

  def status(job: str) -> int | None:
    path = jobs / f"{job}.status"
    return int(path.read_text()) if path.exists() and path.read_text() else None

  job = submit()
  script = (trial / "job.sbatch").read_text()
  assert "#SBATCH --ntasks-per-node=2" in script and "#SBATCH --gpus-per-node=2" in script
  def past_a_checkpoint() -> bool:
    saved = manager.saved_steps(trial / "checkpoints")
    return bool(saved) and max(r["step"] for r in metric_rows(str(trial))) > saved[-1]
  _wait_for(lambda: past_a_checkpoint() or status(job) is not None, "the first checkpoint")
  assert status(job) is None, (trial / f"slurm-{job}.out").read_text()[-3000:]
  task_pids = json.loads((jobs / f"{job}.tasks").read_text().splitlines()[-1])
  os.kill(task_pids[1], signal.SIGKILL)  # A node's task dies; the other one stops (exit 5).
  _wait_for(lambda: status(job) is not None, "the job to end")
  assert json.loads((jobs / f"{job}.codes").read_text()) == [5, -signal.SIGKILL]
  assert status(job) == 128 + signal.SIGKILL and not (trial / "summary.json").exists()
  # Not requeued: a task killed by a signal (the kernel's OOM killer, say) would be again.
  assert not (jobs / "scontrol.calls").exists()
  assert (trial / "attempts.log").read_text().splitlines() == [
      f"exit {128 + signal.SIGKILL} checkpoint {manager.saved_steps(trial / 'checkpoints')[-1]}"]

  job = submit()  # Resubmitted: resumes from the newest checkpoint.
  _wait_for(lambda: status(job) is not None, "the resubmitted job")
  assert status(job) == 0, (trial / f"slurm-{job}.out").read_text()[-3000:]
  assert json.loads((trial / "summary.json").read_text())["done"]
  steps = [r["step"] for r in metric_rows(str(trial)) if "train/loss" in r]
  assert steps == list(range(1, 121))

  reference = tmp_path / "reference"
  loop.train_and_evaluate(tiny_config(data_root, **overrides), str(reference),
                          devices=jax.devices()[:4])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               final_params(str(trial)), final_params(str(reference)))
