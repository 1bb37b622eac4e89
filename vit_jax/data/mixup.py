"""Mixup and CutMix on device, inside the jitted train step.

Each image is mixed with its neighbour in the batch (`jnp.roll` by one, which under a batch sharding
moves one row per shard boundary), with one mixing ratio per batch as in timm's default and
big_vision. As in big_vision the Mixup ratio is max(lam, 1 - lam): each image keeps at least half
of itself, so its own label dominates its mixed label. Labels must be one-hot / soft (add
`onehot(N)` to the pp string); they are mixed with the same ratio, which for CutMix is the exact
pasted area after clipping the box to the image.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _interval(center: jax.Array, length: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
  """Integer [lo, hi) of `length` around `center`, clipped to [0, size]."""
  return (jnp.round(jnp.clip(center - length / 2, 0, size)),
          jnp.round(jnp.clip(center + length / 2, 0, size)))


def _cutmix(key: jax.Array, images: jax.Array, partner: jax.Array,
            alpha: float) -> tuple[jax.Array, jax.Array]:
  """Pastes a random box of area ~(1 - lam) of `partner` into `images`; returns (images, lam)."""
  k_lam, k_y, k_x = jax.random.split(key, 3)
  height, width = images.shape[1:3]
  cut = jnp.sqrt(1.0 - jax.random.beta(k_lam, alpha, alpha))  # Box side / image side.
  y0, y1 = _interval(jax.random.uniform(k_y) * height, cut * height, height)
  x0, x1 = _interval(jax.random.uniform(k_x) * width, cut * width, width)
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)  # (H, W)
  mixed = jnp.where(box[None, :, :, None], partner, images)
  return mixed, 1.0 - box.mean()


def _mixup(key: jax.Array, images: jax.Array, partner: jax.Array,
           alpha: float) -> tuple[jax.Array, jax.Array]:
  lam = jax.random.beta(key, alpha, alpha)
  lam = jnp.maximum(lam, 1.0 - lam)
  return lam.astype(images.dtype) * images + (1 - lam).astype(images.dtype) * partner, lam


def mix(rng: jax.Array, images: jax.Array, labels: jax.Array, mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0, switch_prob: float = 0.5) -> tuple[jax.Array, jax.Array]:
  """Mixup (alpha > 0) and/or CutMix (alpha > 0) of a (B, H, W, C) batch and its (B, K) labels.

  With both enabled, CutMix is used with probability `switch_prob`, else Mixup. With both alphas 0
  the batch is returned unchanged. The alphas are Python floats (static under jit).
  """
  if mixup_alpha < 0 or cutmix_alpha < 0 or not 0 <= switch_prob <= 1:
    raise ValueError(f"mixup_alpha={mixup_alpha}, cutmix_alpha={cutmix_alpha} must be >= 0 and "
                     f"switch_prob={switch_prob} in [0, 1].")
  if not mixup_alpha and not cutmix_alpha:
    return images, labels
  if labels.ndim != 2:
    raise ValueError(f"Mixup/CutMix need one-hot labels of shape (batch, classes), got "
                     f"{labels.shape}; add onehot(N) to the pp string.")
  k_switch, k_mix = jax.random.split(rng)
  partner = jnp.roll(images, 1, axis=0)
  if mixup_alpha and cutmix_alpha:
    images, lam = jax.lax.cond(
        jax.random.uniform(k_switch) < switch_prob,
        lambda: _cutmix(k_mix, images, partner, cutmix_alpha),
        lambda: _mixup(k_mix, images, partner, mixup_alpha))
  elif cutmix_alpha:
    images, lam = _cutmix(k_mix, images, partner, cutmix_alpha)
  else:
    images, lam = _mixup(k_mix, images, partner, mixup_alpha)
  lam = lam.astype(labels.dtype)
  return images, lam * labels + (1 - lam) * jnp.roll(labels, 1, axis=0)
