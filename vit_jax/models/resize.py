"""Resizing position embeddings and patch-embedding kernels (resolution and patch-size changes).

Both functions are pure jnp and take static target sizes, so they run inside `jax.jit` (the model
uses them for FlexiViT-style patch sizes). The interpolation matrices depend only on static shapes,
so they are built once in float64 NumPy and enter the traced computation as constants.

* `resize_posemb`: 'bilinear' reproduces google-research/vision_transformer
  (`scipy.ndimage.zoom(grid, order=1)`, i.e. align-corners linear interpolation: the corner
  embeddings are kept exactly); 'bicubic' is `jax.image.resize` (half-pixel, antialiased when
  shrinking), as in big_vision and timm.
* `pi_resize_patch_kernel`: FlexiViT's PI-resize (Beyer et al. 2023, arXiv:2212.08013). If a patch x
  is resized to x' = B x with bilinear resize B (half-pixel, no antialias, as `jax.image.resize(...,
  antialias=False)`), the kernel w' = pinv(B^T) w gives <x', w'> = <x, w> exactly when upsampling
  and the least-squares best match when downsampling.
"""
import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

POSEMB_METHODS = ("bilinear", "bicubic")


@functools.lru_cache(maxsize=None)
def linear_resize_matrix(n_in: int, n_out: int, align_corners: bool) -> np.ndarray:
  """(n_out, n_in) matrix of 1-D linear interpolation, float64.

  align_corners=True maps output i to input i*(n_in-1)/(n_out-1) (scipy.ndimage.zoom's default);
  False maps pixel centres, (i+0.5)*n_in/n_out-0.5 clamped to the edges (jax.image.resize and
  tf.image.resize 'bilinear' without antialiasing).
  """
  out = np.arange(n_out, dtype=np.float64)
  if align_corners:
    src = out * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(1)
  else:
    src = (out + 0.5) * (n_in / n_out) - 0.5
  src = np.clip(src, 0.0, n_in - 1)
  lo = np.floor(src).astype(np.int64)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = src - lo
  mat = np.zeros((n_out, n_in))
  np.add.at(mat, (np.arange(n_out), lo), 1.0 - frac)
  np.add.at(mat, (np.arange(n_out), hi), frac)
  return mat


def _grid_of(num_tokens: int, what: str) -> tuple[int, int]:
  side = int(round(num_tokens**0.5))
  if side * side != num_tokens:
    raise ValueError(f"{what} has {num_tokens} grid tokens, not a square grid: "
                     "pass old_grid=(h, w).")
  return side, side


def resize_posemb(posemb: jax.Array, new_grid: Sequence[int], num_prefix_tokens: int = 0,
                  method: str = "bilinear", old_grid: Optional[Sequence[int]] = None) -> jax.Array:
  """Resizes a (1, prefix + gh*gw, D) position embedding to the grid `new_grid` = (gh', gw').

  The first `num_prefix_tokens` entries (the class token's, for classifier='token') are kept as they
  are; the rest is read as a row-major (gh, gw) grid (`old_grid`, square by default) and
  interpolated.
  """
  if method not in POSEMB_METHODS:
    raise ValueError(f"posemb resize method={method!r}; choose one of {POSEMB_METHODS}.")
  if posemb.ndim != 3 or posemb.shape[0] != 1:
    raise ValueError(f"Expected a (1, tokens, width) position embedding, got shape {posemb.shape}.")
  prefix, grid = posemb[:, :num_prefix_tokens], posemb[0, num_prefix_tokens:]
  gh, gw = old_grid if old_grid is not None else _grid_of(grid.shape[0], "The position embedding")
  if gh * gw != grid.shape[0]:
    raise ValueError(f"old_grid={tuple(old_grid)} does not cover the {grid.shape[0]} grid tokens.")
  nh, nw = (int(n) for n in new_grid)
  grid = grid.reshape(gh, gw, -1)
  if (gh, gw) != (nh, nw):
    if method == "bilinear":
      mat_h = jnp.asarray(linear_resize_matrix(gh, nh, True), grid.dtype)
      mat_w = jnp.asarray(linear_resize_matrix(gw, nw, True), grid.dtype)
      grid = jnp.einsum("Hh,Ww,hwd->HWd", mat_h, mat_w, grid, precision="highest")
    else:
      grid = jax.image.resize(grid, (nh, nw, grid.shape[-1]), method="bicubic")
  return jnp.concatenate([prefix, grid.reshape(1, nh * nw, -1).astype(posemb.dtype)], axis=1)


@functools.lru_cache(maxsize=None)
def _pi_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
  # pinv of a Kronecker product is the Kronecker product of the pinvs, so the 2-D PI-resize
  # separates into one (n_out, n_in) matrix per spatial axis.
  return np.linalg.pinv(linear_resize_matrix(n_in, n_out, align_corners=False).T)


def pi_resize_patch_kernel(kernel: jax.Array, new_hw: Sequence[int]) -> jax.Array:
  """PI-resizes a (ph, pw, C_in, D) patch-embedding kernel to (new_h, new_w, C_in, D) (FlexiViT)."""
  if kernel.ndim != 4:
    raise ValueError(f"Expected a (ph, pw, C, D) patch kernel, got shape {kernel.shape}.")
  ph, pw = kernel.shape[:2]
  nh, nw = (int(n) for n in new_hw)
  if (ph, pw) == (nh, nw):
    return kernel
  mat_h = jnp.asarray(_pi_resize_matrix(ph, nh), kernel.dtype)
  mat_w = jnp.asarray(_pi_resize_matrix(pw, nw), kernel.dtype)
  return jnp.einsum("Hh,Ww,hwcd->HWcd", mat_h, mat_w, kernel, precision="highest")
