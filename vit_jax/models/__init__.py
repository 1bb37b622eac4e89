"""Models: `Model` (ViT and hybrid ViT) and `get_model('ViT-B/16', num_classes=1000, **fields)`.

A model is a variant name plus overrides of any `Model` field. Configs hold exactly that
(`config.model = dict(variant='S/16', classifier='gap', ...)`), decoded once by `model_kwargs`.
Loading pretrained weights is vit_jax.checkpoints' job (`checkpoints.load_pretrained`).

Architecture options (registers, QK-LayerNorm, bias-free layers, parallel blocks, LayerScale, 2D
RoPE via posemb='rope2d') are `Model` fields like any other, off by default, so a study can sweep
them next to patch size; vit_jax/models/vit.py documents each. So are the numerics of other
libraries (`gelu_approximate`, `resnet_numerics`), official by default, which imported timm / HF
models set to reproduce their source's logits.
"""
import dataclasses
from typing import Any, Optional

import jax.numpy as jnp

from vit_jax.models import variants
from vit_jax.models.vit import Model

# The Model fields a config's `model` may set (besides `variant`); num_classes is the config's own.
FIELDS = tuple(f.name for f in dataclasses.fields(Model)
               if f.name not in ("parent", "name", "num_classes"))
_DIMS = ("patch_size", "width", "depth", "mlp_dim", "num_heads")
# Every other field's one default is the Model's.
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Model)
             if f.name in FIELDS and f.name not in _DIMS}


def model_kwargs(variant: Optional[str] = None, **fields: Any) -> dict[str, Any]:
  """Every `Model` field (but num_classes) of `variant` with `fields` overriding them.

  `variant` is a name ('ViT-B/16', 'B_16', 'R50+B/16'), a size without patch ('B', then
  `patch_size` is needed), or None (then every dimension is given). Fields set to None are left
  to the variant or to the model's default, as in a config. The result is complete: readers
  (FLOPs, exports) index it and never re-default a field.
  """
  fields = {k: v for k, v in fields.items() if v is not None}
  unknown = sorted(set(fields) - set(FIELDS))
  if unknown:
    raise ValueError(f"Unknown model option(s) {unknown} for {variant!r}; valid: {sorted(FIELDS)}.")
  named = {**(variants.decode(variant) if variant else {}), **fields}
  missing = [k for k in _DIMS if k not in named]
  if missing:
    raise ValueError(f"Model {variant or '(no variant)'} needs {missing}: name a variant such as "
                     "'S/16' or give every dimension (patch_size, width, depth, mlp_dim, "
                     "num_heads).")
  kwargs = {**_DEFAULTS, **named}
  patch = kwargs["patch_size"]
  kwargs["patch_size"] = (patch, patch) if isinstance(patch, int) else tuple(patch)
  if isinstance(kwargs["dtype"], str):
    kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
  return kwargs


def get_model(variant: Optional[str] = None, *, num_classes: int, **fields: Any) -> Model:
  """A ViT by name ('ViT-B/16', 'ViT-B_16', 'R50+B/16', ...) with official defaults."""
  return Model(num_classes=num_classes, **model_kwargs(variant, **fields))


__all__ = ["FIELDS", "Model", "get_model", "model_kwargs", "variants"]
