"""Classification evaluator: mean loss, top-1 and top-5 precision over one full pass of a dataset."""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from vit_jax import optim
from vit_jax import sharding
from vit_jax.data import pipeline

_SUMS = ("loss", "correct@1", "correct@5", "count")


def make_eval_step(model: nn.Module, loss_fn: Callable[..., jax.Array] = optim.softmax_xent
                   ) -> Callable[[Any, dict[str, jax.Array], dict[str, jax.Array]], dict[str, jax.Array]]:
  """(params, batch, sums) -> sums + this batch's masked sums of loss / correct@1 / correct@5 / count.

  Padding examples (batch["mask"] == 0) count for nothing; a label counts as hit when any of the
  top-k predicted classes is labelled positive (so multi-label datasets work too).
  """
  def eval_step(params, batch, sums):
    logits = model.apply({"params": params}, batch["image"], train=False)
    labels = batch["label"]
    mask = batch.get("mask", jnp.ones(logits.shape[:1], jnp.float32)).astype(jnp.float32)
    k = min(5, logits.shape[-1])
    top_k = jax.lax.top_k(logits, k)[1]
    hits = jnp.take_along_axis(labels, top_k, axis=-1) > 0
    batch_sums = {
        "loss": jnp.sum(loss_fn(logits, labels) * mask),
        "correct@1": jnp.sum(hits[:, 0] * mask),
        "correct@5": jnp.sum(jnp.any(hits, axis=-1) * mask),
        "count": jnp.sum(mask),
    }
    return jax.tree.map(jnp.add, sums, batch_sums)
  return eval_step


class ClassificationEvaluator:
  """Runs `make_eval_step` over `pipeline.make_eval_iterable(cfg)`; compiled once, reused each call.

  Args:
    cfg: `config.evals.<name>`: data=dict(name, split, ...), pp, batch_size (optional).
    model: the flax model.
    mesh: the device mesh; batches are split over its data-parallel axes.
    params_sharding: the shardings of the params it will be called with.
    batch_size: global eval batch size (used when cfg has none).
    loss_name: a name in `optim.LOSSES`.
  """

  def __init__(self, cfg: ml_collections.ConfigDict, *, model: nn.Module, mesh: Mesh,
               params_sharding: Any, batch_size: int, loss_name: str = "softmax_xent"):
    batch_sharding = sharding.batch_sharding(mesh)
    self._batches = pipeline.make_eval_iterable(
        cfg, global_batch_size=cfg.get("batch_size", None) or batch_size, sharding=batch_sharding)
    replicated = sharding.replicated(mesh)
    self._zeros = jax.jit(lambda: {k: jnp.zeros((), jnp.float32) for k in _SUMS},
                          out_shardings=replicated)
    self._step = jax.jit(make_eval_step(model, optim.get_loss(loss_name)),
                         in_shardings=(params_sharding, batch_sharding, replicated),
                         out_shardings=replicated, donate_argnums=2)

  def __call__(self, params: Any) -> dict[str, float]:
    sums = self._zeros()
    for batch in self._batches:
      sums = self._step(params, batch, sums)
    sums = jax.device_get(sums)
    count = max(float(sums["count"]), 1.0)
    return {"loss": float(sums["loss"]) / count, "prec@1": float(sums["correct@1"]) / count,
            "prec@5": float(sums["correct@5"]) / count, "num_examples": int(sums["count"])}
