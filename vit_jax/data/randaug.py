"""RandAugment (Cubuk et al. 2020) in numpy/PIL, matching big_vision's TF implementation.

This follows `distort_image_with_randaugment` in big_vision's
`big_vision/pp/archive/autoaugment.py` (the TF port of the EfficientNet/TPU AutoAugment code
behind big_vision's `randaug(N, M)` pp op), and equals TensorFlow running those op definitions
pixel for pixel (tests/test_randaug_parity.py). What follows from that code, quirks included:

* Each of the `num_layers` layers picks one of the 16 ops uniformly and always applies it (the
  TF code draws a probability per op but never uses it).
* `magnitude` m is on the 0..10 scale; larger values extrapolate (big_vision uses up to 20).
  Not every op gets stronger with it: Posterize keeps int(m / 10 * 4) bits (0 bits acts as 1),
  the enhance ops use the factor m / 10 * 1.8 + 0.1 (1.0, the identity, at m=5), and Solarize's
  threshold int(m / 10 * 256) wraps modulo 256 as TF's cast to uint8 does (m=10 inverts all).
* Float results are truncated, not rounded, to uint8. Contrast blends towards a constant grey
  of (pixel count / 256) rather than the mean intensity: 196 at 224x224, and size-dependent.
* Geometric ops take, for each output pixel, the input pixel nearest to its float32 transform
  (tfa's `transform`, NEAREST) and fill 128; shears act about the top-left corner, rotations
  about the centre. Sharpness rounds like TF's default (oneDNN) CPU convolution.

Kept different on purpose: TF translates by up to 100 px and cuts out squares of half-size up to
40 px whatever the image size. Here both scale with the image (translate: 100/224 of the width or
height; cutout: 40/224 of the shorter side) so a recipe carries over between resolutions; at
224 px they are big_vision's values exactly. Ops take HWC uint8 arrays with any number of
channels; a 1-channel image gives the first channel of the result for its RGB copy.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import numpy as np
from PIL import Image

_MAX_LEVEL = 10.0
_FILL = 128
_REFERENCE_SIDE = 224  # big_vision's pixel constants below hold at this size.
_TRANSLATE_PX = 100.0
_CUTOUT_PX = 40.0

# op(HWC uint8 array, magnitude, rng) -> HWC uint8 array.
AugOp = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]

# --- Ops with explicit arguments (the TF op definitions) -----------------------------------------
# Speed matters (every example, on the host), so table lookups and histograms go through PIL's C
# loops where the channel count allows, and float maths stays in float32 as in TF.

_PIL_MODES = {1: "L", 3: "RGB"}


def _as_pil(image: np.ndarray) -> Image.Image | None:
  mode = _PIL_MODES.get(image.shape[-1])
  if mode is None:
    return None
  height, width = image.shape[:2]
  return Image.frombuffer(mode, (width, height), np.ascontiguousarray(image), "raw", mode, 0, 1)


def _lut(image: np.ndarray, lut: np.ndarray) -> np.ndarray:
  """Maps uint8 values through a 256-entry uint8 table."""
  return np.take(lut, image)


def _map_channels(image: np.ndarray, lut_for: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
  """Maps each channel through the uint8 table `lut_for(histogram of that channel)`."""
  pil = _as_pil(image)
  if pil is None:
    return np.stack([_lut(image[..., c], lut_for(np.bincount(image[..., c].ravel(), minlength=256)))
                     for c in range(image.shape[-1])], -1)
  luts = [lut_for(hist) for hist in np.array(pil.histogram()).reshape(-1, 256)]
  return np.asarray(pil.point(np.concatenate(luts).tolist())).reshape(image.shape)


def _blend_arrays(image1: np.ndarray, image2: np.ndarray, factor: float) -> np.ndarray:
  """image1 + factor * (image2 - image1) in float32, clipped, truncated: TF's `blend`."""
  if factor == 0.0:
    return np.broadcast_to(image1, image2.shape).copy()
  if factor == 1.0:
    return image2
  base = image1.astype(np.float32)
  out = image2.astype(np.float32)
  out -= base
  out *= np.float32(factor)
  out += base
  if factor > 1.0:  # Only extrapolation leaves [0, 255].
    np.clip(out, 0.0, 255.0, out=out)
  return out.astype(np.uint8)


def _blend_from_constant(value: int, image: np.ndarray, factor: float) -> np.ndarray:
  # The degenerate image is constant, so the blend is a 256-entry lookup.
  return _lut(image, _blend_arrays(np.uint8(value), np.arange(256, dtype=np.uint8), factor))


_GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], np.float32)
# Per-channel terms of tf.image.rgb_to_grayscale: (v * (1/255)) * weight, all in float32.
_GRAY_TERMS = ((np.arange(256, dtype=np.float32) * np.float32(1 / 255))[None]
               * _GRAY_WEIGHTS[:, None])


def grayscale(image: np.ndarray) -> np.ndarray:
  """tf.image.rgb_to_grayscale of an RGB uint8 image, as (H, W, 1)."""
  if image.shape[-1] == 1:
    return image
  r, g, b = (np.take(_GRAY_TERMS[c], image[..., c]) for c in range(3))
  return ((r + g + b) * np.float32(255.5)).astype(np.uint8)[..., None]


def _stretch(hist: np.ndarray) -> np.ndarray:
  """AutoContrast's table: the occupied range [lo, hi] onto [0, 255] (identity if lo == hi)."""
  occupied = np.flatnonzero(hist)
  lo, hi = np.float32(occupied[0]), np.float32(occupied[-1])
  if hi <= lo:
    return np.arange(256, dtype=np.uint8)
  scale = np.float32(255) / (hi - lo)
  return np.clip(np.arange(256, dtype=np.float32) * scale + -lo * scale, 0, 255).astype(np.uint8)


def _equalizer(hist: np.ndarray) -> np.ndarray:
  """Equalize's table, with PIL's rounding (TF ported ImageOps.equalize)."""
  step = (hist.sum() - hist[np.flatnonzero(hist)[-1]]) // 255
  if step == 0:
    return np.arange(256, dtype=np.uint8)
  below = np.concatenate([[0], np.cumsum(hist)[:-1]])
  return np.clip((below + step // 2) // step, 0, 255).astype(np.uint8)


def autocontrast(image: np.ndarray) -> np.ndarray:
  return _map_channels(image, _stretch)


def equalize(image: np.ndarray) -> np.ndarray:
  return _map_channels(image, _equalizer)


def invert(image: np.ndarray) -> np.ndarray:
  return 255 - image


def posterize(image: np.ndarray, bits: int) -> np.ndarray:
  # TF casts the shift to uint8 and clamps it to 7, so 0 bits keeps 1 bit.
  shift = min((8 - bits) % 256, 7)
  return image & np.uint8((0xFF >> shift) << shift)


def _select(mask: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """np.where(mask, a, b) for uint8 with bit operations (np.where is slow on uint8 here)."""
  ones = np.negative(mask.view(np.uint8))  # 0xFF where mask.
  return b ^ ((a ^ b) & ones)


def solarize(image: np.ndarray, threshold: int) -> np.ndarray:
  # TF compares against the threshold cast to uint8, which wraps (256 -> 0: invert all).
  return _select(image < threshold % 256, image, 255 - image)


def solarize_add(image: np.ndarray, addition: int, threshold: int = 128) -> np.ndarray:
  added = image + np.uint8(min(max(addition, 0), 255))
  added |= np.negative((added < image).view(np.uint8))  # Saturate what wrapped around.
  return _select(image < threshold, added, image)


def color(image: np.ndarray, factor: float) -> np.ndarray:
  gray = grayscale(image)[..., 0]
  out = np.empty_like(image)
  for c in range(image.shape[-1]):  # Broadcasting the grey plane over channels is slower.
    out[..., c] = _blend_arrays(gray, image[..., c], factor)
  return out


def contrast(image: np.ndarray, factor: float) -> np.ndarray:
  # TF sums the grey histogram (= the pixel count) and divides by 256, meaning to take the mean.
  height, width = image.shape[:2]
  return _blend_from_constant(min(height * width // 256, 255), image, factor)


def brightness(image: np.ndarray, factor: float) -> np.ndarray:
  return _blend_from_constant(0, image, factor)


# TF's smoothing kernel in float32, row-major taps.
_SMOOTH = (np.array([1, 1, 1, 1, 5, 1, 1, 1, 1], np.float32) / np.float32(13)).astype(np.float64)


def _fma_smooth(taps: list[np.ndarray]) -> np.ndarray:
  """TF's float32 accumulation of the 9 taps with fused multiply-adds, truncated to uint8
  (float64 holds each product and sum exactly, so rounding to float32 once per tap is an FMA)."""
  accum = np.zeros(taps[0].shape, np.float32)
  for values, weight in zip(taps, _SMOOTH):
    accum = (values * weight + accum).astype(np.float32)
  return np.clip(accum, 0, 255).astype(np.uint8)


# Smoothing a constant 3x3 patch of value v: v - 1 for some v.
_SMOOTH_CONSTANT = _fma_smooth([np.arange(256)] * 9)


def _smoothed(image: np.ndarray) -> np.ndarray:
  """TF's 3x3 smoothing of the interior pixels (VALID), truncated to uint8.

  TF (with oneDNN, its CPU default) accumulates the taps with float32 fused multiply-adds. That
  is within 1e-4 of the exact weighted sum / 13, so it truncates to sum // 13 unless the sum is a
  multiple of 13. Only those pixels need the float chain: from a table for constant patches
  (flat areas, fills), replayed for the others.
  """
  height, width, channels = image.shape
  pixels = image.astype(np.int16)  # Small temporaries: the weighted sum is at most 13 * 255.
  total = pixels[1:-1, 1:-1] << 2  # The centre weighs 5: 4 here + 1 in the loop.
  for r in range(3):
    for c in range(3):
      total += pixels[r:height - 2 + r, c:width - 2 + c]
  smoothed = total // 13
  centre = image[1:-1, 1:-1]
  flat_rows = image[:, 2:] == image[:, 1:-1]
  flat_rows &= image[:, :-2] == image[:, 1:-1]
  constant = flat_rows[:-2] & flat_rows[1:-1] & flat_rows[2:]
  constant &= image[:-2, 1:-1] == centre
  constant &= image[2:, 1:-1] == centre
  smoothed[constant] = _SMOOTH_CONSTANT[centre[constant]]
  ties = np.flatnonzero((total == smoothed * 13) & ~constant)
  if len(ties):
    row, rest = np.divmod(ties, (width - 2) * channels)
    top_left = row * (width * channels) + rest  # Same column and channel, one row up-left.
    flat = image.ravel()
    smoothed.ravel()[ties] = _fma_smooth([
        flat[top_left + r * width * channels + c * channels] for r in range(3) for c in range(3)])
  return smoothed.astype(np.uint8)


def sharpness(image: np.ndarray, factor: float) -> np.ndarray:
  """Blends with a 3x3 smoothed copy (the 1-pixel border stays as it is)."""
  if factor == 1.0 or min(image.shape[:2]) < 3:
    return image
  out = image.copy()  # Blending the border with itself leaves it as it is.
  out[1:-1, 1:-1] = _blend_arrays(_smoothed(image), image[1:-1, 1:-1], factor)
  return out


def _nearest(coords: np.ndarray) -> np.ndarray:
  """float32 coordinates -> indices, rounding half away from zero like std::round."""
  coords = coords.astype(np.float64)
  return np.trunc(coords + np.copysign(0.5, coords)).astype(np.intp)


@functools.lru_cache(maxsize=16)  # One entry per (size, signed magnitude).
def _source_pixels(height: int, width: int, matrix: tuple[float, ...]) -> np.ndarray:
  """Flat input index per output pixel for TF's projective transform (NEAREST), where
  `matrix` maps output (x, y) to input coordinates; out-of-image pixels get index h * w."""
  a0, a1, a2, b0, b1, b2 = np.array(matrix, np.float32)
  x = np.arange(width, dtype=np.float32)[None]
  y = np.arange(height, dtype=np.float32)[:, None]
  src_x = _nearest(a0 * x + a1 * y + a2)
  src_y = _nearest(b0 * x + b1 * y + b2)
  inside = (src_x >= 0) & (src_x < width) & (src_y >= 0) & (src_y < height)
  return np.where(inside, src_y * width + src_x, height * width).ravel()


def _shifted(image: np.ndarray, axis: int, offset: int) -> np.ndarray:
  """out[i] = image[i + offset] along `axis`, grey where that falls outside."""
  out = np.full_like(image, _FILL)
  size = image.shape[axis]
  dst = [slice(None)] * 2
  src = [slice(None)] * 2
  dst[axis] = slice(max(-offset, 0), max(min(size, size - offset), 0))
  src[axis] = slice(max(offset, 0), max(min(size, size + offset), 0))
  out[tuple(dst)] = image[tuple(src)]
  return out


def affine(image: np.ndarray, matrix: tuple[float, ...]) -> np.ndarray:
  """Output (x, y) takes input (m0 x + m1 y + m2, m3 x + m4 y + m5), or grey 128 outside."""
  matrix = tuple(float(np.float32(v)) for v in matrix)  # TF's transform is float32.
  height, width, channels = image.shape
  a0, a1, a2, b0, b1, b2 = matrix
  if (a0, a1, b0, b1) == (1, 0, 0, 1) and (a2 == 0 or b2 == 0):
    # A translation along one axis: a slice copy when every row/column moves by the same amount.
    axis, offset, size = (1, a2, width) if b2 == 0 else (0, b2, height)
    source = _nearest(np.arange(size, dtype=np.float32) + np.float32(offset))
    if np.all(source == source[0] + np.arange(size)):
      return _shifted(image, axis, int(source[0]))
  # Gather whole pixels (a void dtype of `channels` bytes) with a grey pixel appended.
  pixels = np.concatenate([np.ascontiguousarray(image).reshape(-1, channels),
                           np.full((1, channels), _FILL, np.uint8)]).view(f"V{channels}")
  out = np.take(pixels.ravel(), _source_pixels(height, width, matrix))
  return out.view(np.uint8).reshape(image.shape)


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
  """Rotates about the image centre (tfa's angles_to_projective_transforms, in float32)."""
  height, width = (np.float32(s - 1) for s in image.shape[:2])
  radians = float(np.float32(degrees) * np.float32(math.pi / 180.0))
  # Rounded from double: equals TF's float32 cos/sin at every multiple of 3 degrees (the angles
  # of integer magnitudes); numpy's float32 cos/sin are 1 ulp off at some of them.
  cos, sin = np.float32(math.cos(radians)), np.float32(math.sin(radians))
  x_offset = (width - (cos * width - sin * height)) / np.float32(2)
  y_offset = (height - (sin * width + cos * height)) / np.float32(2)
  return affine(image, (cos, -sin, x_offset, sin, cos, y_offset))


def shear_x(image: np.ndarray, level: float) -> np.ndarray:
  return affine(image, (1.0, level, 0.0, 0.0, 1.0, 0.0))


def shear_y(image: np.ndarray, level: float) -> np.ndarray:
  return affine(image, (1.0, 0.0, 0.0, level, 1.0, 0.0))


def translate_x(image: np.ndarray, pixels: float) -> np.ndarray:
  """Content moves left by `pixels` (right when negative)."""
  return affine(image, (1.0, 0.0, pixels, 0.0, 1.0, 0.0))


def translate_y(image: np.ndarray, pixels: float) -> np.ndarray:
  return affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, pixels))


def cutout(image: np.ndarray, pad_size: int, center: tuple[int, int]) -> np.ndarray:
  """Fills the rows/columns within [center - pad_size, center + pad_size) with grey 128."""
  row, col = center
  out = image.copy()
  out[max(row - pad_size, 0):row + pad_size, max(col - pad_size, 0):col + pad_size] = _FILL
  return out


# --- Magnitude -> arguments (TF's level_to_arg) and random draws ---------------------------------


def _fraction(magnitude: float) -> float:
  return float(magnitude) / _MAX_LEVEL


def _enhance_factor(magnitude: float) -> float:
  return _fraction(magnitude) * 1.8 + 0.1


def _random_sign(value: float, rng: np.random.Generator) -> float:
  return -value if rng.random() < 0.5 else value


def _scaled(pixels: float, side: int) -> float:
  # big_vision's pixel constants hold at 224 px; the ratio is exactly 1.0 there.
  return pixels * (side / _REFERENCE_SIDE)


def _random_cutout(image: np.ndarray, magnitude: float, rng: np.random.Generator) -> np.ndarray:
  height, width = image.shape[:2]
  pad_size = int(_fraction(magnitude) * _scaled(_CUTOUT_PX, min(height, width)))
  center = (int(rng.integers(height)), int(rng.integers(width)))
  return cutout(image, pad_size, center)


OPS: dict[str, AugOp] = {
    "AutoContrast": lambda im, m, rng: autocontrast(im),
    "Equalize": lambda im, m, rng: equalize(im),
    "Invert": lambda im, m, rng: invert(im),
    "Rotate": lambda im, m, rng: rotate(im, _random_sign(_fraction(m) * 30.0, rng)),
    "Posterize": lambda im, m, rng: posterize(im, int(_fraction(m) * 4)),
    "Solarize": lambda im, m, rng: solarize(im, int(_fraction(m) * 256)),
    "Color": lambda im, m, rng: color(im, _enhance_factor(m)),
    "Contrast": lambda im, m, rng: contrast(im, _enhance_factor(m)),
    "Brightness": lambda im, m, rng: brightness(im, _enhance_factor(m)),
    "Sharpness": lambda im, m, rng: sharpness(im, _enhance_factor(m)),
    "ShearX": lambda im, m, rng: shear_x(im, _random_sign(_fraction(m) * 0.3, rng)),
    "ShearY": lambda im, m, rng: shear_y(im, _random_sign(_fraction(m) * 0.3, rng)),
    "TranslateX": lambda im, m, rng: translate_x(
        im, _random_sign(_fraction(m) * _scaled(_TRANSLATE_PX, im.shape[1]), rng)),
    "TranslateY": lambda im, m, rng: translate_y(
        im, _random_sign(_fraction(m) * _scaled(_TRANSLATE_PX, im.shape[0]), rng)),
    "Cutout": _random_cutout,
    "SolarizeAdd": lambda im, m, rng: solarize_add(im, int(_fraction(m) * 110)),
}
_NAMES = tuple(OPS)  # TF's order, so an op index means the same op on both sides.


def rand_augment(image: Image.Image, num_layers: int, magnitude: float,
                 rng: np.random.Generator) -> Image.Image:
  """Applies `num_layers` ops drawn uniformly (with replacement), each at `magnitude`."""
  pixels = np.asarray(image)
  if pixels.ndim == 2:
    pixels = pixels[..., None]
  for _ in range(num_layers):
    pixels = OPS[_NAMES[rng.integers(len(_NAMES))]](pixels, magnitude, rng)
  if pixels.shape[-1] == 1:
    pixels = pixels[..., 0]
  return Image.fromarray(pixels)
