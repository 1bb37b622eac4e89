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


def test_manifest_accepts_the_same_config_args_in_another_order(tmp_path):
  """A trial that sets `epochs` itself ran as `depth=2,patch=4,epochs=8.0`; the study, given the
  base `epochs` its other trials use, now writes `depth=2,epochs=8.0,patch=4`: the same run."""
  [long] = sweep.trials([{"patch": 4, "epochs": 8.0}])
  sweep.write_manifest(sweep.Study("s", "configs/x.py", [long], base_args={"depth": 2}),
                       str(tmp_path))
  [short] = sweep.trials([{"patch": 2}])
  sweep.write_manifest(sweep.Study("s", "configs/x.py", [long, short],
                                   base_args={"depth": 2, "epochs": 2.0}), str(tmp_path))
  [longer] = sweep.trials([{"patch": 4, "epochs": 9.0}])
  with pytest.raises(ValueError, match="patch=4,epochs=8.0 ran with"):
    sweep.write_manifest(sweep.Study("s", "configs/x.py", [sweep.Trial(long.name,
                                                                       longer.config_args, {})],
                                     base_args={"depth": 2}), str(tmp_path))


def test_manifest_remembers_trials_the_study_dropped(tmp_path):
  """patch=7 ran, left the study, and came back with other flags: its dir would be skipped as
  done under the new flags unless the manifest kept what it ran with."""
  four, seven = sweep.trials(sweep.axis("patch", [4, 7]))
  sweep.write_manifest(sweep.Study("s", "configs/x.py", [four, seven]), str(tmp_path))
  sweep.write_manifest(sweep.Study("s", "configs/x.py", [four]), str(tmp_path))
  changed = sweep.Trial(seven.name, {**seven.config_args, "epochs": 9.0}, {})
  with pytest.raises(ValueError, match="patch=7 ran with"):
    sweep.write_manifest(sweep.Study("s", "configs/x.py", [four, changed]), str(tmp_path))
  sweep.write_manifest(sweep.Study("s", "configs/x.py", [four, seven]), str(tmp_path))


def test_without_seed_names_the_setting_seeds_share():
  names = [t.name for t in sweep.trials(sweep.product(sweep.axis("config.seed", [0, 1]),
                                                      sweep.axis("patch", [4])))]
  assert names == ["seed=0,patch=4", "seed=1,patch=4"]
  assert {sweep.without_seed(n) for n in names} == {"patch=4"}
  # A study whose only axis is the seed: its one setting is named as `trials` names an empty point.
  assert sweep.without_seed("seed=2") == sweep.trials([{}])[0].name == "default"


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
  result = subprocess.run([*command, "--only=patch=14,", "--max_trials=1"], cwd=REPO,
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "selected 1 of 36 trials of 'patch_size_tradeoff_local'" in result.stdout
  assert "1 trials" in result.stdout and "seed=0,width=16,heads=1,patch=14,epochs" in result.stdout
  assert "patch=2" not in result.stdout and "width=32" not in result.stdout
  result = subprocess.run([*command, "--only=patch=3"], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 2 and "matches no trial" in result.stderr


STUDIES = {  # study spec: (name, trials)
    "experiments/patch_size_tradeoff.py": ("patch_size_tradeoff_local", 36),
    "experiments/patch_size_tradeoff.py:scale=compute_matched":
        ("patch_size_tradeoff_compute_matched", 36),
    "experiments/flexivit.py": ("flexivit_local", 3),
    "experiments/flexivit.py:ema,epochs=2560": ("flexivit_ema_local", 3),
    "experiments/digits_claims.py:claim=transfer_pretrain": ("transfer_pretrain_local", 3),
    "experiments/digits_claims.py:claim=transfer_finetune": ("transfer_finetune_local", 6),
    "experiments/digits_claims.py:claim=transfer_scratch": ("transfer_scratch_local", 3),
    "experiments/digits_claims.py:claim=transfer_scratch_ema": ("transfer_scratch_ema_local", 3),
    "experiments/digits_claims.py:claim=hybrid": ("hybrid_local", 18),
    "experiments/digits_claims.py:claim=posemb": ("posemb_local", 6),
    "experiments/digits_claims.py:claim=posemb_ema": ("posemb_ema_local", 6),
    "experiments/digits_claims.py:claim=pool": ("pool_local", 6),
}


@pytest.mark.parametrize("spec", STUDIES)
def test_committed_studies_repeat_every_setting_over_at_least_three_seeds(spec):
  study = sweep.load_study(f"{REPO}/{spec}")
  assert (study.name, len(study.trials)) == STUDIES[spec]
  settings = {}
  for trial in study.trials:
    seed = trial.overrides["seed"]
    settings.setdefault(sweep.without_seed(trial.name), set()).add(seed)
  # Seeds 0, 1, 2, ...: at least three, none picked out of a larger set.
  assert all(len(seeds) >= 3 and seeds == set(range(len(seeds)))
             for seeds in settings.values()), settings


def test_compute_matched_trials_spend_one_training_budget():
  """Steps come from the analytic FLOPs: every trial's epochs x images x FLOPs/img is the budget
  (20 epochs of width 32 / patch 7), within the rounding of its epoch count."""
  from vit_jax import models
  from vit_jax.models import flops
  study = sweep.load_study(f"{REPO}/experiments/patch_size_tradeoff.py:scale=compute_matched")
  budgets = []
  for trial in study.trials:
    a = {**study.base_args, **trial.config_args}
    model = models.model_kwargs(None, patch_size=a["patch"], width=a["width"], depth=a["depth"],
                                num_heads=a["heads"], mlp_dim=4 * a["width"])
    budgets.append(a["epochs"] * 4500 * flops.train_flops_per_image(model, 28, 1, 10))
  assert max(budgets) / min(budgets) < 1.002
  assert budgets[0] == pytest.approx(20 * 4500 * 2.881152e6, rel=2e-3)
