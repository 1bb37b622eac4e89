"""Launchers: fake `gcloud` / `sbatch` / interpreter programs on PATH record what they were asked
to run."""
import json
import os
import shlex
import subprocess
import sys
import textwrap

import pytest

from helpers import REPO
from vit_jax.checkpoints import workdir
from vit_jax.study import launchers, sweep

RECORDER = textwrap.dedent("""\
    #!{python}
    import json, os, sys
    with open(os.environ["FAKE_CALLS"], "a") as f:
      f.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
    if os.path.basename(sys.argv[0]) == "sbatch":
      print("Submitted batch job 4242")
    """)


@pytest.fixture
def fake_bin(tmp_path, monkeypatch):
  """Puts recording `gcloud` and `sbatch` programs first on PATH; returns a reader of their
  calls."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name in ("gcloud", "sbatch"):
    program = bin_dir / name
    program.write_text(RECORDER.format(python=sys.executable))
    program.chmod(0o755)
  calls = tmp_path / "calls.jsonl"
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  monkeypatch.setenv("FAKE_CALLS", str(calls))
  return lambda: ([json.loads(line) for line in calls.read_text().splitlines()]
                  if calls.exists() else [])


@pytest.fixture
def study_file(tmp_path):
  path = tmp_path / "study.py"
  path.write_text(textwrap.dedent("""\
      from vit_jax.study import sweep
      def get_sweep(arg="tiny"):
        points = sweep.product(sweep.axis("variant", ["Ti", "S"]),
                               sweep.axis("config.model.patch_size", [8, 16]))
        return sweep.Study("tradeoff_" + arg, "configs/vit_i1k.py", sweep.trials(points),
                           base_args={"runlocal": True})
      """))
  return path


def _sweep_cli(*args, cwd=REPO):
  return subprocess.run([sys.executable, "-m", "vit_jax.sweep", *map(str, args)], cwd=cwd,
                        capture_output=True, text=True, env=os.environ.copy())


def _mark_done(workdir):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump({"done": True}, f)


def test_tpu_launch_runs_setup_then_every_trial_on_all_workers(fake_bin, study_file, tmp_path):
  root = tmp_path / "bucket"
  _mark_done(root / "variant=Ti,patch_size=8")  # Finished before: a re-launch skips it.
  result = _sweep_cli(study_file, "--launcher=tpu", "--tpu_name=pod", "--zone=us-central2-b",
                      "--project=p1", f"--workdir_root={root}",
                      "--repo_url=https://example.org/vit_jax.git", "--revision=abc123")
  assert result.returncode == 0, result.stderr
  calls = fake_bin()
  assert len(calls) == 1 + 3
  prefix = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod", "--zone=us-central2-b",
            "--project=p1", "--worker=all"]
  for call in calls:
    assert call[:-1] == prefix and call[-1].startswith("--command=")
  setup = calls[0][-1][len("--command="):]
  assert "git clone --quiet https://example.org/vit_jax.git vit_jax" in setup
  assert "git checkout --quiet abc123" in setup and "'jax[tpu]'" in setup and "-e ." in setup
  remote = shlex.split(calls[1][-1][len("--command="):])
  workdir = f"{root}/variant=Ti,patch_size=16"
  assert remote[:3] == ["cd", "vit_jax", "&&"]
  bench_end = remote.index("&&", 3)
  assert remote[3:bench_end] == ["python3", "-m", "vit_jax.bench",
                                 "--config=configs/vit_i1k.py:runlocal=True,variant=Ti",
                                 "--config.model.patch_size=16", f"--output={workdir}/bench.json"]
  assert remote[bench_end + 1:] == ["python3", "-m", "vit_jax.train",
                                    "--config=configs/vit_i1k.py:runlocal=True,variant=Ti",
                                    "--config.model.patch_size=16", f"--workdir={workdir}"]
  manifest = json.loads((root / "sweep.json").read_text())
  assert [t["name"] for t in manifest["trials"]] == ["variant=Ti,patch_size=8",
                                                    "variant=Ti,patch_size=16",
                                                    "variant=S,patch_size=8",
                                                    "variant=S,patch_size=16"]


def test_tpu_dry_run_prints_and_runs_nothing(fake_bin, study_file):
  result = _sweep_cli(study_file, "--launcher=tpu", "--dry_run", "--tpu_name=pod", "--zone=z",
                      "--workdir_root=gs://b/s", "--repo_url=u", "--revision=r")
  assert result.returncode == 0, result.stderr
  assert fake_bin() == []
  printed = [line for line in result.stdout.splitlines() if line.startswith("gcloud ")]
  assert len(printed) == 5
  assert "--workdir=gs://b/s/variant=S,patch_size=16" in shlex.split(
      shlex.split(printed[-1])[-1][len("--command="):])


@pytest.mark.parametrize("flags, message", [
    (["--zone=z", "--workdir_root=gs://b", "--repo_url=u", "--revision=r"], "--tpu_name"),
    (["--tpu_name=t", "--zone=z", "--workdir_root=runs/x", "--repo_url=u", "--revision=r"],
     "runs/x"),
])
def test_tpu_bad_flags_exit_2(fake_bin, study_file, flags, message):
  result = _sweep_cli(study_file, "--launcher=tpu", *flags)
  assert result.returncode == 2 and message in result.stderr and fake_bin() == []


def test_slurm_writes_one_sbatch_script_per_pending_trial(fake_bin, study_file, tmp_path):
  sweep_dir = tmp_path / "sweeps"
  _mark_done(sweep_dir / "variant=S,patch_size=16")
  result = _sweep_cli(study_file, "--launcher=slurm", f"--sweep_dir={sweep_dir}", "--nodes=2",
                      "--gpus_per_node=4", "--partition=gpu", "--time=2:00:00",
                      "--slurm_setup=source .venv/bin/activate")
  assert result.returncode == 0, result.stderr
  calls = fake_bin()
  assert [c[0] for c in calls] == ["sbatch"] * 3
  assert "Submitted batch job 4242" in result.stdout
  script_path = calls[0][1]
  assert script_path == f"{sweep_dir}/variant=Ti,patch_size=8/job.sbatch"
  lines = open(script_path).read().splitlines()
  assert lines[0] == "#!/bin/bash"
  for directive in ["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=4", "--partition=gpu",
                    "--time=2:00:00", "--job-name=tradeoff_tiny/variant=Ti,patch_size=8"]:
    assert f"#SBATCH {directive}" in lines
  assert f"cd {REPO}" in lines and "source .venv/bin/activate" in lines
  srun_lines = [shlex.split(line) for line in lines if line.startswith("srun ")]
  assert [argv[:6] for argv in srun_lines] == [
      ["srun", "--kill-on-bad-exit=1", "python", "-m", "vit_jax.bench",
       "--config=configs/vit_i1k.py:runlocal=True,variant=Ti"],
      ["srun", "--kill-on-bad-exit=1", "python", "-m", "vit_jax.train",
       "--config=configs/vit_i1k.py:runlocal=True,variant=Ti"]]
  assert srun_lines[1][-1] == f"--workdir={sweep_dir}/variant=Ti,patch_size=8"


def test_slurm_dry_run_writes_nothing(fake_bin, study_file, tmp_path):
  result = _sweep_cli(study_file, "--launcher=slurm", "--dry_run", f"--sweep_dir={tmp_path / 's'}")
  assert result.returncode == 0, result.stderr
  assert fake_bin() == [] and not (tmp_path / "s").exists()
  assert result.stdout.count("#SBATCH --gpus-per-node=8") == 4


def test_local_launcher_resumes_a_half_done_sweep(tmp_path, monkeypatch):
  """The interpreter is a recording program: bench writes bench.json; training of patch 16 fails
  once."""
  calls = tmp_path / "calls.jsonl"
  interpreter = tmp_path / "python"
  interpreter.write_text(RECORDER.format(python=sys.executable) + textwrap.dedent("""\
      paths = dict(a[2:].split("=", 1) for a in sys.argv
                   if a.startswith(("--output=", "--workdir=")))
      if sys.argv[2] == "vit_jax.bench":
        open(paths["output"], "w").write("{}")
      elif "patch_size=16" in paths["workdir"] and os.path.exists(os.environ["FAIL_PATCH_16"]):
        sys.exit(3)
      else:
        open(os.path.join(paths["workdir"], "summary.json"), "w").write('{"done": true}')
      """))
  interpreter.chmod(0o755)
  fail_marker = tmp_path / "fail"
  fail_marker.touch()
  monkeypatch.setenv("FAKE_CALLS", str(calls))
  monkeypatch.setenv("FAIL_PATCH_16", str(fail_marker))
  points = sweep.product(sweep.axis("variant", ["Ti", "S"]),
                         sweep.axis("config.model.patch_size", [8, 16]))
  study = sweep.Study("t", "configs/x.py", sweep.trials(points))
  _mark_done(tmp_path / "sweep" / "variant=S,patch_size=8")
  launcher = launchers.LocalLauncher(str(tmp_path / "sweep"), parallel=2, targets=("h100-8x",),
                                     python=str(interpreter))

  def runs():
    recorded = [json.loads(line) for line in calls.read_text().splitlines()]
    calls.unlink()
    return sorted((c[2], next(a for a in c if a.startswith(("--output=", "--workdir=")))
                   .split("/sweep/")[1].split("/")[0]) for c in recorded)

  with pytest.raises(RuntimeError, match="2 of 3 trials failed"):
    launcher.launch(study)
  assert runs() == [("vit_jax.bench", "variant=S,patch_size=16"),
                    ("vit_jax.bench", "variant=Ti,patch_size=16"),
                    ("vit_jax.bench", "variant=Ti,patch_size=8"),
                    ("vit_jax.train", "variant=S,patch_size=16"),
                    ("vit_jax.train", "variant=Ti,patch_size=16"),
                    ("vit_jax.train", "variant=Ti,patch_size=8")]
  assert workdir.Workdir(tmp_path / "sweep" / "variant=Ti,patch_size=8").is_done()

  # Re-launch: only the two unfinished trials train again, and their profiles are not re-measured.
  fail_marker.unlink()
  launcher.launch(study)
  assert runs() == [("vit_jax.train", "variant=S,patch_size=16"),
                    ("vit_jax.train", "variant=Ti,patch_size=16")]
  assert all(workdir.trial_workdir(tmp_path / "sweep", t.name).is_done() for t in study.trials)
