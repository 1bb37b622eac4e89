"""The training loop: train (resuming from the workdir's checkpoints), evaluate, checkpoint, log.

Reads top to bottom: check everything and take the workdir (nothing compiled, nothing written
before every check passed), restore or initialise the state, then steps, each followed by the due
logs, evals and checkpoint, until the last step or a stop request (SIGTERM / Ctrl-C / preemption:
the step finishes, a checkpoint is saved, the loop exits). The outputs' layout is
vit_jax.checkpoints.workdir's.

What a run may trust: a finished run is never rewritten; a resume continues the recipe the run was
started with (or refuses, naming the changed fields); one run writes a workdir at a time; nothing
non-finite is ever saved (a non-finite loss or gradient norm stops the run, `Diverged`); a
checkpoint that cannot be read back is moved aside and the one before it restored; a part of a
step stuck past the stall timeout ends the process resumably, naming it (vit_jax.runtime.stall).
"""
from __future__ import annotations

import dataclasses
import errno
import time
from typing import Any, Callable, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from vit_jax import config as config_lib
from vit_jax.checkpoints import lock as lock_lib
from vit_jax.checkpoints import manager, pretrained
from vit_jax.checkpoints import workdir as workdir_lib
from vit_jax.config import BadInputError, bad_input
from vit_jax.data import pipeline
from vit_jax.runtime import distributed, preemption, stall
from vit_jax.training import checks, evaluation, recipe
from vit_jax.training import metrics as metrics_lib
from vit_jax.training.program import TrainProgram


class Diverged(RuntimeError):
  """The loss or gradient norm became non-finite; the run stopped before saving that state."""


def sample_patch_size(patch_sizes: Sequence[int], seed: int, step: int) -> int:
  """FlexiViT: the patch size of step `step`, drawn uniformly from `patch_sizes`.

  A function of (seed, step) only, so a resumed run repeats the sequence of the uninterrupted one.
  """
  return int(np.random.default_rng((seed, step)).choice(patch_sizes))


@dataclasses.dataclass
class _Run:
  """What the loop needs, checked before anything is compiled or written."""
  workdir: workdir_lib.Workdir
  program: TrainProgram
  train_iter: pipeline.TrainIterator
  evaluators: dict[str, Callable]
  eval_every: dict[str, int | None]
  resuming: bool
  pretrained_params: Any


def _check(config: ml_collections.ConfigDict, workdir: workdir_lib.Workdir,
           devices: Sequence[jax.Device] | None, accept_config_change: bool) -> _Run:
  """Every check of the run, read-only: raises ValueError / FileNotFoundError naming the fix."""
  program = TrainProgram.from_config(config, devices=devices)
  checks.check_batch(config.batch_size, data_parallel=program.data_parallel,
                     num_processes=jax.process_count(), grad_accum_steps=config.grad_accum_steps)
  checks.check_intervals(config)
  steps = manager.saved_steps(workdir.checkpoints)
  if steps:
    recorded = workdir_lib.read_json(workdir.config)
    changed = recipe.changes(recorded, config) if recorded else []
    if changed and not accept_config_change:
      raise ValueError(
          f"--workdir={workdir} was started with another recipe; resuming would change "
          f"{'; '.join(changed)}. Resume with the recorded config, or pass "
          "--accept_config_change to continue with the new values, or use a new --workdir.")
    saved = manager.saved_params(workdir.checkpoints, steps[-1])
    if saved is not None:
      pretrained.check_matches(
          saved, program.abstract_params, source=f"{workdir.checkpoints}/{steps[-1]}",
          fix="Fix: resume with the model this run was started with (its config.json), or "
              "train this model in a new --workdir.")
  return _Run(
      workdir=workdir, program=program,
      train_iter=pipeline.make_train_iterator(config.input, config.batch_size, config.seed,
                                              program.batch_sharding),
      evaluators=program.evaluators(),
      eval_every={name: e.every_steps for name, e in config_lib.resolve_evals(config).items()},
      resuming=bool(steps), pretrained_params=None if steps else program.pretrained_params())


def _take(workdir: workdir_lib.Workdir) -> lock_lib.WorkdirLock | None:
  """Process 0 locks the workdir for this run; every process learns whether it may go on."""
  lock = lock_lib.WorkdirLock(workdir) if jax.process_index() == 0 else None
  refusal = ""
  if lock is not None:
    try:
      lock.acquire()
    except ValueError as e:
      refusal = str(e)
  if jax.process_count() > 1:
    refused = multihost_utils.broadcast_one_to_all(np.int32(bool(refusal)))
    refusal = refusal or (f"--workdir={workdir} is in use by another run (see process 0)."
                          if refused else "")
  if refusal:
    raise ValueError(refusal)
  return lock


def _first_nonfinite(pending: list[tuple[int, jax.Array, jax.Array]]) -> tuple[int, float, float]:
  """(step, loss, grad norm) of the first pending step whose loss or gradient norm is not finite,
  or (0, 0, 0). One transfer for all steps since the last check: no step waits for the host."""
  values = jax.device_get([(loss, grad_norm) for _, loss, grad_norm in pending])
  for (step, *_), (loss, grad_norm) in zip(pending, values):
    if not (np.isfinite(loss) and np.isfinite(grad_norm)):
      return step, float(loss), float(grad_norm)
  return 0, 0.0, 0.0


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices: Sequence[jax.Device] | None = None, *,
                       accept_config_change: bool = False) -> dict[str, Any]:
  """Trains (resuming from WORKDIR/checkpoints if present) and returns the final metrics.

  Args:
    config: the experiment config (see configs/).
    workdir: output directory, local or remote (gs://...).
    devices: the devices to build the mesh from (default: all).
    accept_config_change: resume even if the recipe differs from the one the run started with.

  Returns:
    The final metrics; with "stopped_by" if a signal stopped the run (resumable), with
    "already_finished" if the workdir holds a finished run (then nothing was changed).

  Raises:
    vit_jax.config.BadInputError: for a bad config value or input, before anything is compiled,
      and for a full disk (what was committed stays).
    Diverged: a non-finite loss or gradient norm; nothing from that step on was saved.
  """
  with stall.StallWatchdog() as watchdog:  # From here on, a part stuck for too long ends the run.
    watchdog.progress("checking the run (its config, data, workdir and checkpoints)")
    with bad_input():
      workdir = workdir_lib.Workdir(workdir)
      summary = workdir.read_summary()
      if summary and summary.get("done"):  # Results are facts: a finished run is never rewritten.
        logging.info("%s finished already; its final metrics are in %s.", workdir, workdir.summary)
        return {**summary["final"], "already_finished": True}
      run = _check(config, workdir, devices, accept_config_change)
      workdir.check_writable()
      watchdog.progress(f"taking {workdir}")
      lock = _take(workdir)

    try:
      with distributed.before_forced_exit(lock.release if lock else lambda: None):
        return _train(config, run, watchdog.progress)
    except OSError as e:
      if e.errno in (errno.ENOSPC, errno.EDQUOT):
        raise BadInputError(
            f"No space left writing {workdir} ({e}): free space or move the run to another "
            "--workdir, then rerun the same command; it resumes from the newest committed "
            "checkpoint.") from e
      raise
    finally:
      if lock is not None:
        lock.release()


def _train(config: ml_collections.ConfigDict, run: _Run,
           progress_to: Callable[[str], None]) -> dict[str, Any]:
  """The run itself; `progress_to(doing)` as each part of it begins (the stall watchdog's clock)."""
  program, workdir, train_iter = run.program, run.workdir, run.train_iter
  total_steps, batch_size = program.total_steps, config.batch_size
  logging.info("Model %s: %s params, %s attention; mesh %s; %d steps of %d images (%d warmup).",
               config.model.variant or "(custom)", f"{program.num_params:,}",
               program.attention_kernel, dict(program.mesh.shape), total_steps, batch_size,
               program.warmup_steps)
  logging.info("MFU against %s; %.4f GFLOP per training image.", program.peak.source,
               program.train_flops_per_image() / 1e9)
  if program.peak.flops is None:
    logging.warning("MFU is reported as unknown: %s.", program.peak.source)

  progress_to(f"opening {workdir.checkpoints}")
  checkpointer = manager.TrainStateCheckpointer(
      workdir.checkpoints, save_every_steps=config.checkpoint_every_steps,
      keep=config.keep_checkpoints, async_save=config.async_checkpoints)
  if run.resuming:
    progress_to(f"restoring the newest checkpoint of {workdir.checkpoints}")
    # No step fits this run's state, or its data changed: one message, every file left in place.
    with bad_input():
      state, data_state, start = checkpointer.restore(program.abstract_state())
      train_iter.set_state(data_state)
    logging.info("Resumed from %s/%d.", workdir.checkpoints, start)
  else:
    progress_to("initialising the train state")
    state, start = program.init(run.pretrained_params), 0
  if jax.process_index() == 0 and (start == 0 or not workdir.config.exists() or
                                   recipe.changes(workdir_lib.read_json(workdir.config), config)):
    workdir_lib.write_json(workdir.config, recipe.as_record(config))

  writer = metrics_lib.MetricsWriter(workdir, resume_step=start, enabled=jax.process_index() == 0)
  flexi_sizes = tuple(config.flexi.patch_sizes)  # FlexiViT: () = train at the model's patch size.
  progress = metrics_lib.ProgressLine(total_steps, batch_size, start)
  final: dict[str, Any] = {}
  compiled_sizes = set()  # Patch sizes whose train step has run (None: the model's own).
  pending: list[tuple[int, jax.Array, jax.Array]] = []  # Steps whose finiteness is unchecked.
  step = start
  t_start = time.perf_counter()
  with program.mesh_context(), preemption.StopRequests() as stop:
    if start >= total_steps:  # Finished, but summary.json was never written: evaluate again.
      final.update(evaluation.evaluate_all(run.evaluators, state.params, state.ema_params,
                                           lambda doing: progress_to(f"{doing} at step {start}")))
      if not final.keys() <= writer.keys_at_resume:  # Its evals failed after the last save.
        writer.write(start, final)
    try:
      for step in range(start + 1, total_steps + 1):
        progress_to(f"reading the batch of step {step}")
        batch = next(train_iter)
        patch = sample_patch_size(flexi_sizes, config.seed, step) if flexi_sizes else None
        compiling = patch not in compiled_sizes
        compiled_sizes.add(patch)
        progress_to(f"{'compiling and ' if compiling else ''}running step {step}")
        t_step = time.perf_counter()
        state, metrics = program.train_step(patch)(state, batch)
        pending.append((step, metrics["train/loss"], metrics["grad_norm"]))
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

        stopping = stop.should_stop(step)
        saving = checkpointer.is_due(step, force=stopping or step == total_steps)
        if pending and (step % config.log_every_steps == 0 or saving):
          bad_step, loss, grad_norm = _first_nonfinite(pending)
          pending.clear()
          if bad_step:
            raise Diverged(
                f"Training diverged at step {bad_step}: loss {loss}, gradient norm {grad_norm}. "
                f"Nothing from that step on was saved; the newest checkpoint in "
                f"{workdir.checkpoints} is step {checkpointer.latest_step()}. Lower "
                "config.optim.lr (or raise the warmup, or clip harder), then rerun the same "
                "command with --accept_config_change to resume from that checkpoint.")

        # Saved before the evals: an eval that fails (out of memory) costs no training.
        if saving:
          progress_to(f"saving the checkpoint of step {step}")
          writer.flush()  # A resume from this checkpoint never writes its rows again.
          checkpointer.save(step, state, train_iter, force=True)

        due = {name: evaluate for name, evaluate in run.evaluators.items()
               if step == total_steps or run.eval_every[name] and
               step % run.eval_every[name] == 0}
        if due:
          results = evaluation.evaluate_all(
              due, state.params, state.ema_params,
              lambda doing, step=step: progress_to(f"{doing} at step {step}"))
          writer.write(step, results)
          if saving:
            writer.flush()  # This step's eval rows too.
          logging.info("step %d: %s", step, ", ".join(f"{k}={v:.4f}" for k, v in results.items()))
          final.update(results)
          progress.reset_clock(step)

        if stopping:
          logging.warning("Stopped by %s at step %d; checkpoint saved. Rerun the same command to "
                          "resume.", stop.signal_name, step)
          break
    finally:
      progress_to(f"finishing the checkpoint writes (last step {step})")
      checkpointer.close()
      writer.close()

  final.update(step=step, wall_s=time.perf_counter() - t_start, num_params=program.num_params)
  if stop.signal_name:
    final["stopped_by"] = stop.signal_name
  elif jax.process_index() == 0:
    progress_to("writing the summary")
    workdir.write_summary({"done": True, "final": final, "config": config.to_dict(),
                           "mesh": dict(program.mesh.shape), "num_devices": len(program.devices),
                           "num_processes": jax.process_count()})
  return final
