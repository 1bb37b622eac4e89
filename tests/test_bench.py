"""bench: analytic FLOPs against XLA's count, the profile a sweep trial records, and the fixed-batch
trainer of the speed experiments."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from helpers import REPO, abstract_params, load_config
from vit_jax import models
from vit_jax.config import base_config
from vit_jax.efficiency import bench
from vit_jax.models import flops


def _quickstart(arg):
  return load_config("quickstart", arg)


@pytest.mark.parametrize("arg, overrides", [
    # Width 192 (ViT-Ti): at widths <= 64 LayerNorm/GELU/softmax, which XLA counts and the analytic
    # matmul formula leaves out, are ~5% of the FLOPs. Compiled only, never run.
    ("patch=4,width=192,depth=2,heads=3", {}),
    ("patch=7,width=192,depth=1,heads=3", {"classifier": "gap", "posemb": "sincos2d"}),
])
def test_analytic_forward_flops_match_xla_count_of_unscanned_model(arg, overrides):
  config = _quickstart(arg)
  config.model.update(overrides)
  kwargs = models.model_kwargs(**config.model.to_dict())
  analytic = flops.forward_flops_per_image(kwargs, (28, 28), channels=1, num_classes=10)
  xla = bench.xla_forward_flops_per_image(config, (28, 28, 1))
  assert xla == pytest.approx(analytic, rel=0.02)


def test_scanned_model_is_undercounted_by_xla_which_is_why_bench_unscans():
  config = _quickstart("patch=4,width=192,depth=2,heads=3")
  config.model.scan = True
  kwargs = models.model_kwargs(**config.model.to_dict())
  analytic = flops.forward_flops_per_image(kwargs, (28, 28), channels=1, num_classes=10)
  # bench unscans before counting...
  assert bench.xla_forward_flops_per_image(config, (28, 28, 1)) == pytest.approx(analytic, rel=0.02)
  # ...because XLA counts a scanned body once.
  model = models.get_model(num_classes=10, **config.model.to_dict())
  params = abstract_params(model, (28, 28, 1))
  scanned = jax.jit(lambda p, x: model.apply({"params": p}, x)).lower(
      params, jax.ShapeDtypeStruct((4, 28, 28, 1), jnp.float32)).compile()
  assert scanned.cost_analysis()["flops"] / 4 < 0.6 * analytic


@pytest.mark.slow
def test_bench_cli_writes_the_profile_of_a_tiny_config(tmp_path):
  out = tmp_path / "trial" / "bench.json"
  result = subprocess.run(
      [sys.executable, "-m", "vit_jax.bench",
       "--config=configs/quickstart.py:patch=7,width=32,depth=1,heads=2,batch=16",
       "--image_size=28", "--channels=1", "--steps=2", "--targets=h100-8x", f"--output={out}"],
      cwd=REPO, capture_output=True, text=True, env={**os.environ, "XLA_FLAGS": ""})
  assert result.returncode == 0, result.stderr[-3000:]
  profile = json.loads(out.read_text())
  # Patch embedding 1,600 + cls 32 + posemb 17x32 + block 12,704 + final norm 64 + head 330.
  assert profile["params"] == 15_274
  assert profile["fwd_gflops_per_image"] * 3 == pytest.approx(profile["train_gflops_per_image"])
  assert profile["xla_train_gflops_per_image"] > 2 * profile["xla_fwd_gflops_per_image"]
  assert profile["step_s"] > 0 and profile["img_per_s"] == pytest.approx(16 / profile["step_s"])
  assert 0 < profile["mfu"] < 1 and profile["peak_memory_bytes"] > 2**20
  [h100] = profile["projections"]
  assert (h100["label"], h100["target"]) == ("projection", "h100-8x")
  assert h100["global_batch"] == 16 and h100["comm_bytes_per_chip"] > 0  # Gradient all-reduce.
  assert "[projection] h100-8x" in result.stdout


def test_bench_cli_bad_target_exits_2_before_compiling():
  result = subprocess.run([sys.executable, "-m", "vit_jax.bench", "--config=configs/quickstart.py",
                           "--targets=tpu-v9-8", "--image_size=28"], cwd=REPO, capture_output=True,
                          text=True)
  assert result.returncode == 2 and "tpu-v9-8" in result.stderr


@pytest.mark.slow
def test_fixed_batch_trainer_trains_on_the_data_mesh():
  """The step the speed experiments time is a real one: on 8 devices the loss of a fixed batch
  falls."""
  config = base_config()
  config.model.variant = "Ti/16"
  config.num_classes = 10
  images = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))
  labels = jax.nn.one_hot(jnp.arange(8) % 10, 10)
  trainer = bench.fixed_batch_trainer(config, images, labels)
  first = float(trainer(1)["train/loss"])
  assert float(trainer(5)["train/loss"]) < first


@pytest.mark.slow
def test_data_bench_measures_every_method_on_real_jpegs():
  result = subprocess.run([sys.executable, "-m", "vit_jax.data_bench", "--num_images=64",
                           "--files=32", "--size=64"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and " 64 |" in line]
  assert [row.split(" | ")[0] for row in rows] == [
      "| vit_jax.data (grain + PIL)", "| vit_jax.data, data.cache_decoded", "| plain PIL loop",
      "| tf.data (decode_and_crop_jpeg)"]
