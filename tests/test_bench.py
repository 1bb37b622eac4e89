"""bench: analytic FLOPs against XLA's count, the profile a sweep trial records, and the fixed-batch
trainer of the speed experiments."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from helpers import REPO, abstract_params, load_config, xla_flags
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


def test_projection_program_of_a_cudnn_config_compiles_on_the_fake_cpu_devices():
  """A GPU run's `attention_impl='cudnn'` is not asked of the CPU devices its projection's program
  is compiled for; the shape the projection reads is the same."""
  config = _quickstart("patch=7,width=32,depth=1,heads=2")
  config.model.update(attention_impl="cudnn", dtype="bfloat16")
  (cost,) = bench._program_costs_on_fake_devices(config, (28, 28, 1), [2]).values()
  assert (cost.num_devices, cost.per_device_batch) == (8, 2)
  assert (cost.shape.tokens, cost.shape.width, cost.shape.heads) == (17, 32, 2)


@pytest.mark.slow
def test_bench_cli_writes_the_profile_of_a_tiny_config(tmp_path):
  out = tmp_path / "trial" / "bench.json"
  result = subprocess.run(
      [sys.executable, "-m", "vit_jax.bench",
       "--config=configs/quickstart.py:patch=7,width=32,depth=1,heads=2,batch=16",
       "--image_size=28", "--channels=1", "--steps=2", "--targets=h100-8x", f"--output={out}"],
      cwd=REPO, capture_output=True, text=True, env={**os.environ, "XLA_FLAGS": xla_flags(None)})
  assert result.returncode == 0, result.stderr[-3000:]
  profile = json.loads(out.read_text())
  # Patch embedding 1,600 + cls 32 + posemb 17x32 + block 12,704 + final norm 64 + head 330.
  assert profile["params"] == 15_274
  assert profile["attention_kernel"] == "einsum"  # XLA:CPU's choice (models.kernels)
  assert "  attention              einsum\n" in result.stdout
  assert profile["fwd_gflops_per_image"] * 3 == pytest.approx(profile["train_gflops_per_image"])
  assert profile["xla_train_gflops_per_image"] > 2 * profile["xla_fwd_gflops_per_image"]
  assert profile["step_s"] > 0 and profile["img_per_s"] == pytest.approx(16 / profile["step_s"])
  assert 0 < profile["mfu"] < 1 and profile["step_memory_bytes"] > 3 * 4 * 15_274
  [h100] = profile["projections"]
  assert (h100["label"], h100["target"]) == ("projection", "h100-8x")
  assert h100["global_batch"] == 16 and h100["comm_bytes_per_chip"] > 0  # Gradient all-reduce.
  assert "[projection] h100-8x" in result.stdout


def test_bench_cli_bad_target_exits_2_before_compiling():
  result = subprocess.run([sys.executable, "-m", "vit_jax.bench", "--config=configs/quickstart.py",
                           "--targets=tpu-v9-8", "--image_size=28"], cwd=REPO, capture_output=True,
                          text=True)
  assert result.returncode == 2 and "tpu-v9-8" in result.stderr


@pytest.mark.parametrize("flag", ["--steps=0", "--batch_size=0", "--assumed_mfu=0",
                                  "--assumed_mfu=1.5"])
def test_bench_cli_bad_flag_value_exits_2_naming_it(flag):
  """Each was accepted: steps=0 failed after compiling, batch_size=0 was replaced by the config's,
  an assumed MFU was checked only after the whole profile."""
  result = subprocess.run([sys.executable, "-m", "vit_jax.bench", "--config=configs/quickstart.py",
                           "--image_size=28", flag], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 2, result.stderr[-3000:]
  assert flag in result.stderr and "Traceback" not in result.stderr


def test_data_bench_zero_threads_exits_2_before_measuring():
  """tf.data, the last method, cannot map with 0 threads: it failed after the others had run."""
  result = subprocess.run([sys.executable, "-m", "vit_jax.data_bench", "--threads=0",
                           "--num_images=32", "--files=32", "--size=32"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 2 and "--threads=0" in result.stderr, result.stderr[-3000:]
  assert "| method" not in result.stdout


_TINY = "patch=7,width=32,depth=1,heads=2,batch=8"


@pytest.fixture(scope="module")
def plain_xla_train_flops():
  return bench.xla_train_flops_per_image(_quickstart(_TINY), (28, 28, 1))


@pytest.mark.parametrize("overrides", [
    {"grad_accum_steps": 2},  # A scan's body is counted once: the count halved.
    {"grad_accum_steps": 3},  # Does not divide the count's batch of 4: failed to compile.
    {"mesh": (("data", -1), ("tensor", 2))},  # Two devices per model: none on one device.
    {"dcn_mesh": (("data", 2),)},  # Multi-slice devices only.
], ids=["accum2", "accum3", "tensor", "multislice"])
def test_xla_train_flops_per_image_do_not_depend_on_accumulation_or_mesh(
    overrides, plain_xla_train_flops):
  config = _quickstart(_TINY)
  config.update(overrides)
  assert bench.xla_train_flops_per_image(config, (28, 28, 1)) == pytest.approx(
      plain_xla_train_flops, rel=1e-6)


def _flexi_config():
  config = _quickstart(_TINY)
  config.flexi.patch_sizes = (4, 7)
  return config


def test_flexivit_profile_counts_the_patch_size_it_times():
  """FLOPs and MFU of the size timed, not the mean over flexi.patch_sizes; params of the one model
  trained (its patch kernel resized), not of a model native at that size."""
  config = _flexi_config()
  at_4 = bench.profile(config, (28, 28, 1), 8, 1, patch_size=4)
  program = bench.program_for(config, (28, 28, 1))
  kwargs = models.model_kwargs(**config.model.to_dict())
  analytic = flops.train_flops_per_image({**kwargs, "patch_size": (4, 4)}, 28, 1, 10)
  assert at_4["patch_size"] == [4, 4] and at_4["model"]["patch_size"] == (7, 7)
  assert at_4["train_gflops_per_image"] == pytest.approx(analytic / 1e9)
  assert analytic > 2 * program.train_flops_per_image((7, 7))  # 50 tokens against 17.
  if program.peak.flops is not None:  # One CPU peak for the 8 fake devices.
    assert at_4["mfu"] == pytest.approx(at_4["img_per_s"] * analytic / program.peak.flops)
  assert at_4["params"] == program.num_params
  assert at_4["memory_source"] == bench.STEP_MEMORY_SOURCE


@pytest.mark.slow
def test_a_multislice_config_projects_one_slices_program():
  """A pod config (16-way FSDP within each slice, data parallel over 2 slices) is projected from
  one slice's program on 16 fake devices: fake devices have no slices, and 8 hold no 16-way axis."""
  config = _quickstart(_TINY)
  config.update(mesh=(("data", -1), ("fsdp", 16)), dcn_mesh=(("data", 2),))
  [projection] = bench.projections(config, (28, 28, 1), ["tpu-v4-32"], 64, 1e6, 0.5)
  plain = _quickstart(_TINY)
  plain.mesh = (("data", -1), ("fsdp", 16))
  assert projection == bench.projections(plain, (28, 28, 1), ["tpu-v4-32"], 64, 1e6, 0.5)[0]
  assert projection["comm_bytes_per_chip"] > 0  # FSDP's gathers and reductions.


def test_step_memory_is_each_compiled_steps_own():
  """Not a process-wide peak, which a smaller FlexiViT profile after a larger one inherited."""
  program = bench.program_for(_flexi_config(), (28, 28, 1))
  at_4, own = (bench.step_memory_bytes(bench.compile_train_step(program, 8, p)[0])
               for p in (4, None))
  assert 3 * 4 * program.num_params < own < at_4  # fp32 params and two Adam moments, at least.


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
