"""Preprocessing ops chosen by name from a registry, composed from big_vision-style pp strings.

A pp string is a `|`-separated chain of op calls with Python-literal arguments::

    decode|inception_crop(224, area_min=8)|flip_lr|randaug(2, 10)|value_range(-1, 1)|onehot(1000)

Every op acts on one example, a dict with "image" (encoded bytes, a PIL image or an HWC uint8/float
array), "label" (int) and "id" (str, names the image in warnings). Ops run per example on the host
inside the grain pipeline; image ops work on PIL images (PIL's C code releases the GIL, so reader
threads scale) and `value_range` turns the result into a float32 HWC array. Random ops draw from the
`np.random.Generator` grain derives from (seed, example position), which makes them reproducible and
resumable.

An op named as in big_vision means what it means there: inception_crop, resize, resize_small and
central_crop take big_vision's arguments and defaults and reproduce its TensorFlow numerics
(tf.image.sample_distorted_bounding_box's crop distribution; tf.image.resize's pixels, clipped and
truncated to uint8) on numpy, without TensorFlow (tests/test_crop_parity.py checks them against it).
"""
from __future__ import annotations

import ast
import inspect
import io
from typing import Any, Callable

import numpy as np
from PIL import Image

from vit_jax.data import image as image_lib
from vit_jax.data import randaug as randaug_lib
from vit_jax.data.image import to_array, to_pil, to_uint8_array

Example = dict[str, Any]
Op = Callable[[Example, np.random.Generator], Example]

_REGISTRY: dict[str, Callable[..., Op]] = {}
_RANDOM: set[str] = set()  # The ops that draw from the rng.


def register(name: str, random: bool = False) -> Callable[[Callable[..., Op]], Callable[..., Op]]:
  """Registers an op factory under `name`; the factory's arguments are the pp-string arguments.
  `random`: the op draws from the rng (augmentation); any other op is a function of the example.
  No op may change its input in place: data.cache_decoded hands the same decoded example to the
  ops after the deterministic head every epoch."""
  def wrap(factory: Callable[..., Op]) -> Callable[..., Op]:
    if name in _REGISTRY:
      raise ValueError(f"pp op {name!r} is registered twice.")
    _REGISTRY[name] = factory
    if random:
      _RANDOM.add(name)
    return factory
  return wrap


def available_ops() -> list[str]:
  return sorted(_REGISTRY)


def _parse_call(spec: str) -> tuple[str, list[Any], dict[str, Any]]:
  """'name(1, a=2)' -> ('name', [1], {'a': 2}); arguments must be Python literals."""
  try:
    node = ast.parse(spec if "(" in spec else spec + "()", mode="eval").body
  except SyntaxError as e:
    raise ValueError(f"Cannot parse pp op {spec!r}: {e.msg}. "
                     "Write ops as name(arg, key=value).") from e
  if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
    raise ValueError(f"Cannot parse pp op {spec!r}: expected name(arg, key=value).")
  try:
    args = [ast.literal_eval(a) for a in node.args]
    kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
  except ValueError as e:
    raise ValueError(f"pp op {spec!r}: arguments must be Python literals (numbers, strings, "
                     "tuples).") from e
  return node.func.id, args, kwargs


def parse(pp: str) -> Op:
  """Builds one op that applies the chain in `pp` in order; errors name the offending op."""
  ops = []
  for spec in (s.strip() for s in pp.split("|")):
    if not spec:
      continue
    name, args, kwargs = _parse_call(spec)
    if name not in _REGISTRY:
      raise ValueError(f"Unknown pp op {name!r} in {pp!r}. "
                       f"Available: {', '.join(available_ops())}.")
    try:
      ops.append(_REGISTRY[name](*args, **kwargs))
    except TypeError as e:
      raise ValueError(f"Bad arguments for pp op {spec!r}: {e}.") from e
  if not ops:
    raise ValueError(f"Empty pp string {pp!r}; give at least 'decode|value_range(0, 1)'.")

  def chain(example: Example, rng: np.random.Generator) -> Example:
    for op in ops:
      example = op(example, rng)
    return example
  return chain


def split_deterministic_head(pp: str) -> tuple[str, str]:
  """`pp` as (head, tail) pp strings: head is the leading ops that draw no randomness (decode,
  resize, ...), whose output depends on the example alone and can be kept (data.cache_decoded);
  tail is the rest, from the first random op on. Either may be empty."""
  specs = [s.strip() for s in pp.split("|") if s.strip()]
  n = 0
  while n < len(specs) and _parse_call(specs[n])[0] not in _RANDOM:
    n += 1
  return "|".join(specs[:n]), "|".join(specs[n:])


def op_arguments(pp: str, name: str) -> dict[str, Any] | None:
  """The arguments (defaults filled in) of the chain's first `name` op, or None if it has none."""
  for spec in (s.strip() for s in pp.split("|")):
    if spec:
      op_name, args, kwargs = _parse_call(spec)
      if op_name == name:
        try:
          bound = inspect.signature(_REGISTRY[name]).bind(*args, **kwargs)
        except TypeError as e:
          raise ValueError(f"Bad arguments for pp op {spec!r}: {e}.") from e
        bound.apply_defaults()
        return dict(bound.arguments)
  return None


# --- helpers --------------------------------------------------------------------------------------

def _hw(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
  if isinstance(size, int):
    size = (size, size)
  h, w = (int(s) for s in size)
  if h <= 0 or w <= 0:
    raise ValueError(f"Image size must be positive, got {size!r}.")
  return h, w


def _with_image(example: Example, image: Any) -> Example:
  return {**example, "image": image}


# --- ops ------------------------------------------------------------------------------------------

@register("decode")
def decode(channels: int = 3) -> Op:
  """Decodes JPEG/PNG/... bytes to a PIL image with 1 (grayscale) or 3 (RGB) channels."""
  if channels not in (1, 3):
    raise ValueError(f"decode(channels={channels!r}): use 1 (grayscale) or 3 (RGB).")
  mode = "L" if channels == 1 else "RGB"

  def op(example: Example, rng: np.random.Generator) -> Example:
    del rng
    data = example["image"]
    if isinstance(data, (bytes, np.bytes_)):
      image = Image.open(io.BytesIO(data))
      if image.format == "JPEG":
        image.draft(mode, image.size)  # Let libjpeg do the colour conversion while decoding.
    else:  # Already pixels (e.g. a source that stores arrays).
      image = to_pil(data)
    image = _eight_bit(image)
    if image.mode == mode:
      image.load()  # Decode now (errors surface here), in place: convert() would copy.
      return _with_image(example, image)
    return _with_image(example, image.convert(mode))
  return op


def _eight_bit(image: Image.Image) -> Image.Image:
  """16-bit samples (mode I;16, or I from a PNG, as older Pillow opens them) as their high byte,
  as TensorFlow's decode_png to uint8: PIL's convert would clip them at 255, leaving near-blank
  images. Other wide samples (32-bit int or float TIFFs) have no known range: refused."""
  sixteen_bit = image.mode.startswith("I;16") or (image.mode == "I" and image.format == "PNG")
  if sixteen_bit:
    return Image.fromarray((np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8))
  if image.mode in ("I", "F"):
    raise ValueError(f"decode: an image of 32-bit samples (PIL mode {image.mode}, e.g. a TIFF) "
                     "has no known value range; convert the dataset to 8- or 16-bit images.")
  return image


@register("resize")
def resize(size: int | tuple[int, int], method: str = "bilinear", antialias: bool = False) -> Op:
  """Resizes to exactly `size` (int or (height, width)), ignoring aspect ratio, as big_vision's
  resize: tf.image.resize, by default bilinear without antialiasing."""
  h, w = _hw(size)
  image_lib.check_method(method, antialias)

  def op(example: Example, rng: np.random.Generator) -> Example:
    del rng
    return _with_image(example, image_lib.resize_image(example["image"], (h, w), method, antialias))
  return op


@register("resize_small")
def resize_small(smaller_size: int, method: str = "area", antialias: bool = False) -> Op:
  """Resizes so that the shorter side is `smaller_size`, keeping the aspect ratio, as big_vision's
  resize_small: each side times smaller_size / shorter side in float32, rounded half to even; by
  default TF's area resize (which ignores antialias)."""
  small, _ = _hw(smaller_size)
  image_lib.check_method(method, antialias)

  def op(example: Example, rng: np.random.Generator) -> Example:
    del rng
    image = example["image"]
    ih, iw = image_lib.height_width(image)
    factor = np.float32(small) / np.float32(min(ih, iw))
    new = int(np.round(np.float32(ih) * factor)), int(np.round(np.float32(iw) * factor))
    if min(new) < 1:
      raise ValueError(f"resize_small({small}) on a {ih}x{iw} image ({example.get('id')}) "
                       "leaves a side of 0 pixels.")
    return _with_image(example, image_lib.resize_image(image, new, method, antialias))
  return op


@register("central_crop")
def central_crop(crop_size: int | tuple[int, int] | None = None) -> Op:
  """Crops the central (height, width) window, offset (H - height) // 2, (W - width) // 2; the
  image must be at least that large. Without a size: the largest central square."""
  size = None if crop_size is None else _hw(crop_size)

  def op(example: Example, rng: np.random.Generator) -> Example:
    del rng
    image = to_pil(example["image"])
    iw, ih = image.size
    h, w = size or (min(ih, iw),) * 2
    if ih < h or iw < w:
      raise ValueError(f"central_crop({h}, {w}) on a {ih}x{iw} image ({example.get('id')}); "
                       f"resize_small({max(h, w)}) first.")
    top, left = (ih - h) // 2, (iw - w) // 2
    return _with_image(example, image.crop((left, top, left + w, top + h)))
  return op


@register("inception_crop", random=True)
def inception_crop(size: int | tuple[int, int] | None = None, area_min: float = 5,
                   area_max: float = 100, method: str = "bilinear",
                   antialias: bool = False) -> Op:
  """Random crop of area_min..area_max percent of the image at aspect ratio 0.75..1.33, resized to
  `size` (the Inception / RandomResizedCrop augmentation), as big_vision's inception_crop: the box
  from `inception_crop_box` (TF's sample_distorted_bounding_box), then `resize`. Without a size the
  crop is returned as it is."""
  h, w = (None, None) if size is None else _hw(size)
  if not 0 < area_min <= area_max <= 100:
    raise ValueError(f"inception_crop needs 0 < area_min <= area_max <= 100 (percent), got "
                     f"{area_min}, {area_max}.")
  image_lib.check_method(method, antialias)

  def op(example: Example, rng: np.random.Generator) -> Example:
    image = example["image"]
    box = image_lib.inception_crop_box(*image_lib.height_width(image), area_min, area_max, rng)
    if h is None:
      top, left, ch, cw = box
      return _with_image(example, to_pil(image).crop((left, top, left + cw, top + ch)))
    return _with_image(example, image_lib.resize_image(image, (h, w), method, antialias, box=box))
  return op


@register("flip_lr", random=True)
def flip_lr(p: float = 0.5) -> Op:
  """Mirrors the image left-right with probability p."""
  def op(example: Example, rng: np.random.Generator) -> Example:
    if rng.uniform() >= p:
      return example
    return _with_image(example, to_pil(example["image"]).transpose(Image.Transpose.FLIP_LEFT_RIGHT))
  return op


@register("random_shift", random=True)
def random_shift(max_shift: int, fill: int = 0) -> Op:
  """Translates by up to `max_shift` pixels in each direction (pad with `fill`, random crop back);
  the standard augmentation for small digit / CIFAR-sized images."""
  if max_shift < 0:
    raise ValueError(f"random_shift(max_shift={max_shift}) must be >= 0.")

  def op(example: Example, rng: np.random.Generator) -> Example:
    image = to_uint8_array(example["image"])
    h, w = image.shape[:2]
    padded = np.full((h + 2 * max_shift, w + 2 * max_shift) + image.shape[2:], fill, image.dtype)
    padded[max_shift:max_shift + h, max_shift:max_shift + w] = image  # np.pad is 10x slower.
    top, left = rng.integers(0, 2 * max_shift + 1, size=2)
    return _with_image(example, padded[top:top + h, left:left + w])
  return op


@register("randaug", random=True)
def randaug(num_layers: int = 2, magnitude: float = 10) -> Op:
  """RandAugment: `num_layers` ops drawn uniformly from randaug.OPS, each at `magnitude` (0..10 is
  the paper's range; larger values extrapolate)."""
  if num_layers < 0 or magnitude < 0:
    raise ValueError(f"randaug({num_layers}, {magnitude}): both must be >= 0.")

  def op(example: Example, rng: np.random.Generator) -> Example:
    image = to_pil(example["image"])
    return _with_image(example, randaug_lib.rand_augment(image, num_layers, magnitude, rng))
  return op


@register("value_range")
def value_range(vmin: float = -1, vmax: float = 1, in_min: float = 0, in_max: float = 255) -> Op:
  """Maps pixel values linearly from [in_min, in_max] to [vmin, vmax] as float32 HWC."""
  scale = (vmax - vmin) / (in_max - in_min)

  def op(example: Example, rng: np.random.Generator) -> Example:
    del rng
    pixels = to_array(example["image"]).astype(np.float32)
    return _with_image(example, (pixels - in_min) * np.float32(scale) + np.float32(vmin))
  return op


@register("onehot")
def onehot(depth: int, on: float = 1.0, off: float = 0.0, label_smoothing: float = 0.0) -> Op:
  """Label -> float32 vector of `depth` with `on`/`off` values. label_smoothing=e is the usual
  shorthand for on=1-e+e/depth, off=e/depth (only one of the two forms may be given)."""
  if depth <= 0:
    raise ValueError(f"onehot(depth={depth}) must be positive.")
  if label_smoothing:
    if (on, off) != (1.0, 0.0):
      raise ValueError("onehot: give either label_smoothing or on/off, not both.")
    if not 0 <= label_smoothing < 1:
      raise ValueError(f"onehot(label_smoothing={label_smoothing}) must be in [0, 1).")
    on, off = 1 - label_smoothing + label_smoothing / depth, label_smoothing / depth

  def op(example: Example, rng: np.random.Generator) -> Example:
    del rng
    label = int(example["label"])
    if not 0 <= label < depth:
      raise ValueError(f"Label {label} of {example.get('id')} is outside onehot({depth}); set "
                       f"onehot's depth to the dataset's number of classes.")
    vector = np.full((depth,), off, np.float32)
    vector[label] = on
    return {**example, "label": vector}
  return op
