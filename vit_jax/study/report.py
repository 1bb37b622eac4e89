"""Sweep report: one row per trial (swept values, final metrics, efficiency profile, projections).

The library side of `python -m vit_jax.report SWEEP_DIR [--out=DIR] [--metric=val/prec@1]`. Writes
`results.csv`, `results.md` and three plots into `--out` (default: SWEEP_DIR): accuracy vs training
GFLOPs per image, accuracy vs measured img/s with the Pareto front, and img/s vs patch size per
model size. A FlexiViT trial (one model evaluated at several patch sizes) gives one row per
evaluated patch size.
"""
from __future__ import annotations

from collections.abc import Sequence
import csv
import math
import re
from typing import Any

from etils import epath

from vit_jax.checkpoints import workdir as workdir_lib
from vit_jax.efficiency import projection

# Columns of the Markdown table: (row key, header, format).
_TABLE_COLUMNS = (
    ("params_m", "params (M)", "{:.3g}"),
    ("train_gflops_per_image", "train GFLOPs/img", "{:.3g}"),
    ("img_per_s", "img/s", "{:.0f}"),
    ("step_ms", "step (ms)", "{:.1f}"),
    ("mfu", "MFU", "{:.1%}"),
    ("peak_memory_mb", "peak mem (MB)", "{:.0f}"),
)
_FLEXI_METRIC = re.compile(r"^(?P<base>.+)@p(?P<patch>\d+)$")


def _pick_metric(finals: Sequence[dict[str, Any]]) -> str | None:
  """The first eval top-1 key (`val/prec@1`), FlexiViT `@p<patch>` suffixes stripped."""
  keys = {_FLEXI_METRIC.sub(r"\g<base>", k) for final in finals for k in final}
  candidates = sorted(k for k in keys if k.endswith("prec@1") and not k.startswith("train"))
  return candidates[0] if candidates else None


def load_rows(sweep_dir: str,
              metric: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
  """Rows of the report in the sweep manifest's order (or the trial dirs' without one), and the
  metric."""
  root = workdir_lib.resolve(sweep_dir)
  if not root.is_dir():
    raise FileNotFoundError(f"sweep dir {sweep_dir!r} does not exist; "
                            "pass the --sweep_dir of the launch (default runs/sweeps/<study>).")
  manifest = workdir_lib.read_json(workdir_lib.sweep_manifest(root))
  if manifest:
    trials = [(t["name"], t["values"]) for t in manifest["trials"]]
  else:
    trials = [(p.name, {}) for p in sorted(root.iterdir())
              if p.is_dir() and (workdir_lib.Workdir(p).bench.exists() or
                                 workdir_lib.Workdir(p).summary.exists())]
  if not trials:
    raise ValueError(f"{sweep_dir} holds no trials (no sweep.json, no trial dir with bench.json or "
                     "summary.json).")
  loaded = []
  for name, values in trials:
    trial = workdir_lib.trial_workdir(root, name)
    loaded.append((name, values, workdir_lib.read_json(trial.bench) or {}, *trial.final_metrics()))
  metric = metric or _pick_metric([final for *_, final, _ in loaded])
  rows = [row for name, values, bench, final, done in loaded
          for row in _trial_rows(name, values, bench, final, done, metric)]
  return rows, metric


def _trial_rows(name: str, values: dict[str, Any], bench: dict[str, Any], final: dict[str, Any],
                done: bool, metric: str | None) -> list[dict[str, Any]]:
  """One row, or one per patch size for a FlexiViT trial (metrics `<metric>@p<patch>`)."""
  flexi = {int(m["patch"]): v for k, v in final.items()
           if metric and (m := _FLEXI_METRIC.match(k)) and m["base"] == metric}
  profiles = {int(p): prof for p, prof in bench.get("per_patch_size", {}).items()}
  base = {"trial": name, **{k.rsplit(".", 1)[-1]: v for k, v in values.items()}, "done": done,
          "model": bench.get("model_name", ""), "width": bench.get("model", {}).get("width")}
  if not flexi:
    patch = (bench.get("model", {}).get("patch_size") or [None])[0]
    return [{**base, "patch": patch, "accuracy": final.get(metric) if metric else None,
             **_efficiency(bench)}]
  return [{**base, "patch": patch, "accuracy": accuracy, **_efficiency(profiles.get(patch, {}))}
          for patch, accuracy in sorted(flexi.items())]


def _efficiency(bench: dict[str, Any]) -> dict[str, Any]:
  row = {
      "params_m": bench["params"] / 1e6 if "params" in bench else None,
      "fwd_gflops_per_image": bench.get("fwd_gflops_per_image"),
      "train_gflops_per_image": bench.get("train_gflops_per_image"),
      "xla_train_gflops_per_image": bench.get("xla_train_gflops_per_image"),
      "img_per_s": bench.get("img_per_s"),
      "step_ms": bench["step_s"] * 1e3 if "step_s" in bench else None,
      "compile_s": bench.get("compile_s"),
      "mfu": bench.get("mfu"),
      "peak_memory_mb": (bench["peak_memory_bytes"] / 2**20
                         if "peak_memory_bytes" in bench else None),
      "device": bench.get("device"),
  }
  for proj in bench.get("projections", []):
    row[f"proj_img_per_s@{proj['target']}"] = proj["img_per_s"]
  return row


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
  """Indices of points no other point beats on both coordinates (both maximised), by x."""
  front = []
  for i, (x, y) in enumerate(points):
    dominated = any(x2 >= x and y2 >= y and (x2, y2) != (x, y) for x2, y2 in points)
    if not dominated:
      front.append(i)
  return sorted(front, key=lambda i: points[i][0])


def _format(value: Any, fmt: str) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "–"
  return (fmt.format(value) if isinstance(value, (int, float)) and not isinstance(value, bool)
          else str(value))


def write_csv(rows: Sequence[dict[str, Any]], path: epath.Path) -> None:
  columns = list(dict.fromkeys(k for row in rows for k in row))
  with path.open("w") as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)


def markdown_table(rows: Sequence[dict[str, Any]], metric: str | None) -> str:
  """The table of every trial; projected throughputs are labelled as projections."""
  proj_keys = list(dict.fromkeys(k for row in rows for k in row if k.startswith("proj_img_per_s@")))
  headers = ["trial", "patch", f"{metric or 'accuracy'}", *[h for _, h, _ in _TABLE_COLUMNS],
             *[f"projected img/s {k.split('@', 1)[1]}" for k in proj_keys]]
  lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
  for row in rows:
    cells = [row["trial"] + ("" if row["done"] else " (running)"), _format(row["patch"], "{}"),
             _format(row["accuracy"], "{:.2%}"),
             *[_format(row.get(k), fmt) for k, _, fmt in _TABLE_COLUMNS],
             *[_format(row.get(k), "{:.0f}") for k in proj_keys]]
    lines.append("| " + " | ".join(cells) + " |")
  devices = sorted({str(r["device"]) for r in rows if r.get("device")})
  lines.append("")
  lines.append(f"Measured on: {', '.join(devices) or 'unknown'}. Projected columns are "
               f"{projection.LABEL}s, not measurements (see vit_jax/efficiency/projection.py for "
               "the model).")
  return "\n".join(lines) + "\n"


def _size_label(row: dict[str, Any]) -> str:
  """Model size without the patch: 'ViT-S/16' -> 'ViT-S (width 384)'."""
  if not row.get("width"):
    return row["model"] or row["trial"]
  return f"{row['model'].split('/')[0] or 'ViT'} (width {row['width']})"


def write_plots(rows: Sequence[dict[str, Any]], out_dir: epath.Path,
                metric: str | None) -> list[str]:
  """The three trade-off plots as PNG files; returns their names."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  sizes = list(dict.fromkeys(_size_label(r) for r in rows))
  colors = {s: plt.cm.tab10(i % 10) for i, s in enumerate(sizes)}
  acc_label = f"{metric or 'accuracy'} (%)"
  written = []

  def scatter(ax, x_key: str):
    for row in rows:
      if row.get(x_key) is not None and row["accuracy"] is not None:
        ax.scatter(row[x_key], 100 * row["accuracy"], color=colors[_size_label(row)])
        ax.annotate(f"p{row['patch']}", (row[x_key], 100 * row["accuracy"]),
                    textcoords="offset points", xytext=(4, 3), fontsize=8)
    for size in sizes:
      ax.scatter([], [], color=colors[size], label=size)
    ax.set_xscale("log")
    ax.set_ylabel(acc_label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)

  def save(fig, name: str):
    fig.tight_layout()
    with (out_dir / name).open("wb") as f:
      fig.savefig(f, dpi=120)
    plt.close(fig)
    written.append(name)

  fig, ax = plt.subplots(figsize=(6, 4.5))
  scatter(ax, "train_gflops_per_image")
  ax.set_xlabel("training GFLOPs per image (analytic, fwd+bwd)")
  ax.set_title("accuracy vs training compute")
  save(fig, "accuracy_vs_train_gflops.png")

  fig, ax = plt.subplots(figsize=(6, 4.5))
  scatter(ax, "img_per_s")
  measured = [r for r in rows if r.get("img_per_s") and r["accuracy"] is not None]
  front = pareto_front([(r["img_per_s"], r["accuracy"]) for r in measured])
  ax.plot([measured[i]["img_per_s"] for i in front], [100 * measured[i]["accuracy"] for i in front],
          "k--", lw=1, label="Pareto front")
  ax.legend(fontsize=8)
  ax.set_xlabel("measured training throughput (img/s)")
  ax.set_title("accuracy vs measured speed")
  save(fig, "accuracy_vs_img_per_s.png")

  fig, ax = plt.subplots(figsize=(6, 4.5))
  for size in sizes:
    points = sorted((r["patch"], r["img_per_s"]) for r in rows
                    if _size_label(r) == size and r.get("img_per_s") and r["patch"])
    if points:
      ax.plot(*zip(*points), "o-", color=colors[size], label=size)
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xlabel("patch size (px)")
  ax.set_ylabel("measured training throughput (img/s)")
  ax.set_title("throughput vs patch size")
  ax.grid(alpha=0.3)
  if ax.get_legend_handles_labels()[0]:  # No trial measured yet: an empty plot, no legend.
    ax.legend(fontsize=8)
  save(fig, "img_per_s_vs_patch_size.png")
  return written


def write_report(rows: Sequence[dict[str, Any]], metric: str | None, out_dir: str) -> list[str]:
  """Writes results.csv, results.md and the plots of `load_rows`' rows; returns the file names."""
  out = workdir_lib.resolve(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  write_csv(rows, out / "results.csv")
  (out / "results.md").write_text(markdown_table(rows, metric))
  return ["results.csv", "results.md", *write_plots(rows, out, metric)]
