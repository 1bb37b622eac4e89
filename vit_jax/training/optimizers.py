"""Optimizers with per-parameter lr multipliers and freezing, and the parameters' moving average.

Config (`config.optim`):
  name: 'adamw' | 'adam' | 'sgd'     (sgd = SGD with momentum)
  lr, b1, b2, eps, momentum, nesterov
  wd: decoupled weight decay applied to kernels only ('.../kernel' params). As in optax.adamw and
      PyTorch AdamW it is scaled by the current learning rate: each step subtracts lr(t) * wd * w.
      (big_vision's wd is scaled by the schedule but not by the base lr:
      wd_here = wd_big_vision / lr.)
  mu_dtype: None | 'bfloat16'        dtype of the first moment / momentum buffer
  grad_clip_norm: None | float       global-norm clipping of the (trainable) gradients
  lr_mults: ((regex, multiplier), ...)   first matching regex scales that param's update
  freeze: (regex, ...)                   matching params get no update and no optimizer state
  schedule and warmup: see vit_jax.training.schedules.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from vit_jax.training import schedules

OPTIMIZERS = ("adamw", "adam", "sgd")


def param_names(params: Any) -> Any:
  """A tree like `params` whose leaves are the "/"-joined parameter paths, e.g. 'head/kernel'."""
  def name(path, _):
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
  return jax.tree_util.tree_map_with_path(name, params)


def _first_match(patterns: Sequence[Any], name: str):
  for pattern in patterns:
    regex = pattern[0] if isinstance(pattern, (tuple, list)) else pattern
    if re.fullmatch(regex, name):
      return pattern
  return None


def lr_multipliers(params: Any, lr_mults: Sequence[tuple[str, float]]) -> Any:
  """Per-parameter lr multiplier (first matching regex, else 1.0), as a tree like `params`."""
  def mult(name):
    match = _first_match(lr_mults, name)
    return 1.0 if match is None else float(match[1])
  return jax.tree.map(mult, param_names(params))


def frozen_mask(params: Any, freeze: Sequence[str]) -> Any:
  """True for parameters matched by any of the `freeze` regexes."""
  return jax.tree.map(lambda n: _first_match(freeze, n) is not None, param_names(params))


def _scale_updates(multipliers: Any) -> optax.GradientTransformation:
  return optax.stateless(lambda updates, _: jax.tree.map(lambda u, m: u * m, updates, multipliers))


def make_optimizer(cfg: ml_collections.ConfigDict, params: Any, *, total_steps: int,
                   warmup_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optax transformation described by `config.optim` and its learning-rate schedule.

  `params` may be abstract (only the tree structure and names are used).
  """
  if cfg.name not in OPTIMIZERS:
    raise ValueError(f"Unknown optimizer config.optim.name={cfg.name!r}; choose one of "
                     f"{OPTIMIZERS}.")
  if not cfg.lr > 0:
    raise ValueError(f"config.optim.lr={cfg.lr} must be positive (a zero or negative lr does not "
                     "train); e.g. --config.optim.lr=1e-3.")
  if cfg.wd < 0 or cfg.end_lr < 0:
    raise ValueError(f"config.optim.wd={cfg.wd} and config.optim.end_lr={cfg.end_lr} must not be "
                     "negative.")
  if cfg.name == "adam" and cfg.wd:
    raise ValueError(f"config.optim.name='adam' has no weight decay but wd={cfg.wd}; use 'adamw' "
                     "or set --config.optim.wd=0.")
  schedule = schedules.make_schedule(cfg, total_steps=total_steps, warmup_steps=warmup_steps)
  mu_dtype = jnp.dtype(cfg.mu_dtype) if cfg.mu_dtype else None

  chain = []
  if cfg.grad_clip_norm:
    chain.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  if cfg.name in ("adam", "adamw"):
    chain.append(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, mu_dtype=mu_dtype))
  else:
    chain.append(optax.trace(decay=cfg.momentum, nesterov=cfg.nesterov, accumulator_dtype=mu_dtype))
  if cfg.wd:
    is_kernel = jax.tree.map(lambda n: n.rsplit("/", 1)[-1] == "kernel", param_names(params))
    chain.append(optax.add_decayed_weights(cfg.wd, mask=is_kernel))
  chain.append(optax.scale_by_learning_rate(schedule))
  tx = optax.chain(*chain)

  if cfg.freeze:
    labels = jax.tree.map(lambda f: "frozen" if f else "trained", frozen_mask(params, cfg.freeze))
    tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
  if cfg.lr_mults:
    tx = optax.chain(tx, _scale_updates(lr_multipliers(params, cfg.lr_mults)))
  return tx, schedule


def ema_update(ema_params: Any, params: Any, decay: float) -> Any:
  """Exponential moving average of parameters: ema <- decay * ema + (1 - decay) * params."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)
