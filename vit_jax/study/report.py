"""Sweep report: one row per trial (swept values, final metrics, efficiency profile, projections).

The library side of `python -m vit_jax.report SOURCE [SOURCE ...] [--out=DIR] [--only=RE]
[--prior=CSV]`. A source is a sweep dir (its `sweep.json` lists the trials) or a study file
(`experiments/<study>.py[:arg]`: the trials it defines now, in its sweep dir `runs/sweeps/<name>`).
`--prior`: the `results.csv` of earlier reports; a trial without a final result here takes its rows
from the first of them that has it finished (trials run in another checkout or on another machine).
Writes `results.csv`, `results.md` and five plots into `--out` (default: the first source's sweep
dir): accuracy vs training GFLOPs per image, accuracy vs measured img/s with the Pareto front, img/s
vs patch size per model size, accuracy vs each trial's total training compute with the
compute-optimal frontier, and accuracy by setting (the study's `plot_x` / `plot_series`, else its
last swept key). A FlexiViT trial (one model evaluated at several patch sizes) gives one row per
evaluated patch size. Several sweep dirs are reported together (e.g. a study and its baselines),
each row naming its study.

Convergence: a trial's `last_quarter_change` is the change of its accuracy over the last quarter of
its training, the least-squares trend of the evals there times the quarter's length; a setting
counts as converged when the mean of its seeds' changes (the change of their mean curve, as seeds
evaluate at the same steps) is under 0.3 points (`CONVERGED_CHANGE`).

A partial sweep is reported as one: trials of the manifest that have not finished are named in the
table's header and the plots' titles, and a warning goes to stdout. Trials that differ only in
`seed` are one point of a plot (mean, error bars +-1 sample std over the seeds); every plot states
its data, the seeds per point and what its error bars are.
"""
from __future__ import annotations

import collections
from collections.abc import Sequence
import csv
import json
import math
import re
import statistics
import textwrap
from typing import Any, NamedTuple

from etils import epath

from vit_jax.checkpoints import workdir as workdir_lib
from vit_jax.study import sweep

# Columns of the Markdown table: (row key, header, format).
_TABLE_COLUMNS = (
    ("params_m", "params (M)", "{:.3g}"),
    ("train_gflops_per_image", "train GFLOPs/img", "{:.3g}"),
    ("img_per_s", "img/s", "{:.0f}"),
    ("step_ms", "step (ms)", "{:.1f}"),
    ("mfu", "MFU", "{:.1%}"),
    # bytes / 2**20; the key keeps its old name (results.csv files that --prior reads have it).
    ("step_memory_mib", "step mem (MiB)", "{:.0f}"),
)
_FLEXI_METRIC = re.compile(r"^(?P<base>.+)@p(?P<patch>\d+)$")
CONVERGED_CHANGE = 0.003  # 0.3 points of accuracy over the last quarter of training.


def _pick_metric(finals: Sequence[dict[str, Any]]) -> str | None:
  """`val/prec@1` if an eval has it, else the first other eval's top-1 key; FlexiViT `@p<patch>`
  suffixes stripped."""
  keys = {_FLEXI_METRIC.sub(r"\g<base>", k) for final in finals for k in final}
  candidates = sorted(k for k in keys if k.endswith("prec@1") and not k.startswith("train"))
  return "val/prec@1" if "val/prec@1" in keys else candidates[0] if candidates else None


class Rows(list):
  """The report's rows (one dict per trial and patch size) and where they come from: the studies'
  names and descriptions (from their manifests), the sources, the first source's sweep dir (the
  report's default home) and the swept keys (short names, `seed` excluded) in the order the studies
  sweep them."""
  study: str = ""
  description: str = ""
  sweep_dir: str = ""
  home: str = ""
  swept: tuple[str, ...] = ()
  plot_x: str = ""
  plot_series: tuple[str, ...] = ()


def last_quarter_change(history: Sequence[tuple[int, float]]) -> float | None:
  """How much the metric moved over the last quarter of training: the least-squares slope of the
  evals at steps >= 3/4 of the last one, times the quarter's length. None with < 2 such evals."""
  if not history:
    return None
  last = max(step for step, _ in history)
  tail = [(step, value) for step, value in history if step >= 0.75 * last]
  if len(tail) < 2:
    return None
  steps, values = zip(*tail)
  mean_step, mean_value = statistics.fmean(steps), statistics.fmean(values)
  spread = sum((x - mean_step) ** 2 for x in steps)
  if not spread:
    return None
  slope = sum((x - mean_step) * (y - mean_value) for x, y in tail) / spread
  return slope * 0.25 * last


def load_rows(sources: str | Sequence[str], metric: str | None = None,
              only: Sequence[str] = (), prior: Sequence[str] = ()) -> tuple[Rows, str | None]:
  """Rows of the report, source by source in each study's order (or the trial dirs' without a
  manifest), and the metric. `sources`: sweep dirs or study files; `only`: regular expressions, one
  of which a trial name must contain; `prior`: results.csv files of earlier reports, whose finished
  rows stand in for the trials without a final result here. A row's `status` is `done`, `running`
  (started, no final result) or `missing` (nothing recorded: not launched, e.g. left out by --only /
  --max_trials)."""
  sources = [sources] if isinstance(sources, str) else list(sources)
  loaded, studies, roots = [], [], []
  for source in sources:
    trials, study, root = _load_source(source)
    studies.append(study)
    roots.append(root)
    loaded += [t for t in trials if not only or any(re.search(p, t.name) for p in only)]
  twice = [f"{study}/{name}" for (study, name), n in
           collections.Counter((t.study, t.name) for t in loaded).items() if n > 1]
  if twice:  # Their rows would pool as extra seeds.
    raise ValueError(f"{sources} hold the same trials more than once ({', '.join(twice[:3])}"
                     f"{', ...' if len(twice) > 3 else ''}): pass each sweep dir or study once, "
                     "and report two sweep dirs of one study separately.")
  if not loaded:
    raise ValueError(f"--only={list(only)} matches no trial of {sources}.")
  recorded = read_prior(prior)
  taken = {(t.study, t.name): recorded[(t.study, t.name)] for t in loaded
           if t.status != "done" and (t.study, t.name) in recorded}
  # Rows all from --prior: the metric they name (older reports' rows name none).
  metric = (metric or _pick_metric([t.final for t in loaded]) or
            next((r[0]["metric"] for r in taken.values() if r[0].get("metric")), None))
  rows = Rows()
  for trial in loaded:
    earlier = taken.get((trial.study, trial.name))
    if earlier:
      _check_prior(earlier[0], trial, metric)
      rows += earlier
    else:
      rows += _trial_rows(trial, metric)
  rows.study = " + ".join(m.get("name", "") or "sweep" for m in studies)
  rows.description = " | ".join(m["description"] for m in studies if m.get("description"))
  rows.sweep_dir = ", ".join(sources)
  rows.home = str(roots[0])
  rows.plot_x = next((m["plot_x"] for m in studies if m.get("plot_x")), "")
  rows.plot_series = next((tuple(m["plot_series"]) for m in studies if m.get("plot_series")), ())
  rows.swept = tuple(dict.fromkeys(
      k.rsplit(".", 1)[-1] for m in studies for t in m.get("trials", ())
      for k in t["values"] if k.rsplit(".", 1)[-1] != "seed"))
  return rows, metric


def _is_study_file(source: str) -> bool:
  return source.partition(":")[0].endswith(".py")


class _Trial(NamedTuple):
  """What a sweep dir holds of one trial; `flags` are the manifest's (None without one)."""
  study: str
  name: str
  values: dict[str, Any]
  bench: dict[str, Any]
  final: dict[str, Any]
  status: str
  history: list[dict[str, Any]]
  batch: int | None
  flags: list[str] | None


def _load_source(source: str) -> tuple[list[_Trial], dict[str, Any], epath.Path]:
  """The trials of a source, its manifest (a study file's `to_json`) and its sweep dir."""
  if _is_study_file(source):  # Its trials as defined now; a trial not run yet is missing.
    study = sweep.load_study(source)
    manifest = study.to_json()
    root = workdir_lib.resolve(sweep.default_sweep_dir(study.name))
    sweep.check_ran_as_defined(manifest, workdir_lib.read_json(workdir_lib.sweep_manifest(root)),
                               root)
  else:
    root = workdir_lib.resolve(source)
    if not root.is_dir():
      raise FileNotFoundError(f"sweep dir {source!r} does not exist; pass the --sweep_dir of the "
                              "launch (default runs/sweeps/<study>), or the study file.")
    manifest = workdir_lib.read_json(workdir_lib.sweep_manifest(root))
  if manifest:
    trials = [(t["name"], t["values"], t.get("flags")) for t in manifest["trials"]]
  else:
    trials = [(p.name, {}, None) for p in sorted(root.iterdir())
              if p.is_dir() and (workdir_lib.Workdir(p).bench.exists() or
                                 workdir_lib.Workdir(p).summary.exists())]
  if not trials:
    raise ValueError(f"{source} holds no trials (no sweep.json, no trial dir with bench.json or "
                     "summary.json).")
  manifest = manifest or {}
  loaded = []
  for name, values, flags in trials:
    trial = workdir_lib.trial_workdir(root, name)
    final, done = trial.final_metrics()
    started = done or any(p.exists() for p in (trial.bench, trial.metrics, trial.summary))
    status = "done" if done else "running" if started else "missing"
    config = workdir_lib.read_json(trial.config) or {}
    loaded.append(_Trial(manifest.get("name", ""), name, values,
                         workdir_lib.read_json(trial.bench) or {}, final, status,
                         trial.metric_rows(), config.get("batch_size"), flags))
  return loaded, manifest, root


def read_prior(paths: Sequence[str]) -> dict[tuple[str, str], list[dict[str, Any]]]:
  """(study, trial) -> its finished rows in the first of these earlier reports' results.csv that
  has them, the cells parsed back into numbers and booleans."""
  recorded: dict[tuple[str, str], list[dict[str, Any]]] = {}
  for path in paths:
    file = workdir_lib.resolve(path)
    if not file.is_file():
      raise FileNotFoundError(f"--prior={path}: no such file; pass the results.csv of an "
                              "earlier report.")
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with file.open() as f:
      for cells in csv.DictReader(f):
        row = {k: _parse_cell(v) for k, v in cells.items()}
        if row.get("status") == "done":
          found.setdefault((row["study"], row["trial"]), []).append(row)
    recorded = {**found, **recorded}  # The first file that has a trial wins.
  return recorded


def _parse_cell(text: str) -> Any:
  if text == "":
    return None
  if text in ("True", "False"):
    return text == "True"
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text


def _check_prior(row: dict[str, Any], trial: _Trial, metric: str | None) -> None:
  """Raises ValueError if an earlier report's row of `trial` ran with other flags than the trial
  has now, or reports another metric than this report (rows of reports older than the `flags` or
  `metric` column are taken on their name)."""
  if row.get("flags") and trial.flags is not None and (
      sweep.same_run(json.loads(row["flags"])) != sweep.same_run(trial.flags)):
    raise ValueError(f"--prior's {trial.study}/{trial.name} ran with {row['flags']}, the study "
                     f"now says {trial.flags}: rerun that trial, or drop the --prior.")
  if row.get("metric") and metric and row["metric"] != metric:
    raise ValueError(f"--prior's {trial.study}/{trial.name} reports {row['metric']}, this report "
                     f"{metric}: pass --metric={row['metric']} (or report that --prior's metric "
                     "again), so that one column does not mix two metrics.")


def _trial_rows(trial: _Trial, metric: str | None) -> list[dict[str, Any]]:
  """One row, or one per patch size for a FlexiViT trial (metrics `<metric>@p<patch>`)."""
  study, name, values, bench, final, status, history, batch, flags = trial
  flexi = {int(m["patch"]): v for k, v in final.items()
           if metric and (m := _FLEXI_METRIC.match(k)) and m["base"] == metric}
  profiles = {int(p): prof for p, prof in bench.get("per_patch_size", {}).items()}
  # A FlexiViT step costs the mean over the patch sizes it draws from.
  per_image = ([p.get("train_gflops_per_image") for p in profiles.values()] if profiles
               else [bench.get("train_gflops_per_image")])
  steps = final.get("step")
  total = (statistics.fmean(per_image) * batch * steps
           if None not in per_image and batch and steps else None)
  base = {"study": study, "trial": name, **{k.rsplit(".", 1)[-1]: v for k, v in values.items()},
          "done": status == "done", "status": status, "model": bench.get("model_name", ""),
          "width": bench.get("model", {}).get("width"), "steps": steps,
          "total_train_gflops": total, "flags": json.dumps(flags) if flags else None,
          "metric": metric}

  def convergence(key: str) -> dict[str, Any]:
    curve = {h["step"]: h[key] for h in history if key in h}  # The last eval of a step counts.
    return {"last_quarter_change": last_quarter_change(sorted(curve.items()))}

  if not flexi:
    patch = (bench.get("model", {}).get("patch_size") or [None])[0]
    return [{**base, "patch": patch, "accuracy": final.get(metric) if metric else None,
             **convergence(metric), **_efficiency(bench)}]
  return [{**base, "patch": patch, "flexi": True, "accuracy": accuracy,
           **convergence(f"{metric}@p{patch}"), **_efficiency(profiles.get(patch, {}))}
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
      "step_memory_mib": (bench["step_memory_bytes"] / 2**20
                         if bench.get("step_memory_bytes") is not None else None),
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
  columns = list(dict.fromkeys(k for row in rows for k in row if not k.startswith("_")))
  with path.open("w") as f:
    writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)


def trial_labels(rows: Sequence[dict[str, Any]]) -> list[str]:
  """Each row's trial name; `study/trial` when the rows hold several studies, whose trial names
  may coincide (seed=0 in both arms of a comparison)."""
  several = len({r.get("study") for r in rows}) > 1
  return [f"{r.get('study')}/{r['trial']}" if several else r["trial"] for r in rows]


def trial_statuses(rows: Sequence[dict[str, Any]]) -> dict[str, str]:
  """Trial label (`trial_labels`) -> status (`done` / `running` / `missing`), in the rows' order."""
  return {label: r.get("status", "done" if r.get("done") else "running")
          for label, r in zip(trial_labels(rows), rows)}


def partial_note(rows: Sequence[dict[str, Any]]) -> str | None:
  """One sentence naming the trials without a final result; None when every trial finished."""
  statuses = trial_statuses(rows)
  missing = [t for t, s in statuses.items() if s == "missing"]
  running = [t for t, s in statuses.items() if s == "running"]
  if not missing and not running:
    return None
  done = len(statuses) - len(missing) - len(running)
  parts = [f"partial sweep: {done} of {len(statuses)} trials finished"]
  if missing:
    parts.append(f"missing (no results; not run, or left out by --only / --max_trials): "
                 f"{', '.join(missing)}")
  if running:
    parts.append(f"not finished (latest values shown): {', '.join(running)}")
  return "; ".join(parts) + "."


_ROW_SUFFIX = {"done": "", "running": " (running)", "missing": " (missing)"}


def markdown_table(rows: Sequence[dict[str, Any]], metric: str | None) -> str:
  """The table of every trial; projected throughputs are labelled as projections; a partial sweep
  says so above the table."""
  proj_keys = list(dict.fromkeys(k for row in rows for k in row if k.startswith("proj_img_per_s@")))
  headers = ["trial", "patch", f"{metric or 'accuracy'}", "change over last 1/4 (pts)",
             *[h for _, h, _ in _TABLE_COLUMNS],
             *[f"projected img/s {k.split('@', 1)[1]}" for k in proj_keys]]
  lines = []
  note = partial_note(rows)
  if note:
    lines += [f"**{note[0].upper()}{note[1:]}**", ""]
  lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
  statuses = trial_statuses(rows)
  for label, row in zip(trial_labels(rows), rows):
    cells = [label + _ROW_SUFFIX[statuses[label]], _format(row["patch"], "{}"),
             _format(row["accuracy"], "{:.2%}"), _points(row.get("last_quarter_change")),
             *[_format(row.get(k), fmt) for k, _, fmt in _TABLE_COLUMNS],
             *[_format(row.get(k), "{:.0f}") for k in proj_keys]]
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", *pooled_table(rows, metric)]
  devices = sorted({str(r["device"]) for r in rows if r.get("device")})
  lines.append("")
  lines.append(f"Measured on: {', '.join(devices) or 'unknown'}. Plots: {_seed_text(rows)} "
               "Projected columns are projections, not measurements (see "
               "vit_jax/efficiency/projection.py for the model and its check against published "
               "runs).")
  return "\n".join(lines) + "\n"


def _points(change: float | None) -> str:
  return "–" if change is None else f"{100 * change:+.2f}"


def pooled_table(rows: Sequence[dict[str, Any]], metric: str | None) -> list[str]:
  """The table of settings, seeds pooled: accuracy as mean +- sample std, the convergence check,
  the cost of one training run."""
  points = plot_points(rows)
  multi_study = len({p["study"] for p in points}) > 1
  headers = [*(["study"] if multi_study else []), "setting", "patch", "seeds",
             f"{metric or 'accuracy'} mean ± std", "change over last 1/4 (pts)", "converged",
             "params (M)", "train GFLOPs/img", "train GFLOPs per run", "img/s"]
  lines = ["Mean over seeds (finished trials that differ only in seed). Change over the last "
           "quarter: the least-squares trend of the seeds' mean accuracy over the evals in the "
           "last quarter of training, times its length; converged when under "
           f"{100 * CONVERGED_CHANGE:.1f} points.", "",
           "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
  for p in points:
    accuracy = ("–" if p["accuracy"] is None else f"{100 * p['accuracy']:.2f}" +
                ("" if p["accuracy_std"] is None else f" ± {100 * p['accuracy_std']:.2f}"))
    cells = [*([p["study"]] if multi_study else []), p["name"], _format(p["patch"], "{}"),
             str(p["seeds"]), accuracy, _points(p["last_quarter_change"]),
             {True: "yes", False: "**no**", None: "–"}[p["converged"]],
             _format(p["params_m"], "{:.3g}"),
             _format(p["train_gflops_per_image"], "{:.3g}"),
             _format(p["total_train_gflops"], "{:,.0f}"), _format(p["img_per_s"], "{:,.0f}")]
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def _size_label(row: dict[str, Any]) -> str:
  """Model size without the patch: 'ViT-S/16' -> 'ViT-S (width 384)'."""
  if not row.get("width"):
    return row["model"] or row["trial"]
  return f"{row['model'].split('/')[0] or 'ViT'} (width {row['width']})"


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
  if not values:
    return None, None
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def plot_points(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """One point per study, trial and patch size, trials that differ only in `seed` pooled: mean and
  sample std over the seeds of accuracy and img/s, the seed count, the largest last-quarter change
  and how many seeds converged."""
  groups: dict[tuple[str, str, Any], list[dict[str, Any]]] = {}
  for row in rows:  # A FlexiViT trial's rows are one point per patch size.
    key = (row.get("study", ""), sweep.without_seed(row["trial"]),
           row["patch"] if row.get("flexi") else None)
    groups.setdefault(key, []).append(row)
  multi_study = len({study for study, _, _ in groups}) > 1
  points = []
  for (study, name, _), trials in groups.items():
    size = _size_label(trials[0])
    patch = next((r["patch"] for r in trials if r["patch"] is not None), None)
    # Finished seeds only; a setting none of whose seeds finished shows its latest values.
    members = [r for r in trials if r.get("done")] or trials
    point = {"study": study, "name": name, "patch": patch, "flexi": bool(trials[0].get("flexi")),
             "size": f"{study}: {size}" if multi_study else size,
             "seeds": sum(bool(r.get("done")) for r in trials),
             "params_m": members[0].get("params_m"),
             "train_gflops_per_image": members[0].get("train_gflops_per_image")}
    for key in ("accuracy", "img_per_s", "total_train_gflops"):
      point[key], point[f"{key}_std"] = _mean_std(
          [r[key] for r in members if r.get(key) is not None])
    # Linear in the accuracies: the mean of the seeds' changes is the change of their mean curve.
    point["last_quarter_change"], _ = _mean_std(
        [r["last_quarter_change"] for r in members
         if r.get("done") and r.get("last_quarter_change") is not None])
    point["converged"] = (None if point["last_quarter_change"] is None
                          else abs(point["last_quarter_change"]) < CONVERGED_CHANGE)
    point["setting"] = {k: trials[0].get(k) for k in getattr(rows, "swept", ()) if k != "patch"}
    points.append(point)
  return points


def _seed_text(rows: Sequence[dict[str, Any]]) -> str:
  seeds = sorted({p["seeds"] for p in plot_points(rows) if p["seeds"]}) or [1]
  if seeds == [1]:
    return "One seed per point: no error bars."
  count = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
  return (f"{count} seeds per point (trials that differ only in seed): the mean, error bars "
          "+-1 sample std over the seeds.")


def _caption(rows: Sequence[dict[str, Any]]) -> str:
  """What every plot states: the data, the seeds per point and what the error bars are."""
  statuses = trial_statuses(rows)
  done = sum(s == "done" for s in statuses.values())
  study = getattr(rows, "study", "") or "sweep"
  where = getattr(rows, "sweep_dir", "")
  description = getattr(rows, "description", "")
  devices = sorted({str(r["device"]) for r in rows if r.get("device")})
  lines = [f"Data: {study}{f' ({where})' if where else ''}: {done} of {len(statuses)} trials "
           f"finished{' (PARTIAL)' if done < len(statuses) else ''}."
           + (f" {description}." if description else "")]
  unfinished = [t for t, s in statuses.items() if s != "done"]
  if unfinished:
    more = f" and {len(unfinished) - 4} more" if len(unfinished) > 4 else ""
    lines.append(f"Not finished: {', '.join(unfinished[:4])}{more} (see results.md).")
  lines.append(f"{_seed_text(rows)} Speed measured on {', '.join(devices) or 'unknown'}.")
  return "\n".join(lines)


_CAPTION_CHARS = 118  # Characters per caption line at 6.5 pt across a 6.4-inch figure.
_CAPTION_LINE_INCHES = 0.115


def figures(rows: Sequence[dict[str, Any]], metric: str | None) -> dict[str, Any]:
  """The three trade-off plots as matplotlib figures, by file name."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  points = plot_points(rows)
  sizes = list(dict.fromkeys(p["size"] for p in points))
  colors = {s: plt.cm.tab10(i % 10) for i, s in enumerate(sizes)}
  acc_label = f"{metric or 'accuracy'} (%)"
  statuses = trial_statuses(rows)
  done = sum(s == "done" for s in statuses.values())
  partial = f" (partial: {done}/{len(statuses)} trials)" if done < len(statuses) else ""
  caption = _caption(rows)
  made = {}

  # The caption gets its own band under the axes, so that no length of it covers the x label.
  caption_lines = [line for paragraph in caption.split("\n")
                   for line in textwrap.wrap(paragraph, _CAPTION_CHARS) or [""]]
  caption_height = _CAPTION_LINE_INCHES * len(caption_lines) + 0.1
  height = 5.0 + caption_height

  def new_figure(title: str):
    fig, ax = plt.subplots(figsize=(6.4, height))
    ax.set_title(title + partial, fontsize=10)
    ax.grid(alpha=0.3)
    fig.text(0.01, 0.05 / height, "\n".join(caption_lines), fontsize=6.5, va="bottom",
             ha="left")
    return fig, ax

  def legend(ax):
    if ax.get_legend_handles_labels()[0]:  # Nothing plotted: no legend at all.
      ax.legend(fontsize=8)

  def accuracy_scatter(ax, x_key: str, x_err: bool):
    plotted = set()
    for p in points:
      if p.get(x_key) is None or p["accuracy"] is None:
        continue
      label = p["size"] if p["size"] not in plotted else None
      plotted.add(p["size"])
      ax.errorbar(p[x_key], 100 * p["accuracy"],
                  yerr=None if p["accuracy_std"] is None else 100 * p["accuracy_std"],
                  xerr=p.get(f"{x_key}_std") if x_err else None, fmt="o", capsize=3,
                  color=colors[p["size"]], label=label)
      ax.annotate(f"p{p['patch']}", (p[x_key], 100 * p["accuracy"]),
                  textcoords="offset points", xytext=(4, 3), fontsize=8)
    ax.set_xscale("log")
    ax.set_ylabel(acc_label)

  def finish(fig, name: str):
    fig.tight_layout(rect=(0, caption_height / height, 1, 1))
    made[name] = fig

  fig, ax = new_figure("accuracy vs training compute")
  accuracy_scatter(ax, "train_gflops_per_image", x_err=False)
  ax.set_xlabel("training GFLOPs per image (analytic, fwd+bwd)")
  legend(ax)
  finish(fig, "accuracy_vs_train_gflops.png")

  fig, ax = new_figure("accuracy vs measured speed")
  accuracy_scatter(ax, "img_per_s", x_err=True)
  measured = [p for p in points if p.get("img_per_s") and p["accuracy"] is not None]
  front = pareto_front([(p["img_per_s"], p["accuracy"]) for p in measured])
  if front:
    ax.plot([measured[i]["img_per_s"] for i in front],
            [100 * measured[i]["accuracy"] for i in front], "k--", lw=1, label="Pareto front")
  ax.set_xlabel("measured training throughput (img/s)")
  legend(ax)
  finish(fig, "accuracy_vs_img_per_s.png")

  fig, ax = new_figure("throughput vs patch size")
  for size in sizes:
    series = sorted((p["patch"], p["img_per_s"], p["img_per_s_std"]) for p in points
                    if p["size"] == size and p.get("img_per_s") and p["patch"])
    if series:
      patches, speeds, stds = zip(*series)
      yerr = None if all(s is None for s in stds) else [s or 0.0 for s in stds]
      ax.errorbar(patches, speeds, yerr=yerr, fmt="o-", capsize=3, color=colors[size],
                  label=size)
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  patches = sorted({p["patch"] for p in points if p.get("img_per_s") and p["patch"]})
  if patches:  # The sizes run, not powers of two.
    ax.set_xticks(patches, labels=[str(p) for p in patches])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
  ax.set_xlabel("patch size (px)")
  ax.set_ylabel("measured training throughput (img/s)")
  legend(ax)
  finish(fig, "img_per_s_vs_patch_size.png")

  fig, ax = new_figure("accuracy vs compute per training run")
  accuracy_scatter(ax, "total_train_gflops", x_err=False)
  costed = [p for p in points if p.get("total_train_gflops") and p["accuracy"] is not None]
  front = pareto_front([(-p["total_train_gflops"], p["accuracy"]) for p in costed])[::-1]
  if front:
    ax.plot([costed[i]["total_train_gflops"] for i in front],
            [100 * costed[i]["accuracy"] for i in front], "k--", lw=1,
            label="compute-optimal frontier")
  ax.set_xlabel("training compute per run (GFLOPs, analytic: steps x batch x GFLOPs/img)")
  legend(ax)
  finish(fig, "accuracy_vs_train_compute.png")

  x_key, series_keys = _setting_axes(rows, points)
  fig, ax = new_figure(f"accuracy vs {x_key}")
  series: dict[str, list[dict[str, Any]]] = {}
  for p in points:
    if p["accuracy"] is not None:
      label = ", ".join([*([p["study"]] if len({q["study"] for q in points}) > 1 else []),
                         *(f"{k}={_setting_value(p, k)}" for k in series_keys)]) or "all"
      series.setdefault(label, []).append(p)
  xs = list(dict.fromkeys(_setting_value(p, x_key) for members in series.values()
                          for p in members))
  numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
  position = (lambda x: x) if numeric else {x: i for i, x in enumerate(xs)}.get
  offsets = {label: 0.0 if numeric else 0.08 * (i - (len(series) - 1) / 2)
             for i, label in enumerate(series)}
  for i, (label, members) in enumerate(series.items()):
    members = sorted(members, key=lambda p: position(_setting_value(p, x_key)))
    ax.errorbar([position(_setting_value(p, x_key)) + offsets[label] for p in members],
                [100 * p["accuracy"] for p in members],
                yerr=[100 * (p["accuracy_std"] or 0.0) for p in members], fmt="o-",
                capsize=3, color=plt.cm.tab10(i % 10), label=label)
  if numeric and xs and max(xs) / max(min(xs), 1e-9) >= 8:
    ax.set_xscale("log", base=2 if x_key == "patch" else 10)
  ticks = sorted(xs) if numeric else xs
  ax.set_xticks([position(x) for x in ticks], labels=[str(x) for x in ticks])
  ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
  ax.set_xlabel(x_key + (" (px)" if x_key == "patch" else ""))
  ax.set_ylabel(acc_label)
  legend(ax)
  finish(fig, "accuracy_by_setting.png")
  return made


def _setting_value(point: dict[str, Any], key: str) -> Any:
  value = point["patch"] if key == "patch" else point["setting"].get(key)
  return _format(value, "{}") if isinstance(value, (list, tuple)) or value is None else value


def _setting_axes(rows: Sequence[dict[str, Any]],
                  points: Sequence[dict[str, Any]]) -> tuple[str, list[str]]:
  """The x axis of the by-setting plot (the last swept key whose value varies, or the patch) and
  the keys telling its series apart (the other varying ones)."""
  # The patch of a FlexiViT point is its eval's, not a swept value.
  flexi = ("patch",) if any(p["flexi"] for p in points) else ()
  keys = [k for k in (*getattr(rows, "swept", ()), *flexi)
          if len({str(_setting_value(p, k)) for p in points}) > 1]
  keys = list(dict.fromkeys(keys))
  if getattr(rows, "plot_x", ""):  # The study's choice.
    return rows.plot_x, [k for k in rows.plot_series if k in keys and k != rows.plot_x]
  if not keys:
    return "patch", []
  x_key = "patch" if "patch" in keys and "patch_sizes" in keys else keys[-1]
  return x_key, [k for k in keys if k != x_key]


def write_plots(rows: Sequence[dict[str, Any]], out_dir: epath.Path,
                metric: str | None) -> list[str]:
  """The three trade-off plots as PNG files; returns their names."""
  from matplotlib import pyplot as plt

  written = []
  for name, fig in figures(rows, metric).items():
    with (out_dir / name).open("wb") as f:
      fig.savefig(f, dpi=120)
    plt.close(fig)
    written.append(name)
  return written


def write_report(rows: Sequence[dict[str, Any]], metric: str | None, out_dir: str) -> list[str]:
  """Writes results.csv, results.md and the plots of `load_rows`' rows; returns the file names.
  A partial sweep also prints a warning naming the trials without a final result (stdout)."""
  note = partial_note(rows)
  if note:
    print(f"warning: {note}", flush=True)
  out = workdir_lib.resolve(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  write_csv(rows, out / "results.csv")
  (out / "results.md").write_text(markdown_table(rows, metric))
  return ["results.csv", "results.md", *write_plots(rows, out, metric)]
