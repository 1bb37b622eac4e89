"""ResNet stem of the hybrid ViTs (R+Ti/16, R26+S/32, R50+B/16, R50+L/32).

Bottleneck units with weight-standardised convolutions and GroupNorm (BiT-style), laid
out and named exactly as the official vit_jax hybrid checkpoints: `conv_root`, `gn_root`,
`block{s}/unit{u}/{conv1,gn1,conv2,gn2,conv3,gn3,conv_proj,gn_proj}`.

`numerics` (the Model field `resnet_numerics`) picks the two epsilons, parameters unchanged:

* 'official' (default; the official hybrids): kernels standardised as (w - mean) / (std + 1e-5),
  GroupNorm eps 1e-6.
* 'timm' (timm's `vit_*_r*` hybrids, ResNetV2 with StdConv2dSame(eps=1e-8) and GroupNormAct):
  (w - mean) / sqrt(var + 1e-8), GroupNorm eps 1e-5.

Both standardise per output filter with the biased variance. The difference is largest for
filters of small std (eps 1e-5 against std), and together with timm's exact GELU it is why stock
timm hybrids differ from the original ones in logits; an imported timm hybrid needs 'timm' to
reproduce timm's logits (tests/test_convert_timm.py).
"""
import functools
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

_CONV_AXES = (None, None, None, None)
_NORM_AXES = (None,)


class Numerics(NamedTuple):
  ws_eps: float        # weight standardisation epsilon
  ws_eps_in_sqrt: bool  # True: / sqrt(var + eps); False: / (std + eps)
  gn_eps: float        # GroupNorm epsilon


NUMERICS = {
    "official": Numerics(ws_eps=1e-5, ws_eps_in_sqrt=False, gn_eps=1e-6),
    "timm": Numerics(ws_eps=1e-8, ws_eps_in_sqrt=True, gn_eps=1e-5),
}


class StdConv(nn.Module):
  """Convolution whose kernel is standardised (zero mean, unit std per output filter)."""
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  dtype: Any = jnp.float32
  numerics: str = "official"

  @nn.compact
  def __call__(self, x):
    num = NUMERICS[self.numerics]
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(nn.initializers.lecun_normal(), _CONV_AXES),
        (*self.kernel_size, x.shape[-1], self.features), jnp.float32)
    kernel = kernel - jnp.mean(kernel, axis=(0, 1, 2), keepdims=True)
    if num.ws_eps_in_sqrt:
      kernel = kernel * jax.lax.rsqrt(
          jnp.var(kernel, axis=(0, 1, 2), keepdims=True) + num.ws_eps)
    else:
      kernel = kernel / (jnp.std(kernel, axis=(0, 1, 2), keepdims=True) + num.ws_eps)
    return jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype), self.strides, "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _group_norm(name: str, dtype, scale_init=nn.initializers.ones,
                numerics: str = "official") -> nn.GroupNorm:
  return nn.GroupNorm(
      num_groups=32, epsilon=NUMERICS[numerics].gn_eps, dtype=dtype, name=name,
      scale_init=nn.with_logical_partitioning(scale_init, _NORM_AXES),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, _NORM_AXES))


class BottleneckUnit(nn.Module):
  """1x1 -> 3x3 (strided) -> 1x1 x4, with a projected shortcut when shapes change."""
  features: int
  strides: tuple[int, int]
  dtype: Any = jnp.float32
  numerics: str = "official"

  @nn.compact
  def __call__(self, x):
    out_features = self.features * 4
    conv = functools.partial(StdConv, dtype=self.dtype, numerics=self.numerics)
    norm = functools.partial(_group_norm, dtype=self.dtype, numerics=self.numerics)
    shortcut = x
    if x.shape[-1] != out_features or self.strides != (1, 1):
      shortcut = conv(out_features, (1, 1), self.strides, name="conv_proj")(x)
      shortcut = norm("gn_proj")(shortcut)
    y = conv(self.features, (1, 1), name="conv1")(x)
    y = nn.relu(norm("gn1")(y))
    y = conv(self.features, (3, 3), self.strides, name="conv2")(y)
    y = nn.relu(norm("gn2")(y))
    y = conv(out_features, (1, 1), name="conv3")(y)
    # Zero-init the last norm so each unit starts as the identity (as the official code).
    y = norm("gn3", scale_init=nn.initializers.zeros)(y)
    return nn.relu(shortcut + y)


class ResNetStage(nn.Module):
  """`units` bottleneck units named unit1..unitN; the first one carries the stride."""
  units: int
  features: int
  first_stride: tuple[int, int]
  dtype: Any = jnp.float32
  numerics: str = "official"

  @nn.compact
  def __call__(self, x):
    for u in range(self.units):
      strides = self.first_stride if u == 0 else (1, 1)
      x = BottleneckUnit(self.features, strides, self.dtype, self.numerics,
                         name=f"unit{u + 1}")(x)
    return x


def resnet_stem(x: jax.Array, num_layers: Sequence[int], width_factor: int, dtype,
                numerics: str = "official") -> jax.Array:
  """Root conv (/2) + max-pool (/2), then one stage per entry of `num_layers` (/2 after the first).

  Call it from inside a compact method: the submodules land directly under the caller, at the
  top of the parameter tree like the official checkpoints.
  """
  width = 64 * width_factor
  x = StdConv(width, (7, 7), (2, 2), dtype, numerics, name="conv_root")(x)
  x = nn.relu(_group_norm("gn_root", dtype, numerics=numerics)(x))
  x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
  for s, units in enumerate(num_layers):
    x = ResNetStage(units, width * 2**s, (2, 2) if s else (1, 1), dtype, numerics,
                    name=f"block{s + 1}")(x)
  return x


def stem_stride(num_layers: Sequence[int]) -> int:
  """Downsampling factor of the stem: 4 from root + pool, 2 per stage after the first."""
  return 4 * 2**max(len(num_layers) - 1, 0)
