"""Analytic FLOP counts for ViTs (multiply-adds count as 2 FLOPs).

XLA's `cost_analysis()` counts a scanned layer body once, so MFU must come from these
formulas. Per encoder layer with N tokens, width D and MLP width M:
QKV + output projections 8*N*D^2, MLP 4*N*D*M, attention scores and weighted sum 4*N^2*D
(with M = 4D this is the familiar 24*N*D^2 + 4*N^2*D). Training = 3x forward.

N counts the class token and registers (`num_registers`) besides the patches. The other
architecture options do not change these counts: a parallel block does the same matmuls, bias-free
layers only drop additions, and QK-LayerNorm, LayerScale and the rotary embedding ('rope2d') are
elementwise work of order N*D per layer (under 1% of a layer at ViT sizes), left out like the
LayerNorms, GELU and softmax.
"""
from typing import Any, Mapping, Sequence


def _conv(h: int, w: int, k: int, cin: int, cout: int) -> int:
  return 2 * h * w * k * k * cin * cout


def _stem_flops(image_hw: tuple[int, int], channels: int, num_layers: Sequence[int],
                width_factor: int) -> tuple[int, tuple[int, int], int]:
  """FLOPs of vit_jax.models.resnet.resnet_stem; returns (flops, output hw, output channels)."""
  width = 64 * width_factor
  h, w = -(-image_hw[0] // 2), -(-image_hw[1] // 2)
  flops = _conv(h, w, 7, channels, width)
  h, w = -(-h // 2), -(-w // 2)
  cin = width
  for s, units in enumerate(num_layers):
    feat = width * 2**s
    for u in range(units):
      stride = 2 if (s > 0 and u == 0) else 1
      ho, wo = -(-h // stride), -(-w // stride)
      if cin != 4 * feat or stride != 1:
        flops += _conv(ho, wo, 1, cin, 4 * feat)
      flops += (_conv(h, w, 1, cin, feat) + _conv(ho, wo, 3, feat, feat) +
                _conv(ho, wo, 1, feat, 4 * feat))
      h, w, cin = ho, wo, 4 * feat
  return flops, (h, w), cin


def forward_flops_per_image(model_kwargs: Mapping[str, Any], image_size: int | Sequence[int],
                            channels: int = 3, num_classes: int = 0) -> int:
  """Forward-pass FLOPs for one image of a model described by `models.model_kwargs(...)`."""
  hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
  ph, pw = model_kwargs["patch_size"]
  d, m, depth = model_kwargs["width"], model_kwargs["mlp_dim"], model_kwargs["depth"]
  flops = 0
  if model_kwargs["resnet"]:
    r = model_kwargs["resnet"]
    stem, hw, channels = _stem_flops(hw, channels, r["num_layers"], r["width_factor"])
    flops += stem
  gh, gw = hw[0] // ph, hw[1] // pw
  patches = gh * gw
  flops += 2 * patches * ph * pw * channels * d
  classifier = model_kwargs["classifier"]
  n = patches + (1 if classifier == "token" else 0)
  registers = model_kwargs.get("num_registers") or 0
  n_enc = n + registers
  flops += depth * (8 * n_enc * d * d + 4 * n_enc * d * m + 4 * n_enc * n_enc * d)
  if classifier == "map":
    # One probe query over the n output tokens (registers are dropped before pooling):
    # q/out projections on 1 token, k/v on n tokens, scores, MLP on 1 token.
    flops += 4 * d * d + 4 * n * d * d + 4 * n * d + 4 * d * m
  out = d
  if model_kwargs["representation_size"]:
    flops += 2 * d * model_kwargs["representation_size"]
    out = model_kwargs["representation_size"]
  flops += 2 * out * num_classes
  return int(flops)


def train_flops_per_image(model_kwargs: Mapping[str, Any], image_size: int | Sequence[int],
                          channels: int = 3, num_classes: int = 0) -> int:
  """Forward + backward (2x forward) FLOPs per image, excluding rematerialisation."""
  return 3 * forward_flops_per_image(model_kwargs, image_size, channels, num_classes)

