"""Checks of a training config against the machine, run before anything is compiled.

Every check raises `ValueError` or `FileNotFoundError` with one message that names the bad value and
the fix; the entry points (`vit_jax.train`, `vit_jax.evaluate`) turn those into exit code 2. Checks that
need the model or data (patch size vs image size, dataset prepared) are done where those are built,
still before compilation: the model raises on a patch size that does not divide the image while its
shapes are traced, and `vit_jax.data.pipeline.check_ready` names the `tfds build` command.
"""
from __future__ import annotations

import os
import tempfile
from typing import Sequence

import ml_collections

from vit_jax import optim
from vit_jax import sharding


class ConfigError(ValueError):
  """A bad config value found before compilation; entry points exit with code 2 on it."""


def check_workdir(workdir: str) -> None:
  """The workdir must be creatable and writable (checked by writing a temporary file)."""
  if not workdir:
    raise ValueError("--workdir is required: the directory for checkpoints and metrics.")
  if "://" in workdir:
    return  # Remote (gs://, s3://): writability is only known to the storage backend.
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise ValueError(f"--workdir={workdir} is not writable ({e.strerror}); choose a directory you "
                     "can write to.") from e


def check_init(path: str | None) -> None:
  """`config.init` must name an existing `.npz` file or Orbax checkpoint directory."""
  if not path:
    return
  if "://" in path:
    return
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"config.init={path} does not exist; give the path of an official .npz checkpoint or of "
        "an Orbax checkpoint directory (e.g. OTHER_WORKDIR/checkpoints), or unset it.")
  if os.path.isfile(path) and not path.endswith(".npz"):
    raise ValueError(f"config.init={path} is a file but not an .npz checkpoint; give an .npz file "
                     "or an Orbax checkpoint directory.")


def check_batch(batch_size: int, *, data_parallel: int, num_processes: int, grad_accum_steps: int,
                what: str = "config.batch_size") -> None:
  """The global batch must split evenly over hosts, data-parallel devices and micro-batches."""
  if batch_size <= 0:
    raise ValueError(f"{what}={batch_size} must be positive.")
  if batch_size % num_processes:
    raise ValueError(f"{what}={batch_size} is not divisible by the {num_processes} processes; use "
                     f"a multiple of {num_processes}.")
  if grad_accum_steps < 1 or batch_size % grad_accum_steps:
    raise ValueError(f"{what}={batch_size} is not divisible by config.grad_accum_steps="
                     f"{grad_accum_steps}; use a multiple of it.")
  micro = batch_size // grad_accum_steps
  if micro % data_parallel:
    step = data_parallel * grad_accum_steps
    raise ValueError(
        f"{what}={batch_size} (micro-batch {micro} with grad_accum_steps={grad_accum_steps}) is not "
        f"divisible by the data-parallel size {data_parallel} (mesh axes {sharding.BATCH_AXES}); "
        f"use a multiple of {step}, e.g. {max(step, batch_size - batch_size % step)}.")


def check_flexi_patch_sizes(patch_sizes: Sequence[int], image_hw: Sequence[int]) -> None:
  """FlexiViT patch sizes (`config.flexi.patch_sizes`) must be positive ints dividing the image."""
  h, w = image_hw
  for patch in patch_sizes:
    if not isinstance(patch, int) or isinstance(patch, bool) or patch <= 0:
      raise ValueError(f"config.flexi.patch_sizes={tuple(patch_sizes)}: {patch!r} is not a positive "
                       "int; give square patch sides, e.g. (4, 7, 14).")
    if h % patch or w % patch:
      divisors = [d for d in range(1, min(h, w) + 1) if h % d == 0 and w % d == 0]
      raise ValueError(f"config.flexi.patch_sizes={tuple(patch_sizes)}: patch size {patch} does not "
                       f"divide the {h}x{w} images; choose sizes among {divisors}.")


def check_train_config(config: ml_collections.ConfigDict, *, num_devices: int,
                       num_processes: int) -> None:
  """All checks that need only the config and the device count."""
  mesh_shape = sharding.resolve_mesh_shape(config.mesh, num_devices)
  data_parallel = 1
  for axis in sharding.BATCH_AXES:
    data_parallel *= mesh_shape.get(axis, 1)
  if config.optim.name not in optim.OPTIMIZERS:
    raise ValueError(f"Unknown optimizer config.optim.name={config.optim.name!r}; choose one of "
                     f"{optim.OPTIMIZERS}.")
  if config.optim.get("schedule", "cosine") not in optim.SCHEDULES:
    raise ValueError(f"Unknown config.optim.schedule={config.optim.schedule!r}; choose one of "
                     f"{optim.SCHEDULES}.")
  optim.get_loss(config.get("loss", "softmax_xent"))
  check_batch(config.batch_size, data_parallel=data_parallel, num_processes=num_processes,
              grad_accum_steps=config.get("grad_accum_steps", 1))
  for name, evaluator in (config.get("evals") or {}).items():
    check_batch(evaluator.get("batch_size", config.batch_size), data_parallel=data_parallel,
                num_processes=num_processes, grad_accum_steps=1,
                what=f"config.evals.{name}.batch_size")
  check_init(config.get("init"))
