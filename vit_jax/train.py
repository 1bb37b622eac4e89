r"""Pretrain or fine-tune a ViT on one CPU, one GPU or a TPU pod slice with the same code.

    python -m vit_jax.train --config=configs/quickstart.py --workdir=/tmp/quickstart
    python -m vit_jax.train --config=configs/vit_i1k.py:variant=S/16,epochs=90 --workdir=gs://b/run \
        --config.batch_size=1024 --config.mesh='(("data", -1),)'

Writes WORKDIR/metrics.jsonl, TensorBoard events (WORKDIR/tb), Orbax checkpoints (WORKDIR/checkpoints,
resumed automatically) and, when the run completes, WORKDIR/summary.json. SIGTERM or Ctrl-C finishes the
current step, saves a checkpoint and exits cleanly; rerunning the same command resumes.
Bad config values exit with code 2 and one message before anything is compiled.
"""
from __future__ import annotations

import dataclasses
import json
import logging as std_logging
import os
import signal
import sys
import time
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
from absl import logging
import flax
import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np
import optax

from vit_jax import checkpoints
from vit_jax import config_checks
from vit_jax import cpu_runtime
from vit_jax import evaluators
from vit_jax import flops
from vit_jax import hardware
from vit_jax import metrics_writer
from vit_jax import models
from vit_jax import optim
from vit_jax import sharding
from vit_jax.checkpoints import state as state_lib
from vit_jax.data import mixup
from vit_jax.data import pipeline
from vit_jax.data import sources

# Shared with vit_jax.evaluate (absl flags can only be defined once per process).
CONFIG_FLAG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                              lock_config=True)
WORKDIR_FLAG = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
COORDINATOR_FLAG = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-process runs started by hand "
    "(TPU pods and SLURM are detected automatically).")
NUM_PROCESSES_FLAG = flags.DEFINE_integer(
    "num_processes", None, "Number of processes (with --coordinator_address).")
PROCESS_ID_FLAG = flags.DEFINE_integer(
    "process_id", None, "This process's index (with --coordinator_address).")

EXIT_BAD_CONFIG = 2


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs besides the data position. `ema_params` is None without EMA."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  ema_params: Any = None


# ----------------------------------------------------------------------------------------------------
# Multi-host


def _cluster_detected() -> bool:
  """True on launchers that jax.distributed.initialize() configures itself (SLURM, TPU pods, MPI)."""
  def count(var):
    try:
      return int(os.environ.get(var, "1"))
    except ValueError:
      return 1
  tpu_workers = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return (count("SLURM_NTASKS") > 1 or count("OMPI_COMM_WORLD_SIZE") > 1 or "," in tpu_workers)


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Starts multi-process JAX when asked to (explicit address) or when a cluster is detected."""
  if coordinator_address:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif _cluster_detected():
    jax.distributed.initialize()
  else:
    return
  logging.info("Process %d of %d; %d local / %d global devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


# ----------------------------------------------------------------------------------------------------
# Pure step functions


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, *,
                    loss_fn: Callable[..., jax.Array], schedule: optax.Schedule,
                    label_smoothing: float = 0.0, grad_accum_steps: int = 1,
                    mixup_cfg: ml_collections.ConfigDict | None = None,
                    ema_decay: float | None = None, patch_size: tuple[int, int] | None = None
                    ) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict]]:
  """(state, batch) -> (new state, metrics): one optimizer step on the global batch.

  With `grad_accum_steps` > 1 the batch is split into that many micro-batches whose gradients are
  averaged inside the step (lax.scan), so memory is that of one micro-batch. The step's randomness
  (dropout, mixup) is derived from (state.rng, state.step), so a resumed run repeats it exactly.
  `patch_size` trains the model at another patch size than its own (FlexiViT; one step per size).
  """
  mix = mixup_cfg is not None and (mixup_cfg.get("mixup_alpha", 0.0)
                                   or mixup_cfg.get("cutmix_alpha", 0.0))

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
      images, labels = mixup.mix(mix_rng, images, labels, mixup_cfg.get("mixup_alpha", 0.0),
                                 mixup_cfg.get("cutmix_alpha", 0.0),
                                 mixup_cfg.get("switch_prob", 0.5))
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
    ema_params = (optim.ema_update(state.ema_params, params, ema_decay) if ema_decay
                  else state.ema_params)
    metrics = {"train/loss": loss, "lr": schedule(state.step),
               "grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(params)}
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              ema_params=ema_params)
    return new_state, metrics

  return train_step


def make_state(tx: optax.GradientTransformation, params: Any, rng: jax.Array,
               ema: bool) -> TrainState:
  """The train state at step 0 for (possibly pretrained) `params`."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=rng, ema_params=params if ema else None)


def train_step_from_config(config: ml_collections.ConfigDict, model: nn.Module,
                           tx: optax.GradientTransformation, schedule: optax.Schedule,
                           patch_size: tuple[int, int] | None = None) -> Callable:
  """`make_train_step` with the loss, smoothing, accumulation, mixup and EMA the config names."""
  return make_train_step(model, tx, loss_fn=optim.get_loss(config.get("loss", "softmax_xent")),
                         schedule=schedule, label_smoothing=config.get("label_smoothing", 0.0),
                         grad_accum_steps=config.get("grad_accum_steps", 1),
                         mixup_cfg=config.input.get("mixup"), ema_decay=config.get("ema_decay"),
                         patch_size=patch_size)


def jit_train_step(train_step: Callable, mesh: jax.sharding.Mesh, state_shardings: TrainState
                   ) -> Callable:
  """A train step jitted with the trainer's placement: state donated, batch split, metrics replicated."""
  return jax.jit(train_step, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)


def jit_init_params(model: nn.Module, image_shape: Sequence[int], param_shardings: Any
                    ) -> Callable[[jax.Array], Any]:
  """rng -> freshly initialised (unboxed) params, created directly in their shardings."""
  return jax.jit(lambda rng: nn.meta.unbox(model.init(
      {"params": rng}, jnp.zeros(image_shape, jnp.float32), train=False)["params"]),
                 out_shardings=param_shardings)


# ----------------------------------------------------------------------------------------------------
# Setup helpers shared with vit_jax.evaluate


def build_model(config: ml_collections.ConfigDict) -> tuple[nn.Module, dict[str, Any]]:
  """The model named by `config.model_name` with `config.model` overrides, and its field values."""
  overrides = dict(config.get("model") or {})
  kwargs = models.model_kwargs(config.model_name, **overrides)
  if isinstance(kwargs.get("dtype"), str):
    kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
  return models.Model(num_classes=config.num_classes, **kwargs), kwargs


def abstract_params(model: nn.Module, image_shape: Sequence[int], mesh: jax.sharding.Mesh,
                    rules: Sequence[Any]) -> tuple[Any, Any]:
  """(abstract unboxed params, their NamedShardings) without computing anything.

  Tracing the init also validates the model against the image shape (e.g. patch size divides it).
  """
  # Traced without a mesh context: flax would constrain DenseGeneral's flattened (D, H*Dh) init
  # value with the 3-axis names of its (D, H, Dh) kernel. Placement comes from the shardings instead.
  boxed = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)},
                                            jnp.zeros(image_shape, jnp.float32),
                                            train=False)["params"])
  shardings = sharding.logical_shardings(boxed, mesh, rules)
  return nn.meta.unbox(boxed), shardings


def _to_host(tree: Any) -> Any:
  """Global arrays -> full NumPy arrays on every process."""
  if all(x.is_fully_addressable for x in jax.tree.leaves(tree)):
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def load_init_params(path: str, init_params: Any, dont_load: Sequence[str] = ()) -> Any:
  """Pretrained params from an official `.npz` or an Orbax checkpoint, adapted to `init_params`.

  The head is reset when num_classes differs and the position embedding / patch kernel are resized
  (vit_jax.checkpoints.merge_pretrained). Returns host arrays.
  """
  return checkpoints.load_pretrained(_to_host(init_params), path, dont_load=dont_load)


def state_shardings(tx: optax.GradientTransformation, abstract: Any, param_shardings: Any,
                    mesh: jax.sharding.Mesh, ema: bool) -> TrainState:
  """Optimizer state is sharded like the params it mirrors (moments of an FSDP kernel are FSDP)."""
  replicated = sharding.replicated(mesh)
  abstract_opt_state = jax.eval_shape(tx.init, abstract)
  opt_shardings = optax.tree_map_params(tx, lambda _, s: s, abstract_opt_state, param_shardings,
                                        transform_non_params=lambda _: replicated)
  return TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings,
                    rng=replicated, ema_params=param_shardings if ema else None)


def _num_train_examples(config: ml_collections.ConfigDict) -> int | None:
  """Size of the training split, opened only when a duration is given in epochs."""
  if config.get("total_epochs") is None and config.optim.get("warmup_epochs") is None:
    return None
  return len(sources.open_source(config.input.data).records)


# ----------------------------------------------------------------------------------------------------
# Stopping on SIGTERM / Ctrl-C


class _StopRequests:
  """Turns SIGTERM / SIGINT into a flag checked after every step (a second Ctrl-C aborts).

  Multi-process runs leave SIGTERM to JAX's preemption service, whose sync point makes every process
  stop at the same step.
  """

  def __init__(self):
    self.signal_name = None
    self._previous = {}
    signals = [signal.SIGINT] + ([signal.SIGTERM] if jax.process_count() == 1 else [])
    for sig in signals:
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread (e.g. embedded use): no graceful stop.
        pass

  def _handle(self, signum, frame):
    del frame
    if self.signal_name is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signal_name = signal.Signals(signum).name
    logging.warning("%s received: finishing this step, saving a checkpoint, then exiting "
                    "(Ctrl-C again to abort).", self.signal_name)

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1 and multihost_utils.reached_preemption_sync_point(step):
      self.signal_name = self.signal_name or "SIGTERM"
    return self.signal_name is not None

  def restore(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


# ----------------------------------------------------------------------------------------------------
# The training loop


def mfu_fn(model_kwargs: dict[str, Any], config: ml_collections.ConfigDict,
           image_shape: Sequence[int], devices: Sequence[jax.Device],
           patch_sizes: Sequence[int] = ()) -> Callable[[float], float | None]:
  """img/s -> model FLOPs utilisation against the devices' peak (analytic FLOPs; see flops.py).

  With FlexiViT `patch_sizes` the FLOPs per image are their mean: steps draw the sizes uniformly.
  """
  per_size_kwargs = [{**model_kwargs, "patch_size": (p, p)} for p in patch_sizes] or [model_kwargs]
  flops_per_image = float(np.mean([
      flops.train_flops_per_image(kwargs, tuple(image_shape[1:3]), channels=image_shape[3],
                                  num_classes=config.num_classes)
      for kwargs in per_size_kwargs]))
  peak, source = hardware.peak_flops_per_device(devices[0])
  # CPU "devices" (fake or not) share one probed pool of cores; accelerators each have their peak.
  chips = 1 if devices[0].platform == "cpu" else len(devices)
  logging.info("MFU against %d x %.2f TFLOP/s (%s); %.4f GFLOP per training image.", chips,
               peak / 1e12, source, flops_per_image / 1e9)
  return lambda img_per_s: img_per_s * flops_per_image / (peak * chips)


def _evaluate_all(evals: dict[str, Any], state: TrainState) -> dict[str, float]:
  results = {}
  for name, evaluator in evals.items():
    results.update({f"{name}/{k}": v for k, v in evaluator(state.params).items()})
    if state.ema_params is not None:
      results.update({f"{name}_ema/{k}": v for k, v in evaluator(state.ema_params).items()})
  return results


def _eval_due(cfg: ml_collections.ConfigDict, step: int, total_steps: int) -> bool:
  every = cfg.get("every_steps", None)
  return step == total_steps or bool(every) and step % every == 0


def sample_patch_size(patch_sizes: Sequence[int], seed: int, step: int) -> int:
  """FlexiViT: the patch size of step `step`, drawn uniformly from `patch_sizes`.

  A function of (seed, step) only, so a resumed run repeats the sequence of the uninterrupted one.
  """
  return int(np.random.default_rng((seed, step)).choice(patch_sizes))


@dataclasses.dataclass
class _Setup:
  """What the training loop needs, built and validated before anything is compiled."""
  mesh: jax.sharding.Mesh
  rules: tuple[Any, ...]
  model: nn.Module
  model_kwargs: dict[str, Any]
  total_steps: int
  warmup_steps: int
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  train_iter: Any
  first_batch: dict[str, jax.Array]
  image_shape: tuple[int, ...]
  abstract_params: Any
  param_shardings: Any
  state_shardings: TrainState


def _setup(config: ml_collections.ConfigDict, workdir: str,
           devices: Sequence[jax.Device]) -> _Setup:
  config_checks.check_workdir(workdir)
  config_checks.check_train_config(config, num_devices=len(devices),
                                   num_processes=jax.process_count())
  pipeline.check_ready(config.input)
  for cfg in (config.get("evals") or {}).values():
    pipeline.check_ready(cfg)
  mesh = sharding.make_mesh(config.mesh, devices)
  rules = tuple(config.get("sharding_rules") or sharding.DEFAULT_RULES)
  num_train_examples = _num_train_examples(config)
  total_steps = optim.duration_in_steps(config, "total", batch_size=config.batch_size,
                                        num_train_examples=num_train_examples)
  warmup_steps = optim.duration_in_steps(config.optim, "warmup", batch_size=config.batch_size,
                                         num_train_examples=num_train_examples, default=0)
  model, model_kwargs = build_model(config)
  train_iter = pipeline.make_train_iterator(config.input, global_batch_size=config.batch_size,
                                            sharding=sharding.batch_sharding(mesh),
                                            seed=config.seed)
  first_batch = next(train_iter)  # Gives the image shape; it is also the first step's batch.
  image_shape = (1,) + tuple(first_batch["image"].shape[1:])
  config_checks.check_flexi_patch_sizes(config.flexi.patch_sizes, image_shape[1:3])
  abstract, param_shardings = abstract_params(model, image_shape, mesh, rules)
  tx, schedule = optim.make_optimizer(config.optim, abstract, total_steps=total_steps,
                                      warmup_steps=warmup_steps)
  return _Setup(mesh=mesh, rules=rules, model=model, model_kwargs=model_kwargs,
                total_steps=total_steps, warmup_steps=warmup_steps, tx=tx, schedule=schedule,
                train_iter=train_iter, first_batch=first_batch, image_shape=image_shape,
                abstract_params=abstract, param_shardings=param_shardings,
                state_shardings=state_shardings(tx, abstract, param_shardings, mesh,
                                                bool(config.get("ema_decay"))))


def _initial_state(config: ml_collections.ConfigDict, s: _Setup,
                   checkpointer: state_lib.TrainStateCheckpointer) -> tuple[TrainState, int, Any]:
  """(state, its step, data-iterator state or None): resumed, fine-tuned from config.init, or fresh.

  Init is traced outside the mesh context (see `abstract_params`); each function compiles once.
  """
  ema = bool(config.get("ema_decay"))
  init_state = jax.jit(lambda params, rng: make_state(s.tx, params, rng, ema),
                       in_shardings=(s.param_shardings, sharding.replicated(s.mesh)),
                       out_shardings=s.state_shardings, donate_argnums=0)
  if checkpointer.latest_step() is not None:
    abstract_state = jax.tree.map(
        lambda x, sharding_: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_),
        jax.eval_shape(init_state, s.abstract_params, jax.random.PRNGKey(0)), s.state_shardings)
    state, data_state, step = checkpointer.restore(abstract_state)
    logging.info("Resumed from %s/%d.", checkpointer.directory, step)
    return state, step, data_state
  init_params = jit_init_params(s.model, s.image_shape, s.param_shardings)
  params_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  params = init_params(params_rng)
  if config.get("init"):
    params = load_init_params(config.init, params, tuple(config.get("dont_load", ())))
    params = jax.device_put(params, s.param_shardings)
    logging.info("Initialised from %s.", config.init)
  return init_state(params, state_rng), 0, None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices: Sequence[jax.Device] | None = None) -> dict[str, Any]:
  """Trains (resuming from WORKDIR/checkpoints if present) and returns the final metrics.

  Args:
    config: the experiment config (see configs/).
    workdir: output directory; made absolute.
    devices: the devices to build the mesh from (default: all).

  Raises:
    config_checks.ConfigError: for a bad config value, before anything is compiled.
  """
  workdir = workdir if "://" in workdir else os.path.abspath(workdir)
  devices = list(jax.devices() if devices is None else devices)
  try:
    s = _setup(config, workdir, devices)
  except (ValueError, FileNotFoundError) as e:
    raise config_checks.ConfigError(str(e)) from e

  mesh, batch_size, total_steps = s.mesh, config.batch_size, s.total_steps
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(s.abstract_params))
  logging.info("Model %s: %s params; mesh %s; %d steps of %d images (%d warmup).",
               config.model_name, f"{num_params:,}", dict(mesh.shape), total_steps, batch_size,
               s.warmup_steps)
  checkpointer = state_lib.TrainStateCheckpointer(
      os.path.join(workdir, "checkpoints"), save_every_steps=config.checkpoint_every_steps,
      keep=config.get("keep_checkpoints", 3), async_save=config.get("async_checkpoints", True))
  writer = metrics_writer.MetricsWriter(workdir, enabled=jax.process_index() == 0)
  train_iter, first_batch = s.train_iter, s.first_batch

  state, start, data_state = _initial_state(config, s, checkpointer)
  if data_state is not None:
    train_iter.set_state(data_state)
    first_batch = None

  flexi_sizes = tuple(config.flexi.patch_sizes)  # FlexiViT: () = train at the model's patch size.
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.mesh_rules(mesh, s.rules)):

    # Each compiled once, on first use: one train step per patch size (built as sizes are drawn)
    # and every evaluator's step(s).
    train_steps: dict[int | None, Callable] = {}
    evals = {name: evaluators.build(cfg, model=s.model, mesh=mesh,
                                    params_sharding=s.param_shardings,
                                    batch_size=config.get("eval_batch_size", batch_size),
                                    loss_name=config.get("loss", "softmax_xent"),
                                    patch_sizes=flexi_sizes)
             for name, cfg in (config.get("evals") or {}).items()}

    mfu_of = mfu_fn(s.model_kwargs, config, s.image_shape, devices, patch_sizes=flexi_sizes)
    progress = metrics_writer.ProgressLine(total_steps, batch_size, start)
    stop = _StopRequests()
    log_every = config.get("log_every_steps", 50)
    final: dict[str, Any] = {}
    step = start
    t_start = time.perf_counter()
    if start >= total_steps:  # A finished run started again: report its final evaluation.
      final.update(_evaluate_all(evals, state))
    try:
      for step in range(start + 1, total_steps + 1):
        batch = first_batch if first_batch is not None else next(train_iter)
        first_batch = None
        patch = sample_patch_size(flexi_sizes, config.seed, step) if flexi_sizes else None
        compiling = patch not in train_steps
        if compiling:
          train_steps[patch] = jit_train_step(
              train_step_from_config(config, s.model, s.tx, s.schedule,
                                     (patch, patch) if patch else None), mesh, s.state_shardings)
        t_step = time.perf_counter()
        state, metrics = train_steps[patch](state, batch)
        if compiling:  # Report the compilation and keep it out of the img/s window.
          jax.block_until_ready(state)
          compile_s = time.perf_counter() - t_step
          logging.info("First step%s (compilation included) took %.1f s.",
                       f" at patch size {patch}" if patch else "", compile_s)
          writer.write(step, {"compile_s": compile_s})
          progress.reset_clock(step)
        if step % log_every == 0 or step == total_steps:
          metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
          if patch:
            metrics["patch_size"] = patch
          if not compiling:
            metrics.update(progress.measure(step))
            metrics["mfu"] = mfu_of(metrics["img_per_s"])
          writer.write(step, metrics)
          progress.log(step, metrics)
          final.update(metrics)
        due = {n: e for n, e in evals.items() if _eval_due(config.evals[n], step, total_steps)}
        if due:
          results = _evaluate_all(due, state)
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
      stop.restore()
      checkpointer.close()
      writer.close()

  final.update(step=step, wall_s=time.perf_counter() - t_start, num_params=num_params)
  if stop.signal_name:
    final["stopped_by"] = stop.signal_name
  elif jax.process_index() == 0:
    summary = {"done": True, "final": final, "config": config.to_dict(),
               "mesh": dict(mesh.shape), "num_devices": len(devices),
               "num_processes": jax.process_count()}
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=1, default=str)
  return final


# ----------------------------------------------------------------------------------------------------
# Entry point


class _LibraryInfoFilter(std_logging.Filter):
  """Drops the INFO chatter of Orbax, TFDS and grain (each save logs ~30 lines); keeps warnings."""
  _LIBRARIES = ("/orbax/", "/tensorflow_datasets/", "/grain/")

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
        lib in record.pathname for lib in self._LIBRARIES)


def quiet_library_logs() -> None:
  """Keeps the log readable: our progress lines, not every library's INFO messages."""
  logging.get_absl_handler().addFilter(_LibraryInfoFilter())


def start_process() -> None:
  """What every entry point does first: quiet library logs, CPU XLA flags, multi-host start-up."""
  quiet_library_logs()
  cpu_runtime.apply_cpu_defaults()  # Before anything touches a device: XLA reads the flags once.
  initialize_distributed(COORDINATOR_FLAG.value, NUM_PROCESSES_FLAG.value, PROCESS_ID_FLAG.value)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  start_process()
  try:
    if CONFIG_FLAG.value is None:
      raise config_checks.ConfigError("--config is required, e.g. --config=configs/quickstart.py.")
    final = train_and_evaluate(CONFIG_FLAG.value, WORKDIR_FLAG.value or "")
  except config_checks.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(EXIT_BAD_CONFIG)
  if jax.process_index() == 0:
    shown = {k: v for k, v in final.items() if "/prec@1" in k or k in ("train/loss", "step")}
    print("Final: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in shown.items()))


def run() -> None:
  """Console-script entry point (`vit-train`)."""
  app.run(main)


if __name__ == "__main__":
  run()
