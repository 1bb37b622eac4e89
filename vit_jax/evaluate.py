r"""Evaluate a trained model without training: every evaluator in `config.evals`, one full pass each.

    python -m vit_jax.evaluate --config=configs/quickstart.py --workdir=/tmp/vit_quickstart
    python -m vit_jax.evaluate --config=configs/finetune.py:dataset=cifar10 --workdir=/tmp/eval \
        --checkpoint=/path/to/ViT-B_16.npz

Params come from `--checkpoint` (an official `.npz` or an Orbax checkpoint directory) or else from the
latest checkpoint in WORKDIR/checkpoints. Prints the metrics and writes them to WORKDIR/eval.json.
Bad config values exit with code 2 before anything is compiled.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Sequence

from absl import app
from absl import flags
import flax.linen as nn
import jax
import ml_collections

from vit_jax import checkpoints
from vit_jax import config_checks
from vit_jax import evaluators
from vit_jax import sharding
from vit_jax import train
from vit_jax.data import pipeline

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "An .npz file or Orbax checkpoint directory "
                                  "(default: the latest in WORKDIR/checkpoints).")


def evaluate(config: ml_collections.ConfigDict, workdir: str, checkpoint: str | None = None,
             devices: Sequence[jax.Device] | None = None) -> dict[str, float]:
  """Runs every evaluator of `config.evals` on the checkpoint's params; returns `<name>/<metric>`."""
  devices = list(jax.devices() if devices is None else devices)
  try:
    config_checks.check_workdir(workdir)
    if not config.get("evals"):
      raise ValueError("config.evals is empty: nothing to evaluate; add e.g. config.evals.val.")
    path = checkpoint or os.path.join(workdir, "checkpoints")
    config_checks.check_init(path)
    for cfg in config.evals.values():
      pipeline.check_ready(cfg)
    mesh = sharding.make_mesh(config.mesh, devices)
    rules = tuple(config.get("sharding_rules") or sharding.DEFAULT_RULES)
    model, _ = train.build_model(config)
    name, first = next(iter(config.evals.items()))
    batch_size = first.get("batch_size", None) or config.eval_batch_size
    config_checks.check_batch(batch_size, data_parallel=sharding.data_parallel_size(mesh),
                              num_processes=jax.process_count(), grad_accum_steps=1,
                              what=f"config.evals.{name}.batch_size")
    sample = next(iter(pipeline.make_eval_iterable(first, global_batch_size=batch_size,
                                                   sharding=sharding.batch_sharding(mesh))))
    config_checks.check_flexi_patch_sizes(config.flexi.patch_sizes, sample["image"].shape[1:3])
    abstract, param_shardings = train.abstract_params(
        model, (1,) + tuple(sample["image"].shape[1:]), mesh, rules)
    params = checkpoints.load_exact(
        path, abstract, fix=f"evaluate with the config the checkpoint was trained with "
        f"(config.model_name={config.model_name!r} and its model options do not fit it).")
  except (ValueError, FileNotFoundError) as e:
    raise config_checks.ConfigError(str(e)) from e

  params = jax.device_put(params, param_shardings)
  results = {}
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.mesh_rules(mesh, rules)):
    for name, cfg in config.evals.items():
      evaluator = evaluators.build(cfg, model=model, mesh=mesh, params_sharding=param_shardings,
                                   batch_size=config.eval_batch_size,
                                   loss_name=config.get("loss", "softmax_xent"),
                                   patch_sizes=tuple(config.flexi.patch_sizes))
      results.update({f"{name}/{k}": v for k, v in evaluator(params).items()})
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "eval.json"), "w") as f:
      json.dump({"checkpoint": path, "metrics": results}, f, indent=1)
  return results


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  train.start_process()
  try:
    if train.CONFIG_FLAG.value is None:
      raise config_checks.ConfigError("--config is required.")
    results = evaluate(train.CONFIG_FLAG.value, train.WORKDIR_FLAG.value or "", _CHECKPOINT.value)
  except config_checks.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(train.EXIT_BAD_CONFIG)
  if jax.process_index() == 0:
    print("\n".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}"
                    for k, v in results.items()))


def run() -> None:
  """Console-script entry point (`vit-evaluate`)."""
  app.run(main)


if __name__ == "__main__":
  run()
