"""Shared pieces of the experiment configs in configs/: typed config-file args and the common fields.

Config files take an argument string after ':' (`--config=configs/vit_i1k.py:variant=B/16,epochs=300`);
`parse_arg` turns it into typed values. `base_config` declares every field the trainer reads, so
`--config.<field>=...` works for all of them on every config (ml_collections rejects unknown fields).
"""
from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections import config_dict


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """'variant=B/16,runlocal' -> ConfigDict(variant='B/16', runlocal=True, <other defaults>).

  Each value is converted to the type of its default; a bare name sets a bool default to True.
  """
  result = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, has_value, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"Unknown config arg {key!r} in {arg!r}; known args: {sorted(defaults)}.")
    default = defaults[key]
    if not has_value:
      if not isinstance(default, bool):
        raise ValueError(f"Config arg {key!r} needs a value ({key}=...).")
      result[key] = True
    elif isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"Config arg {key}={value!r} must be true or false.")
      result[key] = value.lower() in ("true", "1")
    elif default is None:
      result[key] = value
    else:
      try:
        result[key] = type(default)(value)
      except ValueError as e:
        raise ValueError(
            f"Config arg {key}={value!r} must be of type {type(default).__name__}.") from e
  return ml_collections.ConfigDict(result)


def base_config() -> ml_collections.ConfigDict:
  """Every field the trainer reads, with defaults; experiment configs fill in the rest."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Model: a name from vit_jax.models plus overrides of its fields (e.g. dtype='bfloat16').
  c.model_name = "ViT-S/16"
  c.model = ml_collections.ConfigDict()
  c.num_classes = 1000
  c.init = ""              # .npz or Orbax checkpoint to fine-tune from ('' = random init)
  c.dont_load = ()         # regexes of params kept at init when loading `init`

  c.input = ml_collections.ConfigDict()
  c.input.data = dict(name="", split="train", data_dir=config_dict.placeholder(str),
                      root=config_dict.placeholder(str))
  c.input.pp = ""
  c.input.threads = 8      # reader threads per host
  c.input.workers = 0      # grain worker processes per host
  c.input.prefetch = 2     # batches put on device ahead of use
  c.input.mixup = dict(mixup_alpha=0.0, cutmix_alpha=0.0, switch_prob=0.5)

  # Duration: exactly one of total_steps / total_epochs / total_examples.
  c.batch_size = 1024
  c.total_steps = config_dict.placeholder(int)
  c.total_epochs = config_dict.placeholder(float)
  c.total_examples = config_dict.placeholder(int)
  c.grad_accum_steps = 1

  c.optim = ml_collections.ConfigDict(dict(
      name="adamw", lr=1e-3, wd=1e-4, b1=0.9, b2=0.999, eps=1e-8, momentum=0.9, nesterov=False,
      mu_dtype=config_dict.placeholder(str), grad_clip_norm=1.0, schedule="cosine", end_lr=0.0,
      rsqrt_timescale=config_dict.placeholder(int),
      warmup_steps=config_dict.placeholder(int), warmup_epochs=config_dict.placeholder(float),
      warmup_examples=config_dict.placeholder(int), lr_mults=(), freeze=()))
  c.loss = "softmax_xent"  # or 'sigmoid_xent'
  c.label_smoothing = 0.0
  c.ema_decay = config_dict.placeholder(float)
  # FlexiViT: each step trains at a patch size drawn from this set and every eval runs at each of
  # them (metrics `<eval>/<metric>@p<P>`); the model's own patch size keeps the plain keys. () = off.
  c.flexi = ml_collections.ConfigDict(dict(patch_sizes=()))

  # Parallelism: mesh axes (data / fsdp / tensor) and logical-axis rules (None = the default table).
  c.mesh = (("data", -1),)
  c.sharding_rules = config_dict.placeholder(tuple)

  c.evals = ml_collections.ConfigDict()
  c.eval_batch_size = 1024
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.async_checkpoints = True
  return c
