"""Losses against (soft) one-hot labels, chosen by name (`config.loss`)."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax


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
