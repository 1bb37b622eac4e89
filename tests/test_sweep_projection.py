"""Projection: model shape and collectives read from a real compiled data-parallel step, the time
model, its check against published runs and the ceiling of a tiny model."""
import types

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from helpers import abstract_params
from vit_jax import models
from vit_jax.efficiency import projection
from vit_jax.runtime import hardware


def _compiled_data_parallel_grad(num_devices=8, per_device_batch=2):
  """Gradient of a tiny ViT's loss, batch split over a ('data',) mesh, gradients replicated."""
  mesh = jax.make_mesh((num_devices,), ("data",), axis_types=(AxisType.Auto,),
                       devices=jax.devices()[:num_devices])
  model = models.get_model("ViT-Ti/16", num_classes=10, patch_size=4, width=32, depth=1, mlp_dim=64,
                           num_heads=2)
  images = jnp.zeros((num_devices * per_device_batch, 16, 16, 3))
  params = jax.tree.map(jnp.asarray, jax.jit(model.init)(jax.random.key(0), images)["params"])
  params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, params,
                        is_leaf=lambda x: hasattr(x, "value"))

  def loss(params, images):
    return jnp.mean(model.apply({"params": params}, images) ** 2)

  replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  grad = jax.jit(jax.grad(loss), in_shardings=(replicated, batch), out_shardings=replicated)
  param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
  return grad.lower(params, images).compile(), param_bytes


def test_data_parallel_gradient_all_reduce_moves_the_parameters():
  compiled, param_bytes = _compiled_data_parallel_grad()
  cost = projection.program_cost(compiled, num_devices=8, per_device_batch=2)
  all_reduced = sum(c.full_bytes for c in cost.collectives if c.op == "all-reduce")
  assert all(c.group_size == 8 for c in cost.collectives)
  # Every gradient is summed across the batch shards (plus at most a few scalars).
  assert param_bytes <= all_reduced <= param_bytes + 64
  assert cost.flops > 0 and cost.bytes_accessed > 0
  # Patch 4 on 16x16 images: 16 patches + the class token; mlp 64, 2 heads, one layer.
  assert cost.shape == projection.ModelShape(tokens=17, width=32, mlp_dim=64, heads=2, depth=1)
  assert projection.ProgramCost.from_json(cost.to_json()) == cost


@pytest.mark.parametrize("model_fields, hw, tokens", [
    # The quickstart's stem (a root conv and max-pool, /4) at patch 1: 7x7 patches + class token.
    (dict(patch_size=1, width=32, depth=1, mlp_dim=64, num_heads=2, posemb="sincos2d",
          resnet=dict(num_layers=(), width_factor=1)), (28, 28), 50),
    # R50+B/16 at 224 (stem /16, patch 1): 14x14 patches + class token.
    (dict(variant="R50+B/16", posemb="sincos2d"), (224, 224), 197),
])
def test_model_shape_counts_the_tokens_after_a_resnet_stem(model_fields, hw, tokens):
  """Without a learned position embedding the tokens come from the image, cut by the stem first
  (not the raw image: 785 and 50,177 tokens)."""
  model = models.Model(num_classes=10, **models.model_kwargs(**model_fields))
  image = jax.ShapeDtypeStruct((2, *hw, 3), jnp.float32)
  shape = projection.model_shape((abstract_params(model, (*hw, 3)), {"image": image}))
  assert shape.tokens == tokens


@pytest.mark.parametrize("line, op, full_bytes, group", [
    ("%ag = f32[8,128]{1,0} all-gather(f32[1,128]{1,0} %p), "
     "replica_groups={{0,1,2,3,4,5,6,7}}, dimensions={0}",
     "all-gather", 8 * 128 * 4, 8),
    ("%rs = bf16[16]{0} reduce-scatter(bf16[64]{0} %g), replica_groups=[2,4]<=[8], dimensions={0}",
     "reduce-scatter", 64 * 2, 4),
    ("%ar = (f32[10]{0}, f32[3,3]{1,0}) all-reduce-start(%a, %b), replica_groups={}",
     "all-reduce", (10 + 9) * 4, 8),
    ("%x = f32[4,4]{1,0} all-reduce(%y), "
     "replica_groups=mesh['data'=2,'tensor'=4] {'tensor'}, to_apply=%add",
     "all-reduce", 64, 4),
])
def test_parse_collectives_reads_every_replica_group_spelling(line, op, full_bytes, group):
  [c] = projection.parse_collectives("HloModule m\n  " + line + "\n  %z = f32[2] add(%a, %b)", 8)
  assert (c.op, c.full_bytes, c.group_size) == (op, full_bytes, group)


def _cost(shape, per_device_batch, collectives=(), num_devices=8):
  return projection.ProgramCost(flops=0.0, bytes_accessed=0.0, collectives=collectives,
                                num_devices=num_devices, per_device_batch=per_device_batch,
                                shape=shape)


def test_project_sums_compute_memory_fixed_costs_and_exposed_communication():
  target = projection.get_target("h100-8x")
  shape = projection.ModelShape(tokens=65, width=256, mlp_dim=1024, heads=4, depth=6)
  cost = _cost(shape, 32, (projection.Collective("all-reduce", 450e9 * 0.001, 8),
                           projection.Collective("all-gather", 1000, 2)))
  flops_per_image = 1e9
  p = projection.project(cost, target, flops_per_image)
  eta, kappa = projection.MATMUL_EFFICIENCY, projection.calibrate()
  np.testing.assert_allclose(p["compute_s"], 32 * 1e9 / (989e12 * eta))
  n, d, m, h = 65, 256, 1024, 4
  elementwise = 6 * (29 * n * d + 6 * n * m + 7 * h * n * n)
  params = 6 * (4 * d * d + 2 * d * m + 9 * d + m)
  np.testing.assert_allclose(p["memory_s"],
                             (32 * kappa * elementwise * 2 + 28 * params) / 3350e9)
  assert p["kernels"] == 6 * 50 + 40
  np.testing.assert_allclose(p["overhead_s"], 340 * 5e-6 + 0.5e-3)
  comm = (2 * 7 / 8 * 450e9 * 0.001 + 1 / 2 * 1000) / 450e9
  np.testing.assert_allclose(p["comm_s"], comm)
  np.testing.assert_allclose(p["step_s"],
                             p["compute_s"] + p["memory_s"] + p["overhead_s"] + comm)
  np.testing.assert_allclose(p["img_per_s"], 256 / p["step_s"])
  np.testing.assert_allclose(p["mfu"], 32 * 1e9 / p["step_s"] / 989e12)
  assert p["label"] == "projection" and p["global_batch"] == 256
  # A 32-GPU target grows the all-device group to 32 and crosses nodes over InfiniBand.
  big = projection.project(cost, projection.get_target("h100-32x"), flops_per_image)
  assert big["comm_s"] > 8 * p["comm_s"]
  # A stated matmul efficiency recalibrates kappa on the calibration anchor.
  assert projection.project(cost, target, flops_per_image, mfu=0.6)["elementwise_factor"] < kappa
  with pytest.raises(ValueError, match="tpu-v9"):
    projection.get_target("tpu-v9")
  with pytest.raises(ValueError, match="without a ViT encoder"):
    projection.project(_cost(None, 32), target, flops_per_image)


def test_projection_reproduces_published_runs_it_was_not_calibrated_on():
  """Calibrated on ViT-B/16 on 8 A100s (NVIDIA Rosetta); the 8 x H100 run and big_vision's S/16 on
  a TPU v3-8 are predictions (experiments/patch_size_tradeoff_local/README.md has the table)."""
  rows = {r["anchor"]: r for r in projection.check_anchors()}
  assert rows[projection.CALIBRATION_ANCHOR]["error"] == pytest.approx(0, abs=1e-9)
  held_out = [r for r in rows.values() if r["role"] == "held out"]
  assert {r["target"] for r in held_out} == {"h100-8x", "tpu-v3-8"}
  for r in held_out:
    assert abs(r["error"]) < 0.30, (r["anchor"], r["projected"], r["published"])
  # The published MFUs the anchors imply (our analytic FLOPs): ~30% on A100, ~16% on H100.
  assert rows[projection.CALIBRATION_ANCHOR]["published_mfu"] == pytest.approx(0.304, abs=0.005)
  assert rows["ViT-B/16 Rosetta 8xH100"]["published_mfu"] == pytest.approx(0.155, abs=0.005)
  table = projection.format_anchor_table(projection.check_anchors())
  assert "| ViT-S/16 big_vision TPU v3-8 | tpu-v3-8 | 128 | 4,530-5,285" in table


def test_a_tiny_model_cannot_project_beyond_its_fixed_costs():
  """The local study's width-16, depth-2 ViT (patch 14 on 28x28 digits: 5 tokens) at its batch of
  128 (16 per GPU) was projected to ~103 million img/s on 8 H100s without fixed costs. A step takes
  at least the host's dispatch (0.5 ms) plus 2 x 50 + 40 kernels of 5 us: 1.2 ms, so 128 images
  per step cannot exceed ~107,000 img/s, whatever the FLOPs."""
  shape = projection.ModelShape(tokens=5, width=16, mlp_dim=64, heads=1, depth=2)
  target = projection.get_target("h100-8x")
  p = projection.project(_cost(shape, 16), target, train_flops_per_image=0.00027e9)
  floor_s = projection.HOST_OVERHEAD_S + shape.kernels() * target.kernel_overhead_s
  assert p["step_s"] >= floor_s and p["img_per_s"] <= 128 / floor_s < 1e6
  assert p["bound"] == "launches" and p["mfu"] < 1e-3


def test_device_table_counts_jax_devices():
  v3 = projection.get_target("tpu-v3-8")  # 4 chips of 2 TensorCores: 8 JAX devices.
  assert (v3.chips, v3.peak_flops * v3.chips, v3.hbm_bytes_per_s * v3.chips) == (8, 492e12, 3.6e12)
  h200 = projection.get_target("h200-8x")
  assert (h200.peak_flops, h200.hbm_bytes_per_s) == (989e12, 4.8e12)
  tpu_v3_core = types.SimpleNamespace(device_kind="TPU v3", platform="tpu")
  assert hardware.peak_flops_per_device(tpu_v3_core).flops == 61.5e12
