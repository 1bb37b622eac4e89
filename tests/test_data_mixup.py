"""Mixup / CutMix on device: what they do to pixels and labels, jitted on a sharded batch."""
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from vit_jax.data import mixup


def _batch(b=8, size=16, classes=4):
  """Image i is filled with the value i; the batch is sharded over the 8 fake devices."""
  images = jnp.arange(b, dtype=jnp.float32)[:, None, None, None] * jnp.ones((b, size, size, 3))
  labels = jax.nn.one_hot(jnp.arange(b) % classes, classes)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  return jax.device_put((images, labels), jax.sharding.NamedSharding(mesh, P("data")))


# One compilation per alpha setting (and input sharding); compiling Beta sampling is not cheap.
_jit_mix = jax.jit(mixup.mix, static_argnames=("mixup_alpha", "cutmix_alpha", "switch_prob"))


def _mix(key, images, labels, **kw):
  return _jit_mix(jax.random.key(key), images, labels, **kw)


def test_disabled_is_identity():
  images, labels = _batch()
  out_images, out_labels = mixup.mix(jax.random.key(0), images, labels)
  assert out_images is images and out_labels is labels


def test_mixup_blends_neighbours_with_the_label_ratio():
  images, labels = _batch()
  out_images, out_labels = _mix(0, images, labels, mixup_alpha=1.0)
  assert out_images.sharding.spec == P("data")
  # Image i is lam * i + (1 - lam) * (i - 1); the label carries the same lam.
  lam = out_labels[1, 1]
  assert 0.5 <= lam < 1  # big_vision's max(lam, 1 - lam): the image's own label dominates.
  np.testing.assert_allclose(out_images[:, 0, 0, 0],
                             lam * images[:, 0, 0, 0] + (1 - lam) * jnp.roll(images[:, 0, 0, 0], 1),
                             rtol=1e-5)
  np.testing.assert_allclose(out_labels.sum(1), 1, rtol=1e-6)


def test_mixup_ratio_is_the_dominant_one_of_a_beta_draw():
  images, labels = _batch()
  lams = np.array([_mix(key, images, labels, mixup_alpha=0.2)[1][1, 1] for key in range(64)])
  assert lams.min() >= 0.5 and lams.max() <= 1
  # Beta(0.2, 0.2) piles up near 0 and 1, so folded onto [0.5, 1] most ratios are close to 1.
  assert np.mean(lams > 0.9) > 0.5


def test_cutmix_pastes_a_box_whose_area_matches_the_labels():
  images, labels = _batch()
  for key in range(5):
    out_images, out_labels = _mix(key, images, labels, cutmix_alpha=1.0)
    pasted = np.asarray(out_images[3, ..., 0] == 2)  # Image 3 receives pixels of image 2.
    kept = np.asarray(out_images[3, ..., 0] == 3)
    assert (pasted | kept).all()  # Pixels are copied, never blended.
    rows, cols = np.nonzero(pasted)
    if rows.size:  # The pasted region is one axis-aligned box.
      assert pasted[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
    np.testing.assert_allclose(out_labels[3, 2], pasted.mean(), atol=1e-6)
    np.testing.assert_allclose(out_labels[3, 3], kept.mean(), atol=1e-6)


def test_switch_prob_picks_cutmix_or_mixup():
  images, labels = _batch()
  picked_cutmix = []
  for key in range(6):
    out, _ = _mix(key, images, labels, mixup_alpha=0.2, cutmix_alpha=1.0, switch_prob=0.5)
    picked_cutmix.append(set(np.unique(out[3])) <= {2.0, 3.0})  # Copied pixels, not blended.
  assert any(picked_cutmix) and not all(picked_cutmix)


def test_bad_arguments():
  images, labels = _batch()
  with pytest.raises(ValueError, match="one-hot labels"):
    mixup.mix(jax.random.key(0), images, jnp.arange(8), mixup_alpha=0.2)
  with pytest.raises(ValueError, match="must be >= 0"):
    mixup.mix(jax.random.key(0), images, labels, mixup_alpha=-1.0)
