"""Peak FLOP/s of the devices we run on, for MFU.

Accelerators: dense bf16 peaks from vendor datasheets. CPUs have no useful datasheet number
for our purpose, so the peak is probed once per process: the best of a few fp32 matmuls.
"""
import functools
import time

import jax
import jax.numpy as jnp

# Substring of `device.device_kind` (lower-case) -> dense bf16 peak FLOP/s per device (chip).
# More specific keys first: the first match wins.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756e12),
    ("h100", 989e12),
    ("h200", 989e12),
    ("a100", 312e12),
    ("tpu v6 lite", 918e12),  # v6e
    ("tpu v6e", 918e12),
    ("tpu v5 lite", 197e12),  # v5e
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),
    ("tpu v4", 275e12),
    ("tpu v3", 123e12),
)


def peak_flops_per_device(device: jax.Device | None = None) -> tuple[float, str]:
  """(peak FLOP/s, where the number comes from) for `device` (default: the first device)."""
  device = device or jax.devices()[0]
  kind = device.device_kind.lower()
  for key, peak in PEAK_BF16_FLOPS:
    if key in kind:
      return peak, f"datasheet bf16 peak of {device.device_kind}"
  if device.platform == "cpu":
    return probe_cpu_matmul_flops(), "probed fp32 matmul on this CPU (all cores)"
  raise ValueError(
      f"Unknown accelerator {device.device_kind!r}: add its dense bf16 peak to "
      f"vit_jax.hardware.PEAK_BF16_FLOPS.")


@functools.cache
def probe_cpu_matmul_flops(n: int = 2048, repeats: int = 5) -> float:
  """Best-of-`repeats` FLOP/s of one n x n x n fp32 matmul on the default CPU device."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best
