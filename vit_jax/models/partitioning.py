"""Logical axis names on parameters and activations ('embed', 'mlp', 'heads', 'kv', 'batch', ...).

vit_jax/training/sharding.py maps them to mesh axes with a rules table, so the model never names a
mesh axis.
"""
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Axes = tuple[Optional[str], ...]


def init(init_fn: Callable, axes: Axes, shape: Optional[tuple[int, ...]] = None) -> Callable:
  """Initializer carrying logical axis names.

  `shape` is for DenseGeneral-style params with several in/out dims, initialised flattened: flax
  unboxes before reshaping, so under a mesh (e.g. jit with shardings) the names would be applied to
  the flat value and fail; reshaping inside the box gives the names the shape they describe.
  """
  if shape is not None:
    flat_init = init_fn
    init_fn = lambda rng, flat_shape, dtype=jnp.float32: flat_init(rng, flat_shape, dtype).reshape(
        shape)
  return nn.with_logical_partitioning(init_fn, axes)


def constrain(x: jax.Array, axes: Axes) -> jax.Array:
  """Asks the compiler to lay `x` out as the rules map `axes` (a no-op outside a mesh)."""
  return nn.with_logical_constraint(x, axes)

