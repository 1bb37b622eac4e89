"""pp strings and each preprocessing op's effect, on small real images."""
import io

import numpy as np
from PIL import Image
import pytest

from vit_jax.data import preprocess, randaug


def _gradient(h=24, w=32):
  """An RGB image whose pixels tell where they came from: R = row, G = column."""
  rows, cols = np.mgrid[0:h, 0:w]
  return np.stack([rows * 255 // (h - 1), cols * 255 // (w - 1), np.full_like(rows, 77)],
                  -1).astype(np.uint8)


def _encoded(array, fmt):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, fmt)
  return buf.getvalue()


def _run(pp, image, seed=0, label=3):
  return preprocess.parse(pp)({"image": image, "label": label, "id": "x"},
                              np.random.default_rng(seed))


def test_parse_errors_name_the_problem():
  with pytest.raises(ValueError, match="Unknown pp op 'flipp'.*Available: .*flip_lr"):
    preprocess.parse("decode|flipp")
  with pytest.raises(ValueError, match="Cannot parse pp op"):
    preprocess.parse("decode|resize(224")
  with pytest.raises(ValueError, match="Bad arguments for pp op 'resize\\(1, 2, 3, 4\\)'"):
    preprocess.parse("resize(1, 2, 3, 4)")
  with pytest.raises(ValueError, match="must be Python literals"):
    preprocess.parse("resize(size)")
  with pytest.raises(ValueError, match="area_min <= area_max"):
    preprocess.parse("inception_crop(8, area_min=50, area_max=20)")
  assert preprocess.op_arguments("decode|onehot(depth=7, on=0.9)", "onehot") == dict(
      depth=7, on=0.9, off=0.0, label_smoothing=0.0)
  assert preprocess.op_arguments("decode", "onehot") is None


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_decode_channels(fmt):
  data = _encoded(_gradient(), fmt)
  rgb = _run("decode", data)["image"]
  gray = _run("decode(1)|value_range(0, 1)", data)["image"]
  assert preprocess.to_array(rgb).shape == (24, 32, 3)
  assert gray.shape == (24, 32, 1) and gray.dtype == np.float32
  if fmt == "PNG":  # Lossless: exact pixels.
    np.testing.assert_array_equal(np.asarray(rgb), _gradient())


@pytest.mark.parametrize("channels", [1, 3])
def test_sixteen_bit_images_decode_to_their_high_byte(channels):
  """As TensorFlow's decode_png to uint8 (medical / scientific PNGs); PIL's own conversion clips
  every sample above 255 to white."""
  samples = (np.arange(16, dtype=np.uint16) * 4000).reshape(4, 4)
  out = preprocess.to_array(_run(f"decode({channels})", _encoded(samples, "PNG"))["image"])
  assert out.shape == (4, 4, channels) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[..., 0], samples >> 8)
  for wide in (np.float32, np.int32):
    with pytest.raises(ValueError, match="32-bit samples .* no known value range"):
      _run("decode", _encoded(samples.astype(wide), "TIFF"))


def test_grayscale_to_rgb():
  digit = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28, 1)
  out = preprocess.to_array(_run("decode(3)", _encoded(digit[..., 0], "PNG"))["image"])
  assert out.shape == (28, 28, 3)
  np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_resize_resize_small_central_crop():
  image = _gradient(24, 32)
  assert preprocess.to_array(_run("resize((10, 12))", image)["image"]).shape == (10, 12, 3)
  small = preprocess.to_array(_run("resize_small(12)", image)["image"])
  assert small.shape == (12, 16, 3)  # Shorter side 12, aspect kept.
  crop = preprocess.to_array(_run("central_crop(8)", image)["image"])
  np.testing.assert_array_equal(crop, image[8:16, 12:20])
  square = preprocess.to_array(_run("central_crop", image)["image"])  # No size: largest square.
  np.testing.assert_array_equal(square, image[:, 4:28])
  with pytest.raises(ValueError, match="resize_small"):
    _run("central_crop(30)", image)
  # tf.image.resize's method names; bicubic / lanczos3 only antialiased (PIL's filters).
  with pytest.raises(ValueError, match="Unknown resize method 'box'"):
    preprocess.parse("resize(8, method='box')")
  with pytest.raises(ValueError, match="'bicubic' is only available with antialias=True"):
    preprocess.parse("resize_small(8, method='bicubic')")
  smooth = preprocess.to_array(_run("resize(12, 'bicubic', antialias=True)", image)["image"])
  assert smooth.shape == (12, 12, 3)


def test_inception_crop_area_and_determinism():
  image = _gradient(40, 40)
  full = preprocess.to_array(_run("inception_crop(20, area_min=100)", image)["image"])
  np.testing.assert_array_equal(full, preprocess.to_array(_run("resize(20)", image)["image"]))
  crops = [preprocess.to_array(
               _run("inception_crop(20, area_min=5, area_max=30)", image, s)["image"])
           for s in range(4)]
  assert all(c.shape == (20, 20, 3) for c in crops)
  # A crop of <= 30% of the area spans at most ~sqrt(0.3 * 4/3) of the rows: a narrow row range.
  assert all(np.ptp(c[..., 0]) < 0.75 * np.ptp(image[..., 0]) for c in crops)
  assert len({c.tobytes() for c in crops}) == 4  # Different seeds, different crops...
  again = preprocess.to_array(
      _run("inception_crop(20, area_min=5, area_max=30)", image, 2)["image"])
  np.testing.assert_array_equal(again, crops[2])  # ...the same seed, the same crop.


def test_flip_lr():
  image = _gradient()
  flipped = preprocess.to_array(_run("flip_lr(p=1)", image)["image"])
  np.testing.assert_array_equal(flipped, image[:, ::-1])
  np.testing.assert_array_equal(preprocess.to_array(_run("flip_lr(p=0)", image)["image"]), image)
  outcomes = {preprocess.to_array(_run("flip_lr", image, s)["image"]).tobytes() for s in range(16)}
  assert outcomes == {image.tobytes(), image[:, ::-1].tobytes()}


def test_random_shift_translates_within_bounds():
  image = np.zeros((12, 12, 1), np.uint8)
  image[5, 6] = 255
  positions = set()
  for seed in range(40):
    out = _run("random_shift(2)", image, seed)["image"]
    assert out.shape == (12, 12, 1)
    (row,), (col,), _ = np.nonzero(out)
    assert abs(row - 5) <= 2 and abs(col - 6) <= 2
    positions.add((row, col))
  assert len(positions) > 10  # Shifts vary over the 5x5 possibilities.
  np.testing.assert_array_equal(_run("random_shift(0)", image)["image"], image)


@pytest.mark.parametrize("name", sorted(randaug.OPS))
def test_each_randaug_op_changes_the_image(name):
  # Texture (for Sharpness) on top of a gradient (for the rest).
  texture = np.random.default_rng(0).integers(0, 60, (32, 32, 3))
  image = (_gradient(32, 32) * 0.7 + texture).astype(np.uint8)
  out = randaug.OPS[name](image, 10, np.random.default_rng(0))  # HWC uint8, magnitude 0..10.
  assert out.shape == image.shape and out.dtype == np.uint8
  assert not np.array_equal(out, image), name


def test_randaug_layers():
  image = _gradient(32, 32)
  np.testing.assert_array_equal(preprocess.to_array(_run("randaug(0, 10)", image)["image"]), image)
  outs = {preprocess.to_array(_run("randaug(2, 10)", image, s)["image"]).tobytes()
          for s in range(6)}
  assert len(outs) == 6 and image.tobytes() not in outs


def test_value_range():
  out = _run("value_range(-1, 1)", np.array([[[0], [255]]], np.uint8))["image"]
  assert out.dtype == np.float32
  np.testing.assert_allclose(out[..., 0], [[-1, 1]])
  with pytest.raises(ValueError, match="value_range last"):
    _run("value_range(0, 1)|flip_lr(p=1)", _gradient())


def test_onehot_and_label_smoothing():
  np.testing.assert_array_equal(_run("onehot(4)", _gradient(), label=2)["label"], [0, 0, 1, 0])
  smooth = _run("onehot(4, label_smoothing=0.2)", _gradient(), label=2)["label"]
  np.testing.assert_allclose(smooth, [0.05, 0.05, 0.85, 0.05])
  assert smooth.dtype == np.float32 and np.isclose(smooth.sum(), 1)
  with pytest.raises(ValueError, match="Label 7 of x is outside onehot\\(4\\)"):
    _run("onehot(4)", _gradient(), label=7)
  with pytest.raises(ValueError, match="not both"):
    preprocess.parse("onehot(4, on=0.9, label_smoothing=0.1)")
