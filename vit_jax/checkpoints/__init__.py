"""Checkpoints and run outputs.

npz         the official google-research/vision_transformer `.npz` format, read and written
pretrained  `load_pretrained(init_params, path)`: any checkpoint fitted to a model (head, resizes)
imports     which library a checkpoint comes from, and its reader: the one dispatcher
hf          Hugging Face `ViTForImageClassification` directories, read and written
timm        timm ViT / hybrid state dicts, read and written
big_vision  big_vision ViT `.npz` checkpoints, read
manager     Orbax train state + data position of a run, saved and restored on any mesh
export      the converter behind `python -m vit_jax.convert`
workdir     the layout of everything a run writes, local or in a bucket, and whether it is done
"""
import importlib

# Loaded on first use (PEP 562): the light modules (workdir, lock) are what the sweep and report
# programs need, and they must not pull in JAX, Flax and Orbax through this package.
_PUBLIC = {"load_npz": "npz", "save_npz": "npz", "load_exact": "pretrained",
           "load_pretrained": "pretrained", "merge_pretrained": "pretrained",
           "read_params": "pretrained"}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
  if name not in _PUBLIC:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
