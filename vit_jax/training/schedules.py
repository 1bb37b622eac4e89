"""Learning-rate schedules and the run's length in steps.

`config.optim.schedule`: 'cosine' | 'linear' | 'rsqrt' | 'constant', after a linear warmup from 0
over `warmup_steps | warmup_epochs | warmup_examples` (at most one; default 0). `end_lr` is the
final lr of 'cosine' / 'linear'; `rsqrt_timescale` the steps of the rsqrt decay's unit. The run
length is `config.total_steps | total_epochs | total_examples` (exactly one).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ("cosine", "linear", "rsqrt", "constant")
_UNITS = ("steps", "epochs", "examples")


def duration_in_steps(config: ml_collections.ConfigDict, prefix: str, *, batch_size: int,
                      num_train_examples: Callable[[], int] | int | None,
                      default: int | None = None) -> int:
  """Reads `{prefix}_steps`, `{prefix}_epochs` or `{prefix}_examples` from `config` as a step count.

  `num_train_examples` (or a function giving it, called only for a duration in epochs) is the size
  of the training split.
  """
  given = {u: config[f"{prefix}_{u}"] for u in _UNITS if config[f"{prefix}_{u}"] is not None}
  if len(given) > 1:
    raise ValueError(f"Set only one of {', '.join(f'{prefix}_{u}' for u in given)}; "
                     f"they all give the {prefix} duration.")
  if not given:
    if default is None:
      raise ValueError(f"Set the {prefix} duration: one of --config.{prefix}_steps, "
                       f"--config.{prefix}_epochs or --config.{prefix}_examples.")
    return default
  (unit, value), = given.items()
  if unit == "steps":
    return int(value)
  if unit == "epochs":
    size = num_train_examples() if callable(num_train_examples) else num_train_examples
    if not size:
      raise ValueError(f"{prefix}_epochs needs the training set size, which is unknown for this "
                       f"dataset; give {prefix}_steps instead.")
    value *= size
  return int(round(value / batch_size))


def make_schedule(cfg: ml_collections.ConfigDict, *, total_steps: int,
                  warmup_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `cfg.lr`, then the decay named by `cfg.schedule`."""
  lr = cfg.lr
  decay_steps = max(total_steps - warmup_steps, 1)
  if cfg.schedule == "cosine":
    decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=cfg.end_lr / lr)
  elif cfg.schedule == "linear":
    decay = optax.linear_schedule(lr, cfg.end_lr, decay_steps)
  elif cfg.schedule == "rsqrt":
    timescale = cfg.rsqrt_timescale or max(warmup_steps, 1)
    decay = lambda step: lr * jax.lax.rsqrt(1.0 + jnp.asarray(step, jnp.float32) / timescale)
  elif cfg.schedule == "constant":
    decay = optax.constant_schedule(lr)
  else:
    raise ValueError(f"Unknown config.optim.schedule={cfg.schedule!r}; choose one of {SCHEDULES}.")
  if warmup_steps == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps), decay], [warmup_steps])
