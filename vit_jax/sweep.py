r"""Launch a study's trials here, on TPU pod slices or as SLURM jobs.

    python -m vit_jax.sweep experiments/patch_size_tradeoff.py --launcher=local  # re-launch resumes
    python -m vit_jax.sweep experiments/patch_size_tradeoff.py:scale=imagenet,data_dir=gs://B/tfds \
        --launcher=tpu --tpu_name=N1,N2 --zone=Z --workdir_root=gs://B/sweeps --repo_url=URL \
        --dry_run [--gke_cluster=C]
    python -m vit_jax.sweep experiments/patch_size_tradeoff.py --launcher=slurm --nodes=2 --dry_run

Studies are vit_jax.study.sweep.Study objects; launchers are vit_jax.study.launchers.
"""
import os
import subprocess
import sys
from typing import Sequence

from absl import flags

from vit_jax import cli
from vit_jax.config import bad_input
from vit_jax.study import launchers, sweep

_LAUNCHER = flags.DEFINE_enum("launcher", "local", ["local", "tpu", "slurm"],
                              "Where the trials run.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False,
                             "Print the commands (and sbatch scripts) instead of running them.")
_SWEEP_DIR = flags.DEFINE_string(
    "sweep_dir", None, "Trials' parent dir (local/slurm). Default: runs/sweeps/<study>.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "local: trials run at once.")
_ONLY = flags.DEFINE_multi_string(
    "only", None, "Run only the trials whose name matches one of these regular expressions "
    "(searched in the name, e.g. --only='patch=14$'; repeat the flag for several).")
_MAX_TRIALS = flags.DEFINE_integer(
    "max_trials", None, "Run at most this many trials: the first ones, in the study's order, "
    "after --only.")
_TARGETS = flags.DEFINE_list("targets", list(launchers.DEFAULT_TARGETS),
                             "local: hardware each trial is projected onto.")
_TPU_NAME = flags.DEFINE_list(
    "tpu_name", [], "tpu: TPU VM slice name(s); trials run concurrently, one queue per slice.")
_ZONE = flags.DEFINE_string("zone", None, "tpu: its zone, e.g. us-central2-b.")
_PROJECT = flags.DEFINE_string("project", None, "tpu: GCP project (default: gcloud's).")
_WORKDIR_ROOT = flags.DEFINE_string(
    "workdir_root", None, "tpu: bucket path (gs://...) or shared mount the trials write to.")
_REPO_URL = flags.DEFINE_string(
    "repo_url", None, "tpu: git URL workers clone (default: this checkout's origin).")
_REVISION = flags.DEFINE_string(
    "revision", None, "tpu: commit workers check out (default: this checkout's HEAD).")
_SKIP_SETUP = flags.DEFINE_bool("skip_setup", False,
                                "tpu: the workers already have the code installed.")
_NODES = flags.DEFINE_integer("nodes", 1, "slurm: nodes per trial.")
_GPUS_PER_NODE = flags.DEFINE_integer("gpus_per_node", 8, "slurm: GPUs per node.")
_TIME = flags.DEFINE_string("time", "24:00:00", "slurm: job time limit.")
_PARTITION = flags.DEFINE_string("partition", None, "slurm: partition.")
_ACCOUNT = flags.DEFINE_string("account", None, "slurm: account.")
_SLURM_SETUP = flags.DEFINE_string(
    "slurm_setup", "", "slurm: shell line run before the trial, e.g. 'source .venv/bin/activate'.")
_SIGNAL_LEAD = flags.DEFINE_integer(
    "signal_lead_s", 300, "slurm: seconds before a time limit / preemption the job gets SIGTERM.")
_FAILED_ATTEMPTS = flags.DEFINE_integer(
    "failed_attempts", 3, "local, slurm: a training that lost a process or stalled (exit 5 / "
    "6) runs again (slurm: its job requeues itself) unless its last this many attempts ended so "
    "at the same checkpoint.")
_SEQUENTIAL = flags.DEFINE_bool(
    "sequential", False, "slurm: chain the trials' jobs (--dependency=afterany) to run in turn.")
_GKE_CLUSTER = flags.DEFINE_string(
    "gke_cluster", None, "tpu --dry_run: also print each trial as a GKE JobSet and an xpk command "
    "for this GKE cluster.")
_GKE_TPU_TYPE = flags.DEFINE_string("gke_tpu_type", "v5litepod-16", "gke: TPU type of a slice.")
_GKE_TOPOLOGY = flags.DEFINE_string("gke_topology", "4x4", "gke: the slice's TPU topology.")
_GKE_HOSTS = flags.DEFINE_integer("gke_hosts", 4, "gke: VMs (pods) per slice.")
_GKE_IMAGE = flags.DEFINE_string(
    "gke_image", "gcr.io/PROJECT/vit_jax:latest", "gke: a container image with vit_jax installed.")


def _git(*args: str) -> str:
  result = subprocess.run(["git", *args], capture_output=True, text=True)
  return result.stdout.strip() if result.returncode == 0 else ""


def _sweep_dir(study: sweep.Study) -> str:
  """Where the trials' workdirs and the manifest go."""
  if _LAUNCHER.value == "tpu":
    return _WORKDIR_ROOT.value or ""
  return _SWEEP_DIR.value or sweep.default_sweep_dir(study.name)


def _launcher(study: sweep.Study):
  """The launcher the command-line flags describe."""
  sweep_dir = _sweep_dir(study)
  if _LAUNCHER.value == "local":
    return launchers.LocalLauncher(sweep_dir, parallel=_PARALLEL.value, dry_run=_DRY_RUN.value,
                                   targets=_TARGETS.value, failed_attempts=_FAILED_ATTEMPTS.value)
  if _LAUNCHER.value == "tpu":
    gke = (launchers.GkeWorkload(_GKE_CLUSTER.value, _GKE_TPU_TYPE.value, _GKE_TOPOLOGY.value,
                                 _GKE_HOSTS.value, _GKE_IMAGE.value)
           if _GKE_CLUSTER.value else None)
    return launchers.TpuLauncher(
        tpu_names=_TPU_NAME.value, zone=_ZONE.value, project=_PROJECT.value,
        workdir_root=sweep_dir, repo_url=_REPO_URL.value or _git("remote", "get-url", "origin"),
        revision=_REVISION.value or _git("rev-parse", "HEAD"), skip_setup=_SKIP_SETUP.value,
        dry_run=_DRY_RUN.value, gke=gke)
  return launchers.SlurmLauncher(
      sweep_dir, repo_dir=os.getcwd(), nodes=_NODES.value, gpus_per_node=_GPUS_PER_NODE.value,
      time=_TIME.value, partition=_PARTITION.value, account=_ACCOUNT.value,
      setup=_SLURM_SETUP.value, signal_lead_s=_SIGNAL_LEAD.value,
      failed_attempts=_FAILED_ATTEMPTS.value, sequential=_SEQUENTIAL.value,
      dry_run=_DRY_RUN.value)


def main(argv: Sequence[str]) -> None:
  """Loads the study named by the one positional argument and hands it to the chosen launcher."""
  with bad_input():
    if len(argv) != 2:
      raise ValueError(f"expected one study file, got {list(argv[1:])}; usage: python -m "
                       "vit_jax.sweep experiments/<study>.py[:arg] --launcher=local|tpu|slurm "
                       "[--dry_run]")
    study = sweep.load_study(argv[1], _ONLY.value, _MAX_TRIALS.value)
    launcher = _launcher(study)
    if not _DRY_RUN.value:  # Refuses a sweep dir whose trials ran with other flags.
      sweep.write_manifest(study, _sweep_dir(study))
  print(f"study {study.name!r}: {len(study.trials)} trials, launcher {_LAUNCHER.value}"
        f"{' (dry run)' if _DRY_RUN.value else ''}", flush=True)
  try:
    launcher.launch(study)
  except launchers.TrialsStopped as e:
    print(e, file=sys.stderr)
    sys.exit(cli.EXIT_STOPPED)
  except launchers.TrialsFailed as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  cli.run(main)
