"""Trial expansion: axis/product/zip_, naming, command-line flags, study loading, CLI errors."""
import subprocess
import sys

import pytest

from helpers import REPO
from vit_jax.study import sweep


def test_product_varies_last_axis_fastest():
  points = sweep.product(sweep.axis("variant", ["Ti", "S"]), sweep.axis("patch", [8, 16, 32]))
  assert points == [{"variant": v, "patch": p} for v in ["Ti", "S"] for p in [8, 16, 32]]


def test_zip_pairs_values_and_nests_in_product():
  lr_per_size = sweep.zip_(sweep.axis("variant", ["Ti", "B"]),
                           sweep.axis("config.lr", [3e-3, 1e-3]))
  points = sweep.product(lr_per_size, sweep.axis("patch", [16, 32]))
  assert points == [{"variant": "Ti", "config.lr": 3e-3, "patch": 16},
                    {"variant": "Ti", "config.lr": 3e-3, "patch": 32},
                    {"variant": "B", "config.lr": 1e-3, "patch": 16},
                    {"variant": "B", "config.lr": 1e-3, "patch": 32}]


@pytest.mark.parametrize("build, message", [
    (lambda: sweep.zip_(sweep.axis("a", [1, 2]), sweep.axis("b", [1])), "equal length"),
    (lambda: sweep.product(sweep.axis("a", [1]), sweep.axis("a", [2])), "set twice"),
    (lambda: sweep.axis("a", []), "no values"),
    (lambda: sweep.trials([{"a": 1}, {"a": 1}]), "repeat"),
])
def test_bad_sweeps_raise_clear_errors(build, message):
  with pytest.raises(ValueError, match=message):
    build()


def test_trials_split_config_args_from_overrides_and_format_flags():
  [trial] = sweep.trials([{"variant": "Ti/16", "config.lr": 0.001,
                           "config.model.patch_sizes": (8, 16)}])
  assert trial.name == "variant=Ti-16,lr=0.001,patch_sizes=8-16"
  study = sweep.Study("s", "configs/x.py", [trial], base_args={"runlocal": True})
  assert study.train_args(trial) == ["--config=configs/x.py:runlocal=True,variant=Ti/16",
                                     "--config.lr=0.001", "--config.model.patch_sizes=(8,16)"]
  assert trial.values() == {"variant": "Ti/16", "config.lr": 0.001,
                            "config.model.patch_sizes": (8, 16)}


def test_load_study_passes_arg(tmp_path):
  study_file = tmp_path / "study.py"
  study_file.write_text(
      "from vit_jax.study import sweep\n"
      "def get_sweep(arg='small'):\n"
      "  return sweep.Study(arg, 'configs/x.py', sweep.trials(sweep.axis('w', [1, 2])))\n")
  assert sweep.load_study(str(study_file)).name == "small"
  study = sweep.load_study(f"{study_file}:big")
  assert study.name == "big" and [t.name for t in study.trials] == ["w=1", "w=2"]
  with pytest.raises(FileNotFoundError, match="nope.py"):
    sweep.load_study(str(tmp_path / "nope.py"))


def test_cli_bad_study_exits_2():
  result = subprocess.run([sys.executable, "-m", "vit_jax.sweep", "experiments/nope.py",
                           "--dry_run"], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 2 and "experiments/nope.py" in result.stderr


def test_manifest_refuses_a_sweep_dir_whose_trials_ran_with_other_flags(tmp_path):
  trials = sweep.trials(sweep.axis("patch", [4, 7]))
  sweep.write_manifest(sweep.Study("s", "configs/x.py", trials, base_args={"epochs": 2.0}),
                       str(tmp_path))
  sweep.write_manifest(sweep.Study("s", "configs/x.py", trials[:1], base_args={"epochs": 2.0}),
                       str(tmp_path))
  with pytest.raises(ValueError, match="patch=4 ran with"):
    sweep.write_manifest(sweep.Study("s", "configs/x.py", trials, base_args={"epochs": 3.0}),
                         str(tmp_path))


def test_select_picks_trials_by_name_pattern_and_count():
  points = sweep.product(sweep.axis("w", [1, 2]), sweep.axis("p", [4, 14]))
  study = sweep.Study("s", "configs/x.py", sweep.trials(points))
  names = lambda s: [t.name for t in s.trials]
  assert names(sweep.select(study, only=["p=14$"])) == ["w=1,p=14", "w=2,p=14"]
  assert names(sweep.select(study, only=["w=2", "^w=1,p=4$"])) == ["w=1,p=4", "w=2,p=4",
                                                                   "w=2,p=14"]
  assert names(sweep.select(study, max_trials=3)) == ["w=1,p=4", "w=1,p=14", "w=2,p=4"]
  subset = sweep.select(study, only=["p=14"], max_trials=1)
  assert names(subset) == ["w=1,p=14"]
  # The manifest keeps the whole study, so the report can name what was left out.
  assert [t["name"] for t in subset.to_json()["trials"]] == names(study)
  assert sweep.select(study) is study and sweep.select(study, max_trials=10) is study
  for only, max_trials, message in ((["p=8"], None, "matches no trial.*w=1,p=4"),
                                    (["p=(4"], None, "not a regular expression"),
                                    (None, 0, "at least 1")):
    with pytest.raises(ValueError, match=message):
      sweep.select(study, only, max_trials)


def test_cli_only_and_max_trials_launch_a_subset(tmp_path):
  command = [sys.executable, "-m", "vit_jax.sweep", "experiments/patch_size_tradeoff.py",
             "--dry_run", f"--sweep_dir={tmp_path}"]
  result = subprocess.run([*command, "--only=patch=14$", "--max_trials=1"], cwd=REPO,
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "selected 1 of 9 trials of 'patch_size_tradeoff_local'" in result.stdout
  assert "1 trials" in result.stdout and "width=16,heads=1,patch=14" in result.stdout
  assert "patch=2" not in result.stdout and "width=32" not in result.stdout
  result = subprocess.run([*command, "--only=patch=3"], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 2 and "matches no trial" in result.stderr
