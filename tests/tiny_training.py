"""A tiny training setup shared by the training tests (and loaded by their subprocess configs).

The data is an image folder whose train split is exactly one global batch, so every step sees the same
set of examples however they are split over devices or hosts. Imports no entry-point module, so a
config file built on it can be loaded by `python -m vit_jax.train`.
"""
import json
import os

import ml_collections
import numpy as np
from PIL import Image

from vit_jax import config_lib
from vit_jax.checkpoints import state as state_lib

NUM_CLASSES = 4
TRAIN_PER_CLASS = 8  # 32 train images = one global batch
TOTAL_STEPS = 6


def make_image_folder(root: str) -> str:
  """train/ and test/ folders of 16x16 RGB PNGs whose class sets the mean colour (learnable)."""
  rng = np.random.default_rng(0)
  for split, per_class in (("train", TRAIN_PER_CLASS), ("test", 4)):
    for label in range(NUM_CLASSES):
      folder = os.path.join(root, split, f"class_{label}")
      os.makedirs(folder, exist_ok=True)
      for i in range(per_class):
        pixels = rng.normal(40 + 50 * label, 30, (16, 16, 3)).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"{i}.png"))
  return root


def tiny_config(root: str, **overrides) -> ml_collections.ConfigDict:
  c = config_lib.base_config()
  c.model_name = "ViT-mu/4"
  c.model = dict(width=16, depth=1, num_heads=2, mlp_dim=32)
  c.num_classes = NUM_CLASSES
  c.input.data = dict(name="imagefolder", root=root, split="train")
  c.input.pp = f"decode|value_range(-1, 1)|onehot({NUM_CLASSES})"
  c.input.threads = 2
  c.batch_size = NUM_CLASSES * TRAIN_PER_CLASS
  c.total_steps = TOTAL_STEPS
  # SGD keeps cross-mesh differences at float-reduction noise (Adam's g/sqrt(v) amplifies it for
  # near-zero gradients), so runs on different meshes can be compared tightly.
  c.optim.name = "sgd"
  c.optim.lr = 0.1
  c.optim.wd = 0.0
  c.optim.warmup_steps = 2
  c.evals.val = dict(type="classification", data=dict(name="imagefolder", root=root, split="test"),
                     pp=f"decode|value_range(-1, 1)|onehot({NUM_CLASSES})", batch_size=8)
  c.log_every_steps = 1
  c.checkpoint_every_steps = 2
  for key, value in overrides.items():
    c[key] = value
  return c


def losses(workdir: str) -> dict[int, float]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def final_params(workdir: str):
  return state_lib.load_params(os.path.join(workdir, "checkpoints"))
