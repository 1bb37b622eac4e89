"""Helpers shared by the tests: repository paths, config files, abstract params, a tiny training
setup.

The tiny setup's data is an image folder whose train split is exactly one global batch, so every
step sees the same set of examples however they are split over devices or hosts. Imports no
entry-point module, so a config file built on it can be loaded by `python -m vit_jax.train`.
"""
import importlib.util
import json
import os
import re
import signal
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from vit_jax.checkpoints import manager
from vit_jax.config import base_config
from vit_jax.training import metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")


def xla_flags(devices: int | None) -> str:
  """XLA_FLAGS for a process a test starts: the session's (tests/conftest.py), with `devices` fake
  CPU devices, or none named (None: the program picks its own count)."""
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ["XLA_FLAGS"])
  count = [] if devices is None else [f"--xla_force_host_platform_device_count={devices}"]
  return " ".join([*count, *flags.split()])


NUM_CLASSES = 4
TRAIN_PER_CLASS = 8  # 32 train images = one global batch
TOTAL_STEPS = 6


def config_module(name: str) -> Any:
  """The module of configs/<name>.py."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """configs/<name>.py's get_config(arg), as `--config=configs/<name>.py:arg` loads it."""
  return config_module(name).get_config(arg)


def abstract_params(model: nn.Module, image_shape: tuple[int, ...], boxed: bool = False) -> Any:
  """The params `model.init` makes for (1, *image_shape) images, as shapes (boxed: with axis
  names)."""
  params = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)},
                                             jnp.zeros((1, *image_shape)))["params"])
  return params if boxed else nn.meta.unbox(params)


def random_params(model: nn.Module, image_hw: tuple[int, int], seed: int = 0,
                  scale: float = 0.05) -> Any:
  """Params of `model` for RGB images of `image_hw`, drawn so that activations stay O(1) (LayerNorm
  scales near 1): logits then show numerics differences that a tiny init would hide."""
  abstract = abstract_params(model, (*image_hw, 3))
  rng = np.random.default_rng(seed)

  def sample(path, leaf):
    return (scale * rng.normal(size=leaf.shape) + (path[-1].key == "scale")).astype(np.float32)

  return jax.tree_util.tree_map_with_path(sample, abstract)


def input_config(**fields: Any) -> ml_collections.ConfigDict:
  """`config.input` of the base config with `fields` (and their `data` fields) set."""
  cfg = base_config().input
  cfg.data.update(fields.pop("data", {}))
  cfg.update(fields)
  return cfg


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


def tiny_config(root: str, **overrides: Any) -> ml_collections.ConfigDict:
  """A width-16, one-block ViT on the tiny image folder: 6 SGD steps of one batch."""
  c = base_config()
  c.model.update(variant=None, patch_size=4, width=16, depth=1, num_heads=2, mlp_dim=32)
  c.num_classes = NUM_CLASSES
  c.input.data.update(name="imagefolder", root=root, split="train")
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
  c.evals.val = dict(data=dict(name="imagefolder", split="test"),  # root: the input's
                     pp=f"decode|value_range(-1, 1)|onehot({NUM_CLASSES})")
  c.eval_batch_size = 8
  c.log_every_steps = 1
  c.checkpoint_every_steps = 2
  for key, value in overrides.items():
    c[key] = value
  return c


def tiny_config_file(path, root: str, **overrides: Any) -> str:
  """Writes a config file (an entry point's --config) giving tiny_config(root, **overrides)."""
  with open(path, "w") as f:
    f.write(f"import sys\nsys.path.insert(0, {TESTS!r})\nfrom helpers import tiny_config\n\n"
            f"def get_config():\n  return tiny_config({root!r}, **{overrides!r})\n")
  return str(path)


def metric_rows(workdir: str) -> list[dict[str, Any]]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def losses(workdir: str) -> dict[int, float]:
  return {r["step"]: r["train/loss"] for r in metric_rows(workdir) if "train/loss" in r}


def final_params(workdir: str, entry: str = "params"):
  return manager.load_params(os.path.join(workdir, "checkpoints"), entry)


def stop_at_step(monkeypatch, stop_step: int) -> None:
  """Sends a real SIGTERM to this process right after step `stop_step`'s metrics are written."""
  write = metrics.MetricsWriter.write

  def write_then_signal(self, step, values):
    write(self, step, values)
    if step == stop_step and "train/loss" in values:
      os.kill(os.getpid(), signal.SIGTERM)
  monkeypatch.setattr(metrics.MetricsWriter, "write", write_then_signal)
