"""Checkpoints: official `.npz` interop (npz), Hugging Face export (hf), Orbax train state (state)."""
from vit_jax.checkpoints.npz import (load_exact, load_npz, load_pretrained, merge_pretrained, read_params,
                                     save_npz)

__all__ = ["load_exact", "load_npz", "load_pretrained", "merge_pretrained", "read_params", "save_npz"]
