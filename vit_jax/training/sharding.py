"""Device mesh from the config and logical-axis sharding of params, optimizer state and batches.

The model tags every parameter with logical axis names ('embed', 'mlp', 'heads', ...) and constrains
activations with ('batch', 'length', 'embed'). A rules table maps each logical name to mesh axes;
rules are tried in order and a mesh axis is used at most once per array, so with the default table a
batch-sharded activation keeps 'embed' unsharded while an FSDP parameter shards its 'embed' dim.

    config.mesh = [("data", -1)]                 # pure data parallelism (-1: all remaining devices)
    config.mesh = [("data", 2), ("fsdp", 4)]     # 2-way data x 4-way fully-sharded data parallelism
    config.mesh = [("data", -1), ("tensor", 2)]  # + 2-way tensor parallelism of heads and MLP
    config.mesh = [("data", -1), ("fsdp", 16)]   # two 16-chip slices: FSDP within a slice (ICI)
    config.dcn_mesh = [("data", 2)]              # and data parallelism across them (DCN)
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
import numpy as np

# Mesh axes that split the batch (data parallelism, including FSDP's data-parallel role).
BATCH_AXES = ("data", "fsdp")
KNOWN_AXES = ("data", "fsdp", "tensor")

# Logical axis name -> mesh axis (or axes). Mesh axes missing from the mesh are dropped.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("length", None),
    ("classes", None),
    ("layers", None),
)


def resolve_mesh_shape(mesh_spec: Sequence[Sequence[Any]], num_devices: int) -> dict[str, int]:
  """Turns `[("data", -1), ("fsdp", 4)]` into `{"data": n // 4, "fsdp": 4}`, validating it."""
  example = "e.g. --config.mesh='((\"data\", 2), (\"fsdp\", -1))'"
  try:
    entries = [tuple(entry) for entry in mesh_spec]
  except TypeError:
    entries = []
  if not entries or any(len(e) != 2 or not isinstance(e[0], str) or isinstance(e[1], bool)
                        or not isinstance(e[1], int) for e in entries):
    raise ValueError(f"config.mesh={mesh_spec!r} must be (axis name, size) pairs, {example}.")
  names = [name for name, _ in entries]
  sizes = [size for _, size in entries]
  unknown = [n for n in names if n not in KNOWN_AXES]
  if unknown or len(set(names)) != len(names) or not names:
    raise ValueError(
        f"config.mesh={list(map(tuple, mesh_spec))} must name distinct axes from {KNOWN_AXES}; "
        "e.g. --config.mesh='((\"data\", -1),)'.")
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"config.mesh={list(map(tuple, mesh_spec))}: sizes must be positive, with at "
                     "most one -1 meaning 'all remaining devices'.")
  fixed = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % fixed:
      raise ValueError(
          f"config.mesh={list(map(tuple, mesh_spec))} needs a multiple of {fixed} devices but "
          f"{num_devices} are available; change the fixed axis sizes.")
    sizes[sizes.index(-1)] = num_devices // fixed
  if math.prod(sizes) != num_devices:
    raise ValueError(
        f"config.mesh={list(map(tuple, mesh_spec))} has {math.prod(sizes)} devices but "
        f"{num_devices} are available; make the product of the sizes {num_devices} or use -1 "
        "for one axis.")
  return dict(zip(names, sizes))


def make_mesh(mesh_spec: Sequence[Sequence[Any]], devices: Sequence[jax.Device] | None = None,
              dcn_spec: Sequence[Sequence[Any]] = ()) -> Mesh:
  """Builds the device mesh named in the config, with Auto (annotation-driven) axis types.

  `dcn_spec` (config.dcn_mesh) spans several slices of a multi-slice TPU job: `mesh_spec` then
  describes one slice (its chips talk over ICI) and `dcn_spec` how many slices each of its axes
  spans (over the data-center network); an axis's size is the product of the two.
  """
  devices = list(jax.devices() if devices is None else devices)
  if not dcn_spec:
    shape = resolve_mesh_shape(mesh_spec, len(devices))
    return jax.make_mesh(tuple(shape.values()), tuple(shape.keys()),
                         axis_types=(AxisType.Auto,) * len(shape), devices=devices)
  grid, names = hybrid_device_grid(mesh_spec, dcn_spec, devices)
  return Mesh(grid, names, axis_types=(AxisType.Auto,) * len(names))


def hybrid_device_grid(mesh_spec: Sequence[Sequence[Any]], dcn_spec: Sequence[Sequence[Any]],
                       devices: Sequence[Any]) -> tuple[np.ndarray, tuple[str, ...]]:
  """The devices of a multi-slice mesh as an array (slices outermost on each axis), and the axis
  names. Devices are grouped into slices by their `slice_index` (TPU devices carry it)."""
  dcn_entries = [tuple(entry) for entry in dcn_spec]
  names = [str(name) for name, _ in mesh_spec]
  unknown = [name for name, _ in dcn_entries if name not in names]
  if unknown or any(not isinstance(size, int) or size < 1 for _, size in dcn_entries):
    raise ValueError(f"config.dcn_mesh={dcn_entries}: each entry is (an axis of config.mesh, the "
                     f"number of slices it spans), e.g. (('data', 2),); mesh axes: {names}.")
  dcn = {name: size for name, size in dcn_entries}
  slices = math.prod(dcn.values())
  if not hasattr(devices[0], "slice_index"):
    raise ValueError(f"config.dcn_mesh={dcn_entries} needs multi-slice devices (with a "
                     f"slice_index), but these are {devices[0].device_kind}; drop dcn_mesh.")
  found = len({d.slice_index for d in devices})
  if found != slices or len(devices) % slices:
    raise ValueError(f"config.dcn_mesh={dcn_entries} spans {slices} slices but the devices "
                     f"come from {found}; make the product of its sizes {found}.")
  ici = resolve_mesh_shape(mesh_spec, len(devices) // slices)
  grid = mesh_utils.create_hybrid_device_mesh(
      tuple(ici.values()), tuple(dcn.get(name, 1) for name in ici), devices,
      allow_split_physical_axes=True)
  return grid, tuple(ici)


def mesh_rules(mesh: Mesh,
               rules: Sequence[Sequence[Any]] = DEFAULT_RULES) -> tuple[tuple[str, Any], ...]:
  """Restricts a rules table to the axes present in `mesh` (so one table serves every mesh)."""
  def keep(axes):
    if axes is None:
      return None
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    axes = tuple(a for a in axes if a in mesh.axis_names)
    return None if not axes else axes[0] if len(axes) == 1 else axes
  return tuple((str(name), keep(axes)) for name, axes in rules)


def data_parallel_size(mesh: Mesh) -> int:
  """Number of ways the batch is split across the mesh."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES if a in mesh.axis_names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a batch array: leading dim split over the data-parallel axes, the rest
  replicated."""
  axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
  return NamedSharding(mesh, PartitionSpec(axes or None))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def _fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
  """Drops the mesh axes of any dim that they do not divide evenly (e.g. 10 classes over 4
  devices)."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    fitted.append(axes if dim % math.prod(mesh.shape[a] for a in names) == 0 else None)
  return PartitionSpec(*fitted)


def logical_shardings(boxed_tree: Any, mesh: Mesh, rules: Sequence[Sequence[Any]]) -> Any:
  """NamedShardings for a (possibly abstract) tree whose leaves carry flax logical partitioning.

  Leaves without logical metadata are replicated.
  """
  rules = mesh_rules(mesh, rules)
  logical_specs = nn.get_partition_spec(boxed_tree)
  mesh_specs = nn.logical_to_mesh(logical_specs, rules)
  shapes = nn.meta.unbox(boxed_tree)
  return jax.tree.map(
      lambda spec, x: NamedSharding(mesh, _fit_spec(spec, x.shape, mesh)),
      mesh_specs, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec))
