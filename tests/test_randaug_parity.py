"""vit_jax.data.randaug against big_vision's TF RandAugment, pixel for pixel, on real photos.

The reference below re-implements the op definitions of big_vision's
`big_vision/pp/archive/autoaugment.py` (and tfa's transform/rotate it calls) with TensorFlow ops.
The random parts (sign of a geometric op, cutout centre) are taken from the same numpy draws the
op under test makes, so both sides get the same arguments. Outputs must be equal, every value.
"""
import math
import os

import numpy as np
from PIL import Image
import pytest

from vit_jax.data import randaug

# oneDNN is TF's default on x86; it decides the float rounding of the Sharpness blur (fused
# multiply-adds), which randaug follows. Set before TF is imported.
os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
datasets = pytest.importorskip("sklearn.datasets")
tf.config.set_visible_devices([], "GPU")


def _onednn_enabled():
  try:
    from tensorflow.python.util import _pywrap_util_port
  except ImportError:
    return True
  return _pywrap_util_port.IsMklEnabled()


# Without oneDNN (TF_ENABLE_ONEDNN_OPTS=0 before TF was imported) TF's blur rounds each multiply
# and add separately, and ~0.5% of Sharpness's smoothed values differ by 1.
needs_onednn = pytest.mark.skipif(not _onednn_enabled(), reason="TF's Sharpness rounds like oneDNN")

MAGNITUDES = (0, 5, 7, 10, 15, 20)  # big_vision recipes use 10, 15 and 20.
SIGNED = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")


def _photos():
  """The two sklearn sample photos as 224x224 (central square), plus one 160x240 (non-square)."""
  china, flower = datasets.load_sample_images().images  # 427x640 RGB each.
  square = [np.asarray(Image.fromarray(p[:, 106:533]).resize((224, 224), Image.BILINEAR))
            for p in (china, flower)]
  return square + [np.asarray(Image.fromarray(flower).resize((240, 160), Image.BILINEAR))]


PHOTOS = _photos()

# --- Reference: big_vision's ops in TF ------------------------------------------------------------


def tf_blend(image1, image2, factor):
  if factor == 0.0:
    return tf.convert_to_tensor(image1)
  if factor == 1.0:
    return tf.convert_to_tensor(image2)
  image1, image2 = tf.cast(image1, tf.float32), tf.cast(image2, tf.float32)
  temp = image1 + factor * (image2 - image1)
  if 0.0 < factor < 1.0:
    return tf.cast(temp, tf.uint8)
  return tf.cast(tf.clip_by_value(temp, 0.0, 255.0), tf.uint8)


def tf_transform(image, transform):
  """tfa.image.transform (NEAREST, constant 0) on wrap(image), then unwrap with 128."""
  wrapped = tf.concat([image, tf.ones_like(image[..., :1])], -1)[None]
  transform = tf.concat([tf.cast(tf.stack(transform), tf.float32), tf.zeros([2])], 0)[None]
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=wrapped, transforms=transform, output_shape=tf.shape(image)[:2], fill_value=0.0,
      interpolation="NEAREST", fill_mode="CONSTANT")[0]
  return tf.where(out[..., 3:] == 0, tf.constant(128, tf.uint8), out[..., :3])


def tf_rotate(image, degrees):
  radians = tf.constant(degrees, tf.float32) * (math.pi / 180.0)
  height, width = (tf.cast(s, tf.float32) for s in image.shape[:2])
  cos, sin = tf.cos(radians), tf.sin(radians)
  x_offset = ((width - 1) - (cos * (width - 1) - sin * (height - 1))) / 2.0
  y_offset = ((height - 1) - (sin * (width - 1) + cos * (height - 1))) / 2.0
  return tf_transform(image, [cos, -sin, x_offset, sin, cos, y_offset])


def tf_autocontrast(image):
  def scale_channel(channel):
    lo, hi = (tf.cast(f(channel), tf.float32) for f in (tf.reduce_min, tf.reduce_max))
    if hi <= lo:
      return channel
    scale = 255.0 / (hi - lo)
    scaled = tf.cast(channel, tf.float32) * scale + (-lo * scale)
    return tf.cast(tf.clip_by_value(scaled, 0.0, 255.0), tf.uint8)
  return tf.stack([scale_channel(image[..., c]) for c in range(3)], 2)


def tf_equalize(image):
  def scale_channel(channel):
    channel = tf.cast(channel, tf.int32)
    histo = tf.histogram_fixed_width(channel, [0, 255], nbins=256)
    nonzero = tf.reshape(tf.gather(histo, tf.where(histo != 0)), [-1])
    step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255
    if step == 0:
      return tf.cast(channel, tf.uint8)
    lut = (tf.cumsum(histo) + step // 2) // step
    lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
    return tf.cast(tf.gather(lut, channel), tf.uint8)
  return tf.stack([scale_channel(image[..., c]) for c in range(3)], 2)


def tf_contrast(image, factor):
  gray = tf.cast(tf.image.rgb_to_grayscale(image), tf.int32)
  hist = tf.histogram_fixed_width(gray, [0, 255], nbins=256)
  mean = tf.reduce_sum(tf.cast(hist, tf.float32)) / 256.0  # Sic: the pixel count / 256.
  degenerate = tf.clip_by_value(tf.ones_like(gray, tf.float32) * mean, 0.0, 255.0)
  return tf_blend(tf.image.grayscale_to_rgb(tf.cast(degenerate, tf.uint8)), image, factor)


def tf_sharpness(image, factor):
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32, shape=[3, 3, 1, 1]) / 13.
  blurred = tf.nn.depthwise_conv2d(tf.cast(image, tf.float32)[None], tf.tile(kernel, [1, 1, 3, 1]),
                                   [1, 1, 1, 1], padding="VALID")
  blurred = tf.cast(tf.clip_by_value(blurred, 0.0, 255.0), tf.uint8)[0]
  inner = tf.pad(tf.ones_like(blurred), [[1, 1], [1, 1], [0, 0]])
  degenerate = tf.where(inner == 1, tf.pad(blurred, [[1, 1], [1, 1], [0, 0]]), image)
  return tf_blend(degenerate, image, factor)


def tf_cutout(image, pad_size, center):
  height, width = image.shape[:2]
  row, col = center
  lower, upper = max(0, row - pad_size), max(0, height - row - pad_size)
  left, right = max(0, col - pad_size), max(0, width - col - pad_size)
  mask = tf.pad(tf.zeros([height - lower - upper, width - left - right], tf.uint8),
                [[lower, upper], [left, right]], constant_values=1)
  mask = tf.tile(mask[..., None], [1, 1, 3])
  return tf.where(mask == 0, tf.ones_like(image) * 128, image)


TF_OPS = {
    "AutoContrast": tf_autocontrast,
    "Equalize": tf_equalize,
    "Invert": lambda im: 255 - im,
    "Rotate": tf_rotate,
    "Posterize": lambda im, bits: tf.bitwise.left_shift(
        tf.bitwise.right_shift(im, 8 - bits), 8 - bits),
    "Solarize": lambda im, threshold: tf.where(im < threshold, im, 255 - im),
    "Color": lambda im, factor: tf_blend(
        tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(im)), im, factor),
    "Contrast": tf_contrast,
    "Brightness": lambda im, factor: tf_blend(tf.zeros_like(im), im, factor),
    "Sharpness": tf_sharpness,
    "ShearX": lambda im, level: tf_transform(im, [1., level, 0., 0., 1., 0.]),
    "ShearY": lambda im, level: tf_transform(im, [1., 0., 0., level, 1., 0.]),
    "TranslateX": lambda im, pixels: tf_transform(im, [1., 0., pixels, 0., 1., 0.]),
    "TranslateY": lambda im, pixels: tf_transform(im, [1., 0., 0., 0., 1., pixels]),
    "Cutout": tf_cutout,
    "SolarizeAdd": lambda im, addition: tf.where(
        im < 128, tf.cast(tf.clip_by_value(tf.cast(im, tf.int64) + addition, 0, 255), tf.uint8),
        im),
}


def tf_args(name, magnitude, shape, rng):
  """big_vision's level_to_arg (RandAugment constants), drawing signs/centre from `rng`."""
  level = float(magnitude) / 10.0
  height, width = shape[:2]
  sign = lambda v: -v if rng.random() < 0.5 else v
  enhance = level * 1.8 + 0.1
  args = {
      "Rotate": lambda: (sign(level * 30.0),),
      "Posterize": lambda: (int(level * 4),),
      "Solarize": lambda: (int(level * 256),),
      "SolarizeAdd": lambda: (int(level * 110),),
      "Color": lambda: (enhance,), "Contrast": lambda: (enhance,),
      "Brightness": lambda: (enhance,), "Sharpness": lambda: (enhance,),
      "ShearX": lambda: (sign(level * 0.3),), "ShearY": lambda: (sign(level * 0.3),),
      # translate_const=100 and cutout_const=40, as fractions of 224 px (exact at 224).
      "TranslateX": lambda: (sign(level * (100.0 * (width / 224))),),
      "TranslateY": lambda: (sign(level * (100.0 * (height / 224))),),
      "Cutout": lambda: (int(level * (40.0 * (min(height, width) / 224))),
                         (int(rng.integers(height)), int(rng.integers(width)))),
  }
  return args.get(name, lambda: ())()


# --- Parity ---------------------------------------------------------------------------------------


def test_ops_are_big_visions_in_its_order():
  assert list(randaug.OPS) == list(TF_OPS)


@pytest.mark.parametrize("magnitude", MAGNITUDES)
@pytest.mark.parametrize("name", list(TF_OPS))
def test_op_matches_tensorflow(name, magnitude):
  if name == "Sharpness" and not _onednn_enabled():
    pytest.skip("TF's Sharpness rounds like oneDNN")
  seeds = range(4) if name in SIGNED + ("Cutout",) else range(1)
  for image in PHOTOS:
    for seed in seeds:
      ours = randaug.OPS[name](image, magnitude, np.random.default_rng(seed))
      args = tf_args(name, magnitude, image.shape, np.random.default_rng(seed))
      expected = TF_OPS[name](tf.constant(image), *args).numpy()
      assert ours.dtype == np.uint8 and ours.shape == image.shape
      mismatch = np.argwhere(ours != expected)
      assert not len(mismatch), (f"{name}({args}) on {image.shape}: {len(mismatch)} values "
                                 f"differ, first at {mismatch[:3].tolist()}")


def test_signs_and_centres_vary_with_the_seed():
  image = PHOTOS[0]
  for name in SIGNED + ("Cutout",):
    outs = {randaug.OPS[name](image, 10, np.random.default_rng(s)).tobytes() for s in range(4)}
    assert len(outs) >= 2, name


@pytest.mark.parametrize("sign", (1, -1))
def test_rotate_every_integer_magnitude(sign):
  # The rotation matrix is built in float32 (cos/sin too): check every angle the recipe reaches.
  for image in (PHOTOS[0], PHOTOS[2]):
    for magnitude in range(1, 31):
      degrees = sign * magnitude / 10 * 30.0
      np.testing.assert_array_equal(randaug.rotate(image, degrees),
                                    tf_rotate(tf.constant(image), degrees).numpy(), str(degrees))


def test_cutout_at_the_borders():
  image = PHOTOS[2]
  for center in ((0, 0), (159, 239), (5, 120), (80, 237), (159, 0)):
    for pad in (0, 1, 28, 200):
      np.testing.assert_array_equal(randaug.cutout(image, pad, center),
                                    tf_cutout(tf.constant(image), pad, center).numpy())


@needs_onednn
def test_sharpness_on_flat_and_noisy_images():
  # Flat patches and exact multiples of 13 take TF's float rounding path, noise rarely does.
  blocks = np.kron(np.arange(256, dtype=np.uint8).reshape(16, 16), np.ones((5, 7), np.uint8))
  images = [np.repeat(blocks[..., None], 3, -1), PHOTOS[0] & 0xE0,
            np.random.default_rng(0).integers(0, 256, (64, 96, 3)).astype(np.uint8)]
  for image in images:
    for factor in (0.1, 0.64, 1.9, 3.7):
      np.testing.assert_array_equal(randaug.sharpness(image, factor),
                                    tf_sharpness(tf.constant(image), factor).numpy())


@needs_onednn
@pytest.mark.parametrize("magnitude", (5, 10))
def test_rand_augment_matches_tensorflow(magnitude):
  # The same draws in the same order: the op index, then that op's sign or centre.
  names = list(TF_OPS)
  for seed in range(12):
    image = PHOTOS[seed % len(PHOTOS)]
    ours = randaug.rand_augment(Image.fromarray(image), 2, magnitude, np.random.default_rng(seed))
    rng, expected = np.random.default_rng(seed), image
    for _ in range(2):
      name = names[rng.integers(len(names))]
      expected = TF_OPS[name](tf.constant(expected),
                              *tf_args(name, magnitude, expected.shape, rng)).numpy()
    np.testing.assert_array_equal(np.asarray(ours), expected)


# --- Sampling ----------------------------------------------------------------------------------


def test_every_layer_applies_one_uniformly_chosen_op(monkeypatch):
  calls = []
  for name in randaug.OPS:
    monkeypatch.setitem(randaug.OPS, name,
                        lambda im, m, rng, name=name: calls.append((name, m)) or im)
  image = Image.fromarray(PHOTOS[0])
  rng = np.random.default_rng(0)
  draws = 1000
  for _ in range(draws):
    randaug.rand_augment(image, 2, 10, rng)
  # big_vision draws a per-op probability but never uses it: every layer applies its op.
  assert len(calls) == 2 * draws and {m for _, m in calls} == {10}
  counts = np.array([sum(n == name for n, _ in calls) for name in randaug.OPS])
  expected = 2 * draws / len(counts)
  chi2 = ((counts - expected) ** 2 / expected).sum()
  assert chi2 < 37.7, counts  # chi-square, 15 degrees of freedom, p = 0.001.


def test_same_seed_same_result():
  image = Image.fromarray(PHOTOS[1])
  run = lambda seed: np.asarray(randaug.rand_augment(image, 2, 10, np.random.default_rng(seed)))
  np.testing.assert_array_equal(run(3), run(3))
  assert len({run(s).tobytes() for s in range(8)}) >= 6


@pytest.mark.parametrize("name", list(randaug.OPS))
def test_grayscale_is_the_rgb_result_of_its_grey_copy(name):
  gray = np.asarray(Image.fromarray(PHOTOS[2]).convert("L"))[..., None]
  out = randaug.OPS[name](gray, 10, np.random.default_rng(0))
  rgb = randaug.OPS[name](np.repeat(gray, 3, -1), 10, np.random.default_rng(0))
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out, rgb[..., :1])
  image = Image.fromarray(gray[..., 0])
  out = randaug.rand_augment(image, 3, 10, np.random.default_rng(0))
  assert out.mode == "L" and out.size == image.size


@pytest.mark.parametrize("name", list(randaug.OPS))
def test_extra_channels_do_not_change_rgb(name):
  rgb = PHOTOS[2]
  rgba = np.concatenate([rgb, rgb[..., :1] // 2 + 7], -1)  # Numpy paths (no PIL mode).
  out = randaug.OPS[name](rgba, 10, np.random.default_rng(1))
  assert out.shape == rgba.shape and out.dtype == np.uint8
  np.testing.assert_array_equal(out[..., :3], randaug.OPS[name](rgb, 10, np.random.default_rng(1)))
