"""Image arrays, and big_vision's crop and resize numerics on numpy.

big_vision builds its crop and resize ops from tf.image.sample_distorted_bounding_box and
tf.image.resize. The functions here redo TF's arithmetic step by step in float32, so that the same
pp string draws crops from the same distribution and turns a given crop into the same uint8 pixels
(TF returns float32, which big_vision clips and casts to uint8, truncating; astype(np.uint8) does
the same). tests/test_crop_parity.py checks them against TensorFlow.
"""
from __future__ import annotations

import functools
import math
import threading
from typing import Any

import numpy as np
from PIL import Image

# Resize methods, by tf.image.resize's names (big_vision passes its `method` straight to it).
# "bilinear", "nearest" and "area" are computed here with TF's own arithmetic; "area" and "nearest"
# ignore `antialias`, as in TF. With antialias=True, "bilinear", "bicubic" and "lanczos3" use PIL's
# filters (triangle, Keys cubic a=-0.5, Lanczos-3, widened by the downscale factor: TF's kernels)
# on float pixels, truncated to uint8 as big_vision's cast does.
_PIL_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                "lanczos3": Image.Resampling.LANCZOS}
_METHODS = ("area", "bicubic", "bilinear", "lanczos3", "nearest")


def check_method(method: str, antialias: bool) -> None:
  if method not in _METHODS:
    raise ValueError(f"Unknown resize method {method!r}; use one of {list(_METHODS)} "
                     "(tf.image.resize's names).")
  if method in ("bicubic", "lanczos3") and not antialias:
    raise ValueError(f"Resize method {method!r} is only available with antialias=True (PIL's "
                     "filter); without antialiasing use 'bilinear', 'nearest' or 'area'.")


def _uint8(array: np.ndarray) -> np.ndarray:
  if array.dtype != np.uint8:
    raise ValueError(f"Image ops need uint8 pixels before value_range; got {array.dtype}. "
                     "Put value_range last in the pp string.")
  return array


def to_pil(image: Any) -> Image.Image:
  """A PIL view of an HWC uint8 array (or the PIL image itself)."""
  if isinstance(image, Image.Image):
    return image
  array = _uint8(np.asarray(image))
  return Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array)


def to_array(image: Any) -> np.ndarray:
  """HWC array of an image (grayscale gets a trailing channel axis)."""
  array = np.asarray(image)
  return array[..., None] if array.ndim == 2 else array


def to_uint8_array(image: Any) -> np.ndarray:
  """HWC uint8 array of a PIL image or an array (no PIL round trip for an array)."""
  return _uint8(to_array(image))


def inception_crop_box(height: int, width: int, area_min: float, area_max: float,
                       rng: np.random.Generator, ratio_min: float = 0.75, ratio_max: float = 1.33,
                       max_attempts: int = 100) -> tuple[int, int, int, int]:
  """(top, left, crop_height, crop_width) of an Inception crop, drawn as TF's
  sample_distorted_bounding_box does with big_vision's arguments (area_range=(area_min/100,
  area_max/100), min_object_covered=0): per attempt an aspect ratio (width / height) uniform in
  [ratio_min, ratio_max), then an integer height uniform between the heights that give the least
  and the most area at that ratio, then an offset uniform in [0, H - crop_height) (0 when the crop
  spans the image; TF's bound is exclusive). After max_attempts misses: the whole image."""
  f32 = np.float32
  min_area = f32(area_min / 100) * f32(width) * f32(height)
  max_area = f32(area_max / 100) * f32(width) * f32(height)
  ratio_span = f32(ratio_max) - f32(ratio_min)
  for _ in range(max_attempts):
    ratio = f32(rng.random(dtype=np.float32)) * ratio_span + f32(ratio_min)
    box = _box_at_ratio(height, width, min_area, max_area, ratio, rng)
    if box is not None:
      return box
  return 0, 0, height, width


def _rint(x: np.float32) -> int:
  return int(np.rint(x))  # Half to even, as lrintf in the default rounding mode.


def _box_at_ratio(height: int, width: int, min_area: np.float32, max_area: np.float32,
                  ratio: np.float32, rng: np.random.Generator) -> tuple[int, int, int, int] | None:
  """One attempt of TF's GenerateRandomCrop at a given aspect ratio; None when it fails."""
  f32 = np.float32
  low = _rint(np.sqrt(min_area / ratio))
  high = _rint(np.sqrt(max_area / ratio))
  if _rint(f32(high) * ratio) > width:  # Tallest crop whose rounded width still fits.
    high = int((width + 0.5 - float(f32(1e-7))) / float(ratio))
    if _rint(f32(high) * ratio) > width:
      high -= 1
  high = min(high, height)
  crop_h = high if low >= high else low + int(rng.integers(high - low + 1))
  crop_w = _rint(f32(crop_h) * ratio)
  # One step up or down when rounding left the area just outside the range.
  if f32(crop_w * crop_h) < min_area:
    crop_h += 1
    crop_w = _rint(f32(crop_h) * ratio)
  if f32(crop_w * crop_h) > max_area:
    crop_h -= 1
    crop_w = _rint(f32(crop_h) * ratio)
  area = f32(crop_w * crop_h)
  if (area < min_area or area > max_area or not 0 < crop_w <= width
      or not 0 < crop_h <= height):
    return None
  top = int(rng.integers(height - crop_h)) if crop_h < height else 0
  left = int(rng.integers(width - crop_w)) if crop_w < width else 0
  return top, left, crop_h, crop_w


# Per-axis sampling tables, cached: an axis is (input length, output length) and eval resizes or
# training crops of common sizes repeat them. The returned arrays are shared; never write to them.

@functools.lru_cache(maxsize=4096)
def _bilinear_axis(n_in: int, n_out: int, channels: int = 1
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """TF ResizeBilinear with half-pixel centres: output i samples input position
  (i + 0.5) * n_in / n_out - 0.5 between its floor and ceil, both clamped into the axis. With
  channels > 1 the indices address a row flattened to (n_in * channels,)."""
  scale = np.float32(n_in) / np.float32(n_out)
  position = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
  floor = np.floor(position)
  lower = np.maximum(floor, 0).astype(np.intp)
  upper = np.minimum(np.ceil(position), n_in - 1).astype(np.intp)
  fraction = position - floor
  if channels > 1:
    offsets = np.arange(channels)
    lower = (lower[:, None] * channels + offsets).ravel()
    upper = (upper[:, None] * channels + offsets).ravel()
    fraction = np.repeat(fraction, channels)
  return lower, upper, fraction


@functools.lru_cache(maxsize=1024)
def _area_axis(n_in: int, n_out: int, channels: int = 1
               ) -> tuple[np.ndarray, np.ndarray, np.float32]:
  """TF ResizeArea: output i averages input [i * s, (i + 1) * s), s = n_in / n_out, each input cell
  weighted by the part of it inside. Returns (indices, weights), both (taps, n_out * channels),
  tap k being the k-th cell from the first (unused taps weigh 0: adding 0 leaves a float sum as
  it is), and s."""
  scale = np.float32(n_in) / np.float32(n_out)
  begin = np.arange(n_out, dtype=np.float32) * scale
  end = np.arange(1, n_out + 1, dtype=np.float32) * scale
  first = np.floor(begin).astype(np.intp)
  stop = np.ceil(end).astype(np.intp)
  index = first + np.arange(int((stop - first).max()))[:, None]
  cell, one = index.astype(np.float32), np.float32(1)
  weight = np.where(cell < begin, np.where(cell + one > end, scale, cell + one - begin),
                    np.where(cell + one > end, end - cell, one))
  weight = np.where(index < stop, weight, np.float32(0)).astype(np.float32)
  index = np.clip(index, 0, n_in - 1)
  if channels > 1:
    index = (index[..., None] * channels + np.arange(channels)).reshape(len(index), -1)
    weight = np.repeat(weight, channels, axis=1)
  return index, weight, scale


@functools.lru_cache(maxsize=1024)
def _nearest_axis(n_in: int, n_out: int) -> np.ndarray:
  """TF ResizeNearestNeighbor with half-pixel centres: floor((i + 0.5) * n_in / n_out)."""
  scale = np.float32(n_in) / np.float32(n_out)
  position = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale
  return np.minimum(np.floor(position), n_in - 1).astype(np.intp)


# Reused per-thread work arrays: allocating a few fresh MB per image costs more than the
# arithmetic (the allocator returns large blocks to the OS, and touching them again faults pages).
# Arrays over _KEEP_BYTES (only for very large images) are not kept.
_scratch = threading.local()
_KEEP_BYTES = 32 << 20


def _work_array(name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
  """This thread's array `name`, grown when too small; contents undefined."""
  size = math.prod(shape)
  array = getattr(_scratch, name, None)
  if array is None or array.size < size or array.dtype != dtype:
    array = np.empty(size, dtype)
    if array.nbytes <= _KEEP_BYTES:
      setattr(_scratch, name, array)
  return array[:size].reshape(shape)


@functools.lru_cache(maxsize=4096)
def _bilinear_rows(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """The input rows ResizeBilinear reads (each once), where each output row's lower and upper
  input rows sit among them, and the fractions."""
  lower, upper, fraction = _bilinear_axis(n_in, n_out)
  rows, at = np.unique(np.concatenate([lower, upper]), return_inverse=True)
  return rows, at[:n_out], at[n_out:], fraction


def _resize_bilinear(pixels: np.ndarray, h: int, w: int) -> np.ndarray:
  """uint8 (h, w, C): each input row interpolated along x first, then rows along y, in TF's
  order of operations."""
  in_w, channels = pixels.shape[1:]
  rows, lower_at, upper_at, y_fraction = _bilinear_rows(pixels.shape[0], h)
  x_lower, x_upper, x_fraction = _bilinear_axis(in_w, w, channels)
  n, width = len(rows), w * channels
  picked_rows = _work_array("rows", (n, in_w, channels), np.uint8)
  np.take(pixels, rows, axis=0, out=picked_rows, mode="clip")
  flat = picked_rows.reshape(n, in_w * channels)
  picked = _work_array("picked", (n, width), np.uint8)
  along_x = _work_array("along_x", (n, width), np.float32)
  right = _work_array("right", (n, width), np.float32)
  np.take(flat, x_lower, axis=1, out=picked, mode="clip")
  along_x[...] = picked
  np.take(flat, x_upper, axis=1, out=picked, mode="clip")
  right[...] = picked
  right -= along_x
  right *= x_fraction
  along_x += right  # left + (right - left) * fraction
  top = _work_array("top", (h, width), np.float32)
  bottom = _work_array("bottom", (h, width), np.float32)
  np.take(along_x, lower_at, axis=0, out=top, mode="clip")
  np.take(along_x, upper_at, axis=0, out=bottom, mode="clip")
  bottom -= top
  bottom *= y_fraction[:, None]
  bottom += top
  return bottom.reshape(h, w, channels).astype(np.uint8)  # Truncates, as TF's cast.


def _resize_area(pixels: np.ndarray, h: int, w: int) -> np.ndarray:
  """uint8 (h, w, C), summing as TF does: the weighted cells of each input row along x, then those
  row sums weighted along y, then times 1 / (s_y * s_x)."""
  in_h, in_w, channels = pixels.shape
  y_index, y_weight, y_scale = _area_axis(in_h, h)
  x_index, x_weight, x_scale = _area_axis(in_w, w, channels)
  flat = pixels.reshape(in_h, in_w * channels)
  picked = _work_array("picked", (in_h, w * channels), np.uint8)
  term = _work_array("right", (in_h, w * channels), np.float32)
  row_sums = _work_array("top", (in_h, w * channels), np.float32)
  row_sums[...] = 0  # 0 + t is t exactly: the sums below are TF's.
  for index, weight in zip(x_index, x_weight):
    np.take(flat, index, axis=1, out=picked, mode="clip")
    term[...] = picked
    term *= weight
    row_sums += term
  term = _work_array("right", (h, w * channels), np.float32)
  out = _work_array("bottom", (h, w * channels), np.float32)
  out[...] = 0
  for index, weight in zip(y_index, y_weight):
    np.take(row_sums, index, axis=0, out=term, mode="clip")
    term *= weight[:, None]
    out += term
  out *= np.float32(1.0 / float(y_scale * x_scale))
  return out.reshape(h, w, channels).astype(np.uint8)  # Truncates, as TF's cast.


def _resize_filtered(pixels: np.ndarray, h: int, w: int, resample: Image.Resampling
                     ) -> np.ndarray:
  """Float32 (h, w, C) by PIL's antialiased filter on float ("F") images, channel by channel:
  unlike PIL's uint8 path, this neither rounds nor clips between its two passes, like TF's
  ScaleAndTranslate (within 0.01 of it)."""
  return np.stack([np.asarray(Image.fromarray(pixels[..., c].astype(np.float32)).resize(
      (w, h), resample)) for c in range(pixels.shape[2])], -1)


def height_width(image: Any) -> tuple[int, int]:
  return (image.height, image.width) if isinstance(image, Image.Image) else image.shape[:2]


def _pixels(image: Any) -> np.ndarray:
  """HWC uint8 array of a PIL image or array."""
  return to_array(_uint8(np.asarray(image)))


def resize_image(image: Any, size: tuple[int, int], method: str = "bilinear",
                 antialias: bool = False,
                 box: tuple[int, int, int, int] | None = None) -> Image.Image:
  """tf.image.resize(image, size, method, antialias) as big_vision applies it (result clipped and
  cast back to uint8), of the crop box=(top, left, height, width) if given, as a PIL image."""
  h, w = size
  check_method(method, antialias)
  if box is not None:  # Crop first: no filter reads past the crop's edges.
    top, left, ch, cw = box
    if isinstance(image, Image.Image):  # Converts only the crop to an array.
      image = image.crop((left, top, left + cw, top + ch))
    else:
      image = to_array(image)[top:top + ch, left:left + cw]
  pixels = _pixels(image)
  if antialias and method in _PIL_FILTERS:
    resized = np.clip(_resize_filtered(pixels, h, w, _PIL_FILTERS[method]), 0, 255)
  elif pixels.shape[:2] == (h, w):  # Where TF's arithmetic leaves a same-size image as it is.
    resized = pixels
  elif method == "nearest":
    resized = pixels[_nearest_axis(pixels.shape[0], h)][:, _nearest_axis(pixels.shape[1], w)]
  elif method == "area":
    resized = _resize_area(pixels, h, w)
  else:
    resized = _resize_bilinear(pixels, h, w)
  return to_pil(resized.astype(np.uint8, copy=False))  # Truncates, as big_vision's cast.
