"""Report: CSV, Markdown table and plots from trial dirs written the way the launchers write
them."""
import csv
import json
import subprocess
import sys
import textwrap

from PIL import Image
import pytest

from vit_jax.study import report, sweep


def _bench(width, patch, img_per_s):
  gflops = width * 1e-3 / patch
  return {"model": {"width": width, "depth": 2, "patch_size": [patch, patch]},
          "params": width * 1000, "fwd_gflops_per_image": gflops,
          "train_gflops_per_image": 3 * gflops, "img_per_s": img_per_s,
          "step_s": 128 / img_per_s, "mfu": 0.05, "step_memory_bytes": 300 * 2**20, "device": "cpu",
          "projections": [{"label": "projection", "target": "h100-8x",
                           "img_per_s": 100 * img_per_s}]}


@pytest.fixture
def sweep_dir(tmp_path):
  """Four finished trials, one still training (metrics.jsonl only), one FlexiViT trial."""
  points = sweep.product(sweep.axis("config.model.width", [32, 64]),
                         sweep.axis("config.model.patch_size", [4, 7]))
  flexi = sweep.trials([{"config.model.width": 64, "config.flexi.patch_sizes": (4, 7)}])
  trials = sweep.trials(points) + flexi + sweep.trials([{"config.model.width": 128}])
  study = sweep.Study("t", "configs/x.py", trials)
  sweep.write_manifest(study, str(tmp_path))
  results = {"width=32,patch_size=4": (0.95, 900), "width=32,patch_size=7": (0.90, 2000),
             "width=64,patch_size=4": (0.97, 500), "width=64,patch_size=7": (0.93, 1000)}
  for name, (acc, ips) in results.items():
    width, patch = (int(part.split("=")[1]) for part in name.split(","))
    (tmp_path / name).mkdir()
    (tmp_path / name / "bench.json").write_text(json.dumps(_bench(width, patch, ips)))
    (tmp_path / name / "summary.json").write_text(json.dumps(
        {"done": True, "final": {"val/prec@1": acc, "train/loss": 0.1}}))
  flexi_dir = tmp_path / flexi[0].name
  flexi_dir.mkdir()
  (flexi_dir / "bench.json").write_text(json.dumps(
      {**_bench(64, 4, 500), "per_patch_size": {"4": _bench(64, 4, 450), "7": _bench(64, 7, 950)}}))
  (flexi_dir / "summary.json").write_text(json.dumps(
      {"done": True, "final": {"val/prec@1": 0.96, "val/prec@1@p4": 0.96, "val/prec@1@p7": 0.94}}))
  running = tmp_path / "width=128"
  running.mkdir()
  (running / "metrics.jsonl").write_text(
      json.dumps({"step": 10, "train/loss": 2.0}) + "\n" +
      json.dumps({"step": 20, "val/prec@1": 0.5}) + "\n")
  return tmp_path


def test_report_writes_table_csv_and_plots(sweep_dir, tmp_path):
  out = tmp_path / "out"
  rows, metric = report.load_rows(str(sweep_dir))
  written = report.write_report(rows, metric, str(out))
  assert written == ["results.csv", "results.md", "accuracy_vs_train_gflops.png",
                     "accuracy_vs_img_per_s.png", "img_per_s_vs_patch_size.png",
                     "accuracy_vs_train_compute.png", "accuracy_by_setting.png"]
  rows = list(csv.DictReader((out / "results.csv").open()))
  assert [(r["trial"], r["patch"], r["accuracy"]) for r in rows] == [
      ("width=32,patch_size=4", "4", "0.95"), ("width=32,patch_size=7", "7", "0.9"),
      ("width=64,patch_size=4", "4", "0.97"), ("width=64,patch_size=7", "7", "0.93"),
      ("width=64,patch_sizes=4-7", "4", "0.96"), ("width=64,patch_sizes=4-7", "7", "0.94"),
      ("width=128", "", "0.5")]
  assert rows[5]["img_per_s"] == "950" and rows[0]["proj_img_per_s@h100-8x"] == "90000"
  table = (out / "results.md").read_text()
  assert "| trial | patch | val/prec@1 |" in table and "projected img/s h100-8x" in table
  assert "| MFU | step mem (MiB) |" in table and "| 5.0% | 300 |" in table  # 300 * 2**20 bytes.
  assert "| width=64,patch_size=4 | 4 | 97.00% |" in table and "width=128 (running)" in table
  assert "projections, not measurements" in table
  for name in written[2:]:
    with Image.open(out / name) as image:
      assert image.format == "PNG" and image.size[0] > 300


def test_pareto_front_keeps_undominated_points_sorted_by_speed():
  points = [(900, 0.95), (2000, 0.90), (500, 0.97), (1000, 0.93), (450, 0.96), (880, 0.94)]
  assert report.pareto_front(points) == [2, 0, 3, 1]  # (450, .96) and (880, .94) are beaten.


def test_cli_missing_dir_exits_2(tmp_path):
  result = subprocess.run([sys.executable, "-m", "vit_jax.report", str(tmp_path / "nope")],
                          capture_output=True, text=True)
  assert result.returncode == 2 and "nope" in result.stderr


def _finished_trial(root, name, width, patch, acc, img_per_s):
  (root / name).mkdir()
  (root / name / "bench.json").write_text(json.dumps(_bench(width, patch, img_per_s)))
  (root / name / "summary.json").write_text(json.dumps({"done": True,
                                                        "final": {"val/prec@1": acc, "step": 100}}))
  (root / name / "config.json").write_text(json.dumps({"batch_size": 10}))


def _legend(ax):
  return [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else []


def _close_all():
  from matplotlib import pyplot as plt  # After report.figures chose the Agg backend.
  plt.close("all")


def test_partial_sweep_is_reported_as_partial(tmp_path, capsys):
  """A trial left out (e.g. by --only) is named as missing in the table, the plots' titles and a
  warning on stdout; it gets no legend entry."""
  trials = sweep.trials(sweep.product(sweep.axis("config.model.width", [32, 64]),
                                      sweep.axis("config.model.patch_size", [4])))
  trials += sweep.trials([{"config.model.width": 128}])
  sweep.write_manifest(sweep.Study("t", "configs/x.py", trials), str(tmp_path / "sweep"))
  root = tmp_path / "sweep"
  _finished_trial(root, "width=32,patch_size=4", 32, 4, 0.9, 1000)
  (root / "width=64,patch_size=4").mkdir()  # Started: metrics so far, no summary.
  (root / "width=64,patch_size=4" / "metrics.jsonl").write_text(
      json.dumps({"step": 5, "val/prec@1": 0.4}) + "\n")
  rows, metric = report.load_rows(str(root))
  assert [r["status"] for r in rows] == ["done", "running", "missing"]
  report.write_report(rows, metric, str(tmp_path / "out"))
  warning = capsys.readouterr().out
  assert warning.startswith("warning: partial sweep: 1 of 3 trials finished")
  assert "missing (no results" in warning and "width=128" in warning
  assert "not finished (latest values shown): width=64,patch_size=4" in warning
  table = (tmp_path / "out" / "results.md").read_text()
  assert table.startswith("**Partial sweep: 1 of 3 trials finished")
  assert "| width=128 (missing) |" in table and "| width=64,patch_size=4 (running) |" in table
  figures = report.figures(rows, metric)
  try:
    for fig in figures.values():
      [ax] = fig.axes
      assert ax.get_title().endswith("(partial: 1/3 trials)")
      caption = " ".join(fig.texts[0].get_text().split())  # Wrapped where the data path ends.
      assert "1 of 3 trials finished (PARTIAL)" in caption
      assert "Not finished: width=64,patch_size=4, width=128" in caption
    # Only what is drawn is in a legend: the measured width-32 model, not the missing trial.
    assert _legend(figures["accuracy_vs_train_gflops.png"].axes[0]) == ["ViT (width 32)"]
    assert set(_legend(figures["accuracy_vs_img_per_s.png"].axes[0])) == {"ViT (width 32)",
                                                                          "Pareto front"}
  finally:
    _close_all()


def test_plots_show_actual_patch_sizes_and_state_data_seeds_and_error_bars(sweep_dir):
  rows, metric = report.load_rows(str(sweep_dir))
  figures = report.figures(rows, metric)
  try:
    ax = figures["img_per_s_vs_patch_size.png"].axes[0]
    assert list(ax.get_xticks()) == [4, 7]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["4", "7"]
    assert _legend(ax) == ["ViT (width 32)", "ViT (width 64)"]
    for fig in figures.values():
      caption = fig.texts[0].get_text()
      assert caption.startswith(f"Data: t ({sweep_dir}): 5 of 6 trials finished (PARTIAL).")
      assert "One seed per point: no error bars." in caption and "measured on cpu" in caption
  finally:
    _close_all()


def test_seeds_are_pooled_into_mean_and_std_with_error_bars(tmp_path):
  points = sweep.product(sweep.axis("config.model.patch_size", [4, 7]),
                         sweep.axis("config.seed", [0, 1, 2]))
  trials = sweep.trials(points)
  sweep.write_manifest(sweep.Study("seeds", "configs/x.py", trials, description="3 seeds"),
                       str(tmp_path))
  accuracy = {0: 0.90, 1: 0.92, 2: 0.94}
  for t in trials:
    patch, seed = t.overrides["model.patch_size"], t.overrides["seed"]
    _finished_trial(tmp_path, t.name, 32, patch, accuracy[seed] - patch / 100, 1000 + 10 * seed)
  rows, metric = report.load_rows(str(tmp_path))
  points = report.plot_points(rows)
  assert [(p["name"], p["seeds"]) for p in points] == [("patch_size=4", 3), ("patch_size=7", 3)]
  assert points[0]["accuracy"] == pytest.approx(0.88)
  assert points[0]["accuracy_std"] == pytest.approx(0.02)
  assert points[1]["img_per_s"] == pytest.approx(1010) and points[1]["img_per_s_std"] == 10
  figures = report.figures(rows, metric)
  try:
    for fig in figures.values():
      [ax] = fig.axes
      assert any(c.has_yerr for c in ax.containers)  # Error bars are drawn...
      caption = fig.texts[0].get_text()  # ...and said to be +-1 std over 3 seeds.
      assert "Data: seeds" in caption and "3 seeds" in caption
      assert "3 seeds per point (trials that differ only in seed): the mean, error bars +-1 " \
             "sample std over the seeds." in caption
  finally:
    _close_all()
  assert "3 seeds per point" in report.markdown_table(rows, metric)


def test_last_quarter_change_is_the_trend_of_the_last_quarter():
  flat_tail = [(0, 0.1), (50, 0.6), (75, 0.9), (80, 0.9), (90, 0.9), (100, 0.9)]
  assert report.last_quarter_change(flat_tail) == pytest.approx(0.0)
  rising = [(s, 0.5 + 0.001 * s) for s in range(0, 101, 10)]  # 0.1 per 100 steps.
  assert report.last_quarter_change(rising) == pytest.approx(0.025)
  assert report.last_quarter_change([(0, 0.1), (100, 0.9)]) is None  # One eval in the quarter.


def _trial_with_curve(root, name, width, patch, curve, batch=10):
  _finished_trial(root, name, width, patch, curve[-1][1], 1000)
  (root / name / "metrics.jsonl").write_text("".join(
      json.dumps({"step": step, "val/prec@1": acc}) + "\n" for step, acc in curve))
  (root / name / "summary.json").write_text(json.dumps(
      {"done": True, "final": {"val/prec@1": curve[-1][1], "step": curve[-1][0]}}))
  (root / name / "config.json").write_text(json.dumps({"batch_size": batch}))


def test_pooled_table_checks_convergence_on_the_seed_mean(tmp_path):
  """A setting converges when its seeds' mean accuracy moved < 0.3 points over the last quarter;
  the table gives mean +- std over finished seeds and one run's training compute."""
  trials = sweep.trials(sweep.product(sweep.axis("config.seed", [0, 1, 2]),
                                      sweep.axis("config.model.patch_size", [4, 7])))
  sweep.write_manifest(sweep.Study("conv", "configs/x.py", trials), str(tmp_path))
  for t in trials:
    seed, patch = t.overrides["seed"], t.overrides["model.patch_size"]
    if patch == 4:  # Flat at the end, noisy per seed: +-0.4 points around 0.90 + seed / 100.
      curve = [(s, 0.90 + seed / 100 + (0.004 if (s // 10 + seed) % 2 else -0.004))
               for s in range(10, 101, 10)]
    elif seed == 2:
      continue  # Not run: the setting has 2 finished seeds.
    else:  # Still rising by 1 point per quarter.
      curve = [(s, 0.80 + 0.0004 * s) for s in range(10, 101, 10)]
    _trial_with_curve(tmp_path, t.name, 32, patch, curve)
  rows, metric = report.load_rows(str(tmp_path))
  table = report.markdown_table(rows, metric)
  pooled = {line.split(" | ")[0][2:]: line.split(" | ") for line in table.splitlines()
            if line.startswith("| patch_size=")}
  # Final accuracies 0.896, 0.914 and 0.916.
  assert pooled["patch_size=4"][2:6] == ["3", "90.87 ± 1.10", "+0.00", "yes"]
  assert pooled["patch_size=7"][2:6] == ["2", "84.00 ± 0.00", "+1.00", "**no**"]
  assert pooled["patch_size=7"][8] == "14"  # GFLOPs per run: 3 x 32e-3 / 7 per image x 10 x 100.
  assert "(missing)" in table and "seed=2,patch_size=7" in table


def test_several_sweeps_report_together_with_a_frontier_and_the_setting_axis(tmp_path):
  """A study and its baseline in one report (--only picking trials), each point naming its
  study; the compute plot marks the frontier, the setting plot draws the last swept key."""
  for study, widths in (("base", [32, 64]), ("other", [32])):
    trials = sweep.trials(sweep.product(sweep.axis("config.model.width", widths),
                                        sweep.axis("config.model.patch_size", [4, 8])))
    root = tmp_path / study
    sweep.write_manifest(sweep.Study(study, "configs/x.py", trials), str(root))
    for t in trials:
      width, patch = t.overrides["model.width"], t.overrides["model.patch_size"]
      accuracy = 0.5 + width / 200 - patch / 100 + (0.01 if study == "other" else 0.0)
      _trial_with_curve(root, t.name, width, patch, [(50, accuracy), (100, accuracy)])
  rows, metric = report.load_rows([str(tmp_path / "base"), str(tmp_path / "other")],
                                  only=["width=32"])
  assert [(r["study"], r["trial"]) for r in rows] == [
      ("base", "width=32,patch_size=4"), ("base", "width=32,patch_size=8"),
      ("other", "width=32,patch_size=4"), ("other", "width=32,patch_size=8")]
  assert "| study | setting |" in report.markdown_table(rows, metric)
  figures = report.figures(rows, metric)
  try:
    ax = figures["accuracy_by_setting.png"].axes[0]
    assert ax.get_xlabel() == "patch_size" and _legend(ax) == ["base", "other"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["4", "8"]
    ax = figures["accuracy_vs_train_compute.png"].axes[0]
    assert "compute-optimal frontier" in _legend(ax)
    [frontier] = [line for line in ax.get_lines() if line.get_label() == "compute-optimal frontier"]
    # Patch 8 costs half of patch 4; "other" beats "base" at each: its two points are the front.
    assert list(frontier.get_ydata()) == pytest.approx([100 * (0.5 + 0.16 - 0.08 + 0.01),
                                                         100 * (0.5 + 0.16 - 0.04 + 0.01)])
  finally:
    _close_all()
  with pytest.raises(ValueError, match="matches no trial"):
    report.load_rows(str(tmp_path / "base"), only=["width=99"])


def test_studies_that_share_trial_names_are_counted_apart(tmp_path):
  """Two arms of a comparison name their trials alike (seed=0, ...): a trial missing in one arm is
  not hidden by its namesake finished in the other."""
  trials = sweep.trials(sweep.axis("config.model.width", [32, 64]))
  for study in ("finetune", "scratch"):
    sweep.write_manifest(sweep.Study(study, "configs/x.py", trials), str(tmp_path / study))
    _finished_trial(tmp_path / study, "width=32", 32, 4, 0.9, 1000)
  _finished_trial(tmp_path / "finetune", "width=64", 64, 4, 0.95, 1000)
  rows, metric = report.load_rows([str(tmp_path / "finetune"), str(tmp_path / "scratch")])
  assert report.partial_note(rows).startswith("partial sweep: 3 of 4 trials finished")
  table = report.markdown_table(rows, metric)
  assert "| finetune/width=64 |" in table and "| scratch/width=64 (missing) |" in table
  figures = report.figures(rows, metric)
  try:
    for fig in figures.values():
      assert "3 of 4 trials finished (PARTIAL)" in fig.texts[0].get_text()
  finally:
    _close_all()


def test_a_long_caption_gets_its_own_band_below_the_x_label(tmp_path):
  """A long description and many unfinished trials make a caption of many lines; it must not
  cover the axis label."""
  trials = sweep.trials(sweep.product(sweep.axis("config.model.width", list(range(32, 64))),
                                      sweep.axis("config.model.patch_size", [4])))
  description = "A study described at length, " * 20
  sweep.write_manifest(sweep.Study("t", "configs/x.py", trials, description=description),
                       str(tmp_path / "sweep"))
  _finished_trial(tmp_path / "sweep", "width=32,patch_size=4", 32, 4, 0.9, 1000)
  figures = report.figures(*report.load_rows(str(tmp_path / "sweep")))
  try:
    for fig in figures.values():
      renderer = fig.canvas.get_renderer()
      caption = fig.texts[0]
      label = fig.axes[0].xaxis.get_tightbbox(renderer)
      assert caption.get_window_extent(renderer).y1 < label.y0
      assert caption.get_window_extent(renderer).y0 >= 0
  finally:
    _close_all()


def test_a_study_file_reports_its_trials_and_prior_rows_fill_the_ones_run_elsewhere(
    tmp_path, monkeypatch):
  """The study file defines the trials; a trial not finished here takes its rows from an earlier
  report's results.csv, a trial finished here keeps its own; the prior's other trials stay out."""
  monkeypatch.chdir(tmp_path)
  (tmp_path / "study.py").write_text(textwrap.dedent("""
      from vit_jax.study import sweep
      def get_sweep():
        return sweep.Study("demo", "configs/x.py", sweep.trials(sweep.product(
            sweep.axis("config.seed", [0, 1]), sweep.axis("config.model.patch_size", [4, 7]))))
      """))
  study = sweep.load_study("study.py")
  elsewhere = tmp_path / "elsewhere"
  sweep.write_manifest(sweep.Study("demo", "configs/x.py", study.trials + sweep.trials(
      [{"config.seed": 0, "config.model.patch_size": 14}])), str(elsewhere))
  for t in [*study.trials, sweep.trials([{"config.seed": 0, "config.model.patch_size": 14}])[0]]:
    patch = t.overrides["model.patch_size"]
    _trial_with_curve(elsewhere, t.name, 32, patch, [(50, 0.5), (75, 0.6), (100, 0.7)])
  report.write_report(*report.load_rows(str(elsewhere)), str(tmp_path / "earlier"))

  here = tmp_path / sweep.default_sweep_dir("demo")
  here.mkdir(parents=True)
  for t in study.trials[:3]:  # seed=1,patch_size=7 was not run in this checkout.
    _trial_with_curve(here, t.name, 32, t.overrides["model.patch_size"],
                      [(50, 0.8), (75, 0.8), (100, 0.9)])
  rows, metric = report.load_rows("study.py", prior=[str(tmp_path / "earlier" / "results.csv")])
  assert [(r["trial"], r["status"], r["accuracy"]) for r in rows] == [
      ("seed=0,patch_size=4", "done", 0.9), ("seed=0,patch_size=7", "done", 0.9),
      ("seed=1,patch_size=4", "done", 0.9), ("seed=1,patch_size=7", "done", 0.7)]
  assert rows[3]["last_quarter_change"] == pytest.approx(0.1) and rows[3]["img_per_s"] == 1000
  assert rows.home == str(here) and report.partial_note(rows) is None
  points = report.plot_points(rows)
  assert [(p["name"], p["seeds"]) for p in points] == [("patch_size=4", 2), ("patch_size=7", 2)]
  assert points[1]["accuracy"] == pytest.approx(0.8)
  assert points[1]["last_quarter_change"] == pytest.approx((0.1 + 0.1) / 2)

  result = subprocess.run([sys.executable, "-m", "vit_jax.report", "study.py",
                           "--prior=nope/results.csv"], capture_output=True, text=True)
  assert result.returncode == 2 and "--prior=nope/results.csv" in result.stderr
  assert "Traceback" not in result.stderr


def test_a_study_file_whose_trials_ran_with_other_flags_is_refused(tmp_path, monkeypatch):
  """Reporting an edited study before relaunching it would label the old runs with the new
  values: refused as the launch would refuse it."""
  monkeypatch.chdir(tmp_path)
  (tmp_path / "study.py").write_text(textwrap.dedent("""
      from vit_jax.study import sweep
      def get_sweep():
        return sweep.Study("demo", "configs/x.py", sweep.trials(sweep.axis("patch", [7])),
                           base_args={"epochs": 3.0})
      """))
  here = tmp_path / sweep.default_sweep_dir("demo")
  sweep.write_manifest(sweep.Study("demo", "configs/x.py", sweep.trials(sweep.axis("patch", [7])),
                                   base_args={"epochs": 2.0}), str(here))
  _trial_with_curve(here, "patch=7", 32, 7, [(50, 0.8), (100, 0.9)])
  with pytest.raises(ValueError, match="patch=7 ran with"):
    report.load_rows("study.py")
  result = subprocess.run([sys.executable, "-m", "vit_jax.report", "study.py"],
                          capture_output=True, text=True)
  assert result.returncode == 2 and "patch=7 ran with" in result.stderr


def test_the_same_trials_given_twice_are_refused_not_pooled_as_seeds(sweep_dir):
  with pytest.raises(ValueError, match="the same trials more than once"):
    report.load_rows([str(sweep_dir), str(sweep_dir)])


def test_val_is_the_metric_when_an_eval_is_named_val(tmp_path):
  """Alphabetically `minival` comes first; a held-out slice of train is not the headline."""
  study = sweep.Study("s", "configs/x.py", sweep.trials(sweep.axis("patch", [7])))
  sweep.write_manifest(study, str(tmp_path))
  (tmp_path / "patch=7").mkdir()
  (tmp_path / "patch=7" / "summary.json").write_text(json.dumps(
      {"done": True, "final": {"minival/prec@1": 0.99, "val/prec@1": 0.8}}))
  rows, metric = report.load_rows(str(tmp_path))
  assert metric == "val/prec@1" and rows[0]["accuracy"] == 0.8


def test_a_prior_row_that_ran_with_other_flags_or_metric_is_refused(tmp_path, monkeypatch):
  """The earlier report records each trial's flags and metric; a study edited since cannot take
  its rows, nor can a report of another metric."""
  monkeypatch.chdir(tmp_path)
  def study_file(epochs):
    (tmp_path / "study.py").write_text(textwrap.dedent(f"""
        from vit_jax.study import sweep
        def get_sweep():
          return sweep.Study("demo", "configs/x.py", sweep.trials(sweep.axis("patch", [7])),
                             base_args={{"epochs": {epochs}}})
        """))
  study_file(2.0)
  elsewhere = tmp_path / "elsewhere"
  sweep.write_manifest(sweep.load_study("study.py"), str(elsewhere))
  _trial_with_curve(elsewhere, "patch=7", 32, 7, [(50, 0.8), (100, 0.9)])
  report.write_report(*report.load_rows(str(elsewhere)), str(tmp_path / "earlier"))
  prior = [str(tmp_path / "earlier" / "results.csv")]
  rows, metric = report.load_rows("study.py", prior=prior)
  assert [r["accuracy"] for r in rows] == [0.9] and metric == "val/prec@1"  # Named by the prior.
  # One accuracy column never mixes two metrics.
  with pytest.raises(ValueError, match="reports val/prec@1, this report minival/prec@1"):
    report.load_rows("study.py", metric="minival/prec@1", prior=prior)
  study_file(3.0)
  with pytest.raises(ValueError, match="--prior's demo/patch=7 ran with"):
    report.load_rows("study.py", prior=prior)
