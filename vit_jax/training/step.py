"""The train step: a pure function (state, batch) -> (new state, metrics), jit-compiled once."""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from vit_jax.data import mixup
from vit_jax.training import optimizers
from vit_jax.training.state import TrainState

TrainStep = Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, *,
                    loss_fn: Callable[..., jax.Array], schedule: optax.Schedule,
                    label_smoothing: float, grad_accum_steps: int,
                    mixup_cfg: ml_collections.ConfigDict, ema_decay: float | None,
                    patch_size: tuple[int, int] | None = None) -> TrainStep:
  """(state, batch) -> (new state, metrics): one optimizer step on the global batch.

  With `grad_accum_steps` > 1 the batch is split into that many micro-batches whose gradients are
  averaged inside the step (lax.scan), so memory is that of one micro-batch. The step's randomness
  (dropout, mixup) is derived from (state.rng, state.step), so a resumed run repeats it exactly.
  `patch_size` trains the model at another patch size than its own (FlexiViT; one step per size).
  """
  mix = bool(mixup_cfg.mixup_alpha or mixup_cfg.cutmix_alpha)

  def loss_and_grads(params, images, labels, rng):
    def loss(p):
      logits = model.apply({"params": p}, images, train=True, patch_size=patch_size,
                           rngs={"dropout": rng})
      return jnp.mean(loss_fn(logits, labels, label_smoothing))
    return jax.value_and_grad(loss)(params)

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    rng = jax.random.fold_in(state.rng, state.step)
    mix_rng, dropout_rng = jax.random.split(rng)
    images, labels = batch["image"], batch["label"]
    if mix:
      images, labels = mixup.mix(mix_rng, images, labels, mixup_cfg.mixup_alpha,
                                 mixup_cfg.cutmix_alpha, mixup_cfg.switch_prob)
    if grad_accum_steps == 1:
      loss, grads = loss_and_grads(state.params, images, labels, dropout_rng)
    else:
      # Micro-batch i takes rows i, i + n, i + 2n, ...: every device keeps its own rows.
      def split(x):
        x = x.reshape((x.shape[0] // grad_accum_steps, grad_accum_steps) + x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

      def accumulate(carry, micro):
        loss_sum, grad_sum = carry
        i, micro_images, micro_labels = micro
        loss, grads = loss_and_grads(state.params, micro_images, micro_labels,
                                     jax.random.fold_in(dropout_rng, i))
        return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

      zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
      (loss, grads), _ = jax.lax.scan(
          accumulate, zeros, (jnp.arange(grad_accum_steps), split(images), split(labels)))
      loss, grads = jax.tree.map(lambda x: x / grad_accum_steps, (loss, grads))

    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = (optimizers.ema_update(state.ema_params, params, ema_decay) if ema_decay
                  else state.ema_params)
    metrics = {"train/loss": loss, "lr": schedule(state.step),
               "grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(params)}
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              ema_params=ema_params)
    return new_state, metrics

  return train_step
