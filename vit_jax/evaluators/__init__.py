"""Evaluators chosen by name from the config (`config.evals.<name>.type`), big_vision style.

Every evaluator is built once (compiling its step once) and then called with params:

    evaluator = evaluators.build(cfg, model=model, params_sharding=..., batch_sharding=...,
                                 batch_size=256, loss_fn=..., patch_sizes=())
    metrics = evaluator(params)            # {"prec@1": 0.97, "loss": 0.11, ...}
    metrics = evaluator(params, progress)  # progress("reading batch 3"): the stall watchdog's clock

`vit_jax.training.program.TrainProgram.evaluators()` builds them for a training config.

The training loop logs them as `<name>/<metric>` (e.g. `val/prec@1`). Built with FlexiViT
`patch_sizes=(4, 7)` (from `config.flexi.patch_sizes`), an evaluator also reports every metric at
each of those patch sizes as `<metric>@p<P>` (e.g. `val/prec@1@p7`), one compiled step per size.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol

import ml_collections

from vit_jax.evaluators import classification


class Evaluator(Protocol):
  def __call__(self, params: Any, progress: Callable[[str], None] = ...) -> Mapping[str, float]:
    """`progress(doing)` as each part of the pass begins (e.g. "reading batch 3")."""
    ...


REGISTRY: dict[str, Callable[..., Evaluator]] = {
    "classification": classification.ClassificationEvaluator,
}


def build(cfg: ml_collections.ConfigDict, **kwargs: Any) -> Evaluator:
  """Instantiates the evaluator named by `cfg.type` (kwargs: model, params_sharding,
  batch_sharding, batch_size, loss_fn, patch_sizes)."""
  if cfg.type not in REGISTRY:
    raise ValueError(f"Unknown evaluator type={cfg.type!r}; choose one of {sorted(REGISTRY)}.")
  return REGISTRY[cfg.type](cfg, **kwargs)
