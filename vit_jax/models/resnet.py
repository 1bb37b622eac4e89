"""ResNet stem of the hybrid ViTs (R+Ti/16, R26+S/32, R50+B/16, R50+L/32).

Bottleneck units with weight-standardised convolutions and GroupNorm (BiT-style), laid
out and named exactly as the official vit_jax hybrid checkpoints: `conv_root`, `gn_root`,
`block{s}/unit{u}/{conv1,gn1,conv2,gn2,conv3,gn3,conv_proj,gn_proj}`.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

_CONV_AXES = (None, None, None, None)
_NORM_AXES = (None,)


class StdConv(nn.Module):
  """Convolution whose kernel is standardised (zero mean, unit std per output filter)."""
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(nn.initializers.lecun_normal(), _CONV_AXES),
        (*self.kernel_size, x.shape[-1], self.features), jnp.float32)
    kernel = kernel - jnp.mean(kernel, axis=(0, 1, 2), keepdims=True)
    kernel = kernel / (jnp.std(kernel, axis=(0, 1, 2), keepdims=True) + 1e-5)
    return jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype), self.strides, "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _group_norm(name: str, dtype, scale_init=nn.initializers.ones) -> nn.GroupNorm:
  return nn.GroupNorm(
      num_groups=32, epsilon=1e-6, dtype=dtype, name=name,
      scale_init=nn.with_logical_partitioning(scale_init, _NORM_AXES),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, _NORM_AXES))


class BottleneckUnit(nn.Module):
  """1x1 -> 3x3 (strided) -> 1x1 x4, with a projected shortcut when shapes change."""
  features: int
  strides: tuple[int, int]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    out_features = self.features * 4
    shortcut = x
    if x.shape[-1] != out_features or self.strides != (1, 1):
      shortcut = StdConv(out_features, (1, 1), self.strides, self.dtype, name="conv_proj")(x)
      shortcut = _group_norm("gn_proj", self.dtype)(shortcut)
    y = StdConv(self.features, (1, 1), dtype=self.dtype, name="conv1")(x)
    y = nn.relu(_group_norm("gn1", self.dtype)(y))
    y = StdConv(self.features, (3, 3), self.strides, self.dtype, name="conv2")(y)
    y = nn.relu(_group_norm("gn2", self.dtype)(y))
    y = StdConv(out_features, (1, 1), dtype=self.dtype, name="conv3")(y)
    # Zero-init the last norm so each unit starts as the identity (as the official code).
    y = _group_norm("gn3", self.dtype, nn.initializers.zeros)(y)
    return nn.relu(shortcut + y)


class ResNetStage(nn.Module):
  """`units` bottleneck units named unit1..unitN; the first one carries the stride."""
  units: int
  features: int
  first_stride: tuple[int, int]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for u in range(self.units):
      strides = self.first_stride if u == 0 else (1, 1)
      x = BottleneckUnit(self.features, strides, self.dtype, name=f"unit{u + 1}")(x)
    return x


def resnet_stem(x: jax.Array, num_layers: Sequence[int], width_factor: int, dtype) -> jax.Array:
  """Root conv (/2) + max-pool (/2), then one stage per entry of `num_layers` (/2 after the first).

  Call it from inside a compact method: the submodules land directly under the caller, at the
  top of the parameter tree like the official checkpoints.
  """
  width = 64 * width_factor
  x = StdConv(width, (7, 7), (2, 2), dtype, name="conv_root")(x)
  x = nn.relu(_group_norm("gn_root", dtype)(x))
  x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
  for s, units in enumerate(num_layers):
    x = ResNetStage(units, width * 2**s, (2, 2) if s else (1, 1), dtype, name=f"block{s + 1}")(x)
  return x


def stem_stride(num_layers: Sequence[int]) -> int:
  """Downsampling factor of the stem: 4 from root + pool, 2 per stage after the first."""
  return 4 * 2**max(len(num_layers) - 1, 0)
