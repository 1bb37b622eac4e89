"""The training loop: train (resuming from the workdir's checkpoints), evaluate, checkpoint, log.

Reads top to bottom: build and check everything (no compilation), restore or initialise the state,
then steps, each followed by the due logs, evals and checkpoint, until the last step or a stop
request (SIGTERM / Ctrl-C / preemption: the step finishes, a checkpoint is saved, the loop exits).
The outputs' layout is vit_jax.checkpoints.workdir's.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np

from vit_jax.checkpoints import manager
from vit_jax.checkpoints import workdir as workdir_lib
from vit_jax import config as config_lib
from vit_jax.config import bad_input
from vit_jax.data import pipeline
from vit_jax.runtime import preemption
from vit_jax.training import checks
from vit_jax.training import metrics as metrics_lib
from vit_jax.training.program import TrainProgram
from vit_jax.training.state import TrainState


def sample_patch_size(patch_sizes: Sequence[int], seed: int, step: int) -> int:
  """FlexiViT: the patch size of step `step`, drawn uniformly from `patch_sizes`.

  A function of (seed, step) only, so a resumed run repeats the sequence of the uninterrupted one.
  """
  return int(np.random.default_rng((seed, step)).choice(patch_sizes))


def evaluate_all(evaluators: dict[str, Callable], state: TrainState) -> dict[str, float]:
  """`<eval>/<metric>` of every evaluator, and `<eval>_ema/<metric>` with EMA params."""
  results = {}
  for name, evaluator in evaluators.items():
    results.update({f"{name}/{k}": v for k, v in evaluator(state.params).items()})
    if state.ema_params is not None:
      results.update({f"{name}_ema/{k}": v for k, v in evaluator(state.ema_params).items()})
  return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices: Sequence[jax.Device] | None = None) -> dict[str, Any]:
  """Trains (resuming from WORKDIR/checkpoints if present) and returns the final metrics.

  Args:
    config: the experiment config (see configs/).
    workdir: output directory, local or remote (gs://...).
    devices: the devices to build the mesh from (default: all).

  Raises:
    vit_jax.config.BadInputError: for a bad config value or input, before anything is compiled.
  """
  with bad_input():
    workdir = workdir_lib.Workdir(workdir)
    workdir.check_writable()
    program = TrainProgram.from_config(config, devices=devices)
    checks.check_batch(config.batch_size, data_parallel=program.data_parallel,
                       num_processes=jax.process_count(),
                       grad_accum_steps=config.grad_accum_steps)
    train_iter = pipeline.make_train_iterator(config.input, config.batch_size, config.seed,
                                              program.batch_sharding)
    evaluators = program.evaluators()
    eval_every = {name: cfg.every_steps for name, cfg in config_lib.resolve_evals(config).items()}
    checkpointer = manager.TrainStateCheckpointer(
        workdir.checkpoints, save_every_steps=config.checkpoint_every_steps,
        keep=config.keep_checkpoints, async_save=config.async_checkpoints)
    resuming = checkpointer.latest_step() is not None
    pretrained_params = None if resuming else program.pretrained_params()

  total_steps, batch_size = program.total_steps, config.batch_size
  logging.info("Model %s: %s params; mesh %s; %d steps of %d images (%d warmup).",
               config.model.variant or "(custom)", f"{program.num_params:,}",
               dict(program.mesh.shape), total_steps, batch_size, program.warmup_steps)
  logging.info("MFU against %s; %.4f GFLOP per training image.", program.peak.source,
               program.train_flops_per_image() / 1e9)
  if program.peak.flops is None:
    logging.warning("MFU is reported as unknown: %s.", program.peak.source)

  if resuming:
    state, data_state, start = checkpointer.restore(program.abstract_state())
    train_iter.set_state(data_state)
    logging.info("Resumed from %s/%d.", workdir.checkpoints, start)
  else:
    state, start = program.init(pretrained_params), 0
  summary = workdir.read_summary()
  if start >= total_steps and summary and summary.get("done"):
    logging.info("%s finished already (step %d); its final metrics are in %s.", workdir, start,
                 workdir.summary)
    checkpointer.close()
    return summary["final"]

  writer = metrics_lib.MetricsWriter(workdir, resume_step=start, enabled=jax.process_index() == 0)
  flexi_sizes = tuple(config.flexi.patch_sizes)  # FlexiViT: () = train at the model's patch size.
  progress = metrics_lib.ProgressLine(total_steps, batch_size, start)
  final: dict[str, Any] = {}
  compiled_sizes = set()  # Patch sizes whose train step has run (None: the model's own).
  step = start
  t_start = time.perf_counter()
  with program.mesh_context(), preemption.StopRequests() as stop:
    if start >= total_steps:  # Finished, but summary.json was never written: evaluate again.
      final.update(evaluate_all(evaluators, state))
    try:
      for step in range(start + 1, total_steps + 1):
        batch = next(train_iter)
        patch = sample_patch_size(flexi_sizes, config.seed, step) if flexi_sizes else None
        compiling = patch not in compiled_sizes
        compiled_sizes.add(patch)
        t_step = time.perf_counter()
        state, metrics = program.train_step(patch)(state, batch)
        if compiling:  # Report the compilation and keep it out of the img/s window.
          jax.block_until_ready(state)
          compile_s = time.perf_counter() - t_step
          logging.info("First step%s (compilation included) took %.1f s.",
                       f" at patch size {patch}" if patch else "", compile_s)
          writer.write(step, {"compile_s": compile_s})
          progress.reset_clock(step)

        if step % config.log_every_steps == 0 or step == total_steps:
          metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
          if patch:
            metrics["patch_size"] = patch
          if not compiling:
            metrics.update(progress.measure(step))
            metrics["mfu"] = program.mfu(metrics["img_per_s"])
          writer.write(step, metrics)
          progress.log(step, metrics)
          final.update(metrics)

        due = {name: evaluate for name, evaluate in evaluators.items()
               if step == total_steps or eval_every[name] and step % eval_every[name] == 0}
        if due:
          results = evaluate_all(due, state)
          writer.write(step, results)
          logging.info("step %d: %s", step, ", ".join(f"{k}={v:.4f}" for k, v in results.items()))
          final.update(results)
          progress.reset_clock(step)

        stopping = stop.should_stop(step)
        checkpointer.save(step, state, train_iter, force=stopping or step == total_steps)
        if stopping:
          logging.warning("Stopped by %s at step %d; checkpoint saved. Rerun the same command to "
                          "resume.", stop.signal_name, step)
          break
    finally:
      checkpointer.close()
      writer.close()

  final.update(step=step, wall_s=time.perf_counter() - t_start, num_params=program.num_params)
  if stop.signal_name:
    final["stopped_by"] = stop.signal_name
  elif jax.process_index() == 0:
    workdir.write_summary({"done": True, "final": final, "config": config.to_dict(),
                           "mesh": dict(program.mesh.shape), "num_devices": len(program.devices),
                           "num_processes": jax.process_count()})
  return final

