"""Efficiency profile of a training config: what a step costs, measured and counted.

The library side of `python -m vit_jax.bench`. Every step timed or compiled here is the trainer's
own (vit_jax.training.program.TrainProgram: same model, optimizer, mesh and shardings). A profile
holds: parameters; analytic forward / training GFLOPs per image (vit_jax.models.flops); XLA's FLOP
count of the unscanned forward and training step (a scanned body would be counted once); compile
time; step time and img/s on random data; MFU against the device peak (vit_jax.runtime.hardware);
the step's memory per device as XLA planned it when compiling (see `step_memory_bytes`); and
projections of the step onto hardware we don't have (vit_jax.efficiency.projection).

A FlexiViT profile at a patch size (`profile(..., patch_size=p)`) times the step that training runs
at that size: the model's own weights, its patch kernel resized. Its FLOPs and MFU are those of p.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vit_jax import models
from vit_jax.config import base_config
from vit_jax.efficiency import projection
from vit_jax.models import flops
from vit_jax.training.program import TrainProgram

# XLA FLOP counts come from programs compiled (never run) for a few images on one device.
_XLA_COUNT_BATCH = 4
# Fake CPU devices the projection's program is compiled for (a host's worth of chips), at least.
_PROJECTION_DEVICES = 8
# A benchmark never trains to the end: the lr schedule's length does not change a step's cost.
_SCHEDULE_STEPS = (1000, 10)


def with_model(config: ml_collections.ConfigDict, **fields: Any) -> ml_collections.ConfigDict:
  """A copy of `config` whose model fields are overridden (e.g. scan=False, patch_size=8)."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.update(fields)
  return config


def program_for(config: ml_collections.ConfigDict, image_shape: Sequence[int],
                devices: Sequence[jax.Device] | None = None) -> TrainProgram:
  return TrainProgram.from_config(config, devices=devices, image_shape=image_shape,
                                  schedule_steps=_SCHEDULE_STEPS)


def compile_train_step(program: TrainProgram, batch_size: int, patch_size: int | None = None
                       ) -> tuple[jax.stages.Compiled, float]:
  """The program's train step (at `patch_size` for FlexiViT) compiled for a global batch of
  `batch_size`, and the seconds it took."""
  with program.mesh_context():
    start = time.perf_counter()
    compiled = program.train_step(patch_size).lower(program.abstract_state(),
                                                    program.abstract_batch(batch_size)).compile()
  return compiled, time.perf_counter() - start


def random_batch(program: TrainProgram, batch_size: int) -> dict[str, jax.Array]:
  """A global batch of random images and one-hot labels, built shard by shard (works across
  hosts)."""
  rng = np.random.default_rng(0)
  num_classes = program.config.num_classes
  arrays = {"image": rng.standard_normal((batch_size, *program.image_shape), dtype=np.float32),
            "label": np.eye(num_classes, dtype=np.float32)[rng.integers(0, num_classes,
                                                                        batch_size)]}
  return {k: jax.make_array_from_callback(v.shape, program.batch_sharding, lambda i, v=v: v[i])
          for k, v in arrays.items()}


def speed_config(variant: str, num_classes: int, *, lr: float = 1e-3, wd: float = 1e-4,
                 **model_fields: Any) -> ml_collections.ConfigDict:
  """A config for comparing our step with another codebase's: the model, and AdamW at a constant
  lr without gradient clipping (as torch.optim.AdamW), data-parallel over every device."""
  config = base_config()
  config.model.update(variant=variant, **model_fields)
  config.num_classes = num_classes
  config.optim.update(name="adamw", lr=lr, wd=wd, schedule="constant", grad_clip_norm=None)
  return config


def fixed_batch_trainer(config: ml_collections.ConfigDict, images: np.ndarray | jax.Array,
                        labels: np.ndarray | jax.Array) -> Callable[[int], dict[str, jax.Array]]:
  """steps -> the last step's metrics (not waited for): the trainer's step for `config`, placed as
  the trainer places it (state donated), repeated on one fixed batch.

  For throughput experiments that compare our step with another codebase's on identical inputs:
  `images` NHWC, `labels` one-hot, both global.
  """
  program = TrainProgram.from_config(config, image_shape=images.shape[1:],
                                     schedule_steps=(1_000_000, 0))
  data = {"image": jax.device_put(images, program.batch_sharding),
          "label": jax.device_put(labels, program.batch_sharding)}
  state = program.init()
  step = program.train_step()

  def run(steps: int) -> dict[str, jax.Array]:
    nonlocal state
    with program.mesh_context():
      for _ in range(steps):
        state, metrics = step(state, data)
    return metrics

  return run


def xla_forward_flops_per_image(config: ml_collections.ConfigDict, hwc: Sequence[int],
                                patch_size: int | None = None) -> float:
  """XLA's FLOP count of the unscanned model's forward pass (at `patch_size`: FlexiViT), per
  image."""
  model = models.get_model(num_classes=config.num_classes,
                           **with_model(config, scan=False).model.to_dict())
  images = jax.ShapeDtypeStruct((_XLA_COUNT_BATCH, *hwc), jnp.float32)
  params = jax.eval_shape(lambda: nn.meta.unbox(model.init(
      {"params": jax.random.key(0)}, jnp.zeros((1, *hwc)), train=False)["params"]))
  patch = (patch_size, patch_size) if patch_size else None
  forward = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False, patch_size=patch)
                    ).lower(params, images).compile()
  return projection.program_cost(forward, 1, _XLA_COUNT_BATCH).flops / _XLA_COUNT_BATCH


def xla_train_flops_per_image(config: ml_collections.ConfigDict, hwc: Sequence[int],
                              patch_size: int | None = None) -> float:
  """XLA's FLOP count of the unscanned model's whole training step (optimizer included, at
  `patch_size`: FlexiViT), per image.

  Compiled on one device, data-parallel, without gradient accumulation: a tensor-parallel or
  multi-slice mesh needs other devices, and XLA counts an accumulation scan's body once. Neither
  changes the FLOPs of an image.
  """
  config = with_model(config, scan=False)
  config.update(mesh=(("data", -1),), dcn_mesh=(), grad_accum_steps=1)
  program = program_for(config, hwc, jax.devices()[:1])
  compiled, _ = compile_train_step(program, _XLA_COUNT_BATCH, patch_size)
  return projection.program_cost(compiled, 1, _XLA_COUNT_BATCH).flops / _XLA_COUNT_BATCH


STEP_MEMORY_SOURCE = ("XLA's memory plan of the compiled step, per device: arguments + outputs "
                      "not aliased to donated arguments + temporaries")


def step_memory_bytes(compiled: jax.stages.Compiled) -> int | None:
  """The memory the compiled step needs per device (STEP_MEMORY_SOURCE), None where the backend
  has no memory analysis.

  A bound on the step's peak that is this profile's own: the allocator's and the process's peaks
  are process-wide, so a profile after a larger one (FlexiViT's patch sizes) would report its peak.
  """
  m = compiled.memory_analysis()
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
             + m.temp_size_in_bytes)


def profile(config: ml_collections.ConfigDict, hwc: Sequence[int], batch_size: int, steps: int,
            targets: Sequence[str] = (),
            assumed_mfu: float | None = projection.DEFAULT_MFU,
            patch_size: int | None = None) -> dict[str, Any]:
  """The efficiency profile of one model/config (see the module docstring), at `patch_size` for
  FlexiViT (default: the model's own)."""
  program = program_for(config, hwc)
  compiled, compile_s = compile_train_step(program, batch_size, patch_size)
  state = program.init()
  batch = random_batch(program, batch_size)
  times = []
  for i in range(steps + 2):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    if i >= 2:  # Two warm-up steps: allocation and caches.
      times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  img_per_s = batch_size / step_s
  patch = (patch_size, patch_size) if patch_size else tuple(program.model_fields["patch_size"])
  fields = {**program.model_fields, "patch_size": patch}
  train_flops = program.train_flops_per_image(patch)
  devices = program.devices
  result = {
      "model_name": (models.variants.canonical_name(config.model.variant) if config.model.variant
                     else "ViT"),
      "model": {k: str(v) if k == "dtype" else v for k, v in program.model_fields.items()},
      "patch_size": list(patch), "image_shape": list(hwc), "batch_size": batch_size,
      "device": f"{len(devices)} x {devices[0].device_kind}", "num_devices": len(devices),
      "params": program.num_params, "attention_kernel": program.attention_kernel,
      "fwd_gflops_per_image": flops.forward_flops_per_image(fields, hwc[:2], hwc[2],
                                                            config.num_classes) / 1e9,
      "train_gflops_per_image": train_flops / 1e9,
      "xla_fwd_gflops_per_image": xla_forward_flops_per_image(config, hwc, patch_size) / 1e9,
      "xla_train_gflops_per_image": xla_train_flops_per_image(config, hwc, patch_size) / 1e9,
      "compile_s": compile_s, "step_s": step_s, "step_s_min": min(times), "img_per_s": img_per_s,
      "mfu": program.mfu(img_per_s, patch), "peak_source": program.peak.source,
      "step_memory_bytes": step_memory_bytes(compiled), "memory_source": STEP_MEMORY_SOURCE,
  }
  result["projections"] = projections(config, hwc, targets, batch_size, train_flops, assumed_mfu)
  return result


def program_costs(config: ml_collections.ConfigDict, hwc: Sequence[int],
                  per_device_batches: Sequence[int]) -> dict[int, projection.ProgramCost]:
  """The unscanned train step's cost on this process's devices at each per-device batch."""
  costs = {}
  for per_device in per_device_batches:
    program = program_for(with_model(config, scan=False), hwc)
    compiled, _ = compile_train_step(program, per_device * len(program.devices))
    costs[per_device] = projection.program_cost(compiled, len(program.devices), per_device)
  return costs


def projections(config: ml_collections.ConfigDict, hwc: Sequence[int], targets: Sequence[str],
                batch_size: int, train_flops_per_image: float,
                assumed_mfu: float | None) -> list[dict[str, Any]]:
  """Each target's projection from the unscanned step compiled for its per-chip batch."""
  if not targets:
    return []
  targets = [projection.get_target(t) for t in targets]
  per_chip = {t.name: max(1, batch_size // t.chips) for t in targets}
  costs = _program_costs_on_fake_devices(config, hwc, sorted(set(per_chip.values())))
  return [projection.project(costs[per_chip[t.name]], t, train_flops_per_image, assumed_mfu)
          for t in targets]


def _program_costs_on_fake_devices(config: ml_collections.ConfigDict, hwc: Sequence[int],
                                   per_device_batches: Sequence[int]
                                   ) -> dict[int, projection.ProgramCost]:
  """`program_costs` in a subprocess with a host's worth of fake CPU devices (the device count is
  fixed when JAX starts), or as many as the mesh's fixed axes need; one slice's program of a
  multi-slice mesh (a chip's work is the same, fake devices have no slices)."""
  fixed = math.prod(size for _, size in config.mesh if size != -1)
  devices = fixed * -(-_PROJECTION_DEVICES // fixed)
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  # A copy; the attention kernel does not change the shapes or collectives the model reads, and
  # cuDNN's does not run on these CPU devices.
  config = with_model(config, attention_impl=None)
  config.dcn_mesh = ()
  request = json.dumps({"config": json.loads(config.to_json_best_effort()),
                        "image_shape": list(hwc), "per_device_batches": list(per_device_batches)})
  result = subprocess.run(
      [sys.executable, "-c", "from vit_jax.efficiency import bench; bench.serve_program_costs()"],
      input=request, env=env, capture_output=True, text=True)
  if result.returncode:
    raise RuntimeError(f"compiling the projection program failed:\n{result.stderr[-3000:]}")
  costs = json.loads(result.stdout.strip().splitlines()[-1])
  return {int(b): projection.ProgramCost.from_json(c) for b, c in costs.items()}


def serve_program_costs() -> None:
  """The subprocess side of `_program_costs_on_fake_devices`: a JSON request on stdin, costs out."""
  request = json.loads(sys.stdin.read())
  costs = program_costs(ml_collections.ConfigDict(request["config"]), request["image_shape"],
                        request["per_device_batches"])
  print(json.dumps({b: c.to_json() for b, c in costs.items()}))


def _mib(num_bytes: int | None) -> str:
  return "unknown" if num_bytes is None else f"{num_bytes / 2**20:,.1f} MiB"


def format_profile(p: dict[str, Any]) -> str:
  mfu = "unknown" if p["mfu"] is None else f"{p['mfu']:.1%}"
  lines = [
      f"{p['model_name']} {p['model']['width']}w x {p['model']['depth']} patch "
      f"{p['patch_size']} on {p['image_shape']} images, batch {p['batch_size']}, {p['device']}",
      f"  params                 {p['params']:,}",
      f"  attention              {p['attention_kernel']}",
      f"  GFLOPs/image analytic  forward {p['fwd_gflops_per_image']:.4g}, train "
      f"{p['train_gflops_per_image']:.4g}",
      f"  GFLOPs/image XLA       forward {p['xla_fwd_gflops_per_image']:.4g}, train step "
      f"{p['xla_train_gflops_per_image']:.4g} (unscanned model)",
      f"  compile                {p['compile_s']:.2f} s",
      f"  step                   {p['step_s'] * 1e3:.2f} ms (median), {p['img_per_s']:,.1f} img/s",
      f"  MFU                    {mfu} (against the {p['peak_source']})",
      f"  step memory            {_mib(p['step_memory_bytes'])} ({p['memory_source']})",
  ]
  lines += ["  " + projection.format_projection(proj) for proj in p["projections"]]
  for patch, sub in p.get("per_patch_size", {}).items():
    sub_mfu = "unknown" if sub["mfu"] is None else f"{sub['mfu']:.1%}"
    lines.append(f"  FlexiViT patch {patch} (the same weights): "
                 f"{sub['train_gflops_per_image']:.4g} train GFLOPs/img, {sub['img_per_s']:,.1f} "
                 f"img/s, MFU {sub_mfu}, step memory {_mib(sub['step_memory_bytes'])}")
  return "\n".join(lines)
