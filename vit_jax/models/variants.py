"""Model names -> architecture dimensions.

Plain ViTs follow big_vision's variant table; the hybrids follow the official
google-research/vision_transformer configs, whose name does not always equal the
effective patch size (R+Ti/16 embeds 8x8 patches of a /4 stem, i.e. 32 px per token).
"""
import re
from typing import Any

# name: (width, depth, mlp_dim, num_heads)
VIT_DIMS: dict[str, tuple[int, int, int, int]] = {
    "mu": (32, 1, 128, 2),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "G": (1664, 48, 8192, 16),
}

# hybrid name: (vit variant, resnet stage sizes, patch size on the stem's feature map)
HYBRIDS: dict[str, tuple[str, tuple[int, ...], int]] = {
    "R+Ti/16": ("Ti", (), 8),
    "R26+S/32": ("S", (2, 2, 2, 2), 1),
    "R50+B/16": ("B", (3, 4, 9), 1),
    "R50+L/32": ("L", (3, 4, 6, 3), 1),
}

_PLAIN = re.compile(r"^(?:ViT-)?(?P<variant>[A-Za-z]+)(?:[/_](?P<patch>\d+))?$")


def canonical_name(name: str) -> str:
  """'ViT-B_16' -> 'ViT-B/16'; 'R50+ViT-B_16' -> 'R50+B/16'."""
  name = name.strip().replace("_", "/")
  if "+" in name:
    stem, vit = name.split("+", 1)
    return f"{stem}+{vit.removeprefix('ViT-')}"
  return name if name.startswith("ViT-") else f"ViT-{name}"


def decode(name: str) -> dict[str, Any]:
  """Returns the Model fields that `name` fixes: dims, resnet stem and, if it names one, patch size.

  'ViT-B/16', 'B_16' and 'B' (no patch size) are plain ViTs; hybrids are named as published.
  """
  canon = canonical_name(name)
  if canon in HYBRIDS:
    variant, layers, patch = HYBRIDS[canon]
    fields = _vit_fields(variant)
    fields.update(patch_size=(patch, patch),
                  resnet={"num_layers": layers, "width_factor": 1})
    return fields
  m = _PLAIN.match(canon)
  if m is None or m["variant"] not in VIT_DIMS:
    raise ValueError(
        f"Unknown model name {name!r}. Use 'ViT-<variant>/<patch>' with variant in "
        f"{sorted(VIT_DIMS)} (e.g. 'ViT-B/16' or 'ViT-B_16'), or a hybrid: {sorted(HYBRIDS)}.")
  fields = _vit_fields(m["variant"])
  if m["patch"] is not None:
    patch = int(m["patch"])
    if patch <= 0:
      raise ValueError(f"Patch size in {name!r} must be positive.")
    fields["patch_size"] = (patch, patch)
  return fields


def _vit_fields(variant: str) -> dict[str, Any]:
  width, depth, mlp_dim, num_heads = VIT_DIMS[variant]
  return dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads, resnet=None)
