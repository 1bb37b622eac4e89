"""inception_crop, resize, resize_small and central_crop against big_vision's definitions of the
same pp ops (big_vision/pp/ops_image.py), with TensorFlow as the oracle, on the two photos
scikit-learn ships (427x640).

big_vision draws the Inception crop box with tf.image.sample_distorted_bounding_box and resizes
with tf.image.resize, then clips and casts back to uint8 (truncating). Ours run per example on PIL /
numpy without TF; these tests hold them to the same crop distribution and, for a given box, the
same pixels.
"""
import numpy as np
from PIL import Image
import pytest
import scipy.stats
from sklearn.datasets import load_sample_images
import tensorflow as tf

from vit_jax.data import image as image_lib
from vit_jax.data import preprocess


@pytest.fixture(scope="module")
def photos():
  return load_sample_images().images


def _apply(pp, image, seed=0):
  out = preprocess.parse(pp)({"image": Image.fromarray(image), "label": 0, "id": "photo"},
                             np.random.default_rng(seed))
  return preprocess.to_array(out["image"])


def _big_vision_resize(image, size, method="bilinear", antialias=False):
  """big_vision's resize: tf.image.resize, then clip to the input dtype's range and cast."""
  out = tf.image.resize(image, size, method=method, antialias=antialias)
  return tf.cast(tf.clip_by_value(out, 0, 255), tf.uint8).numpy()


def _big_vision_resize_small(image, smaller_size):
  """big_vision's resize_small with its defaults (method='area', antialias=False)."""
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  factor = tf.cast(smaller_size, tf.float32) / tf.cast(tf.minimum(h, w), tf.float32)
  new_h = tf.cast(tf.round(tf.cast(h, tf.float32) * factor), tf.int32)
  new_w = tf.cast(tf.round(tf.cast(w, tf.float32) * factor), tf.int32)
  return _big_vision_resize(image, (new_h, new_w), "area")


def _assert_close(ours, expected, max_fraction):
  """Equal up to 1 level on at most max_fraction of the values (0: exactly equal)."""
  assert ours.shape == expected.shape and ours.dtype == expected.dtype == np.uint8
  diff = np.abs(ours.astype(int) - expected)
  if max_fraction == 0:
    np.testing.assert_array_equal(ours, expected)
  assert diff.max() <= 1 and (diff > 0).mean() <= max_fraction, (diff.max(), (diff > 0).mean())


# --- the crop box distribution --------------------------------------------------------------------

SHAPES = [(427, 640), (224, 224), (500, 200), (8, 8)]
AREAS = [(5, 100), (8, 100), (50, 100)]
NUM_BOXES = 4000
ALPHA = 1e-4  # KS p-value floor; with fixed seeds each comparison is deterministic.


def _tf_boxes(height, width, area_min, area_max, n, seed):
  """n boxes (top, left, height, width) from the sample_distorted_bounding_box call of big_vision's
  inception_crop (the op's own seed makes the sequence reproducible)."""
  @tf.function
  def draw():
    def one(_):
      begin, size, _ = tf.image.sample_distorted_bounding_box(
          [height, width, 3], tf.zeros([0, 0, 4]), seed=seed,
          area_range=(area_min / 100, area_max / 100), min_object_covered=0,
          use_image_if_no_bounding_boxes=True)
      return tf.concat([begin[:2], size[:2]], 0)
    return tf.map_fn(one, tf.range(n), fn_output_signature=tf.int32)
  return draw().numpy()


def _our_boxes(height, width, area_min, area_max, n, rng):
  return np.array([image_lib.inception_crop_box(height, width, area_min, area_max, rng)
                   for _ in range(n)])


def _old_box(height, width, area_min, area_max, rng):
  """The sampler inception_crop had before (kept to show that the test tells it apart): area
  uniform in percent, aspect ratio log-uniform in [3/4, 4/3], 10 attempts, offsets up to and
  including the far edge."""
  for _ in range(10):
    area = height * width * rng.uniform(area_min, area_max) / 100
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    w, h = round(np.sqrt(area * ratio)), round(np.sqrt(area / ratio))
    if 0 < w <= width and 0 < h <= height:
      return rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w
  return 0, 0, height, width


class _LogUniformRatio:
  """Wraps an rng so that inception_crop_box's aspect ratio comes out log-uniform instead of
  uniform, everything else equal: checks that the aspect statistic alone detects that law."""

  def __init__(self, rng, low=0.75, high=1.33):
    self.rng, self.low, self.high = rng, low, high

  def random(self, dtype):
    ratio = self.low * (self.high / self.low) ** self.rng.random()
    return dtype((ratio - self.low) / (self.high - self.low))

  def integers(self, n):
    return self.rng.integers(n)


def _differences(boxes, reference, height, width):
  """What tells `boxes` apart from `reference`: the statistics (area fraction, aspect ratio w/h,
  top, left) whose two-sample KS test rejects at ALPHA; 'whole image' when the rate of whole-image
  boxes (TF's fallback, or a full-size draw) differs by over 4 standard errors; 'far edge' when a
  box smaller than the image touches its bottom or right edge (TF's offset bound is exclusive)."""
  def statistics(b):
    top, left, h, w = np.asarray(b, np.float64).T
    return {"area": h * w / (height * width), "aspect": w / h, "top": top, "left": left}
  ours, ref = statistics(boxes), statistics(reference)
  found = [k for k in ref if scipy.stats.ks_2samp(ours[k], ref[k]).pvalue < ALPHA]
  whole = [np.mean((b[:, 2] == height) & (b[:, 3] == width)) for b in (boxes, reference)]
  pooled = np.mean(whole)
  if abs(whole[0] - whole[1]) > 4 * np.sqrt(2 * pooled * (1 - pooled) / len(boxes)) + 1e-9:
    found.append("whole image")
  for b in (boxes, reference):
    top, left, h, w = np.asarray(b).T
    if np.any((h < height) & (top + h == height)) or np.any((w < width) & (left + w == width)):
      found.append("far edge" if b is boxes else "far edge in the reference")
  return found


@pytest.mark.parametrize("height, width", SHAPES)
def test_crop_box_distribution_matches_tensorflow(height, width):
  for i, (area_min, area_max) in enumerate(AREAS):
    reference = _tf_boxes(height, width, area_min, area_max, NUM_BOXES, seed=17 + i)
    rng = np.random.default_rng([height, width, i])
    ours = _our_boxes(height, width, area_min, area_max, NUM_BOXES, rng)
    assert _differences(ours, reference, height, width) == [], (area_min, area_max)
    # The same check rejects the previous sampler (log-uniform aspect, uniform area, ...).
    old = np.array([_old_box(height, width, area_min, area_max, rng) for _ in range(NUM_BOXES)])
    assert "area" in _differences(old, reference, height, width), (area_min, area_max)


def test_aspect_ratio_is_uniform_not_log_uniform():
  reference = _tf_boxes(427, 640, 5, 100, NUM_BOXES, seed=3)
  rng = np.random.default_rng(3)
  assert _differences(_our_boxes(427, 640, 5, 100, NUM_BOXES, rng), reference, 427, 640) == []
  log_uniform = _our_boxes(427, 640, 5, 100, NUM_BOXES, _LogUniformRatio(rng))
  assert "aspect" in _differences(log_uniform, reference, 427, 640)


def test_crop_box_corner_cases():
  rng = np.random.default_rng(0)
  # The whole range, pinned: 100% of a square image is the image itself (no fallback needed).
  assert image_lib.inception_crop_box(40, 40, 100, 100, rng) == (0, 0, 40, 40)
  # A 1-pixel image has only one box; a 2x500 strip cannot hold 3/4..4/3 at 50%: fallback.
  assert image_lib.inception_crop_box(1, 1, 5, 100, rng) == (0, 0, 1, 1)
  assert image_lib.inception_crop_box(2, 500, 50, 100, rng) == (0, 0, 2, 500)


# --- pixels -------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [224, (160, 96), 600])  # down, anisotropic, up (427 rows -> 600)
def test_inception_crop_pixels_match_big_vision_on_the_same_box(photos, size):
  hw = (size, size) if isinstance(size, int) else size
  for photo in photos:
    for seed in range(3):
      ours = _apply(f"inception_crop({size!r})", photo, seed)
      top, left, h, w = image_lib.inception_crop_box(427, 640, 5, 100,
                                                      np.random.default_rng(seed))
      crop = photo[top:top + h, left:left + w]
      _assert_close(ours, _big_vision_resize(crop, hw), 0)
      np.testing.assert_array_equal(_apply("inception_crop", photo, seed), crop)  # size=None
  # Boxes the sampler rarely draws: the whole photo, a sliver, a tiny patch blown up 30x.
  for box in [(0, 0, 427, 640), (100, 3, 300, 17), (200, 300, 7, 8)]:
    top, left, h, w = box
    ours = np.asarray(image_lib.resize_image(Image.fromarray(photos[0]), hw, box=box))
    _assert_close(ours, _big_vision_resize(photos[0][top:top + h, left:left + w], hw), 0)


def test_inception_crop_antialias_matches_big_vision_on_the_same_box(photos):
  for seed in range(3):
    ours = _apply("inception_crop(224, antialias=True)", photos[1], seed)
    top, left, h, w = image_lib.inception_crop_box(427, 640, 5, 100, np.random.default_rng(seed))
    expected = _big_vision_resize(photos[1][top:top + h, left:left + w], (224, 224),
                                  antialias=True)
    _assert_close(ours, expected, 0.005)


# Without antialiasing ours redo TF's float32 arithmetic: exactly equal. With it, PIL's filters on
# float pixels differ from TF's ScaleAndTranslate by < 0.01 before truncation, which flips a level
# on 0.3% (bilinear), 0.6% (bicubic), 0.2% (lanczos3) of the values at most on these sizes.
@pytest.mark.parametrize("method, antialias, max_fraction", [
    ("bilinear", False, 0), ("nearest", False, 0), ("area", False, 0),
    ("bilinear", True, 0.005), ("bicubic", True, 0.01), ("lanczos3", True, 0.005)])
def test_resize_matches_big_vision(photos, method, antialias, max_fraction):
  for photo in photos:
    for size in [(224, 224), (256, 384), (97, 31), (600, 700)]:
      ours = _apply(f"resize({size}, method={method!r}, antialias={antialias})", photo)
      _assert_close(ours, _big_vision_resize(photo, size, method, antialias), max_fraction)


def test_resize_small_matches_big_vision(photos):
  # Landscape, portrait, odd sides, and 448x641 whose long side lands on x.5 at 224 (rounded to
  # even, as tf.round). Down- and upscaled.
  tall = np.concatenate([photos[1], photos[1][:21]])[:448]
  odd_shapes = [photos[0], photos[1].transpose(1, 0, 2), photos[0][:301, :451],
                np.concatenate([tall, tall[:, :1]], axis=1)]
  for image in odd_shapes:
    for smaller_size in [224, 256, 100, 500]:
      _assert_close(_apply(f"resize_small({smaller_size})", image),
                    _big_vision_resize_small(image, smaller_size), 0)


def test_central_crop_matches_big_vision(photos):
  image = photos[0][:301, :451]
  for crop_size in [224, (100, 300), (301, 451), None]:
    h, w = (301, 301) if crop_size is None else (
        (crop_size, crop_size) if isinstance(crop_size, int) else crop_size)
    expected = tf.image.crop_to_bounding_box(image, (301 - h) // 2, (451 - w) // 2, h, w).numpy()
    np.testing.assert_array_equal(_apply(f"central_crop({crop_size!r})", image), expected)


def test_big_vision_pp_string_runs_as_is(photos):
  """An eval and a train chain as big_vision configs write them (keyword names included)."""
  ev = _apply("decode|resize_small(smaller_size=256, method='area')|central_crop(crop_size=224)",
              photos[0])
  train = _apply("inception_crop(size=224, area_min=8, area_max=100, method='bilinear', "
                 "antialias=False)|flip_lr", photos[1])
  assert ev.shape == train.shape == (224, 224, 3)
