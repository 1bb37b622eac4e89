"""Checkpoints: official `.npz` interop, Hugging Face export (and the Orbax train-state manager)."""
from vit_jax.checkpoints.npz import load_npz, load_pretrained, merge_pretrained, save_npz

__all__ = ["load_npz", "load_pretrained", "merge_pretrained", "save_npz"]
