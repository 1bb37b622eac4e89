r"""Compile time of big train steps (scan vs unrolled) and their memory with remat + FSDP.

    python experiments/compile_memory.py compile            # ViT-H/14 train step: scan vs unrolled
    python experiments/compile_memory.py memory             # ViT-L/16 on 8 fake devices, FSDP
    python experiments/compile_memory.py memory --device_memory_gib=80 --devices=8

Nothing is executed and no parameter is allocated: the steps are lowered from abstract shapes
(`jax.ShapeDtypeStruct`) and compiled, and the numbers come from `compiled.memory_analysis()`.
The memory study uses fake CPU devices (XLA's host platform), so per-device sizes come from the
CPU compiler's buffer assignment: a fair guide to what changes between remat policies and batch
sizes, not an exact prediction of a TPU or GPU's HBM use (their compilers fuse and schedule
differently, and GPU/TPU add their own workspace).
"""
import argparse
import os
import sys
import time


def _parse() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("study", choices=("compile", "memory"))
  parser.add_argument("--devices", type=int, default=8, help="fake CPU devices for 'memory' (FSDP axis)")
  parser.add_argument("--device_memory_gib", type=float, default=16.0,
                      help="per-device budget for the largest batch (16: TPU v2/v3 core, v5e chip)")
  parser.add_argument("--policy_batch", type=int, default=32, help="per-device batch for the remat table")
  parser.add_argument("--variant", default=None, help="default: H/14 for 'compile', L/16 for 'memory'")
  parser.add_argument("--batch", type=int, default=8, help="global batch for 'compile'")
  return parser.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None and ARGS.study == "memory":  # Before jax initialises its CPU backend.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={ARGS.devices}").strip()

import flax.linen as nn  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import ml_collections  # pylint: disable=g-import-not-at-top,wrong-import-position

from vit_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from vit_jax import optim  # pylint: disable=g-import-not-at-top,wrong-import-position
from vit_jax import sharding  # pylint: disable=g-import-not-at-top,wrong-import-position
from vit_jax import train  # pylint: disable=g-import-not-at-top,wrong-import-position

IMAGE_SIZE, NUM_CLASSES = 224, 1000
GIB = 2**30


def compile_train_step(variant: str, *, global_batch: int, mesh: jax.sharding.Mesh,
                       **model_overrides) -> tuple[jax.stages.Compiled, float, float]:
  """(compiled step, lowering seconds, compile seconds) of our AdamW train step, from shapes only."""
  model = models.get_model(f"ViT-{variant}", num_classes=NUM_CLASSES, **model_overrides)
  rules = sharding.DEFAULT_RULES
  image_shape = (global_batch, IMAGE_SIZE, IMAGE_SIZE, 3)
  params, param_shardings = train.abstract_params(model, (1,) + image_shape[1:], mesh, rules)
  cfg = ml_collections.ConfigDict(dict(name="adamw", lr=1e-3, wd=1e-4, schedule="constant"))
  tx, schedule = optim.make_optimizer(cfg, params, total_steps=1, warmup_steps=0)
  state = jax.eval_shape(lambda p: train.make_state(tx, p, jax.random.key(0), ema=False), params)
  state_shardings = train.state_shardings(tx, params, param_shardings, mesh, ema=False)
  batch = {"image": jax.ShapeDtypeStruct(image_shape, jnp.float32),
           "label": jax.ShapeDtypeStruct((global_batch, NUM_CLASSES), jnp.float32)}
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.mesh_rules(mesh, rules)):
    step = train.jit_train_step(
        train.make_train_step(model, tx, loss_fn=optim.softmax_xent, schedule=schedule), mesh,
        state_shardings)
    start = time.perf_counter()
    lowered = step.lower(state, batch)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
  return compiled, lowered_at - start, time.perf_counter() - lowered_at


def device_bytes(compiled: jax.stages.Compiled) -> dict[str, int]:
  """Per-device sizes from the compiler: params/state in, activations and temporaries, peak."""
  m = compiled.memory_analysis()
  peak = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
  return dict(arguments=m.argument_size_in_bytes, temp=m.temp_size_in_bytes, peak=peak)


def compile_study(variant: str, global_batch: int) -> None:
  """Scan compiles one layer body; unrolled compiles every layer (the issue asks for < 20 s)."""
  mesh = sharding.make_mesh([("data", -1)], jax.devices()[:1])
  print(f"ViT-{variant} train step (AdamW), {IMAGE_SIZE}px, batch {global_batch}, 1 CPU device, "
        f"{os.cpu_count()} cores")
  for scan in (True, False):
    _, lower_s, compile_s = compile_train_step(variant, global_batch=global_batch, mesh=mesh, scan=scan)
    print(f"  scan={scan!s:5s}  trace+lower {lower_s:6.1f} s  compile {compile_s:6.1f} s  "
          f"total {lower_s + compile_s:6.1f} s", flush=True)


def memory_study(variant: str, num_devices: int, budget_gib: float, policy_batch: int) -> None:
  """Activation memory per remat policy, then the largest per-device batch under the budget."""
  mesh = sharding.make_mesh([("fsdp", num_devices)])
  print(f"ViT-{variant} train step (AdamW), {IMAGE_SIZE}px, FSDP over {num_devices} fake CPU devices,"
        f" scan; per-device sizes from compiled.memory_analysis()")
  print(f"  remat policy at {policy_batch} images/device:")
  temps = {}
  for policy in models.vit.REMAT_POLICIES:
    compiled, _, compile_s = compile_train_step(
        variant, global_batch=policy_batch * num_devices, mesh=mesh, scan=True, remat_policy=policy)
    b = device_bytes(compiled)
    temps[policy] = b["temp"]
    saved = 1 - b["temp"] / temps["none"]
    print(f"    {policy:14s} activations+temp {b['temp'] / GIB:6.2f} GiB ({100 * saved:4.0f}% saved vs none)"
          f"  params+opt state {b['arguments'] / GIB:5.2f} GiB  peak {b['peak'] / GIB:6.2f} GiB"
          f"  (compile {compile_s:.0f} s)", flush=True)

  policy = min(temps, key=temps.get)
  print(f"  largest batch/device within {budget_gib:g} GiB with remat_policy={policy!r}:")

  def fits(per_device: int) -> bool:
    compiled, _, _ = compile_train_step(variant, global_batch=per_device * num_devices, mesh=mesh,
                                        scan=True, remat_policy=policy)
    peak = device_bytes(compiled)["peak"]
    print(f"    {per_device:5d} images/device: peak {peak / GIB:6.2f} GiB", flush=True)
    return peak <= budget_gib * GIB

  # Activation memory is linear in the batch: double until it does not fit, then bisect.
  low, high = 0, policy_batch
  while fits(high):
    low, high = high, 2 * high
  while high - low > max(1, low // 16):
    mid = (low + high) // 2
    low, high = (mid, high) if fits(mid) else (low, mid)
  print(f"  => {low} images/device (global {low * num_devices})")


def main() -> None:
  if ARGS.study == "compile":
    compile_study(ARGS.variant or "H/14", ARGS.batch)
  else:
    if jax.device_count() != ARGS.devices:
      sys.exit(f"Expected {ARGS.devices} fake CPU devices, got {jax.device_count()}: run on CPU "
               "(JAX_PLATFORMS=cpu) without another --xla_force_host_platform_device_count.")
    memory_study(ARGS.variant or "L/16", ARGS.devices, ARGS.device_memory_gib, ARGS.policy_batch)


if __name__ == "__main__":
  main()
