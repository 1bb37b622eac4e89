"""Launchers: run a study's trials here, on a TPU VM pod slice, or as SLURM jobs.

Every trial runs the same two programs wherever it lands: `vit_jax.bench` (efficiency profile into
`WORKDIR/bench.json`) and then `vit_jax.train` (metrics, checkpoints, `summary.json` with
done=true). A trial whose `summary.json` says done is skipped, so re-launching a sweep resumes it; a
trial that stopped half-way resumes from its own checkpoints. The sweep's manifest (`sweep.json`,
written by `python -m vit_jax.sweep` before launching) records the study for the report.
"""
from __future__ import annotations

from collections.abc import Sequence
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import threading

from etils import epath

from vit_jax.checkpoints import workdir as workdir_lib
from vit_jax.checkpoints.workdir import Workdir
from vit_jax.study.sweep import Study, Trial, without_seed

TPU_CHIPS_PER_HOST = 4  # v4, v5e, v5p and v6e hosts each hold 4 chips.
# Projection targets the local launcher profiles every trial for (vit_jax.efficiency.projection).
DEFAULT_TARGETS = ("tpu-v3-8", "tpu-v4-32", "tpu-v5e-16", "tpu-v5p-32", "a100-8x", "h100-8x",
                   "h200-8x")


def _check_failed_attempts(failed_attempts: int) -> None:
  if failed_attempts < 1:
    raise ValueError(f"--failed_attempts={failed_attempts}: give the number of attempts in a row "
                     "that may end lost or stalled at one checkpoint, >= 1.")


def _run_again(workdir: Workdir, exit_code: int, failed_attempts: int) -> bool:
  """Appends `exit N checkpoint S` (S: the newest checkpoint step, or none) to WORKDIR/attempts.log,
  as the SLURM script does, and says whether a training that lost a process or stalled (exit 5 /
  6) runs again: yes unless its last `failed_attempts` attempts all ended so at this checkpoint."""
  steps = ([int(p.name) for p in workdir.checkpoints.iterdir() if p.name.isdigit()]
           if workdir.checkpoints.exists() else [])
  newest = str(max(steps)) if steps else "none"
  # Rewritten rather than appended: a bucket object cannot be appended to.
  attempts = workdir.attempts.read_text().splitlines() if workdir.attempts.exists() else []
  attempts.append(f"exit {exit_code} checkpoint {newest}")
  workdir.attempts.write_text("\n".join(attempts) + "\n")
  stuck = {f"exit {code} checkpoint {newest}" for code in (5, 6)}
  return (exit_code in (5, 6)
          and sum(line in stuck for line in attempts[-failed_attempts:]) < failed_attempts)


def trial_workdir(root: str, trial: Trial) -> Workdir:
  return workdir_lib.trial_workdir(root, trial.name)


def _with_env(study: Study, command: Sequence[str]) -> str:
  """`K=V ... command` as one shell line."""
  return shlex.join([*(f"{k}={v}" for k, v in study.env.items()), *command])


def bench_args(study: Study, trial: Trial, workdir: Workdir,
               extra: Sequence[str] = ()) -> list[str]:
  return ["-m", "vit_jax.bench", *study.train_args(trial), f"--output={workdir.bench}", *extra]


def train_args(study: Study, trial: Trial, workdir: Workdir) -> list[str]:
  return ["-m", "vit_jax.train", *study.train_args(trial), f"--workdir={workdir}"]


class TrialsStopped(RuntimeError):
  """The launcher was asked to stop; its running trials were stopped (resumably) and waited for."""


class TrialsFailed(RuntimeError):
  """Some trials exited with an error; their logs say why."""


class _Children:
  """The trial processes running now; a SIGTERM / SIGINT to the launcher is forwarded to each
  once (a trial's `vit_jax.train` saves a checkpoint and stops), and no new program starts.

  Trials run in their own process group, so a Ctrl-C in the terminal reaches only the launcher,
  which forwards it exactly once (a second SIGINT would make a trial abort without saving).
  """

  def __init__(self):
    self.signal_name: str | None = None
    self._running: set[subprocess.Popen] = set()
    self._guard = threading.Lock()
    self._previous = {}

  def __enter__(self) -> "_Children":
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._forward)
    return self

  def __exit__(self, *_) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _forward(self, signum, frame) -> None:
    del frame
    with self._guard:
      if self.signal_name is None:
        self.signal_name = signal.Signals(signum).name
        print(f"{self.signal_name}: stopping the running trials (each saves a checkpoint)...",
              flush=True)
        for process in self._running:
          process.send_signal(signum)

  def run(self, command: Sequence[str], log: epath.Path, env: dict[str, str]) -> int | None:
    """Runs `command` with its output appended to `log` (streamed to a local file; a remote log,
    which cannot be appended to, is rewritten with it when the command ends). None: not started
    because the launcher is stopping."""
    remote = workdir_lib.is_remote(log)
    with contextlib.ExitStack() as stack:
      output = subprocess.PIPE if remote else stack.enter_context(log.open("a"))
      with self._guard:
        if self.signal_name is not None:
          return None
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
        self._running.add(process)
      captured, _ = process.communicate()
      with self._guard:
        self._running.discard(process)
    if remote:
      log.write_bytes((log.read_bytes() if log.exists() else b"") + captured)
    return process.returncode


@dataclasses.dataclass
class LocalLauncher:
  """Runs trials on this machine, `parallel` at a time, each in `sweep_dir/<trial name>`.

  A training that lost a process or stalled (exit 5 / 6: a hung read or collective) runs again
  from its checkpoints, as the SLURM launcher's requeue does, unless its last `failed_attempts`
  attempts all ended that way at the same checkpoint; every attempt is recorded in
  WORKDIR/attempts.log.
  """
  sweep_dir: str
  parallel: int = 1
  dry_run: bool = False
  targets: Sequence[str] = DEFAULT_TARGETS
  python: str = sys.executable
  failed_attempts: int = 3

  def __post_init__(self):
    if self.parallel < 1:
      raise ValueError(f"--parallel={self.parallel}: run at least one trial at a time.")
    _check_failed_attempts(self.failed_attempts)
    # The trial programs run from the repository root: a local sweep dir is made absolute.
    self.sweep_dir = str(workdir_lib.resolve(self.sweep_dir))

  def commands(self, study: Study, trial: Trial) -> list[list[str]]:
    workdir = trial_workdir(self.sweep_dir, trial)
    commands = []
    if not workdir.bench.exists():
      targets = [f"--targets={','.join(self.targets)}"] if self.targets else []
      commands.append([self.python, *bench_args(study, trial, workdir, targets)])
    commands.append([self.python, *train_args(study, trial, workdir)])
    return commands

  def _reuse_seed_sibling_profile(self, study: Study, trial: Trial) -> None:
    """A trial's program does not depend on its seed: a measured sibling that differs only in
    `seed` lends its bench.json instead of measuring the same program again."""
    workdir = trial_workdir(self.sweep_dir, trial)
    if workdir.bench.exists():
      return
    key = without_seed(trial.name)
    for other in study.trials:
      source = trial_workdir(self.sweep_dir, other).bench
      if other.name != trial.name and without_seed(other.name) == key and source.exists():
        workdir.bench.write_bytes(source.read_bytes())
        print(f"[{trial.name}] bench: the profile of {other.name} (differs only in seed)",
              flush=True)
        return

  def _run_trial(self, study: Study, trial: Trial, children: _Children) -> int:
    if children.signal_name:  # Stopping: leave a trial that never started untouched.
      return 0
    workdir = trial_workdir(self.sweep_dir, trial)
    workdir.root.mkdir(parents=True, exist_ok=True)
    self._reuse_seed_sibling_profile(study, trial)
    for command in self.commands(study, trial):
      program = command[2].rsplit(".", 1)[-1]
      print(f"[{trial.name}] {program}: {_with_env(study, command)}", flush=True)
      while True:
        returncode = children.run(command, workdir.log(program), {**os.environ, **study.env})
        if (returncode is None or children.signal_name or program != "train"
            or not _run_again(workdir, returncode, self.failed_attempts)):
          break
        print(f"[{trial.name}] train exited {returncode} (a process was lost or stalled); running "
              "it again from its checkpoints", flush=True)
      if returncode is None or children.signal_name:
        print(f"[{trial.name}] stopped", flush=True)
        return 0
      if returncode:
        print(f"[{trial.name}] {program} failed with exit code {returncode}; see "
              f"{workdir.log(program)}", flush=True)
        return returncode
    print(f"[{trial.name}] done", flush=True)
    return 0

  def launch(self, study: Study) -> None:
    pending = [t for t in study.trials if not trial_workdir(self.sweep_dir, t).is_done()]
    for trial in study.trials:
      if trial not in pending:
        print(f"[{trial.name}] already done, skipped")
    if self.dry_run:
      for trial in pending:
        for command in self.commands(study, trial):
          print(_with_env(study, command))
      return
    with _Children() as children:
      with concurrent.futures.ThreadPoolExecutor(self.parallel) as pool:
        codes = list(pool.map(lambda t: self._run_trial(study, t, children), pending))
    if children.signal_name:
      raise TrialsStopped(f"Stopped by {children.signal_name}: the running trials saved a "
                          "checkpoint and stopped. Re-launch the same command to resume the "
                          "sweep.")
    failed = [t.name for t, code in zip(pending, codes) if code]
    if failed:
      raise TrialsFailed(f"{len(failed)} of {len(pending)} trials failed: {failed}. "
                         "Fix and re-launch: finished trials are skipped.")
    print(f"all {len(study.trials)} trials done; report: python -m vit_jax.report {self.sweep_dir}")


@dataclasses.dataclass
class TpuLauncher:
  """Runs a study's trials on TPU VM pod slices, every worker of a slice running the same program.

  Trials run concurrently, one queue per slice (`tpu_names`, e.g. "pod-a,pod-b"): each slice runs
  its trials one after another. Setup clones `repo_url` at `revision` on every worker and installs
  it with `jax[tpu]`; each trial is one `gcloud compute tpus tpu-vm ssh --worker=all` call, so the
  slice's hosts form one `jax.distributed` job writing to a bucket (or a mount every worker sees).
  A trial whose slice was preempted resumes from its checkpoints when the study is launched again;
  a finished trial (summary.json) is skipped and a measured one (bench.json) is not measured again.
  The dry run also prints, per trial, the equivalent GKE workload (a JobSet and an xpk command).
  """
  tpu_names: Sequence[str]
  zone: str
  workdir_root: str
  repo_url: str
  revision: str
  project: str | None = None
  remote_dir: str = "vit_jax"
  skip_setup: bool = False
  dry_run: bool = False
  gke: GkeWorkload | None = None

  def __post_init__(self):
    self.tpu_names = [name for name in self.tpu_names if name]
    for flag, value in (("--tpu_name", self.tpu_names), ("--zone", self.zone),
                        ("--repo_url", self.repo_url), ("--revision", self.revision)):
      if not value:
        raise ValueError(f"{flag} is required for --launcher=tpu.")
    if not (workdir_lib.is_remote(self.workdir_root) or os.path.isabs(self.workdir_root)):
      raise ValueError(f"--workdir_root={self.workdir_root!r}: every TPU worker must see it; "
                       "use a bucket path such as gs://my-bucket/sweeps "
                       "(or an absolute path on a shared mount).")

  def ssh(self, tpu_name: str, remote_command: str) -> list[str]:
    """`gcloud ... ssh` running `remote_command` on every worker of slice `tpu_name`."""
    project = [f"--project={self.project}"] if self.project else []
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu_name, f"--zone={self.zone}",
            *project, "--worker=all", f"--command={remote_command}"]

  def setup_command(self, tpu_name: str) -> list[str]:
    repo, rev, dst = (shlex.quote(x) for x in (self.repo_url, self.revision, self.remote_dir))
    return self.ssh(tpu_name, f"(test -d {dst} || git clone --quiet {repo} {dst}) && cd {dst} && "
                              f"git fetch --quiet origin && git checkout --quiet {rev} && "
                              "python3 -m pip install --quiet -U 'jax[tpu]' -e .")

  def remote_command(self, study: Study, trial: Trial, *, bench: bool = True) -> str:
    """What every worker of a slice runs for `trial` (from its checkout)."""
    workdir = trial_workdir(self.workdir_root, trial)
    steps = [_with_env(study, ["python3", *train_args(study, trial, workdir)])]
    if bench:
      steps.insert(0, _with_env(study, ["python3", *bench_args(study, trial, workdir)]))
    return f"cd {shlex.quote(self.remote_dir)} && " + " && ".join(steps)

  def queues(self, trials: Sequence[Trial]) -> dict[str, list[Trial]]:
    """Trials dealt round-robin over the slices."""
    return {name: list(trials[i::len(self.tpu_names)]) for i, name in enumerate(self.tpu_names)}

  def _run_queue(self, study: Study, tpu_name: str, trials: Sequence[Trial]) -> list[str]:
    """Sets up one slice and runs its trials in turn; returns the names of the failed ones."""
    if not self.skip_setup and subprocess.run(self.setup_command(tpu_name)).returncode:
      return [t.name for t in trials]
    failed = []
    for trial in trials:
      bench = not trial_workdir(self.workdir_root, trial).bench.exists()
      command = self.ssh(tpu_name, self.remote_command(study, trial, bench=bench))
      print(f"[{trial.name}] on {tpu_name}: {shlex.join(command)}", flush=True)
      if subprocess.run(command).returncode:
        failed.append(trial.name)
    return failed

  def launch(self, study: Study) -> None:
    if self.dry_run:  # Never touches the bucket.
      for tpu_name, trials in self.queues(study.trials).items():
        if not self.skip_setup:
          print(shlex.join(self.setup_command(tpu_name)))
        for trial in trials:
          print(shlex.join(self.ssh(tpu_name, self.remote_command(study, trial))))
      if self.gke is not None:
        for trial in study.trials:
          print(self.gke.describe(study, trial, self.remote_command(study, trial)))
      return
    pending = []
    for trial in study.trials:
      if trial_workdir(self.workdir_root, trial).is_done():
        print(f"[{trial.name}] already done, skipped")
      else:
        pending.append(trial)
    queues = self.queues(pending)
    with concurrent.futures.ThreadPoolExecutor(len(queues)) as pool:
      failed = sum(pool.map(lambda item: self._run_queue(study, *item), queues.items()), [])
    if failed:
      raise TrialsFailed(f"{len(failed)} of {len(pending)} trials failed: {failed}. Fix (or wait "
                         "for the preempted slices to come back) and re-launch: finished trials "
                         "are skipped, the others resume from their checkpoints.")


@dataclasses.dataclass(frozen=True)
class GkeWorkload:
  """The GKE form of a TPU trial, for users whose slices are GKE node pools: a JobSet with one
  indexed Job of `hosts` pods (JAX finds its peers through the JobSet's DNS), and the equivalent
  `xpk workload create` command."""
  cluster: str
  tpu_type: str  # e.g. v5litepod-16
  topology: str  # e.g. 4x4
  hosts: int  # VMs of the slice
  image: str  # a container with this repository installed

  def _name(self, study: Study, trial: Trial) -> str:
    name = "".join(c if c.isalnum() else "-" for c in f"{study.name}-{trial.name}".lower())
    return name.strip("-")[:40].strip("-")

  def jobset(self, study: Study, trial: Trial, command: str) -> str:
    accelerator = {"v5litepod": "tpu-v5-lite-podslice", "v5p": "tpu-v5p-slice",
                   "v6e": "tpu-v6e-slice", "v4": "tpu-v4-podslice"}.get(
                       self.tpu_type.split("-")[0], self.tpu_type)
    return textwrap.dedent(f"""\
        apiVersion: jobset.x-k8s.io/v1alpha2
        kind: JobSet
        metadata:
          name: {self._name(study, trial)}
          annotations:
            alpha.jobset.sigs.k8s.io/exclusive-topology: cloud.google.com/gke-nodepool
        spec:
          failurePolicy:
            maxRestarts: 4   # A preempted slice restarts the trial, which resumes.
          replicatedJobs:
          - name: slice
            replicas: 1
            template:
              spec:
                parallelism: {self.hosts}
                completions: {self.hosts}
                backoffLimit: 0
                template:
                  spec:
                    nodeSelector:
                      cloud.google.com/gke-tpu-accelerator: {accelerator}
                      cloud.google.com/gke-tpu-topology: {self.topology}
                    restartPolicy: Never
                    containers:
                    - name: trial
                      image: {self.image}
                      command: ["bash", "-c", {json.dumps(command)}]
                      resources:
                        limits:
                          google.com/tpu: {TPU_CHIPS_PER_HOST}
        """)

  def xpk(self, study: Study, trial: Trial, command: str) -> str:
    return shlex.join(["xpk", "workload", "create", f"--cluster={self.cluster}",
                       f"--workload={self._name(study, trial)}", f"--tpu-type={self.tpu_type}",
                       "--num-slices=1", f"--docker-image={self.image}", f"--command={command}"])

  def describe(self, study: Study, trial: Trial, command: str) -> str:
    return (f"# [{trial.name}] on GKE: kubectl apply -f - <<'EOF'\n"
            f"{self.jobset(study, trial, command)}EOF\n# or: {self.xpk(study, trial, command)}\n")


@dataclasses.dataclass
class SlurmLauncher:
  """Submits one sbatch job per trial: `nodes` nodes with one process per GPU (srun).

  One process per GPU because that is what `jax.distributed.initialize()` configures from SLURM's
  environment: each task is given the GPU numbered SLURM_LOCALID (with one task per node, a node's
  other GPUs would sit idle). Every task sees the node's GPUs (`--gpus-per-node`, not
  `--gpus-per-task`, which would renumber each task's single GPU to 0).

  Preemption and time limits: the job asks for SIGTERM `signal_lead_s` seconds before it is
  stopped (`--signal`), on which the trial saves a checkpoint and exits 3; the script then requeues
  itself (`scontrol requeue`) and `--requeue` lets SLURM requeue it after a preemption, so the trial
  resumes from its checkpoints. A run that lost a process or stalled (exit 5 / 6: a node died or
  hung) is requeued too, unless its last `failed_attempts` attempts all ended that way at the same
  checkpoint (a fault that a rerun does not clear); each attempt's exit code and newest checkpoint
  step are appended to WORKDIR/attempts.log. srun waits for every task (--kill-on-bad-exit=0): the
  processes stop one another (vit_jax.runtime.distributed), and killing the others at the first
  non-zero exit would cut a stop mid-save and hide its exit code behind a signal's (srun exits with
  the highest of its tasks' codes, 128 + N for one killed by signal N). `sequential` chains the
  trials' jobs (`--dependency=afterany`) so that they run one after another instead of competing
  for the allocation. The sweep dir must be on a filesystem every node sees (sbatch reads each
  job's script and writes its log there: not a bucket).
  """
  sweep_dir: str
  repo_dir: str
  nodes: int = 1
  gpus_per_node: int = 8
  time: str = "24:00:00"
  partition: str | None = None
  account: str | None = None
  cpus_per_task: int | None = None
  setup: str = ""
  signal_lead_s: int = 300
  failed_attempts: int = 3
  sequential: bool = False
  dry_run: bool = False

  def __post_init__(self):
    if self.nodes < 1 or self.gpus_per_node < 1:
      raise ValueError(f"--nodes={self.nodes} --gpus_per_node={self.gpus_per_node}: "
                       "both must be >= 1.")
    _check_failed_attempts(self.failed_attempts)
    if workdir_lib.is_remote(self.sweep_dir):
      raise ValueError(f"--sweep_dir={self.sweep_dir}: SLURM reads each job's script and writes "
                       "its log on a filesystem, not in a bucket; give a directory every node "
                       "mounts (the trials' data may stay in the bucket).")
    self.sweep_dir = str(workdir_lib.resolve(self.sweep_dir))
    self.repo_dir = str(workdir_lib.resolve(self.repo_dir))  # A local checkout, by definition.

  def script(self, study: Study, trial: Trial) -> str:
    workdir = trial_workdir(self.sweep_dir, trial)
    options = {
        "job-name": f"{study.name}/{trial.name}", "nodes": self.nodes,
        "ntasks-per-node": self.gpus_per_node, "gpus-per-node": self.gpus_per_node,
        "time": self.time, "output": str(workdir.slurm_output), "open-mode": "append",
        "requeue": True, "signal": f"TERM@{self.signal_lead_s}", "partition": self.partition,
        "account": self.account, "cpus-per-task": self.cpus_per_task,
    }
    lines = ["#!/bin/bash"]
    lines += [f"#SBATCH --{k}" if v is True else f"#SBATCH --{k}={v}"
              for k, v in options.items() if v is not None]
    lines += ["set -uo pipefail", f"cd {shlex.quote(self.repo_dir)}"]
    if self.setup:
      lines.append(self.setup)
    lines += [f"export {k}={shlex.quote(v)}" for k, v in study.env.items()]
    srun = ["srun", "--kill-on-bad-exit=0", "python"]  # Over a site's KillOnBadExit=1.
    # Measured once, by the first attempt (the job runs again whole when it is requeued).
    lines.append(f"test -e {shlex.quote(str(workdir.bench))} || "
                 f"{shlex.join([*srun, *bench_args(study, trial, workdir)])} || exit $?")
    lines.append(shlex.join([*srun, *train_args(study, trial, workdir)]))
    checkpoints, attempts = (shlex.quote(str(p)) for p in (workdir.checkpoints, workdir.attempts))
    n = self.failed_attempts
    lines += [
        "status=$?",
        f"newest=$(ls {checkpoints} 2>/dev/null | grep -xE '[0-9]+' | sort -n | tail -n 1)",
        f'echo "exit $status checkpoint ${{newest:-none}}" >> {attempts}',
        "# 3: stopped by SIGTERM after saving a checkpoint (time limit or preemption ahead).",
        f"# 5 / 6: a process was lost / stalled; again unless the last {n} attempts ended so at "
        "this checkpoint.",
        f'failed=$(tail -n {n} {attempts} | grep -cxE "exit [56] checkpoint ${{newest:-none}}")',
        'case "$status" in',
        '  3) scontrol requeue "$SLURM_JOB_ID" ;;',
        f'  5|6) if [ "$failed" -lt {n} ]; then scontrol requeue "$SLURM_JOB_ID"; fi ;;',
        "esac",
        "exit $status"]
    return "\n".join(lines) + "\n"

  def launch(self, study: Study) -> None:
    previous_job = None
    for trial in study.trials:
      workdir = trial_workdir(self.sweep_dir, trial)
      if workdir.is_done():
        print(f"[{trial.name}] already done, skipped")
        continue
      dependency = ([f"--dependency=afterany:{previous_job}"]
                    if self.sequential and previous_job else [])
      command = ["sbatch", "--parsable", *dependency, str(workdir.slurm_script)]
      if self.dry_run:
        print(f"# {workdir.slurm_script}\n{self.script(study, trial)}{shlex.join(command)}\n")
        previous_job = previous_job or "<job id>"
        continue
      workdir.root.mkdir(parents=True, exist_ok=True)
      workdir.slurm_script.write_text(self.script(study, trial))
      result = subprocess.run(command, check=True, capture_output=True, text=True)
      previous_job = result.stdout.strip().split(";")[0]
      print(f"[{trial.name}] submitted job {previous_job}", flush=True)
