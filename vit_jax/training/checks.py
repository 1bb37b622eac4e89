"""Checks of a training config against the machine and the data, run before anything is compiled.

Every check raises `ValueError` or `FileNotFoundError` with one message that names the bad value and
the fix; the library reports them as `vit_jax.config.BadInputError` and the entry points exit with
code 2. Checks that belong to what they check live there: the mesh (training.sharding), the
optimizer and schedule (training.optimizers / schedules), the model and its patch size against the
image (models), the data and its `tfds build` command (data.pipeline).
"""
from __future__ import annotations

from typing import Sequence

import ml_collections

from vit_jax import config as config_lib
from vit_jax.checkpoints import imports, workdir
from vit_jax.data import preprocess
from vit_jax.training import sharding


def check_checkpoint_path(path: str, what: str = "config.init") -> None:
  """`config.init` (or a checkpoint to evaluate) must name a checkpoint file (.npz, or a timm
  .safetensors / .pth / .bin) or directory (Orbax, Hugging Face): vit_jax.checkpoints.imports."""
  if not path:
    return
  resolved = workdir.resolve(path)
  if not resolved.exists():
    raise FileNotFoundError(
        f"{what}={path} does not exist; give the path of an official .npz checkpoint, of an "
        "Orbax checkpoint directory (e.g. OTHER_WORKDIR/checkpoints), of a Hugging Face ViT "
        "directory or of a timm / big_vision file.")
  if not resolved.is_dir() and resolved.suffix.lower() not in imports.FILE_SUFFIXES:
    suffixes = ", ".join(imports.FILE_SUFFIXES)
    raise ValueError(f"{what}={path} is a file but not a checkpoint ({suffixes}); give such a file "
                     "or a checkpoint directory (Orbax, Hugging Face).")


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
        f"{what}={batch_size} (micro-batch {micro} with grad_accum_steps={grad_accum_steps}) "
        f"is not divisible by the data-parallel size {data_parallel} "
        f"(mesh axes {sharding.BATCH_AXES}); "
        f"use a multiple of {step}, e.g. {max(step, batch_size - batch_size % step)}.")


def check_flexi_patch_sizes(patch_sizes: Sequence[int], image_hw: Sequence[int],
                            posemb: str) -> None:
  """FlexiViT patch sizes (`config.flexi.patch_sizes`) must be positive ints dividing the image;
  a learned position embedding resizes between them on square images only (models.vit)."""
  h, w = image_hw
  if patch_sizes and h != w and posemb == "learn":
    raise ValueError(f"config.flexi.patch_sizes={tuple(patch_sizes)} on {h}x{w} images: a learned "
                     "position embedding is resized between patch sizes on square images only; "
                     "set --config.model.posemb=sincos2d, or make the images square.")
  for patch in patch_sizes:
    if not isinstance(patch, int) or isinstance(patch, bool) or patch <= 0:
      raise ValueError(f"config.flexi.patch_sizes={tuple(patch_sizes)}: {patch!r} is not "
                       "a positive int; give square patch sides, e.g. (4, 7, 14).")
    if h % patch or w % patch:
      divisors = [d for d in range(1, min(h, w) + 1) if h % d == 0 and w % d == 0]
      raise ValueError(f"config.flexi.patch_sizes={tuple(patch_sizes)}: patch size {patch} "
                       f"does not divide the {h}x{w} images; choose sizes among {divisors}.")


def check_duration(total_steps: int, warmup_steps: int) -> None:
  """A run trains at least one step, and its warmup fits in it."""
  if total_steps < 1:
    raise ValueError(f"The run is {total_steps} steps long: set a positive duration "
                     "(--config.total_steps, total_epochs or total_examples).")
  if not 0 <= warmup_steps <= total_steps:
    raise ValueError(f"The warmup ({warmup_steps} steps) must fit in the run ({total_steps} "
                     "steps): shorten --config.optim.warmup_steps (or warmup_epochs / "
                     "warmup_examples) or train longer.")


def check_intervals(config: ml_collections.ConfigDict) -> None:
  """Logging, checkpointing and evaluation intervals are positive step counts."""
  fields = {"config.log_every_steps": config.log_every_steps,
            "config.checkpoint_every_steps": config.checkpoint_every_steps,
            "config.keep_checkpoints": config.keep_checkpoints,
            **{f"config.evals.{name}.every_steps": entry.every_steps
               for name, entry in config_lib.resolve_evals(config).items()}}
  for name, value in fields.items():
    optional = name == "config.keep_checkpoints" or name.startswith("config.evals.")
    if (value is None and optional) or (isinstance(value, int) and value >= 1):
      continue
    raise ValueError(f"{name}={value!r} must be a positive number of steps"
                     f"{' (or None)' if optional else ''}.")


def check_labels(config: ml_collections.ConfigDict) -> None:
  """The pp string's onehot depth is the model's class count, and labels are smoothed in one
  place: the pp op `onehot(...)` or the loss, never both."""
  onehot = preprocess.op_arguments(config.input.pp, "onehot") if config.input.pp else None
  if onehot is not None and onehot["depth"] != config.num_classes:
    raise ValueError(f"config.num_classes={config.num_classes} but the pp string has "
                     f"onehot({onehot['depth']}): the labels must have as many entries as the "
                     f"head has classes; make them equal.")
  smoothed_by_pp = onehot is not None and (onehot["label_smoothing"] or
                                           (onehot["on"], onehot["off"]) != (1.0, 0.0))
  if config.label_smoothing and smoothed_by_pp:
    raise ValueError(f"config.label_smoothing={config.label_smoothing} and the pp string's onehot "
                     f"({onehot}) both smooth the labels, which would stack; keep one: "
                     "--config.label_smoothing=0 or a plain onehot(depth).")
