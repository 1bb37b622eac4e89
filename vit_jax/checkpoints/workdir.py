"""The workdir contract: where a run's outputs live, and whether the run is done.

    WORKDIR/checkpoints/<step>/   Orbax train state + data position (vit_jax.checkpoints.manager);
                                  <step>.damaged/ a step that could not be restored, kept aside
    WORKDIR/config.json           the config the run was started with (a resume is checked on it)
    WORKDIR/lock.json             held by the run writing here (vit_jax.checkpoints.lock)
    WORKDIR/metrics.jsonl         one JSON object per logged step (vit_jax.training.metrics)
    WORKDIR/tb/                   TensorBoard event files
    WORKDIR/summary.json          written once the run completes: {"done": true, "final": ...}
    WORKDIR/bench.json            efficiency profile (python -m vit_jax.bench --output)
    WORKDIR/eval.json             metrics of python -m vit_jax.evaluate
    WORKDIR/<program>.log         output of a trial's programs under the local sweep launcher
    WORKDIR/job.sbatch, slurm-<job id>.out   a trial's SLURM job script and its output
    WORKDIR/attempts.log                     its jobs' exit codes and newest checkpoints
    SWEEP_DIR/sweep.json          a sweep's manifest; SWEEP_DIR/<trial name>/ is each trial's
                                  workdir

Every program that reads or writes these (train, evaluate, convert, bench, sweep, launchers, report)
names them through this module, and every path is an etils.epath path, so `gs://bucket/run` (and any
scheme epath serves) behaves like a local directory: nothing is ever resolved against the local
disk except a local path.
"""
from __future__ import annotations

import json
from typing import Any
import uuid

from absl import logging
from etils import epath

SUMMARY = "summary.json"
SWEEP_MANIFEST = "sweep.json"


def is_remote(path: str | epath.PathLike) -> bool:
  return "://" in str(path)


def resolve(path: str | epath.PathLike) -> epath.Path:
  """`path` as an epath.Path: a URI as given, a local path expanded and made absolute."""
  if is_remote(path):
    return epath.Path(str(path))
  return epath.Path(path).expanduser().absolute()


def write_json(path: epath.Path, data: Any) -> None:
  """Writes JSON so that readers never see a torn file: a local file via a temporary and a rename;
  an object store replaces the whole object in one write anyway."""
  text = json.dumps(data, indent=1, default=str)
  if is_remote(path):
    path.write_text(text)
    return
  tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
  tmp.write_text(text)
  tmp.replace(path)


def read_json(path: epath.Path) -> Any | None:
  """The JSON in `path`, or None if it is missing; ValueError naming the file if it is damaged."""
  try:
    return json.loads(path.read_text())
  except (FileNotFoundError, NotADirectoryError):
    return None
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e}); it was damaged or edited by hand: restore "
                     "it, or delete it to start that record afresh.") from e


class Workdir:
  """The directory of one run; `root` may be local or remote."""

  def __init__(self, root: str | epath.PathLike):
    if not str(root).strip():
      raise ValueError("--workdir is required: the directory for checkpoints and metrics (a local "
                       "path or a bucket path such as gs://my-bucket/runs/name).")
    self.root = resolve(root)

  def __str__(self) -> str:
    return str(self.root)

  @property
  def is_remote(self) -> bool:
    return is_remote(self.root)

  @property
  def checkpoints(self) -> epath.Path:
    return self.root / "checkpoints"

  @property
  def metrics(self) -> epath.Path:
    return self.root / "metrics.jsonl"

  @property
  def tensorboard(self) -> epath.Path:
    return self.root / "tb"

  @property
  def summary(self) -> epath.Path:
    return self.root / SUMMARY

  @property
  def config(self) -> epath.Path:
    return self.root / "config.json"

  @property
  def lock(self) -> epath.Path:
    return self.root / "lock.json"

  @property
  def bench(self) -> epath.Path:
    return self.root / "bench.json"

  @property
  def eval_results(self) -> epath.Path:
    return self.root / "eval.json"

  def log(self, program: str) -> epath.Path:
    return self.root / f"{program}.log"

  @property
  def slurm_script(self) -> epath.Path:
    return self.root / "job.sbatch"

  @property
  def attempts(self) -> epath.Path:
    return self.root / "attempts.log"

  @property
  def slurm_output(self) -> epath.Path:
    return self.root / "slurm-%j.out"  # sbatch puts the job id for %j.

  def check_writable(self) -> None:
    """Creates the workdir and writes a probe file into it; raises ValueError naming the fix."""
    probe = self.root / f".write_probe.{uuid.uuid4().hex}"
    try:
      self.root.mkdir(parents=True, exist_ok=True)
      probe.write_text("")
      probe.unlink()
    except OSError as e:
      raise ValueError(f"--workdir={self.root} is not writable ({e.strerror or e}); choose a "
                       "directory you can write to.") from e

  def read_summary(self) -> dict[str, Any] | None:
    """summary.json, or None while the run has not completed (or if the file is damaged)."""
    try:
      return read_json(self.summary)
    except ValueError as e:
      logging.warning("%s Treating the run as not finished.", e)
      return None

  def write_summary(self, summary: dict[str, Any]) -> None:
    write_json(self.summary, summary)

  def is_done(self) -> bool:
    """True when training finished: summary.json exists and says done."""
    summary = self.read_summary()
    return bool(summary and summary.get("done"))

  def metric_rows(self) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl (none if it does not exist): `parse_metric_rows`."""
    if not self.metrics.exists():
      return []
    return parse_metric_rows(self.metrics.read_text(), self.metrics)

  def final_metrics(self) -> tuple[dict[str, Any], bool]:
    """(final metrics, done): summary.json's once done, else each key's latest value so far."""
    summary = self.read_summary()
    if summary and summary.get("done"):
      return dict(summary.get("final", {})), True
    latest: dict[str, Any] = {}
    for row in self.metric_rows():
      latest.update({k: v for k, v in row.items() if v is not None})
    return latest, False


def parse_metric_rows(text: str, source: epath.PathLike) -> list[dict[str, Any]]:
  """The rows of a metrics.jsonl's `text`, without a line that is not JSON (a write a crash or a
  full disk cut short: a warning names `source`)."""
  rows, broken = [], 0
  for line in filter(str.strip, text.splitlines()):
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      broken += 1
  if broken:
    logging.warning("%s: skipped %d line(s) that are not JSON (a write cut short).", source,
                    broken)
  return rows


def recorded_config(input_path: str | epath.PathLike) -> dict[str, Any] | None:
  """The config (WORKDIR/config.json) of the run whose checkpoint `input_path` is
  (WORKDIR/checkpoints[/<step>] or WORKDIR); None outside a workdir."""
  path = resolve(input_path)
  for candidate in (path, path.parent, path.parent.parent):
    record = read_json(Workdir(candidate).config) if candidate.is_dir() else None
    if record is not None:
      return record
  return None

def trial_workdir(sweep_dir: str | epath.PathLike, trial_name: str) -> Workdir:
  """The workdir of a sweep's trial."""
  return Workdir(resolve(sweep_dir) / trial_name)


def sweep_manifest(sweep_dir: str | epath.PathLike) -> epath.Path:
  return resolve(sweep_dir) / SWEEP_MANIFEST
