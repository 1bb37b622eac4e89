"""RandAugment (Cubuk et al. 2020) on PIL images.

The op set and magnitude scales follow the TF/EfficientNet implementation that big_vision uses
(fill grey 128, translate/cutout relative to the image size so they carry over between
resolutions). Magnitudes are on the paper's 0..10 scale and every op gets stronger with it
(posterize and solarize are flipped relative to the TF code, where they weaken). Each of the
`num_layers` chosen ops is always applied, as in the paper.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

_FILL = 128
_MAX_LEVEL = 10.0

# op(image, strength in [0, 1+] scaled from the magnitude, rng) -> image
_AugOp = Callable[[Image.Image, float, np.random.Generator], Image.Image]


def _signed(value: float, rng: np.random.Generator) -> float:
  return value if rng.uniform() < 0.5 else -value


def _fill(image: Image.Image) -> int | tuple[int, ...]:
  return _FILL if image.mode == "L" else (_FILL,) * len(image.getbands())


def _affine(image: Image.Image, matrix: tuple[float, ...]) -> Image.Image:
  return image.transform(image.size, Image.Transform.AFFINE, matrix,
                         resample=Image.Resampling.NEAREST, fillcolor=_fill(image))


def _enhance(kind: type) -> _AugOp:
  # Factor 1 is the identity; up to 1 +- 0.9 at magnitude 10 (TF's 0.1..1.9 range).
  return lambda im, s, rng: kind(im).enhance(1.0 + _signed(0.9 * s, rng))


def _solarize_add(image: Image.Image, strength: float) -> Image.Image:
  pixels = np.asarray(image).astype(np.int16)
  added = np.where(pixels < 128, np.clip(pixels + int(110 * strength), 0, 255), pixels)
  return Image.fromarray(added.astype(np.uint8), image.mode)


def _cutout(image: Image.Image, strength: float, rng: np.random.Generator) -> Image.Image:
  pixels = np.array(image)
  h, w = pixels.shape[:2]
  half = int(strength * 40 / 224 * min(h, w))  # TF: 40 px half-size at 224 px.
  cy, cx = rng.integers(0, h), rng.integers(0, w)
  pixels[max(cy - half, 0):cy + half, max(cx - half, 0):cx + half] = _FILL
  return Image.fromarray(pixels, image.mode)


OPS: dict[str, _AugOp] = {
    "AutoContrast": lambda im, s, rng: ImageOps.autocontrast(im),
    "Equalize": lambda im, s, rng: ImageOps.equalize(im),
    "Invert": lambda im, s, rng: ImageOps.invert(im),
    "Rotate": lambda im, s, rng: im.rotate(_signed(30 * s, rng), fillcolor=_fill(im)),
    "Posterize": lambda im, s, rng: ImageOps.posterize(im, max(1, 8 - int(4 * s))),
    "Solarize": lambda im, s, rng: ImageOps.solarize(im, max(0, 256 - int(256 * s))),
    "SolarizeAdd": lambda im, s, rng: _solarize_add(im, s),
    "Color": _enhance(ImageEnhance.Color),
    "Contrast": _enhance(ImageEnhance.Contrast),
    "Brightness": _enhance(ImageEnhance.Brightness),
    "Sharpness": _enhance(ImageEnhance.Sharpness),
    "ShearX": lambda im, s, rng: _affine(im, (1, _signed(0.3 * s, rng), 0, 0, 1, 0)),
    "ShearY": lambda im, s, rng: _affine(im, (1, 0, 0, _signed(0.3 * s, rng), 1, 0)),
    # TF translates up to 100 px at 224 px (~0.45 of the side).
    "TranslateX": lambda im, s, rng: _affine(
        im, (1, 0, _signed(0.45 * s * im.size[0], rng), 0, 1, 0)),
    "TranslateY": lambda im, s, rng: _affine(
        im, (1, 0, 0, 0, 1, _signed(0.45 * s * im.size[1], rng))),
    "Cutout": _cutout,
}
_NAMES = tuple(OPS)


def rand_augment(image: Image.Image, num_layers: int, magnitude: float,
                 rng: np.random.Generator) -> Image.Image:
  """Applies `num_layers` ops drawn uniformly (with replacement) at the given magnitude."""
  strength = magnitude / _MAX_LEVEL
  for index in rng.integers(0, len(_NAMES), size=num_layers):
    image = OPS[_NAMES[index]](image, strength, rng)
  return image
