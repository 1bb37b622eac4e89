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
from vit_jax.checkpoints.npz import load_npz, save_npz
from vit_jax.checkpoints.pretrained import (
    load_exact,
    load_pretrained,
    merge_pretrained,
    read_params,
)

__all__ = ["load_exact", "load_npz", "load_pretrained", "merge_pretrained", "read_params",
           "save_npz"]
