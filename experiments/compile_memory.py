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


def _parse() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("study", choices=("compile", "memory"))
  parser.add_argument("--devices", type=int, default=8,
                      help="fake CPU devices for 'memory' (FSDP axis)")
  parser.add_argument("--device_memory_gib", type=float, default=16.0,
                      help="per-device budget for the largest batch (16: TPU v2/v3 core, v5e chip)")
  parser.add_argument("--policy_batch", type=int, default=32,
                      help="per-device batch for the remat table")
  parser.add_argument("--variant", default=None,
                      help="default: H/14 for 'compile', L/16 for 'memory'")
  parser.add_argument("--batch", type=int, default=8, help="global batch for 'compile'")
  return parser.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None and ARGS.study == "memory":  # Before jax initialises its CPU backend.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={ARGS.devices}").strip()

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

from vit_jax.efficiency import bench  # pylint: disable=g-import-not-at-top,wrong-import-position
from vit_jax.models import vit  # pylint: disable=g-import-not-at-top,wrong-import-position

IMAGE_SIZE, NUM_CLASSES = 224, 1000
GIB = 2**30


def compile_train_step(variant: str, *, global_batch: int, mesh: tuple[tuple[str, int], ...],
                       devices: list[jax.Device],
                       **model_fields) -> tuple[jax.stages.Compiled, float]:
  """(compiled step, seconds to trace, lower and compile) of the trainer's AdamW train step, from
  shapes only (vit_jax.efficiency.bench: the same program the trainer builds)."""
  config = bench.speed_config(variant, NUM_CLASSES, **model_fields)
  config.mesh = mesh
  program = bench.program_for(config, (IMAGE_SIZE, IMAGE_SIZE, 3), devices)
  return bench.compile_train_step(program, global_batch)


def device_bytes(compiled: jax.stages.Compiled) -> dict[str, int]:
  """Per-device sizes from the compiler: params/state in, activations and temporaries, peak."""
  m = compiled.memory_analysis()
  peak = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes +
          m.temp_size_in_bytes)
  return dict(arguments=m.argument_size_in_bytes, temp=m.temp_size_in_bytes, peak=peak)


def compile_study(variant: str, global_batch: int) -> None:
  """Scan compiles one layer body; unrolled compiles every layer (the issue asks for < 20 s)."""
  print(f"ViT-{variant} train step (AdamW), {IMAGE_SIZE}px, batch {global_batch}, 1 CPU device, "
        f"{os.cpu_count()} cores")
  for scan in (True, False):
    _, seconds = compile_train_step(variant, global_batch=global_batch, mesh=(("data", -1),),
                                    devices=jax.devices()[:1], scan=scan)
    print(f"  scan={scan!s:5s}  trace+lower+compile {seconds:6.1f} s", flush=True)


def memory_study(variant: str, num_devices: int, budget_gib: float, policy_batch: int) -> None:
  """Activation memory per remat policy, then the largest per-device batch under the budget."""
  mesh = (("fsdp", num_devices),)
  print(f"ViT-{variant} train step (AdamW), {IMAGE_SIZE}px, FSDP over {num_devices} "
        "fake CPU devices, scan; per-device sizes from compiled.memory_analysis()")
  print(f"  remat policy at {policy_batch} images/device:")
  temps = {}
  for policy in vit.REMAT_POLICIES:
    compiled, compile_s = compile_train_step(
        variant, global_batch=policy_batch * num_devices, mesh=mesh, devices=jax.devices(),
        scan=True, remat_policy=policy)
    b = device_bytes(compiled)
    temps[policy] = b["temp"]
    saved = 1 - b["temp"] / temps["none"]
    print(f"    {policy:14s} activations+temp {b['temp'] / GIB:6.2f} GiB "
          f"({100 * saved:4.0f}% saved vs none)"
          f"  params+opt state {b['arguments'] / GIB:5.2f} GiB  peak {b['peak'] / GIB:6.2f} GiB"
          f"  (compile {compile_s:.0f} s)", flush=True)

  policy = min(temps, key=temps.get)
  print(f"  largest batch/device within {budget_gib:g} GiB with remat_policy={policy!r}:")

  def fits(per_device: int) -> bool:
    compiled, _ = compile_train_step(variant, global_batch=per_device * num_devices, mesh=mesh,
                                     devices=jax.devices(), scan=True, remat_policy=policy)
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
