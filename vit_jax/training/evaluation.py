"""Evaluating a checkpoint without training: every evaluator of `config.evals`, one full pass
each."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import ml_collections

from vit_jax import config as config_lib
from vit_jax import models
from vit_jax.checkpoints import imports, manager, npz, pretrained
from vit_jax.checkpoints import workdir as workdir_lib
from vit_jax.config import bad_input
from vit_jax.data import pipeline
from vit_jax.training import checks
from vit_jax.training.program import TrainProgram


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        checkpoint: str | None = None,
                        devices: Sequence[jax.Device] | None = None) -> dict[str, float]:
  """Runs every evaluator on the params of `checkpoint` (an official `.npz` or an Orbax directory;
  default: the latest in WORKDIR/checkpoints); returns `<eval>/<metric>` (and `<eval>_ema/<metric>`
  for a checkpoint with EMA params) and writes WORKDIR/eval.json.

  Raises:
    vit_jax.config.BadInputError: for a bad config value, data or checkpoint, before compiling.
  """
  with bad_input():
    workdir = workdir_lib.Workdir(workdir)
    evals = config_lib.resolve_evals(config)
    if not evals:
      raise ValueError("config.evals is empty: nothing to evaluate; add e.g. config.evals.val.")
    if not checkpoint and not workdir.checkpoints.exists():
      raise FileNotFoundError(
          f"No checkpoint to evaluate: {workdir.checkpoints} does not exist. Train into this "
          "--workdir first, or pass --checkpoint=PATH (an .npz or an Orbax checkpoint directory).")
    path = checkpoint or str(workdir.checkpoints)
    checks.check_checkpoint_path(path, what="--checkpoint")
    if imports.detect(path) == "orbax":  # One step for every read below, named in eval.json.
      path = str(manager.checkpoint_step_dir(path))
    # The model is built for the images the evals feed it (and no training data is needed).
    program = TrainProgram.from_config(
        config, devices=devices, image_shape=pipeline.example_shape(next(iter(evals.values()))),
        schedule_steps=(1, 0))
    _check_trained_model(path, program.model_fields)
    evaluators = program.evaluators()
    fix = (f"evaluate with the config the checkpoint was trained with (config.model="
           f"{config.model.to_dict()} does not fit it).")
    params = pretrained.load_exact(path, program.abstract_params, fix=fix,
                                   model_fields=program.model_fields)
    # A run trained with EMA (config.ema_decay) is evaluated with both, as its evals were.
    ema_params = None
    if imports.detect(path) == "orbax" and "ema_params" in manager.saved_entries(path):
      ema_params = pretrained.fit_exact(npz.flatten(manager.load_params(path, "ema_params")),
                                        program.abstract_params, source=f"{path} (EMA)", fix=fix)
    workdir.check_writable()

  params = jax.device_put(params, program.param_shardings)
  if ema_params is not None:
    ema_params = jax.device_put(ema_params, program.param_shardings)
  with program.mesh_context():
    results = evaluate_all(evaluators, params, ema_params)
  if jax.process_index() == 0:
    workdir_lib.write_json(workdir.eval_results, {"checkpoint": path, "metrics": results})
  return results


def evaluate_all(evaluators: dict[str, Callable], params: Any, ema_params: Any = None,
                 progress_to: Callable[[str], None] = lambda doing: None) -> dict[str, float]:
  """`<eval>/<metric>` of every evaluator, and `<eval>_ema/<metric>` with EMA params if given;
  `progress_to(doing)` as each part of each pass begins (the stall watchdog's clock)."""
  results = {}
  for name, evaluator in evaluators.items():
    passes = [("", params)] + ([("_ema", ema_params)] if ema_params is not None else [])
    for suffix, pass_params in passes:
      pass_name = f"{name}{' with the EMA params' if suffix else ''}"
      metrics = evaluator(pass_params,
                          lambda part, n=pass_name: progress_to(f"evaluating {n} ({part})"))
      results.update({f"{name}{suffix}/{k}": v for k, v in metrics.items()})
  return results


# Model fields that do not change what trained params compute at eval: training-only
# regularisation, init, layer layout and speed settings.
_FREE_AT_EVAL = ("dropout", "attention_dropout", "stoch_depth", "head_bias_init", "scan",
                 "remat_policy", "attention_impl", "dtype")


def _check_trained_model(path: str, model_fields: dict) -> None:
  """Raises ValueError if `path` is a run's checkpoint whose recorded model computes otherwise than
  `model_fields` (e.g. posemb sincos2d vs none: the same params, other logits)."""
  if imports.detect(path) != "orbax" or not (recorded := imports.model_fields(path, "orbax")):
    return
  trained = models.model_kwargs(**recorded)
  differ = [f"{k}={trained.get(k)!r} (the config has {v!r})" for k, v in model_fields.items()
            if k not in _FREE_AT_EVAL and trained.get(k) != v]
  if differ:
    raise ValueError(f"{path} was trained with {', '.join(differ)}: evaluate it with the config "
                     "it was trained with (its run's config.json), or set those fields.")
