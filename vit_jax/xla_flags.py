"""XLA CPU flags that measurably speed up our train step (numbers in experiments/SPEED.md).

XLA reads XLA_FLAGS once, when jax first initialises a backend, so entry points call
`apply_cpu_defaults()` before anything touches a device. A flag the user already set in XLA_FLAGS
(with any value) is left alone, so `XLA_FLAGS=--flag=false` still turns one off.
"""
import os

# Empty until a flag wins an A/B in experiments/speed_cpu.py.
CPU_DEFAULTS: tuple[str, ...] = ()


def apply_cpu_defaults() -> None:
  """Appends CPU_DEFAULTS to XLA_FLAGS, skipping flags already named there."""
  current_flags = os.environ.get("XLA_FLAGS", "")
  named = {f.split("=", 1)[0] for f in current_flags.split()}
  extra = [f for f in CPU_DEFAULTS if f.split("=", 1)[0] not in named]
  if extra:
    os.environ["XLA_FLAGS"] = " ".join([current_flags, *extra]).strip()


def current() -> str:
  """The XLA_FLAGS this process runs with."""
  return os.environ.get("XLA_FLAGS", "")
