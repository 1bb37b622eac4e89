"""A run whose workdir is a bucket: train, SIGTERM, resume, evaluate and report on `gs://` against a
real GCS API on localhost (tests/gcs_emulator.py), with nothing written to the local disk.

Before the workdir contract, `os.path.abspath("gs://bucket/run")` turned such a run into a local
`./gs:/bucket/run` on every host.
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import BUCKET
from helpers import REPO, TOTAL_STEPS, stop_at_step, tiny_config
from vit_jax.checkpoints import manager
from vit_jax.study import report
from vit_jax.training import evaluation, loop

pytestmark = pytest.mark.slow


def _files(root: str) -> list[str]:
  return sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files)


def test_train_resume_evaluate_report_in_a_bucket(gcs, data_root, tmp_path, monkeypatch):
  sweep_dir = f"gs://{BUCKET}/sweeps/remote"
  workdir = f"{sweep_dir}/tiny"
  config = tiny_config(data_root, mesh=(("data", 2),))
  devices = jax.devices()[:2]
  data_files = _files(data_root)

  with monkeypatch.context() as patch:
    stop_at_step(patch, 3)
    stopped = loop.train_and_evaluate(config, workdir, devices=devices)
  assert stopped["stopped_by"] == "SIGTERM" and stopped["step"] == 3
  final = loop.train_and_evaluate(config, workdir, devices=devices)  # Resumes at step 4.
  assert final["step"] == TOTAL_STEPS

  objects = gcs.list(BUCKET, "sweeps/remote/tiny/")
  names = {o.split("/", 3)[3] for o in objects}
  assert {"metrics.jsonl", "summary.json"} <= names
  # Saved at 2, 3 (the stop), 4 and 6; the oldest rotated out (keep_checkpoints=3), in the bucket.
  assert {n for n in names if n.endswith("commit_success.txt") and n.count("/") == 2} == {
      f"checkpoints/{step}/commit_success.txt" for step in (3, 4, 6)}
  assert len([n for n in names if n.startswith("tb/events.out.tfevents.")]) == 2  # One per session.
  rows = [json.loads(line) for line in
          gcs.read(BUCKET, "sweeps/remote/tiny/metrics.jsonl").decode().splitlines()]
  assert [r["step"] for r in rows if "train/loss" in r] == list(range(1, TOTAL_STEPS + 1))
  assert json.loads(gcs.read(BUCKET, "sweeps/remote/tiny/summary.json"))["done"]
  params = manager.load_params(f"{workdir}/checkpoints")
  assert np.isfinite(params["head"]["kernel"]).all()

  results = evaluation.evaluate_checkpoint(config, workdir, devices=devices)
  assert results["val/prec@1"] == final["val/prec@1"]
  assert "sweeps/remote/tiny/eval.json" in gcs.list(BUCKET, "sweeps/remote/tiny/eval")

  rows, metric = report.load_rows(sweep_dir)
  assert [(r["trial"], r["accuracy"]) for r in rows] == [("tiny", final[metric])]
  report.write_report(rows, metric, sweep_dir)
  assert {f"sweeps/remote/{n}" for n in ("results.csv", "results.md",
                                         "accuracy_vs_train_gflops.png")} <= set(
                                             gcs.list(BUCKET, "sweeps/remote/"))
  assert _files(data_root) == data_files  # The inputs were only read.


def test_report_command_line_reads_and_writes_the_bucket(gcs, data_root, tmp_path):
  """The entry points take gs:// paths as they come: here `python -m vit_jax.report`."""
  trial = f"gs://{BUCKET}/sweeps/cli/only"
  loop.train_and_evaluate(tiny_config(data_root, total_steps=2), trial, devices=jax.devices()[:1])
  result = subprocess.run([sys.executable, "-m", "vit_jax.report", f"gs://{BUCKET}/sweeps/cli"],
                          cwd=REPO, env={**os.environ, **gcs.env}, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "sweeps/cli/results.md" in gcs.list(BUCKET, "sweeps/cli/")
  table = gcs.read(BUCKET, "sweeps/cli/results.md").decode()
  assert "| only |" in table
