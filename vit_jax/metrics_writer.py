"""Metrics for machines (JSON lines, TensorBoard events) and for people (one progress line).

Only the writing process (process 0) creates files; the others get a disabled writer.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

from absl import logging
import numpy as np


def _to_python(value: Any) -> Any:
  if isinstance(value, (np.generic, np.ndarray)) or hasattr(value, "__array__"):
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()
  return value


class MetricsWriter:
  """Appends `{"step": s, **metrics}` to `workdir/metrics.jsonl` and scalars to TensorBoard.

  Args:
    workdir: directory for `metrics.jsonl` and the TensorBoard event files (`workdir/tb`).
    enabled: False on every process but the one that writes (process 0).
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)
      import tensorflow as tf  # Deferred: only the writing process pays the import.
      self._tf = tf
      self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tb"))

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Records scalar metrics at `step` (non-finite values are kept in JSON as null)."""
    if not self.enabled:
      return
    record = {"step": int(step)}
    for key, value in metrics.items():
      value = _to_python(value)
      record[key] = None if isinstance(value, float) and not math.isfinite(value) else value
    self._jsonl.write(json.dumps(record) + "\n")
    with self._tb.as_default(step=int(step)):
      for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
          self._tf.summary.scalar(key, value)

  def flush(self) -> None:
    if self.enabled:
      self._jsonl.flush()
      self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
      self.enabled = False


def format_duration(seconds: float) -> str:
  seconds = max(int(seconds), 0)
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class ProgressLine:
  """Logs `step 120/1000 (12%) | loss 0.42 | lr 2.9e-03 | 850 img/s | MFU 3.1% | ETA 3m12s`.

  Throughput and ETA come from the wall time between calls, so they include input and host overhead.
  """

  def __init__(self, total_steps: int, batch_size: int, start_step: int = 0):
    self.total_steps = total_steps
    self.batch_size = batch_size
    self._last_step = start_step
    self._last_time = time.perf_counter()

  def reset_clock(self, step: int) -> None:
    """Restarts the timing window (after compilation, evaluation or checkpointing)."""
    self._last_step = step
    self._last_time = time.perf_counter()

  def measure(self, step: int) -> dict[str, float]:
    """Images/s and steps/s since the last call; restarts the window."""
    now = time.perf_counter()
    steps = step - self._last_step
    elapsed = max(now - self._last_time, 1e-9)
    self.reset_clock(step)
    return {"img_per_s": steps * self.batch_size / elapsed, "steps_per_s": steps / elapsed}

  def line(self, step: int, metrics: Mapping[str, Any]) -> str:
    parts = [f"step {step}/{self.total_steps} ({100 * step / max(self.total_steps, 1):.0f}%)"]
    if "train/loss" in metrics:
      parts.append(f"loss {metrics['train/loss']:.4f}")
    if "lr" in metrics:
      parts.append(f"lr {metrics['lr']:.2e}")
    if "img_per_s" in metrics:
      parts.append(f"{metrics['img_per_s']:.0f} img/s")
    if metrics.get("mfu") is not None:
      parts.append(f"MFU {100 * metrics['mfu']:.1f}%")
    if metrics.get("steps_per_s"):
      parts.append(f"ETA {format_duration((self.total_steps - step) / metrics['steps_per_s'])}")
    return " | ".join(parts)

  def log(self, step: int, metrics: Mapping[str, Any]) -> None:
    logging.info("%s", self.line(step, metrics))
