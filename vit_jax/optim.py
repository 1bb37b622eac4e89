"""Optimizers, learning-rate schedules, per-parameter lr multipliers / freezing, and training durations.

Config (`config.optim`):
  name: 'adamw' | 'adam' | 'sgd'     (sgd = SGD with momentum)
  lr, b1, b2, eps, momentum, nesterov
  wd: decoupled weight decay applied to kernels only ('.../kernel' params). As in optax.adamw and
      PyTorch AdamW it is scaled by the current learning rate: each step subtracts lr(t) * wd * w.
      (big_vision's wd is scaled by the schedule but not by the base lr: wd_here = wd_big_vision / lr.)
  mu_dtype: None | 'bfloat16'        dtype of the first moment / momentum buffer
  grad_clip_norm: None | float       global-norm clipping of the (trainable) gradients
  schedule: 'cosine' | 'linear' | 'rsqrt' | 'constant', after a linear warmup from 0
  warmup_steps | warmup_epochs | warmup_examples   (at most one; default 0)
  end_lr: final lr of 'cosine' / 'linear'; rsqrt_timescale: steps of the rsqrt decay's unit
  lr_mults: ((regex, multiplier), ...)   first matching regex scales that param's update
  freeze: (regex, ...)                   matching params get no update and no optimizer state
The run length is `config.total_steps | total_epochs | total_examples` (exactly one).
"""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "linear", "rsqrt", "constant")
_UNITS = ("steps", "epochs", "examples")


def param_names(params: Any) -> Any:
  """A tree like `params` whose leaves are the "/"-joined parameter paths, e.g. 'head/kernel'."""
  def name(path, _):
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
  return jax.tree_util.tree_map_with_path(name, params)


def duration_in_steps(config: ml_collections.ConfigDict, prefix: str, *, batch_size: int,
                      num_train_examples: int | None, default: int | None = None) -> int:
  """Reads `{prefix}_steps`, `{prefix}_epochs` or `{prefix}_examples` from `config` as a step count."""
  given = {u: config.get(f"{prefix}_{u}") for u in _UNITS if config.get(f"{prefix}_{u}") is not None}
  if len(given) > 1:
    raise ValueError(f"Set only one of {', '.join(f'{prefix}_{u}' for u in given)}; they all give the "
                     f"{prefix} duration.")
  if not given:
    if default is None:
      raise ValueError(f"Set the {prefix} duration: one of --config.{prefix}_steps, "
                       f"--config.{prefix}_epochs or --config.{prefix}_examples.")
    return default
  (unit, value), = given.items()
  if unit == "steps":
    return int(value)
  examples = value if unit == "examples" else value * (num_train_examples or 0)
  if unit == "epochs" and not num_train_examples:
    raise ValueError(f"{prefix}_epochs needs the training set size, which is unknown for this "
                     f"dataset; give {prefix}_steps instead.")
  return int(round(examples / batch_size))


def make_schedule(cfg: ml_collections.ConfigDict, *, total_steps: int,
                  warmup_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `cfg.lr`, then the decay named by `cfg.schedule`."""
  lr = cfg.lr
  decay_steps = max(total_steps - warmup_steps, 1)
  kind = cfg.get("schedule", "cosine")
  if kind == "cosine":
    decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=cfg.get("end_lr", 0.0) / lr)
  elif kind == "linear":
    decay = optax.linear_schedule(lr, cfg.get("end_lr", 0.0), decay_steps)
  elif kind == "rsqrt":
    timescale = cfg.get("rsqrt_timescale", None) or max(warmup_steps, 1)
    decay = lambda step: lr * jax.lax.rsqrt(1.0 + jnp.asarray(step, jnp.float32) / timescale)
  elif kind == "constant":
    decay = optax.constant_schedule(lr)
  else:
    raise ValueError(f"Unknown config.optim.schedule={kind!r}; choose one of {SCHEDULES}.")
  if warmup_steps == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps), decay], [warmup_steps])


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
  name = cfg.name
  if name not in OPTIMIZERS:
    raise ValueError(f"Unknown config.optim.name={name!r}; choose one of {OPTIMIZERS}.")
  wd = cfg.get("wd", 0.0) or 0.0
  if name == "adam" and wd:
    raise ValueError(f"config.optim.name='adam' has no weight decay but wd={wd}; use 'adamw' or "
                     "set --config.optim.wd=0.")
  schedule = make_schedule(cfg, total_steps=total_steps, warmup_steps=warmup_steps)
  mu_dtype = jnp.dtype(cfg.mu_dtype) if cfg.get("mu_dtype") else None

  chain = []
  if cfg.get("grad_clip_norm"):
    chain.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  if name in ("adam", "adamw"):
    chain.append(optax.scale_by_adam(b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999),
                                     eps=cfg.get("eps", 1e-8), mu_dtype=mu_dtype))
  else:
    chain.append(optax.trace(decay=cfg.get("momentum", 0.9), nesterov=cfg.get("nesterov", False),
                             accumulator_dtype=mu_dtype))
  if wd:
    is_kernel = jax.tree.map(lambda n: n.rsplit("/", 1)[-1] == "kernel", param_names(params))
    chain.append(optax.add_decayed_weights(wd, mask=is_kernel))
  chain.append(optax.scale_by_learning_rate(schedule))
  tx = optax.chain(*chain)

  freeze = tuple(cfg.get("freeze", ()) or ())
  if freeze:
    labels = jax.tree.map(lambda f: "frozen" if f else "trained", frozen_mask(params, freeze))
    tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
  lr_mults = tuple(cfg.get("lr_mults", ()) or ())
  if lr_mults:
    tx = optax.chain(tx, _scale_updates(lr_multipliers(params, lr_mults)))
  return tx, schedule


def _label_smoothing(labels: jax.Array, smoothing: float) -> jax.Array:
  return labels * (1.0 - smoothing) + smoothing / labels.shape[-1]


def softmax_xent(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy against (soft) one-hot labels, optionally smoothed."""
  if label_smoothing:
    labels = _label_smoothing(labels, label_smoothing)
  return -jnp.sum(labels * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1)


def sigmoid_xent(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example sigmoid cross-entropy summed over classes (as big_vision's i21k pretraining)."""
  if label_smoothing:
    labels = _label_smoothing(labels, label_smoothing)
  return jnp.sum(optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), labels), axis=-1)


LOSSES: dict[str, Callable[..., jax.Array]] = {"softmax_xent": softmax_xent,
                                                "sigmoid_xent": sigmoid_xent}


def get_loss(name: str) -> Callable[..., jax.Array]:
  if name not in LOSSES:
    raise ValueError(f"Unknown config.loss={name!r}; choose one of {tuple(LOSSES)}.")
  return LOSSES[name]


def ema_update(ema_params: Any, params: Any, decay: float) -> Any:
  """Exponential moving average of parameters: ema <- decay * ema + (1 - decay) * params."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)
