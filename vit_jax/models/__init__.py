"""Model registry: `get_model('ViT-B/16', num_classes=1000, **overrides)`."""
import dataclasses
from typing import Any

from vit_jax.models import variants
from vit_jax.models.vit import Model, load

_FIELDS = {f.name for f in dataclasses.fields(Model)} - {"parent", "name"}


def model_kwargs(name: str, **overrides: Any) -> dict[str, Any]:
  """The Model fields that `name` plus `overrides` expand to (plain Python values)."""
  kwargs = variants.decode(name)
  unknown = sorted(set(overrides) - _FIELDS)
  if unknown:
    raise ValueError(f"Unknown model option(s) {unknown} for {name!r}; valid: {sorted(_FIELDS)}.")
  kwargs.update(overrides)
  patch = kwargs["patch_size"]
  kwargs["patch_size"] = (patch, patch) if isinstance(patch, int) else tuple(patch)
  return kwargs


def get_model(name: str, *, num_classes: int, **overrides: Any) -> Model:
  """A ViT by name ('ViT-B/16', 'ViT-B_16', 'R50+B/16', ...) with official defaults."""
  return Model(num_classes=num_classes, **model_kwargs(name, **overrides))


__all__ = ["Model", "get_model", "load", "model_kwargs", "variants"]
