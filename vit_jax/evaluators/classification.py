"""Classification evaluator: mean loss, top-1 and top-5 precision over one full pass of a
dataset."""
from __future__ import annotations

import itertools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec
import ml_collections

from vit_jax.data import pipeline

_SUMS = ("loss", "correct@1", "correct@5", "count")


def make_eval_step(model: nn.Module, loss_fn: Callable[..., jax.Array],
                   patch_size: tuple[int, int] | None = None
                   ) -> Callable[[Any, dict[str, jax.Array], dict[str, jax.Array]],
                                 dict[str, jax.Array]]:
  """(params, batch, sums) -> sums + this batch's masked sums of loss / correct@1 / correct@5 /
  count.

  Padding examples (batch["mask"] == 0) count for nothing; a label counts as hit when any of the
  top-k predicted classes carries the row's largest label value, above 0 (so multi-label datasets
  work too, and smoothed labels count only their true class). `patch_size` runs the model at
  another patch size than its own (FlexiViT).
  """
  def eval_step(params, batch, sums):
    logits = model.apply({"params": params}, batch["image"], train=False, patch_size=patch_size)
    labels = batch["label"]
    mask = batch.get("mask", jnp.ones(logits.shape[:1], jnp.float32)).astype(jnp.float32)
    k = min(5, logits.shape[-1])
    top_k = jax.lax.top_k(logits, k)[1]
    top_labels = jnp.take_along_axis(labels, top_k, axis=-1)
    hits = (top_labels > 0) & (top_labels >= jnp.max(labels, axis=-1, keepdims=True))
    batch_sums = {
        "loss": jnp.sum(loss_fn(logits, labels) * mask),
        "correct@1": jnp.sum(hits[:, 0] * mask),
        "correct@5": jnp.sum(jnp.any(hits, axis=-1) * mask),
        "count": jnp.sum(mask),
    }
    return jax.tree.map(jnp.add, sums, batch_sums)
  return eval_step


class ClassificationEvaluator:
  """Runs `make_eval_step` over `pipeline.make_eval_iterable(cfg)`; compiled once, reused each call
  as `evaluator(params, progress)`, `progress(doing)` as it reads each batch (the stall watchdog's
  clock: a long pass is not a stall, a read that hangs is).

  With FlexiViT `patch_sizes`, each batch also goes through the model at every one of those sizes
  (one compiled step per size, one pass over the data) and the metrics at size P are returned as
  `<metric>@p<P>`; the plain keys stay those of the model's own patch size.

  Args:
    cfg: a resolved `config.evals.<name>` (vit_jax.config.resolve_evals): data, pp, threads, ...
    model: the flax model.
    params_sharding: the shardings of the params it will be called with.
    batch_sharding: the sharding of a global batch (split over the data-parallel devices).
    batch_size: global eval batch size.
    loss_fn: (logits, labels) -> per-example loss.
    patch_sizes: square patch sides to evaluate at besides the model's own (`config.flexi`).
  """

  def __init__(self, cfg: ml_collections.ConfigDict, *, model: nn.Module, params_sharding: Any,
               batch_sharding: NamedSharding, batch_size: int,
               loss_fn: Callable[..., jax.Array], patch_sizes: Sequence[int] = ()):
    self._batches = pipeline.make_eval_iterable(cfg, global_batch_size=batch_size,
                                                sharding=batch_sharding)
    replicated = NamedSharding(batch_sharding.mesh, PartitionSpec())
    self._zeros = jax.jit(lambda: {k: jnp.zeros((), jnp.float32) for k in _SUMS},
                          out_shardings=replicated)
    # Patch size -> the metric-key suffixes it reports under ("" for the model's own size).
    self._suffixes: dict[tuple[int, int], list[str]] = {tuple(model.patch_size): [""]}
    for patch in patch_sizes:
      self._suffixes.setdefault((patch, patch), []).append(f"@p{patch}")
    self._steps = {
        size: jax.jit(make_eval_step(model, loss_fn, size),
                      in_shardings=(params_sharding, batch_sharding, replicated),
                      out_shardings=replicated, donate_argnums=2)
        for size in self._suffixes}

  def __call__(self, params: Any,
               progress: Callable[[str], None] = lambda doing: None) -> dict[str, float]:
    sums = {size: self._zeros() for size in self._steps}
    batches = iter(self._batches)
    for number in itertools.count(1):
      progress(f"reading batch {number}")
      batch = next(batches, None)
      if batch is None:
        break
      for size, step in self._steps.items():
        sums[size] = step(params, batch, sums[size])
    progress("waiting for its steps to finish")
    results = {}
    for size, size_sums in jax.device_get(sums).items():
      count = max(float(size_sums["count"]), 1.0)
      metrics = {"loss": float(size_sums["loss"]) / count,
                 "prec@1": float(size_sums["correct@1"]) / count,
                 "prec@5": float(size_sums["correct@5"]) / count,
                 "num_examples": int(size_sums["count"])}
      for suffix in self._suffixes[size]:
        results.update({k + suffix: v for k, v in metrics.items()})
    return results
