"""Projection: collectives read from a real compiled data-parallel step, and the time model."""
import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from vit_jax import models
from vit_jax.efficiency import projection


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


def test_project_adds_exposed_communication_to_the_roofline():
  target = projection.get_target("h100-8x")
  cost = projection.ProgramCost(flops=1.0, bytes_accessed=3350e9 * 0.004,
                                collectives=(projection.Collective("all-reduce", 450e9 * 0.001, 8),
                                             projection.Collective("all-gather", 1000, 2)),
                                num_devices=8, per_device_batch=32)
  train_flops_per_image = 989e12 * 0.5 * 0.010 / 32  # 10 ms of compute per chip at 50% MFU.
  p = projection.project(cost, target, train_flops_per_image, mfu=0.5)
  np.testing.assert_allclose([p["compute_s"], p["memory_s"]], [0.010, 0.004])
  comm = (2 * 7 / 8 * 450e9 * 0.001 + 1 / 2 * 1000) / 450e9
  np.testing.assert_allclose(p["comm_s"], comm)
  np.testing.assert_allclose(p["img_per_s"], 256 / (0.010 + comm))
  assert p["label"] == "projection" and p["bound"] == "compute" and p["global_batch"] == 256
  # A 32-GPU target grows the all-device group to 32 and crosses nodes over InfiniBand.
  big = projection.project(cost, projection.get_target("h100-32x"), train_flops_per_image, mfu=0.5)
  assert big["comm_s"] > 8 * p["comm_s"]
  with pytest.raises(ValueError, match="tpu-v9"):
    projection.get_target("tpu-v9")
