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
  layer_decay: None | float in (0, 1]    layer-wise lr decay for fine-tuning (BEiT, timm
      `--layer-decay`): a param of layer i gets layer_decay**(depth + 1 - i), where the patch
      embedding, class token, registers, position embedding and ResNet stem are layer 0, encoder
      block j (0-based) is layer j + 1, and the encoder_norm, MAP head, pre-logits and head are
      layer depth + 1 (multiplier 1). Scanned blocks get the multiplier per slice of their stacked
      layer axis. Multiplies with `lr_mults`.
  freeze: (regex, ...)                   matching params get no update and no optimizer state
  schedule and warmup: see vit_jax.training.schedules.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
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


_LAYER = re.compile(r"^Transformer/encoderblock_(\d+)/")
_SCANNED = re.compile(r"^Transformer/encoderblock/")
_TOP = re.compile(r"^(Transformer/encoder_norm|MAPHead_0|pre_logits|head)/")


def encoder_depth(params: Any) -> int:
  """Number of encoder blocks in `params`, per-layer (`encoderblock_{i}`) or scanned."""
  depth = 0
  for name, leaf in zip(jax.tree.leaves(param_names(params)), jax.tree.leaves(params)):
    if match := _LAYER.match(name):
      depth = max(depth, int(match[1]) + 1)
    elif _SCANNED.match(name):
      depth = max(depth, int(leaf.shape[0]))
  return depth


def layer_decay_multipliers(params: Any, decay: float) -> Any:
  """Per-parameter lr multipliers decay**(depth + 1 - layer_id) (BEiT's `get_layer_id_for_vit`).

  Layer ids: encoder block i -> i + 1; encoder_norm, MAP head, pre_logits, head -> depth + 1;
  everything else (patch embedding, cls, registers, position embedding, ResNet stem) -> 0. A scanned
  block stack gets an array of shape (depth, 1, ...) that scales each layer's slice.
  """
  if not 0.0 < decay <= 1.0:
    raise ValueError(f"config.optim.layer_decay={decay} must be in (0, 1] (e.g. 0.65 or 0.75 as "
                     "BEiT / MAE fine-tuning); None turns it off.")
  depth = encoder_depth(params)
  if not depth:
    raise ValueError("config.optim.layer_decay needs a ViT with encoder blocks "
                     "('Transformer/encoderblock_{i}' or a scanned 'Transformer/encoderblock'); "
                     "these params have none.")

  def mult(name, leaf):
    if match := _LAYER.match(name):
      return float(decay ** (depth - int(match[1])))
    if _SCANNED.match(name):
      per_layer = decay ** (depth - np.arange(leaf.shape[0], dtype=np.float64))
      return per_layer.reshape((-1,) + (1,) * (len(leaf.shape) - 1)).astype(np.float32)
    if _TOP.match(name):
      return 1.0
    return float(decay ** (depth + 1))
  return jax.tree.map(mult, param_names(params), params)


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
  layer_decay = cfg.layer_decay
  if cfg.lr_mults or layer_decay is not None:
    multipliers = lr_multipliers(params, cfg.lr_mults)
    if layer_decay is not None:
      multipliers = jax.tree.map(lambda a, b: a * b, multipliers,
                                 layer_decay_multipliers(params, layer_decay))
    tx = optax.chain(tx, _scale_updates(multipliers))
  return tx, schedule


def ema_update(ema_params: Any, params: Any, decay: float) -> Any:
  """Exponential moving average of parameters: ema <- decay * ema + (1 - decay) * params."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)
