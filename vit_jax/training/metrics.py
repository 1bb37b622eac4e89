"""Metrics for machines (JSON lines, TensorBoard events) and for people (one progress line).

Files go where the workdir is (etils.epath: local or a bucket). Only the writing process
(process 0) creates files; the others get a disabled writer. TensorBoard events are written with
tensorboard's own record format and protos, not tf.summary, so they reach any path epath serves.
"""
from __future__ import annotations

import json
import math
import os
import socket
import time
from typing import Any, Mapping

from absl import logging
from etils import epath
import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer import record_writer

from vit_jax.checkpoints import workdir as workdir_lib

# How often a remote file (no appends on object stores) is rewritten with what was logged since.
REMOTE_FLUSH_SECONDS = 60.0


def _to_python(value: Any) -> Any:
  if isinstance(value, (np.generic, np.ndarray)) or hasattr(value, "__array__"):
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()
  return value


class _GrowingFile:
  """A file that only grows: appended in place on a local disk; on an object store, which cannot
  append, kept in memory and rewritten whole at each flush (the object is replaced atomically).

  `initial` replaces what the file holds; None continues it.
  """

  def __init__(self, path: epath.Path, initial: bytes | None):
    self.path = path
    self.remote = workdir_lib.is_remote(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if self.remote:
      if initial is None:
        initial = path.read_bytes() if path.exists() else b""
      self._content = bytearray(initial)
      self._dirty = True
      return
    if initial is not None:  # Via a temporary, so that a crash never leaves half a file.
      tmp = path.parent / f".{path.name}.tmp"
      tmp.write_bytes(initial)
      tmp.replace(path)
    self._file = path.open("ab")

  def write(self, data: bytes) -> None:
    if self.remote:
      self._content += data
      self._dirty = True
    else:
      self._file.write(data)

  def flush(self) -> None:
    if not self.remote:
      self._file.flush()
    elif self._dirty:
      self.path.write_bytes(bytes(self._content))
      self._dirty = False

  def close(self) -> None:
    self.flush()
    if not self.remote:
      self._file.close()


class MetricsWriter:
  """Appends `{"step": s, **metrics}` to `metrics.jsonl` and scalars to TensorBoard.

  Args:
    workdir: the run's workdir (`metrics.jsonl` and `tb/` in it).
    resume_step: the step the run starts from; rows of later steps (logged after the checkpoint
      being resumed) are dropped, so a resumed run leaves one row per step, and so is a last line
      a crash cut short.
    enabled: False on every process but the one that writes (process 0).

  Attributes:
    keys_at_resume: the metric names the kept rows hold at `resume_step`.
  """

  def __init__(self, workdir: workdir_lib.Workdir, resume_step: int = 0, enabled: bool = True):
    self.enabled = enabled
    self.keys_at_resume: set[str] = set()
    if not enabled:
      return
    old = workdir.metrics.read_text() if workdir.metrics.exists() else ""
    rows = [row for row in workdir_lib.parse_metric_rows(old, workdir.metrics)
            if row["step"] <= resume_step]
    self.keys_at_resume = {k for row in rows if row["step"] == resume_step for k in row}
    kept = "".join(json.dumps(row) + "\n" for row in rows)
    self._jsonl = _GrowingFile(workdir.metrics, None if kept == old else kept.encode())
    name = f"events.out.tfevents.{time.time():.0f}.{socket.gethostname()}.{os.getpid()}.v2"
    self._events = _GrowingFile(workdir.tensorboard / name, b"")
    self._records = record_writer.RecordWriter(self._events)
    self._records.write(event_pb2.Event(wall_time=time.time(),
                                        file_version="brain.Event:2").SerializeToString())
    self._last_flush = time.monotonic()

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Records scalar metrics at `step` (non-finite values are kept in JSON as null)."""
    if not self.enabled:
      return
    record = {"step": int(step)}
    for key, value in metrics.items():
      value = _to_python(value)
      record[key] = None if isinstance(value, float) and not math.isfinite(value) else value
    self._jsonl.write((json.dumps(record) + "\n").encode())
    scalars = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in record.items()
               if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)]
    self._records.write(event_pb2.Event(wall_time=time.time(), step=int(step),
                                        summary=summary_pb2.Summary(value=scalars))
                        .SerializeToString())
    if not self._jsonl.remote or time.monotonic() - self._last_flush > REMOTE_FLUSH_SECONDS:
      self.flush()

  def flush(self) -> None:
    if self.enabled:
      self._jsonl.flush()
      self._events.flush()
      self._last_flush = time.monotonic()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._events.close()
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
