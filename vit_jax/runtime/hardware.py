"""Peak FLOP/s of the devices we run on, the denominator of MFU.

Accelerators: dense bf16 peaks from vendor datasheets. A device missing from the table has no
known peak: MFU is then reported as unknown (None), never guessed, and training goes on.

CPUs: a stated nominal fp32 peak, cores x clock x FLOPs per cycle of the widest vector FMA the CPU
advertises (its FLOPs per cycle assume two FMA units of that width). The clock is the maximum
(boost) clock from sysfs cpufreq; a virtual machine often hides cpufreq, and /proc/cpuinfo's
"cpu MHz" is then a base or current clock that boost exceeds (a 2-core EPYC VM stated 156 GFLOP/s
and ran a matmul at 160-180). There the peak is the larger of that figure and the best of a few
matmuls, so MFU stays under 100%. A probe alone swings with the load of a shared machine, which
once put the quickstart's MFU at 95-192%; under load the nominal figure holds the floor.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import re
import time

import jax
import jax.numpy as jnp

# Substring of `device.device_kind` (lower-case) -> dense bf16 peak FLOP/s per JAX device.
# More specific keys first: the first match wins. A JAX device is a GPU or a TPU chip, except on
# TPU v2/v3, where each of a chip's two TensorCores is a device: a v3 chip's 123 TFLOP/s is two
# devices of 61.5 (a v3-8 shows 8 devices). v4 and v5p chips (two cores as one "megacore" device),
# v5e and v6e (one core) are one device per chip.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756e12),
    ("h100", 989e12),
    ("h200", 989e12),  # H200 SXM: the H100's compute, more and faster HBM (141 GB, 4.8 TB/s).
    ("a100", 312e12),
    ("tpu v6 lite", 918e12),  # v6e
    ("tpu v6e", 918e12),
    ("tpu v5 lite", 197e12),  # v5e
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),
    ("tpu v4", 275e12),
    ("tpu v3", 123e12 / 2),  # Per TensorCore (= JAX device); 123 per chip.
)

# cpuinfo flag -> fp32 FLOPs per cycle and core with two FMA units of that width, widest first.
_FLOPS_PER_CYCLE = (("avx512f", 64), ("fma", 32), ("avx", 16), ("sve", 32), ("asimd", 16),
                    ("sse2", 8))


@dataclasses.dataclass(frozen=True)
class Peak:
  """Peak FLOP/s of one device (None: unknown) and where the number comes from."""
  flops: float | None
  source: str
  at_max_clock: bool = True  # False: a CPU figure at a clock that boost may exceed.


def peak_flops_per_device(device: jax.Device | None = None) -> Peak:
  """The peak of `device` (default: the first device)."""
  device = device or jax.devices()[0]
  kind = device.device_kind.lower()
  for key, peak in PEAK_BF16_FLOPS:
    if key in kind:
      return Peak(peak, f"datasheet bf16 peak of {device.device_kind}")
  if device.platform == "cpu":
    return cpu_peak()
  return Peak(None, f"no peak known for {device.device_kind!r} (add its dense bf16 peak to "
                    "vit_jax.runtime.hardware.PEAK_BF16_FLOPS)")


@functools.cache
def cpu_peak() -> Peak:
  """The nominal peak, raised to a probed matmul's FLOP/s where the boost clock is hidden."""
  nominal = nominal_cpu_peak()
  if nominal.flops is None or nominal.at_max_clock:
    return nominal
  probed = probe_cpu_matmul_flops()
  if probed <= nominal.flops:
    return nominal
  return Peak(probed, f"best fp32 matmul probed on this CPU, {probed / 1e9:.0f} GFLOP/s: above the "
                      f"{nominal.source}, whose clock is not the boost clock (no sysfs cpufreq)")


@functools.cache
def nominal_cpu_peak(cpuinfo_path: str = "/proc/cpuinfo",
                     cpu_sysfs: str = "/sys/devices/system/cpu") -> Peak:
  """cores x clock x fp32 FLOPs per cycle, from /proc/cpuinfo and cpufreq (unknown off Linux)."""
  try:
    cpuinfo = pathlib.Path(cpuinfo_path).read_text()
  except OSError:
    return Peak(None, "no /proc/cpuinfo: nominal CPU peak unknown")
  flag_line = re.search(r"^(?:flags|Features)\s*:(.*)$", cpuinfo, re.M)
  flags = set(flag_line[1].split()) if flag_line else set()
  per_cycle = next(((flag, n) for flag, n in _FLOPS_PER_CYCLE if flag in flags), None)
  # cpuinfo_max_freq is in kHz.
  max_mhz = [int(f.read_text()) / 1e3
             for f in pathlib.Path(cpu_sysfs).glob("cpu[0-9]*/cpufreq/cpuinfo_max_freq")]
  mhz = max_mhz or [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", cpuinfo, re.M)]
  if not mhz or per_cycle is None:
    return Peak(None, "clock or vector width not in /proc/cpuinfo: nominal CPU peak unknown")
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  flops = cores * max(mhz) * 1e6 * per_cycle[1]
  clock = "max clock" if max_mhz else "clock"
  return Peak(flops, f"nominal fp32 peak of this CPU: {cores} cores x {max(mhz) / 1e3:.2f} GHz "
                     f"{clock} x {per_cycle[1]} FLOP/cycle ({per_cycle[0]})",
              at_max_clock=bool(max_mhz))


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
