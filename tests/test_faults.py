"""Faults a run left alone overnight must survive without losing or faking results: divergence,
a changed recipe on resume, a second run on the same workdir, a damaged checkpoint, a finished run
started again, a kill without a checkpoint, a full disk, a read that never returns, and a stopped
sweep."""
import errno
import gc
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from helpers import (
  REPO,
  TOTAL_STEPS,
  final_params,
  metric_rows,
  stop_at_step,
  tiny_config,
  tiny_config_file,
  xla_flags,
)
from vit_jax.checkpoints import manager
from vit_jax.config import BadInputError
from vit_jax.training import evaluation, loop, metrics

pytestmark = pytest.mark.slow  # Training runs.

ONE_DEVICE = jax.devices()[:1]


def _train(config, workdir, **kwargs):
  return loop.train_and_evaluate(config, str(workdir), devices=ONE_DEVICE, **kwargs)


def _snapshot(root) -> dict[str, str]:
  """Every file under `root` with a hash of its content."""
  return {os.path.relpath(os.path.join(d, f), root):
          hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
          for d, _, files in os.walk(root) for f in files}


def _saved_steps(workdir) -> list[int]:
  return manager.saved_steps(workdir / "checkpoints")


@pytest.fixture(scope="module")
def finished(data_root, tmp_path_factory):
  """A finished 6-step run (checkpoints at 2, 4, 6) to copy from."""
  workdir = tmp_path_factory.mktemp("finished") / "run"
  final = _train(tiny_config(data_root), workdir)
  return workdir, final


def _copy(finished, tmp_path, *, unfinish: bool = True):
  workdir = tmp_path / "run"
  shutil.copytree(finished[0], workdir)
  if unfinish:
    (workdir / "summary.json").unlink()
  return workdir


def test_rerunning_a_finished_run_changes_nothing(finished, data_root, tmp_path):
  workdir = _copy(finished, tmp_path, unfinish=False)
  before = _snapshot(workdir)
  final = _train(tiny_config(data_root), workdir)
  assert final["already_finished"] and final["val/prec@1"] == finished[1]["val/prec@1"]
  assert _snapshot(workdir) == before


def test_divergence_stops_before_saving_and_keeps_the_last_finite_checkpoint(finished, data_root,
                                                                             tmp_path):
  workdir = _copy(finished, tmp_path)
  shutil.rmtree(workdir / "checkpoints" / "6")  # Resume from step 4 ...
  exploding = tiny_config(data_root, keep_checkpoints=1, checkpoint_every_steps=1)
  exploding.optim.lr = 1e30  # ... with an lr whose step 5 is finite and step 6 overflows.
  with pytest.raises(loop.Diverged, match=r"Training diverged at step 6: loss .* the newest "
                                          r"checkpoint .* is step 5. Lower config.optim.lr"):
    _train(exploding, workdir, accept_config_change=True)
  assert _saved_steps(workdir) == [5]  # Saved while finite; step 6 never was.
  params = final_params(str(workdir))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
  assert not (workdir / "summary.json").exists()


def test_a_changed_recipe_on_resume_is_refused_with_the_changes_named(finished, data_root,
                                                                      tmp_path):
  workdir = _copy(finished, tmp_path)
  shutil.rmtree(workdir / "checkpoints" / "6")
  changed = tiny_config(data_root, total_steps=8)
  changed.optim.lr = 0.2
  before = _snapshot(workdir)
  with pytest.raises(BadInputError, match=r"optim\.lr: 0\.1 -> 0\.2; total_steps: 6 -> 8\. .*"
                                          r"--accept_config_change"):
    _train(changed, workdir)
  assert _snapshot(workdir) == before
  # Where it runs may change: another mesh, data location or eval interval is not a new recipe.
  moved = tiny_config(data_root, mesh=(("data", 1),), log_every_steps=2)
  assert _train(moved, workdir)["step"] == TOTAL_STEPS
  final = _train(changed, tmp_path / "other")  # A new workdir takes any recipe.
  assert final["step"] == 8


def test_another_model_in_the_workdir_is_named_before_compiling(finished, data_root, tmp_path):
  workdir = _copy(finished, tmp_path)
  wider = tiny_config(data_root)
  wider.model.width = 32
  with pytest.raises(BadInputError, match="shape mismatches"):
    _train(wider, workdir, accept_config_change=True)


def test_a_state_no_checkpoint_fits_is_refused_and_every_file_left_in_place(finished, data_root,
                                                                            tmp_path):
  workdir = _copy(finished, tmp_path)
  with_ema = tiny_config(data_root)
  with_ema.ema_decay = 0.999  # The train state gains EMA params none of the checkpoints has.
  before = _snapshot(workdir)
  with pytest.raises(BadInputError, match=r"No checkpoint in .* can be restored onto this run's "
                                          r"train state \(steps 6, 4, 2\); .* Nothing was moved"):
    _train(with_ema, workdir, accept_config_change=True)
  assert _snapshot(workdir) == before  # A rerun resumes as before; nothing restarts at step 0.


def test_a_resume_after_the_image_folder_changed_is_refused_touching_nothing(data_root, tmp_path,
                                                                            monkeypatch):
  folder = tmp_path / "data"
  shutil.copytree(data_root, folder)
  config, workdir = tiny_config(str(folder)), tmp_path / "run"
  with monkeypatch.context() as patch:
    stop_at_step(patch, 3)
    assert _train(config, workdir)["stopped_by"] == "SIGTERM"
  (folder / "train" / "class_0" / "0.png").rename(folder / "train" / "class_0" / "new.png")
  before = _snapshot(workdir)
  with pytest.raises(BadInputError, match="files of imagefolder:train changed since this run"):
    _train(config, workdir)
  assert _snapshot(workdir) == before


def test_a_metrics_line_cut_short_by_a_crash_is_dropped_on_resume(finished, data_root, tmp_path):
  workdir = _copy(finished, tmp_path)
  shutil.rmtree(workdir / "checkpoints" / "6")
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write('{"step": 5, "train/lo')
  assert _train(tiny_config(data_root), workdir)["step"] == TOTAL_STEPS
  assert [r["step"] for r in metric_rows(str(workdir)) if "train/loss" in r] == list(
      range(1, TOTAL_STEPS + 1))
  assert (workdir / "metrics.jsonl").read_text().endswith("}\n")


def test_an_eval_that_fails_keeps_the_checkpoint_of_its_step(data_root, tmp_path, monkeypatch):
  """An eval out of memory at a save step must not cost the training up to it; at the last step,
  the rerun evaluates the saved final state and records it."""
  evaluate_all = evaluation.evaluate_all
  def failing_call(n):
    calls = []
    def evaluate(*args):
      calls.append(args)
      if len(calls) == n:
        raise MemoryError("injected: the eval ran out of host memory")
      return evaluate_all(*args)
    return evaluate
  config = tiny_config(data_root)
  config.evals.val.every_steps = 2
  # Evals at steps 2 and 4 (the second fails), then, resumed from step 4, at step 6 (the first).
  for step, call in ((4, 2), (TOTAL_STEPS, 1)):
    with monkeypatch.context() as patch:
      patch.setattr(evaluation, "evaluate_all", failing_call(call))
      with pytest.raises(MemoryError):
        _train(config, tmp_path)
    assert manager.TrainStateCheckpointer(str(tmp_path / "checkpoints"),
                                          save_every_steps=2).latest_step() == step
  final = _train(config, tmp_path)
  assert final["step"] == TOTAL_STEPS and "val/prec@1" in final
  evals = [r["step"] for r in metric_rows(str(tmp_path)) if "val/prec@1" in r]
  assert evals == [2, TOTAL_STEPS]  # Step 4's eval failed; resumed runs do not repeat it.
  # Stopped after its last evals but before its summary: the rerun evaluates again, one row kept.
  os.remove(tmp_path / "summary.json")
  assert _train(config, tmp_path)["val/prec@1"] == final["val/prec@1"]
  assert [r["step"] for r in metric_rows(str(tmp_path)) if "val/prec@1" in r] == evals


# A truncated file fails one of Orbax's concurrent reads; the reads it abandons are collected here
# (their "exception ignored" notes are expected), not in whichever test runs next.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["truncated data file", "deleted _METADATA",
                                    "deleted data/metadata"])
def test_a_damaged_latest_checkpoint_is_moved_aside_and_the_one_before_restored(
    finished, data_root, tmp_path, caplog, damage):
  workdir = _copy(finished, tmp_path)
  state = workdir / "checkpoints" / "6" / "state"
  if damage == "deleted _METADATA":
    (state / "_METADATA").unlink()
  elif damage == "deleted data/metadata":
    (state.parent / "data" / "metadata").unlink()
  else:
    data_file = max((p for p in state.rglob("*") if p.is_file() and "/d/" in str(p)),
                    key=lambda p: p.stat().st_size)
    data_file.write_bytes(data_file.read_bytes()[:16])
  caplog.set_level(logging.WARNING)
  final = _train(tiny_config(data_root), workdir)
  assert final["step"] == TOTAL_STEPS
  assert any("Checkpoint step 6" in r.getMessage() and "6.damaged" in r.getMessage()
             for r in caplog.records)
  assert (workdir / "checkpoints" / "6.damaged").is_dir()  # Kept for inspection ...
  assert _saved_steps(workdir)[-1] == 6  # ... and step 6 trained again from step 4, exactly.
  jax.tree.map(np.testing.assert_array_equal, final_params(str(workdir)),
               final_params(str(finished[0])))
  gc.collect()


def test_a_full_disk_stops_with_one_message_and_keeps_what_was_committed(data_root, tmp_path,
                                                                         monkeypatch):
  write = metrics.MetricsWriter.write

  def write_until_full(self, step, values):
    if step == 3 and "train/loss" in values:
      raise OSError(errno.ENOSPC, "No space left on device")
    write(self, step, values)
  monkeypatch.setattr(metrics.MetricsWriter, "write", write_until_full)
  with pytest.raises(BadInputError, match="No space left writing .* newest committed checkpoint"):
    _train(tiny_config(data_root), tmp_path / "run")
  assert _saved_steps(tmp_path / "run")[-1] == 2  # Committed before the disk filled up.
  assert not (tmp_path / "run" / "lock.json").exists()


def _start_training(config_file, workdir, *extra) -> subprocess.Popen:
  env = {**os.environ, "XLA_FLAGS": xla_flags(1)}
  return subprocess.Popen(
      [sys.executable, "-m", "vit_jax.train", f"--config={config_file}", f"--workdir={workdir}",
       *extra], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(predicate, process, timeout=240):
  deadline = time.time() + timeout
  while not predicate():
    assert process.poll() is None, process.communicate()[0][-3000:]
    assert time.time() < deadline, "timed out"
    time.sleep(0.2)


def test_a_second_run_on_the_workdir_is_refused_then_sigterm_stops_the_first_resumably(
    data_root, tmp_path):
  config_file = tiny_config_file(tmp_path / "config.py", data_root, total_steps=100000,
                                 checkpoint_every_steps=50)
  workdir = tmp_path / "run"
  first = _start_training(config_file, workdir)
  _wait_for(lambda: (workdir / "metrics.jsonl").exists() and metric_rows(str(workdir)), first)
  second = subprocess.run(
      [sys.executable, "-m", "vit_jax.train", f"--config={config_file}", f"--workdir={workdir}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert second.returncode == 2, second.stderr[-3000:]
  assert f"is in use by pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
  first.send_signal(signal.SIGTERM)
  output = first.communicate(timeout=300)[0]
  assert first.returncode == 3, output[-3000:]  # Stopped, resumable.
  assert "rerun the same command to resume" in output and "Final:" not in output
  assert _saved_steps(workdir) and not (workdir / "lock.json").exists()


def test_sigkill_then_resume_keeps_one_metrics_row_per_step(data_root, tmp_path):
  config_file = tiny_config_file(tmp_path / "config.py", data_root, total_steps=30,
                                 checkpoint_every_steps=10)
  workdir = tmp_path / "run"
  killed = _start_training(config_file, workdir)
  _wait_for(lambda: _saved_steps(workdir) and (workdir / "metrics.jsonl").exists() and max(
      r["step"] for r in metric_rows(str(workdir))) > _saved_steps(workdir)[-1], killed)
  killed.kill()
  killed.wait()
  restarted = _start_training(config_file, workdir)  # The dead run's lock is taken over.
  output = restarted.communicate(timeout=300)[0]
  assert restarted.returncode == 0, output[-3000:]
  steps = [r["step"] for r in metric_rows(str(workdir)) if "train/loss" in r]
  assert steps == list(range(1, 31))
  assert json.loads((workdir / "summary.json").read_text())["done"]


def test_a_read_that_never_returns_ends_the_run_resumably_naming_what_it_was_doing(
    data_root, tmp_path):
  folder = tmp_path / "data"
  shutil.copytree(data_root, folder)
  stuck = folder / "train" / "class_1" / "stuck.png"
  os.mkfifo(stuck)  # Opening it blocks until a writer comes: a hung network filesystem.
  config_file = tiny_config_file(tmp_path / "config.py", str(folder))
  workdir = tmp_path / "run"
  stalled = _start_training(config_file, workdir, "--stall_timeout_seconds=20")
  output = stalled.communicate(timeout=300)[0]
  assert stalled.returncode == 6, output[-3000:]
  assert re.search(r"^error: no progress for 2\d s while reading the batch of step \d+; ", output,
                   re.MULTILINE), output[-3000:]
  assert "sources.py" in output and "in __getitem__" in output  # The reader thread's stack.
  assert not (workdir / "lock.json").exists() and not (workdir / "summary.json").exists()
  stuck.unlink()
  shutil.copy(folder / "train" / "class_1" / "0.png", stuck)  # The filesystem recovered.
  rerun = _start_training(config_file, workdir, "--stall_timeout_seconds=20")
  output = rerun.communicate(timeout=300)[0]
  assert rerun.returncode == 0, output[-3000:]
  assert json.loads((workdir / "summary.json").read_text())["done"]


def test_a_stopped_sweep_stops_its_trial_resumably_without_orphans(data_root, tmp_path):
  config_file = tiny_config_file(tmp_path / "config.py", data_root, total_steps=100000,
                                 checkpoint_every_steps=50)
  study = tmp_path / "study.py"
  study.write_text("from vit_jax.study import sweep\n\n"
                   "def get_sweep():\n"
                   f"  return sweep.Study('s', {config_file!r}, "
                   "sweep.trials(sweep.axis('config.seed', [0, 1])))\n")
  trial = tmp_path / "sweep" / "seed=0"
  launcher = subprocess.Popen(
      [sys.executable, "-m", "vit_jax.sweep", str(study), f"--sweep_dir={tmp_path / 'sweep'}",
       "--targets="], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  _wait_for(lambda: (trial / "metrics.jsonl").exists() and metric_rows(str(trial)), launcher)
  trainer_pid = json.loads((trial / "lock.json").read_text())["pid"]
  launcher.send_signal(signal.SIGTERM)
  output = launcher.communicate(timeout=300)[0]
  assert launcher.returncode == 3, output[-3000:]
  assert "Traceback" not in output and "Re-launch the same command" in output
  with pytest.raises(ProcessLookupError):  # The trial was stopped and waited for, not orphaned.
    os.kill(trainer_pid, 0)
  assert _saved_steps(trial) and not (trial / "summary.json").exists()
  assert not (tmp_path / "sweep" / "seed=1").exists()  # The next trial was never started.
