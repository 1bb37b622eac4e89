"""End-to-end training on fake CPU devices: sharding equivalence, exact resume, restore on other meshes.

The data is a tiny image folder whose train split is exactly one global batch, so every step sees the
same set of examples however they are split over devices or hosts; a tiny ViT keeps compiles short.
"""
import json
import os
import shutil
import signal

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from vit_jax import config_lib
from vit_jax import evaluate
from vit_jax import metrics_writer
from vit_jax import train
from vit_jax.checkpoints import state as state_lib

NUM_CLASSES = 4
TRAIN_PER_CLASS = 8  # 32 train images = one global batch
TOTAL_STEPS = 6


def make_image_folder(root: str) -> str:
  """train/ and test/ folders of 16x16 RGB PNGs whose class sets the mean colour (learnable)."""
  rng = np.random.default_rng(0)
  for split, per_class in (("train", TRAIN_PER_CLASS), ("test", 4)):
    for label in range(NUM_CLASSES):
      folder = os.path.join(root, split, f"class_{label}")
      os.makedirs(folder, exist_ok=True)
      for i in range(per_class):
        pixels = rng.normal(40 + 50 * label, 30, (16, 16, 3)).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"{i}.png"))
  return root


def tiny_config(root: str, **overrides) -> ml_collections.ConfigDict:
  c = config_lib.base_config()
  c.model_name = "ViT-mu/4"
  c.model = dict(width=16, depth=1, num_heads=2, mlp_dim=32)
  c.num_classes = NUM_CLASSES
  c.input.data = dict(name="imagefolder", root=root, split="train")
  c.input.pp = f"decode|value_range(-1, 1)|onehot({NUM_CLASSES})"
  c.input.threads = 2
  c.batch_size = NUM_CLASSES * TRAIN_PER_CLASS
  c.total_steps = TOTAL_STEPS
  # SGD keeps cross-mesh differences at float-reduction noise (Adam's g/sqrt(v) amplifies it for
  # near-zero gradients), so runs on different meshes can be compared tightly.
  c.optim.name = "sgd"
  c.optim.lr = 0.1
  c.optim.wd = 0.0
  c.optim.warmup_steps = 2
  c.evals.val = dict(type="classification", data=dict(name="imagefolder", root=root, split="test"),
                     pp=f"decode|value_range(-1, 1)|onehot({NUM_CLASSES})", batch_size=8)
  c.log_every_steps = 1
  c.checkpoint_every_steps = 2
  for key, value in overrides.items():
    c[key] = value
  return c


def losses(workdir: str) -> dict[int, float]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def final_params(workdir: str):
  return state_lib.load_params(os.path.join(workdir, "checkpoints"))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return make_image_folder(str(tmp_path_factory.mktemp("images")))


@pytest.fixture(scope="module")
def fsdp_run(data_root, tmp_path_factory):
  """An uninterrupted run on 8 devices with a 2 (data) x 4 (fsdp) mesh."""
  workdir = str(tmp_path_factory.mktemp("fsdp"))
  config = tiny_config(data_root, mesh=(("data", 2), ("fsdp", 4)))
  final = train.train_and_evaluate(config, workdir)
  return config, workdir, final


def test_run_writes_metrics_summary_and_checkpoints(fsdp_run):
  _, workdir, final = fsdp_run
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  assert summary["done"] and summary["mesh"] == {"data": 2, "fsdp": 4}
  assert 0.0 <= final["val/prec@1"] <= 1.0 and final["val/num_examples"] == 16
  assert sorted(losses(workdir)) == list(range(1, TOTAL_STEPS + 1))
  assert losses(workdir)[TOTAL_STEPS] < losses(workdir)[1]  # it learns
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(f"{workdir}/tb"))
  assert os.path.isdir(os.path.join(workdir, "checkpoints", str(TOTAL_STEPS)))


def test_data_fsdp_mesh_tracks_one_device(fsdp_run, data_root, tmp_path):
  config, fsdp_workdir, _ = fsdp_run
  one = tiny_config(data_root, mesh=(("data", -1),))
  train.train_and_evaluate(one, str(tmp_path), devices=jax.devices()[:1])
  expected, got = losses(str(tmp_path)), losses(fsdp_workdir)
  np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(got)],
                             rtol=1e-4)


def _stop_at_step(monkeypatch, stop_step: int) -> None:
  """Sends a real SIGTERM to this process right after step `stop_step`'s metrics are written."""
  write = metrics_writer.MetricsWriter.write

  def write_then_signal(self, step, metrics):
    write(self, step, metrics)
    if step == stop_step and "train/loss" in metrics:
      os.kill(os.getpid(), signal.SIGTERM)
  monkeypatch.setattr(metrics_writer.MetricsWriter, "write", write_then_signal)


def test_resume_after_sigterm_is_bitwise_identical_and_restores_on_other_meshes(
    fsdp_run, data_root, tmp_path, monkeypatch):
  config, reference_workdir, _ = fsdp_run
  interrupted = str(tmp_path / "interrupted")
  with monkeypatch.context() as patch:
    _stop_at_step(patch, 3)
    stopped = train.train_and_evaluate(config, interrupted)
  assert stopped["stopped_by"] == "SIGTERM" and stopped["step"] == 3
  assert not os.path.exists(os.path.join(interrupted, "summary.json"))
  assert state_lib.TrainStateCheckpointer(os.path.join(interrupted, "checkpoints"),
                                          save_every_steps=1).latest_step() == 3
  # Restore the 8-device (data x fsdp) checkpoint onto 4 and onto 1 device before resuming here.
  for count, mesh in ((4, (("fsdp", -1),)), (1, (("data", -1),))):
    workdir = str(tmp_path / f"on_{count}")
    shutil.copytree(interrupted, workdir)
    train.train_and_evaluate(tiny_config(data_root, mesh=mesh), workdir,
                             devices=jax.devices()[:count])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 final_params(workdir), final_params(reference_workdir))

  train.train_and_evaluate(config, interrupted)  # Same command again: resumes at step 4.
  assert sorted(losses(interrupted)) == list(range(1, TOTAL_STEPS + 1))
  jax.tree.map(np.testing.assert_array_equal, final_params(interrupted),
               final_params(reference_workdir))


def test_evaluate_only_reproduces_the_final_eval(fsdp_run, tmp_path):
  config, workdir, final = fsdp_run
  results = evaluate.evaluate(config, str(tmp_path), checkpoint=os.path.join(workdir, "checkpoints"))
  assert results["val/prec@1"] == final["val/prec@1"]
  np.testing.assert_allclose(results["val/loss"], final["val/loss"], rtol=1e-5)
