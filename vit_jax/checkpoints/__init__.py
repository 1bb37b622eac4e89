"""Checkpoints and run outputs.

npz         the official google-research/vision_transformer `.npz` format, read and written
pretrained  `load_pretrained(init_params, path)`: any checkpoint fitted to a model (head, resizes)
manager     Orbax train state + data position of a run, saved and restored on any mesh
hf          export to Hugging Face `ViTForImageClassification`
export      the converter behind `python -m vit_jax.convert`
workdir     the layout of everything a run writes, local or in a bucket, and whether it is done
"""
from vit_jax.checkpoints.npz import load_npz, save_npz
from vit_jax.checkpoints.pretrained import (
    load_exact,
    load_pretrained,
    merge_pretrained,
    read_params,
)

__all__ = ["load_exact", "load_npz", "load_pretrained", "merge_pretrained", "read_params",
           "save_npz"]
