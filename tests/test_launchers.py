"""Launchers: fake `gcloud` / `sbatch` / interpreter programs on PATH record what they were asked
to run."""
import json
import os
import shlex
import subprocess
import sys
import textwrap

from etils import epath
import pytest

from helpers import REPO
from vit_jax.checkpoints import workdir
from vit_jax.study import launchers, sweep

RECORDER = textwrap.dedent("""\
    #!{python}
    import json, os, sys, time
    with open(os.environ["FAKE_CALLS"], "a") as f:
      f.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
    if os.environ.get("FAKE_SLEEP") and "--command=cd " in sys.argv[-1]:  # A trial on a slice.
      start = time.time()
      time.sleep(float(os.environ["FAKE_SLEEP"]))
      with open(os.path.join(os.path.dirname(os.environ["FAKE_CALLS"]), "times.jsonl"), "a") as f:
        f.write(json.dumps({{"slice": sys.argv[5], "start": start, "end": time.time()}}) + "\\n")
    if os.path.basename(sys.argv[0]) == "sbatch":
      print("4242;cluster" if "--parsable" in sys.argv else "Submitted batch job 4242")
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
  assert [c[:2] for c in calls] == [["sbatch", "--parsable"]] * 3
  assert "submitted job 4242" in result.stdout
  script_path = calls[0][2]
  assert script_path == f"{sweep_dir}/variant=Ti,patch_size=8/job.sbatch"
  lines = open(script_path).read().splitlines()
  assert lines[0] == "#!/bin/bash"
  # One process per GPU (what jax.distributed configures from SLURM), requeued when preempted,
  # SIGTERM 5 minutes before the end so the trial checkpoints, and a self-requeue on exit code 3
  # (test_slurm_job_requeues_itself_after_a_stop_and_a_few_failures).
  for directive in ["--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu",
                    "--time=2:00:00", "--job-name=tradeoff_tiny/variant=Ti,patch_size=8",
                    "--requeue", "--signal=TERM@300"]:
    assert f"#SBATCH {directive}" in lines
  assert not any("--gpus-per-task" in line for line in lines)
  assert '  3) scontrol requeue "$SLURM_JOB_ID" ;;' in lines
  assert f"cd {REPO}" in lines and "source .venv/bin/activate" in lines
  bench_line = next(line for line in lines if "vit_jax.bench" in line)
  assert bench_line.startswith(f"test -e {sweep_dir}/variant=Ti,patch_size=8/bench.json || srun ")
  srun_lines = [shlex.split(line.split(" || ")[1] if line.startswith("test -e") else line)
                for line in lines if "srun " in line]
  assert [argv[:6] for argv in srun_lines] == [
      ["srun", "--kill-on-bad-exit=0", "python", "-m", "vit_jax.bench",
       "--config=configs/vit_i1k.py:runlocal=True,variant=Ti"],
      ["srun", "--kill-on-bad-exit=0", "python", "-m", "vit_jax.train",
       "--config=configs/vit_i1k.py:runlocal=True,variant=Ti"]]
  assert srun_lines[1][-1] == f"--workdir={sweep_dir}/variant=Ti,patch_size=8"


def test_slurm_job_requeues_itself_after_a_stop_and_a_few_failures(tmp_path, monkeypatch):
  """The job script written for a trial, run by bash with an `srun` that exits with the code the
  test gives and an `scontrol` that records its calls: a checkpointed stop (3) always requeues;
  a lost or stalled process (5 / 6) requeues until `failed_attempts` attempts in a row ended so at
  one checkpoint; a new checkpoint starts the count again; other failures never requeue."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "srun").write_text('#!/bin/sh\nexit "$(cat "$FAKE_EXIT")"\n')
  (bin_dir / "scontrol").write_text('#!/bin/sh\necho "$@" >> "$FAKE_CALLS"\n')
  for program in bin_dir.iterdir():
    program.chmod(0o755)
  calls, exit_code = tmp_path / "scontrol.calls", tmp_path / "exit"
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  monkeypatch.setenv("FAKE_CALLS", str(calls))
  monkeypatch.setenv("FAKE_EXIT", str(exit_code))
  monkeypatch.setenv("SLURM_JOB_ID", "77")
  launcher = launchers.SlurmLauncher(str(tmp_path / "sweep"), repo_dir=str(REPO),
                                     failed_attempts=2)
  study = sweep.Study("s", "configs/x.py", sweep.trials([{}]))
  trial = workdir.trial_workdir(tmp_path / "sweep", study.trials[0].name)
  trial.bench.parent.mkdir(parents=True)
  trial.bench.write_text("{}")
  script = tmp_path / "job.sbatch"
  script.write_text(launcher.script(study, study.trials[0]))

  def attempt(code: int) -> bool:
    """Runs the job once; whether it requeued itself."""
    exit_code.write_text(str(code))
    before = calls.read_text() if calls.exists() else ""
    assert subprocess.run(["bash", str(script)]).returncode == code
    after = calls.read_text() if calls.exists() else ""
    assert after[len(before):] in ("", "requeue 77\n")
    return after != before

  assert [attempt(c) for c in (6, 5, 6, 3, 1, 2, 4, 0)] == [
      True, False, False, True, False, False, False, False]
  (trial.checkpoints / "200").mkdir(parents=True)  # The run got further: the count starts again.
  (trial.checkpoints / "300.orbax-checkpoint-tmp-1").mkdir()  # Unfinished: not a checkpoint.
  assert [attempt(c) for c in (5, 6)] == [True, False]
  assert trial.attempts.read_text().splitlines()[-3:] == [
      "exit 0 checkpoint none", "exit 5 checkpoint 200", "exit 6 checkpoint 200"]


def test_slurm_dry_run_writes_nothing(fake_bin, study_file, tmp_path):
  result = _sweep_cli(study_file, "--launcher=slurm", "--dry_run", f"--sweep_dir={tmp_path / 's'}")
  assert result.returncode == 0, result.stderr
  assert fake_bin() == [] and not (tmp_path / "s").exists()
  assert result.stdout.count("#SBATCH --gpus-per-node=8") == 4


def _fake_interpreter(tmp_path, monkeypatch, body):
  """A recording `python` program; `body` runs with the --output / --workdir values in `paths`."""
  calls = tmp_path / "calls.jsonl"
  interpreter = tmp_path / "python"
  interpreter.write_text(RECORDER.format(python=sys.executable) + textwrap.dedent("""\
      paths = dict(a[2:].split("=", 1) for a in sys.argv
                   if a.startswith(("--output=", "--workdir=")))
      """) + textwrap.dedent(body))
  interpreter.chmod(0o755)
  monkeypatch.setenv("FAKE_CALLS", str(calls))
  return interpreter, calls


def test_local_launcher_resumes_a_half_done_sweep(tmp_path, monkeypatch):
  """The interpreter is a recording program: bench writes bench.json; training of patch 16 fails
  once."""
  interpreter, calls = _fake_interpreter(tmp_path, monkeypatch, """\
      if sys.argv[2] == "vit_jax.bench":
        open(paths["output"], "w").write("{}")
      elif "patch_size=16" in paths["workdir"] and os.path.exists(os.environ["FAIL_PATCH_16"]):
        sys.exit(3)
      else:
        open(os.path.join(paths["workdir"], "summary.json"), "w").write('{"done": true}')
      """)
  fail_marker = tmp_path / "fail"
  fail_marker.touch()
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


def test_local_launcher_runs_a_lost_or_stalled_training_again_while_it_progresses(
    tmp_path, monkeypatch):
  """Training exits 6 (stalled) on each of its first three attempts. Patch 8 saves a new checkpoint
  each time, so it is run again until it finishes; patch 16 never gets past checkpoint 100, so with
  --failed_attempts=2 it fails after two attempts there."""
  interpreter, calls = _fake_interpreter(tmp_path, monkeypatch, """\
      if sys.argv[2] == "vit_jax.train":
        attempt = sum("vit_jax.train" in line and paths["workdir"] in line
                      for line in open(os.environ["FAKE_CALLS"]))
        step = 100 * attempt if "patch_size=8" in paths["workdir"] else 100
        os.makedirs(os.path.join(paths["workdir"], "checkpoints", str(step)), exist_ok=True)
        if attempt <= 3:
          sys.exit(6)
        open(os.path.join(paths["workdir"], "summary.json"), "w").write('{"done": true}')
      """)
  study = sweep.Study("t", "configs/x.py", sweep.trials(
      sweep.axis("config.model.patch_size", [8, 16])))
  root = tmp_path / "sweep"
  with pytest.raises(RuntimeError, match=r"1 of 2 trials failed: \['patch_size=16'\]"):
    launchers.LocalLauncher(str(root), targets=(), python=str(interpreter),
                            failed_attempts=2).launch(study)
  assert (root / "patch_size=8" / "attempts.log").read_text().splitlines() == [
      "exit 6 checkpoint 100", "exit 6 checkpoint 200", "exit 6 checkpoint 300",
      "exit 0 checkpoint 400"]
  assert (root / "patch_size=16" / "attempts.log").read_text().splitlines() == [
      "exit 6 checkpoint 100", "exit 6 checkpoint 100"]
  assert workdir.Workdir(root / "patch_size=8").is_done()
  assert not workdir.Workdir(root / "patch_size=16").is_done()


def test_local_launcher_measures_a_program_once_for_all_its_seeds(tmp_path, monkeypatch):
  """Trials that differ only in seed run one program: the first seed's bench.json is lent to the
  others instead of measuring again."""
  interpreter, calls = _fake_interpreter(tmp_path, monkeypatch, """\
      if sys.argv[2] == "vit_jax.bench":
        open(paths["output"], "w").write(json.dumps({"measured_by": paths["output"]}))
      else:
        open(os.path.join(paths["workdir"], "summary.json"), "w").write('{"done": true}')
      """)
  study = sweep.Study("t", "configs/x.py", sweep.trials(sweep.product(
      sweep.axis("config.seed", [0, 1, 2]), sweep.axis("config.model.patch_size", [8, 16]))))
  root = tmp_path / "sweep"
  launchers.LocalLauncher(str(root), targets=(), python=str(interpreter)).launch(study)
  benched = sorted(json.loads(line)[-1].split("/sweep/")[1].split("/")[0]
                   for line in calls.read_text().splitlines() if "vit_jax.bench" in line)
  assert benched == ["seed=0,patch_size=16", "seed=0,patch_size=8"]
  for trial in study.trials:
    profile = json.loads((root / trial.name / "bench.json").read_text())
    assert profile["measured_by"].endswith(f"seed=0,{trial.name.split(',')[1]}/bench.json")


def test_slurm_sequential_chains_the_jobs(fake_bin, study_file, tmp_path):
  result = _sweep_cli(study_file, "--launcher=slurm", f"--sweep_dir={tmp_path / 's'}",
                      "--sequential")
  assert result.returncode == 0, result.stderr
  calls = fake_bin()
  assert [c[2] for c in calls] == [
      str(tmp_path / "s" / "variant=Ti,patch_size=8" / "job.sbatch"),
      "--dependency=afterany:4242", "--dependency=afterany:4242", "--dependency=afterany:4242"]


def test_tpu_trials_run_concurrently_one_queue_per_slice(fake_bin, study_file, tmp_path,
                                                          monkeypatch):
  monkeypatch.setenv("FAKE_SLEEP", "0.5")
  root = tmp_path / "bucket"
  (root / "variant=S,patch_size=8").mkdir(parents=True)
  (root / "variant=S,patch_size=8" / "bench.json").write_text("{}")  # Measured before.
  result = _sweep_cli(study_file, "--launcher=tpu", "--tpu_name=pod-a,pod-b", "--zone=z",
                      f"--workdir_root={root}", "--repo_url=u", "--revision=r", "--skip_setup")
  assert result.returncode == 0, result.stderr
  calls = fake_bin()
  slices = {c[5]: [] for c in calls}
  for call in calls:
    slices[call[5]].append(call[-1])
  assert sorted(slices) == ["pod-a", "pod-b"] and [len(v) for v in slices.values()] == [2, 2]
  assert "variant=Ti,patch_size=8" in slices["pod-a"][0]  # Round-robin in study order.
  assert "variant=Ti,patch_size=16" in slices["pod-b"][0]
  s8 = next(cmd for cmds in slices.values() for cmd in cmds if "variant=S,patch_size=8" in cmd)
  assert "vit_jax.bench" not in s8 and "vit_jax.train" in s8
  times = [json.loads(line) for line in (tmp_path / "times.jsonl").read_text().splitlines()]
  by_slice = {name: [t for t in times if t["slice"] == name] for name in ("pod-a", "pod-b")}
  # The two slices' first trials overlap in time.
  a, b = by_slice["pod-a"][0], by_slice["pod-b"][0]
  assert a["start"] < b["end"] and b["start"] < a["end"]


def test_tpu_dry_run_prints_the_gke_workloads(fake_bin, study_file):
  result = _sweep_cli(study_file, "--launcher=tpu", "--dry_run", "--tpu_name=pod", "--zone=z",
                      "--workdir_root=gs://b/s", "--repo_url=u", "--revision=r",
                      "--gke_cluster=c1", "--gke_tpu_type=v5litepod-16", "--gke_topology=4x4",
                      "--gke_hosts=4", "--gke_image=img:1")
  assert result.returncode == 0, result.stderr
  assert fake_bin() == []
  assert result.stdout.count("kind: JobSet") == 4
  assert "cloud.google.com/gke-tpu-accelerator: tpu-v5-lite-podslice" in result.stdout
  assert "cloud.google.com/gke-tpu-topology: 4x4" in result.stdout
  assert "parallelism: 4" in result.stdout and "google.com/tpu: 4" in result.stdout
  xpk = [line for line in result.stdout.splitlines() if line.startswith("# or: xpk ")]
  assert len(xpk) == 4 and "--cluster=c1" in xpk[0] and "--tpu-type=v5litepod-16" in xpk[0]
  assert "--workdir=gs://b/s/variant=Ti,patch_size=8" in xpk[0]


def test_tpu_relaunch_reads_done_and_measured_trials_from_a_bucket(fake_bin, study_file, gcs):
  """On a relaunch, the TPU launcher skips a trial whose gs:// summary says done and does not
  measure again one whose gs:// bench.json exists."""
  root = epath.Path("gs://bucket/tpu_relaunch")
  workdir.trial_workdir(root, "variant=Ti,patch_size=8").write_summary({"done": True})
  (root / "variant=S,patch_size=8").mkdir(parents=True, exist_ok=True)
  (root / "variant=S,patch_size=8" / "bench.json").write_text("{}")
  result = _sweep_cli(study_file, "--launcher=tpu", "--tpu_name=pod", "--zone=z",
                      f"--workdir_root={root}", "--repo_url=u", "--revision=r", "--skip_setup")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "[variant=Ti,patch_size=8] already done, skipped" in result.stdout
  commands = {call[-1].split("--workdir=")[1].split()[0]: call[-1] for call in fake_bin()}
  assert sorted(commands) == [f"{root}/variant=S,patch_size=16", f"{root}/variant=S,patch_size=8",
                              f"{root}/variant=Ti,patch_size=16"]
  assert "vit_jax.bench" not in commands[f"{root}/variant=S,patch_size=8"]
  assert "vit_jax.bench" in commands[f"{root}/variant=Ti,patch_size=16"]
