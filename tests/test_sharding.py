"""Mesh construction from the config and logical-axis placement of params."""
import dataclasses
import re

import jax
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from helpers import abstract_params
from vit_jax import models
from vit_jax.training import sharding


def test_mesh_from_config_resolves_minus_one():
  mesh = sharding.make_mesh((("data", -1), ("fsdp", 4)))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
  assert sharding.data_parallel_size(mesh) == 8
  assert sharding.batch_sharding(mesh).spec == P(("data", "fsdp"))


@pytest.mark.parametrize("spec, message", [
    ((("data", 3),), "has 3 devices but 8 are available"),
    ((("data", -1), ("fsdp", -1)), "at most one -1"),
    ((("data", 3), ("fsdp", -1)), "needs a multiple of 3 devices"),
    ((("model", 8),), "must name distinct axes from"),
])
def test_bad_meshes(spec, message):
  with pytest.raises(ValueError, match=message):
    sharding.make_mesh(spec)


def _param_specs(mesh_spec):
  mesh = sharding.make_mesh(mesh_spec)
  model = models.get_model("ViT-mu/4", num_classes=10, width=32, num_heads=4, mlp_dim=64)
  boxed = abstract_params(model, (16, 16, 3), boxed=True)
  shardings = sharding.logical_shardings(boxed, mesh, sharding.DEFAULT_RULES)
  block = shardings["Transformer"]["encoderblock_0"]
  return block, shardings


def test_fsdp_shards_embed_dims_and_replicates_what_does_not_divide():
  block, shardings = _param_specs((("data", 2), ("fsdp", 4)))
  assert block["MlpBlock_3"]["Dense_0"]["kernel"].spec == P("fsdp", None)
  assert block["MultiHeadDotProductAttention_1"]["query"]["kernel"].spec == P("fsdp", None, None)
  # 10 classes do not split 4 ways: that dim stays whole instead of failing.
  assert shardings["head"]["kernel"].spec == P("fsdp", None)
  assert shardings["head"]["bias"].spec == P(None)


def test_tensor_parallel_splits_heads_and_mlp():
  block, _ = _param_specs((("data", -1), ("tensor", 2)))
  assert block["MlpBlock_3"]["Dense_0"]["kernel"].spec == P(None, "tensor")
  assert block["MultiHeadDotProductAttention_1"]["out"]["kernel"].spec == P("tensor", None, None)


def test_rules_drop_axes_missing_from_the_mesh():
  mesh = sharding.make_mesh((("data", -1),))
  rules = dict(sharding.mesh_rules(mesh, sharding.DEFAULT_RULES))
  assert rules["batch"] == "data" and rules["embed"] is None and rules["mlp"] is None


@dataclasses.dataclass(frozen=True)
class FakeDevice:
  """A device of a multi-slice job, as JAX's TPU devices describe themselves."""
  id: int
  slice_index: int
  process_index: int
  platform: str = "cpu"
  device_kind: str = "fake chip"


def test_a_multi_slice_mesh_puts_slices_outermost_on_the_dcn_axes():
  devices = [FakeDevice(i, slice_index=i // 4, process_index=i // 2) for i in range(8)]
  # 2 slices of 4 chips: fsdp over 2 chips within a slice, data over 2 chips x 2 slices.
  grid, names = sharding.hybrid_device_grid((("data", -1), ("fsdp", 2)), (("data", 2),), devices)
  assert names == ("data", "fsdp") and grid.shape == (4, 2)
  slice_of = np.vectorize(lambda d: d.slice_index)(grid)
  np.testing.assert_array_equal(slice_of, [[0, 0], [0, 0], [1, 1], [1, 1]])
  assert all(len({d.slice_index for d in row}) == 1 for row in grid)  # fsdp stays within a slice


@pytest.mark.parametrize("dcn, message", [
    ((("data", 3),), "spans 3 slices but the devices come from 2"),
    ((("tensor", 2),), "each entry is (an axis of config.mesh"),
])
def test_bad_multi_slice_meshes_are_named(dcn, message):
  devices = [FakeDevice(i, slice_index=i // 4, process_index=0) for i in range(8)]
  with pytest.raises(ValueError, match=re.escape(message)):
    sharding.hybrid_device_grid((("data", -1),), dcn, devices)


def test_a_multi_slice_mesh_needs_devices_with_slices():
  with pytest.raises(ValueError, match="needs multi-slice devices"):
    sharding.make_mesh((("data", -1),), jax.devices(), dcn_spec=(("data", 2),))
