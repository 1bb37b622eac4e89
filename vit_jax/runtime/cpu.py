"""CPU runtime settings that speed up our train step on CPU (measured in experiments/SPEED.md).

Two settings, applied by the entry points through `apply_cpu_defaults()` before anything touches a
device (XLA reads XLA_FLAGS once, when jax creates its first backend; glibc decides at a thread's
first allocation which arena serves it):

1. One XLA device per core, each running its ops single-threaded, with the batch split across them
   by the usual data-parallel mesh. Small matmuls and elementwise ops then pay no fork/join per op.
   If XLA_FLAGS already names either flag nothing is added, so
   `XLA_FLAGS=--xla_force_host_platform_device_count=1` restores XLA's default (one device using
   every core).
2. Freed host memory is kept for reuse. XLA:CPU allocates each execution's temporaries (~0.9 GB
   per device for a ViT-Ti/16 step at 16 images) with malloc and frees them when the step ends.
   glibc serves such blocks with fresh mmap'd pages, so every step page-faults and zero-fills all
   of them again: 444k page faults and ~1 s of kernel time per ~3 s step. One malloc arena, no
   mmap and no trimming of the heap top keep those pages mapped across steps: the heap grows by
   one step's temporaries at a time for the first ~10 steps (ViT-Ti/16), then 0 faults per step.
   glibc's placement decides, so experiments/speed_cpu.py prints faults/step to check. It must
   run before other threads allocate. Skipped when GLIBC_TUNABLES already sets malloc options (the
   user chose), off glibc, and when an accelerator plugin is installed (there the temporaries
   live in device memory, and a single arena would serialise the input pipeline's host threads on
   one malloc lock).
"""
import ctypes
import importlib.util
import os

_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin", "libtpu")
# mallopt(3) parameters from glibc's malloc.h.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_NEVER = -1  # mallopt takes an int; glibc stores the trim threshold as size_t, so -1 = SIZE_MAX.


def cpu_xla_flags() -> tuple[str, ...]:
  """One CPU device per usable core, each single-threaded."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
  return (f"--xla_force_host_platform_device_count={cores}", "--xla_cpu_multi_thread_eigen=false")


def _cpu_is_the_backend() -> bool:
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0] == "cpu"
  return not any(importlib.util.find_spec(name) for name in _ACCELERATOR_PLUGINS)


def keep_freed_host_memory() -> bool:
  """Makes glibc malloc keep freed memory mapped (see the module docstring); True if applied.

  The price: the process keeps its peak heap (ViT-Ti/16 at batch 32 on 2 devices: 4.6-5.5 GB RSS).
  A finite trim threshold is not enough: with async dispatch two steps' temporaries can be live at
  once, and freeing them leaves a free heap top of several GB that would be trimmed each time.
  """
  if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "") or not _cpu_is_the_backend():
    return False
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):  # Not glibc (macOS, musl).
    return False
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER))
  return all(mallopt(param, value) == 1 for param, value in settings)


def apply_cpu_defaults() -> str:
  """Applies both settings (each unless the user chose otherwise); returns XLA_FLAGS."""
  keep_freed_host_memory()
  current = os.environ.get("XLA_FLAGS", "")
  named = {f.split("=", 1)[0] for f in current.split()}
  defaults = cpu_xla_flags()
  if not named & {f.split("=", 1)[0] for f in defaults}:
    os.environ["XLA_FLAGS"] = " ".join([current, *defaults]).strip()
  return os.environ["XLA_FLAGS"]
