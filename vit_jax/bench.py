r"""Efficiency profile of a training config: what a step costs, measured and counted.

    python -m vit_jax.bench --config=configs/quickstart.py:patch=7 [--output=bench.json]
        [--targets=tpu-v5e-16,h100-8x] [--steps=10] [--image_size=224]

Prints and writes: parameters; analytic forward / training GFLOPs per image (vit_jax.flops); XLA's
FLOP count of the unscanned forward and training step (a scanned body would be counted once); compile
time; step time and img/s of the real jitted training step (the trainer's, same mesh and shardings) on
random data; MFU against the device peak (vit_jax.hardware); peak memory (the allocator's peak on
GPU/TPU, the process's peak RSS on CPU); and, per `--targets`, a projection of the step onto hardware
we don't have (vit_jax.projection). For a FlexiViT config (`config.flexi.patch_sizes`) every patch
size is profiled too.

The image shape comes from one preprocessed training example (or `--image_size` when the data is not
prepared on this machine).
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any, Callable

from absl import app, flags, logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vit_jax import cli, config_checks, flops, models, optim, projection, sharding, train
from vit_jax.data import pipeline

# `--config` is the trainer's flag (defined when vit_jax.train is imported): same syntax, same parsing.
_OUTPUT = flags.DEFINE_string("output", None, "Write the profile as JSON here (a trial's bench.json).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed training steps (after 2 warm-up steps).")
_BATCH = flags.DEFINE_integer("batch_size", None, "Global batch (default: config.batch_size).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "Square image side; skips reading the data.")
_CHANNELS = flags.DEFINE_integer("channels", 3, "Image channels, with --image_size.")
_TARGETS = flags.DEFINE_list("targets", [], f"Projection targets: {sorted(projection.TARGETS)}.")
_MFU = flags.DEFINE_float("assumed_mfu", projection.DEFAULT_MFU, "MFU the projections assume.")
_PROGRAM_COSTS = flags.DEFINE_list(
    "program_costs_for", [], "Internal: print the ProgramCost JSON of the unscanned training step at "
    "each of these per-device batches on this process's devices, and exit.")

# XLA FLOP counts come from programs compiled (never run) for a few images on one device.
_XLA_COUNT_BATCH = 4
# Fake CPU devices the projection's program is compiled for (a host's worth of chips).
_PROJECTION_DEVICES = 8


def image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """(H, W, C) of a preprocessed training image."""
  if _IMAGE_SIZE.value:
    return (_IMAGE_SIZE.value, _IMAGE_SIZE.value, _CHANNELS.value)
  source = pipeline.check_ready(config.input)
  example = pipeline.Preprocess(config.input.pp)(source.records[0], np.random.default_rng(0))
  return tuple(example["image"].shape)


def _model_config(config: ml_collections.ConfigDict, **model_overrides: Any) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.update(model_overrides)
  return config


def _random_batch(batch_size: int, hwc: Sequence[int], num_classes: int, batch_sharding) -> dict[str, jax.Array]:
  """A global batch built shard by shard (works across hosts)."""
  rng = np.random.default_rng(0)
  images = rng.standard_normal((batch_size, *hwc), dtype=np.float32)
  labels = np.eye(num_classes, dtype=np.float32)[rng.integers(0, num_classes, batch_size)]
  return {k: jax.make_array_from_callback(v.shape, batch_sharding, lambda idx, v=v: v[idx])
          for k, v in (("image", images), ("label", labels))}


def _compile_train_step(config: ml_collections.ConfigDict, hwc: Sequence[int], batch_size: int,
                        devices: Sequence[jax.Device]):
  """The trainer's train step, jitted with its shardings over `config.mesh` and compiled."""
  mesh = sharding.make_mesh(config.mesh, devices)
  rules = tuple(config.get("sharding_rules") or sharding.DEFAULT_RULES)
  model, model_kwargs = train.build_model(config)
  abstract, param_shardings = train.abstract_params(model, (1, *hwc), mesh, rules)
  tx, schedule = optim.make_optimizer(config.optim, abstract, total_steps=1000, warmup_steps=10)
  ema = bool(config.get("ema_decay"))
  state_shardings = train.state_shardings(tx, abstract, param_shardings, mesh, ema)
  batch_sharding = sharding.batch_sharding(mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.mesh_rules(mesh, rules)):
    step = train.jit_train_step(train.train_step_from_config(config, model, tx, schedule), mesh,
                                state_shardings)
    abstract_state = jax.eval_shape(lambda p: train.make_state(tx, p, jax.random.key(0), ema), abstract)
    abstract_batch = {"image": jax.ShapeDtypeStruct((batch_size, *hwc), jnp.float32, sharding=batch_sharding),
                      "label": jax.ShapeDtypeStruct((batch_size, config.num_classes), jnp.float32,
                                                    sharding=batch_sharding)}
    start = time.perf_counter()
    compiled = step.lower(jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                       abstract_state, state_shardings), abstract_batch).compile()
    compile_s = time.perf_counter() - start

    def init_state():
      params = train.jit_init_params(model, (1, *hwc), param_shardings)(jax.random.key(0))
      return jax.jit(lambda p: train.make_state(tx, p, jax.random.key(1), ema),
                     out_shardings=state_shardings)(params)
  return compiled, compile_s, init_state, batch_sharding, model_kwargs, abstract


def fixed_batch_trainer(model: nn.Module, images: np.ndarray | jax.Array, labels: np.ndarray | jax.Array,
                        *, lr: float = 1e-3, wd: float = 1e-4) -> Callable[[int], dict[str, jax.Array]]:
  """steps -> the last step's metrics (not waited for): our AdamW train step, placed as the trainer
  places it (data mesh over every device, state donated), repeated on one fixed batch.

  For throughput experiments that compare our step with another codebase's on identical inputs:
  `images` NHWC, `labels` one-hot, both global.
  """
  mesh, rules = sharding.make_mesh([("data", -1)]), sharding.DEFAULT_RULES
  abstract, param_shardings = train.abstract_params(model, (1, *images.shape[1:]), mesh, rules)
  cfg = ml_collections.ConfigDict(dict(name="adamw", lr=lr, wd=wd, schedule="constant"))
  tx, schedule = optim.make_optimizer(cfg, abstract, total_steps=1_000_000, warmup_steps=0)
  state_shardings = train.state_shardings(tx, abstract, param_shardings, mesh, ema=False)
  batch_sharding = sharding.batch_sharding(mesh)
  data = {"image": jax.device_put(images, batch_sharding), "label": jax.device_put(labels, batch_sharding)}
  axis_rules = sharding.mesh_rules(mesh, rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(axis_rules):
    params = train.jit_init_params(model, (1, *images.shape[1:]), param_shardings)(jax.random.key(0))
    state = jax.device_put(train.make_state(tx, params, jax.random.key(1), ema=False), state_shardings)
    step = train.jit_train_step(
        train.make_train_step(model, tx, loss_fn=optim.softmax_xent, schedule=schedule), mesh,
        state_shardings)

  def run(steps: int) -> dict[str, jax.Array]:
    nonlocal state
    with jax.set_mesh(mesh), nn.logical_axis_rules(axis_rules):
      for _ in range(steps):
        state, metrics = step(state, data)
    return metrics

  return run


def xla_forward_flops_per_image(config: ml_collections.ConfigDict, hwc: Sequence[int]) -> float:
  """XLA's FLOP count of the unscanned model's forward pass, per image."""
  model, _ = train.build_model(_model_config(config, scan=False))
  images = jax.ShapeDtypeStruct((_XLA_COUNT_BATCH, *hwc), jnp.float32)
  params = jax.eval_shape(lambda: nn.meta.unbox(model.init(
      {"params": jax.random.key(0)}, jnp.zeros((1, *hwc)), train=False)["params"]))
  forward = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False)).lower(params, images).compile()
  return projection.program_cost(forward, 1, _XLA_COUNT_BATCH).flops / _XLA_COUNT_BATCH


def xla_train_flops_per_image(config: ml_collections.ConfigDict, hwc: Sequence[int]) -> float:
  """XLA's FLOP count of the unscanned model's whole training step (optimizer included), per image."""
  compiled, *_ = _compile_train_step(_model_config(config, scan=False), hwc, _XLA_COUNT_BATCH,
                                     jax.devices()[:1])
  return projection.program_cost(compiled, 1, _XLA_COUNT_BATCH).flops / _XLA_COUNT_BATCH


def _peak_memory() -> tuple[int, str]:
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), f"peak_bytes_in_use of {jax.local_devices()[0].device_kind}"
  # Linux reports ru_maxrss in KiB: the process's peak resident memory, compilation included.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak RSS of the process (CPU)"


def profile(config: ml_collections.ConfigDict, hwc: Sequence[int], batch_size: int, steps: int,
            targets: Sequence[str] = (), assumed_mfu: float = projection.DEFAULT_MFU,
            config_flags_argv: Sequence[str] = ()) -> dict[str, Any]:
  """The efficiency profile of one model/config (see the module docstring)."""
  devices = jax.devices()
  compiled, compile_s, init_state, batch_sharding, model_kwargs, abstract = _compile_train_step(
      config, hwc, batch_size, devices)
  state = init_state()
  batch = _random_batch(batch_size, hwc, config.num_classes, batch_sharding)
  times = []
  for i in range(steps + 2):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    if i >= 2:  # Two warm-up steps: allocation and caches.
      times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  img_per_s = batch_size / step_s
  image_hw, channels = tuple(hwc[:2]), hwc[2]
  fwd = flops.forward_flops_per_image(model_kwargs, image_hw, channels, config.num_classes)
  train_flops = flops.train_flops_per_image(model_kwargs, image_hw, channels, config.num_classes)
  mfu_of = train.mfu_fn(model_kwargs, config, (1, *hwc), devices)
  peak_memory, memory_source = _peak_memory()
  memory = compiled.memory_analysis()
  result = {
      "model_name": config.model_name,
      "model": {k: str(v) if k == "dtype" else v for k, v in model_kwargs.items()},
      "image_shape": list(hwc), "batch_size": batch_size,
      "device": f"{len(devices)} x {devices[0].device_kind}", "num_devices": len(devices),
      "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(abstract))),
      "fwd_gflops_per_image": fwd / 1e9, "train_gflops_per_image": train_flops / 1e9,
      "xla_fwd_gflops_per_image": xla_forward_flops_per_image(config, hwc) / 1e9,
      "xla_train_gflops_per_image": xla_train_flops_per_image(config, hwc) / 1e9,
      "compile_s": compile_s, "step_s": step_s, "step_s_min": min(times), "img_per_s": img_per_s,
      "mfu": mfu_of(img_per_s), "peak_memory_bytes": peak_memory, "memory_source": memory_source,
      "compiled_temp_bytes": int(getattr(memory, "temp_size_in_bytes", 0)),
  }
  result["projections"] = _projections(targets, batch_size, train_flops, assumed_mfu, config_flags_argv)
  return result


def _projections(targets: Sequence[str], batch_size: int, train_flops_per_image: float,
                 assumed_mfu: float, config_flags_argv: Sequence[str]) -> list[dict[str, Any]]:
  """Each target's projection from the unscanned step compiled for its per-chip batch."""
  if not targets:
    return []
  targets = [projection.get_target(t) for t in targets]
  per_chip = {t.name: max(1, batch_size // t.chips) for t in targets}
  costs = _program_costs_in_subprocess(config_flags_argv, sorted(set(per_chip.values())))
  return [projection.project(costs[per_chip[t.name]], t, train_flops_per_image, assumed_mfu)
          for t in targets]


def _program_costs_in_subprocess(config_flags_argv: Sequence[str], per_device_batches: Sequence[int]
                                 ) -> dict[int, projection.ProgramCost]:
  """Compiles the trial's step on fake CPU devices: the device count is fixed at JAX start-up."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={_PROJECTION_DEVICES}"}
  command = [sys.executable, "-m", "vit_jax.bench", *config_flags_argv,
             f"--program_costs_for={','.join(map(str, per_device_batches))}"]
  if _IMAGE_SIZE.value:
    command += [f"--image_size={_IMAGE_SIZE.value}", f"--channels={_CHANNELS.value}"]
  result = subprocess.run(command, env=env, capture_output=True, text=True)
  if result.returncode:
    raise RuntimeError(f"compiling the projection program failed:\n{result.stderr[-3000:]}")
  costs = json.loads(result.stdout.strip().splitlines()[-1])
  return {int(b): projection.ProgramCost.from_json(c) for b, c in costs.items()}


def format_profile(p: dict[str, Any]) -> str:
  lines = [
      f"{p['model_name']} {p['model']['width']}w x {p['model']['depth']} patch {p['model']['patch_size']} "
      f"on {p['image_shape']} images, batch {p['batch_size']}, {p['device']}",
      f"  params                 {p['params']:,}",
      f"  GFLOPs/image analytic  forward {p['fwd_gflops_per_image']:.4g}, train {p['train_gflops_per_image']:.4g}",
      f"  GFLOPs/image XLA       forward {p['xla_fwd_gflops_per_image']:.4g}, train step "
      f"{p['xla_train_gflops_per_image']:.4g} (unscanned model)",
      f"  compile                {p['compile_s']:.2f} s",
      f"  step                   {p['step_s'] * 1e3:.2f} ms (median), {p['img_per_s']:,.1f} img/s",
      f"  MFU                    {p['mfu']:.1%}",
      f"  peak memory            {p['peak_memory_bytes'] / 2**20:,.0f} MiB ({p['memory_source']})",
  ]
  lines += ["  " + projection.format_projection(proj) for proj in p["projections"]]
  for patch, sub in p.get("per_patch_size", {}).items():
    lines.append(f"  FlexiViT patch {patch}: {sub['train_gflops_per_image']:.4g} train GFLOPs/img, "
                 f"{sub['img_per_s']:,.1f} img/s, MFU {sub['mfu']:.1%}")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = flags.FLAGS.config
  if config is None:
    raise ValueError("--config is required, e.g. --config=configs/quickstart.py:patch=7.")
  for target in _TARGETS.value:
    projection.get_target(target)
  hwc = image_shape(config)
  models.model_kwargs(config.model_name, **config.model)  # Unknown model fields fail here.

  if _PROGRAM_COSTS.value:  # The parent process checked the config for its own devices.
    costs = {}
    for per_device in map(int, _PROGRAM_COSTS.value):
      compiled, *_ = _compile_train_step(_model_config(config, scan=False), hwc,
                                         per_device * jax.device_count(), jax.devices())
      costs[per_device] = projection.program_cost(compiled, jax.device_count(), per_device).to_json()
    print(json.dumps(costs))
    return

  batch_size = _BATCH.value or config.batch_size
  config_checks.check_train_config(config, num_devices=jax.device_count(),
                                   num_processes=jax.process_count())
  config_argv = [a for a in sys.argv[1:] if a.startswith("--config")]
  result = profile(config, hwc, batch_size, _STEPS.value, _TARGETS.value, _MFU.value, config_argv)
  patch_sizes = tuple(config.get("flexi", {}).get("patch_sizes", ()))
  if patch_sizes:
    result["per_patch_size"] = {
        str(p): profile(_model_config(config, patch_size=p), hwc, batch_size, _STEPS.value, (), _MFU.value)
        for p in patch_sizes}
  print(format_profile(result), flush=True)
  if _OUTPUT.value and jax.process_index() == 0:
    from etils import epath
    path = epath.Path(_OUTPUT.value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    logging.info("Wrote %s", path)


def run() -> None:
  """Entry point; bad input exits with code 2 and one message before anything is compiled."""
  checked_main = cli.exit_on_bad_input(main)

  def start_and_run(argv: Sequence[str]) -> None:
    train.start_process()  # As the trainer: the step is measured as it runs there.
    checked_main(argv)
  app.run(start_and_run)


if __name__ == "__main__":
  run()
