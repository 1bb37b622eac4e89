"""Position-embedding resize (official numerics) and FlexiViT PI-resize of the patch kernel."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from vit_jax.models import resize


def _posemb(rng, prefix, side, width=8):
  return rng.normal(size=(1, prefix + side * side, width)).astype(np.float32)


@pytest.mark.parametrize("old,new", [(14, 24), (24, 14), (3, 5), (7, 7)])
def test_bilinear_matches_official_scipy_zoom(old, new):
  """google-research/vision_transformer resizes with scipy.ndimage.zoom(order=1)."""
  posemb = _posemb(np.random.default_rng(0), 1, old)
  out = np.asarray(resize.resize_posemb(posemb, (new, new), num_prefix_tokens=1))
  grid = posemb[0, 1:].reshape(old, old, -1)
  expected = scipy.ndimage.zoom(grid, (new / old, new / old, 1), order=1)
  assert out.shape == (1, 1 + new * new, 8)
  np.testing.assert_array_equal(out[:, :1], posemb[:, :1])  # class-token entry kept
  np.testing.assert_allclose(out[0, 1:].reshape(new, new, -1), expected, atol=1e-6)


def test_no_prefix_tokens_and_non_square_target():
  posemb = _posemb(np.random.default_rng(1), 0, 4)
  out = resize.resize_posemb(posemb, (6, 3), num_prefix_tokens=0)
  assert out.shape == (1, 18, 8)
  # Align-corners interpolation keeps the corner embeddings exactly.
  grid, new = posemb[0].reshape(4, 4, -1), np.asarray(out[0]).reshape(6, 3, -1)
  np.testing.assert_allclose(new[[0, 0, -1, -1], [0, -1, 0, -1]],
                             grid[[0, 0, -1, -1], [0, -1, 0, -1]], atol=1e-6)


def test_bicubic_is_jax_image_resize_and_keeps_prefix():
  posemb = _posemb(np.random.default_rng(2), 1, 5)
  out = resize.resize_posemb(posemb, (8, 8), num_prefix_tokens=1, method="bicubic")
  expected = jax.image.resize(posemb[0, 1:].reshape(5, 5, -1), (8, 8, 8), "bicubic")
  np.testing.assert_array_equal(out[:, :1], posemb[:, :1])
  np.testing.assert_allclose(np.asarray(out[0, 1:]), np.asarray(expected).reshape(64, 8), atol=1e-6)


def test_resize_posemb_runs_under_jit():
  posemb = _posemb(np.random.default_rng(3), 1, 4)
  fn = jax.jit(functools.partial(resize.resize_posemb, new_grid=(6, 6), num_prefix_tokens=1))
  np.testing.assert_allclose(fn(posemb), resize.resize_posemb(posemb, (6, 6), 1), atol=1e-6)


def test_resize_posemb_rejects_bad_input():
  with pytest.raises(ValueError, match="method='nearest'"):
    resize.resize_posemb(np.zeros((1, 17, 4)), (5, 5), 1, method="nearest")
  with pytest.raises(ValueError, match="15 grid tokens, not a square grid"):
    resize.resize_posemb(np.zeros((1, 16, 4)), (5, 5), 1)
  with pytest.raises(ValueError, match=r"\(1, tokens, width\)"):
    resize.resize_posemb(np.zeros((17, 4)), (5, 5), 1)


def _resize_patch(x, hw):
  """Resizes (h, w, C) patches the way FlexiViT does: bilinear, no antialiasing."""
  return jax.image.resize(x, (*hw, x.shape[-1]), "bilinear", antialias=False)


@pytest.mark.parametrize("old,new", [((4, 4), (8, 8)), ((8, 8), (12, 12)), ((7, 7), (16, 16)),
                                     ((8, 4), (12, 10))])
def test_pi_resize_preserves_token_embedding_when_upsampling(old, new):
  """FlexiViT's defining property: <x, w> == <resize(x), PI-resize(w)> for every patch x."""
  kx, kw = jax.random.split(jax.random.key(0))
  patches = jax.random.normal(kx, (16, *old, 3))
  kernel = jax.random.normal(kw, (*old, 3, 5)) / np.sqrt(np.prod(old) * 3)
  new_kernel = jax.jit(functools.partial(resize.pi_resize_patch_kernel, new_hw=new))(kernel)
  assert new_kernel.shape == (*new, 3, 5)
  tokens = jnp.einsum("nhwc,hwcd->nd", patches, kernel, precision="highest")
  resized = jax.vmap(lambda p: _resize_patch(p, new))(patches)
  new_tokens = jnp.einsum("nhwc,hwcd->nd", resized, new_kernel, precision="highest")
  np.testing.assert_allclose(new_tokens, tokens, atol=1e-4)


def test_pi_resize_downsampling_is_least_squares():
  """Shrinking cannot be exact; PI-resize must beat the naive (resized) kernel in the same
  metric."""
  kx, kw = jax.random.split(jax.random.key(1))
  patches = jax.random.normal(kx, (256, 8, 8, 1))
  kernel = jax.random.normal(kw, (8, 8, 1, 4))
  tokens = jnp.einsum("nhwc,hwcd->nd", patches, kernel)
  small = jax.vmap(lambda p: _resize_patch(p, (4, 4)))(patches)

  def error(new_kernel):
    return float(jnp.mean((jnp.einsum("nhwc,hwcd->nd", small, new_kernel) - tokens) ** 2))

  naive = jax.image.resize(kernel, (4, 4, 1, 4), "bilinear") * 4.0  # area-preserving rescale
  assert error(resize.pi_resize_patch_kernel(kernel, (4, 4))) < error(naive)


def test_pi_resize_same_size_is_identity_and_checks_rank():
  kernel = jnp.ones((4, 4, 3, 2))
  assert resize.pi_resize_patch_kernel(kernel, (4, 4)) is kernel
  with pytest.raises(ValueError, match=r"\(ph, pw, C, D\)"):
    resize.pi_resize_patch_kernel(jnp.ones((4, 4, 2)), (8, 8))
