r"""Sweeps: a study is a base config file plus trials, each a named set of config overrides.

A study file in `experiments/` defines `get_sweep(arg: str) -> Study`, building its trials with
`axis`, `product` and `zip_`:

    trials = sweep.trials(sweep.product(sweep.axis("variant", ["Ti", "S", "B"]),
                                        sweep.axis("patch", [8, 16, 32])))

Keys name either a config-file argument (`variant` -> `--config=configs/x.py:variant=Ti,...`) or,
with a `config.` prefix, a config field (`config.lr` -> `--config.lr=0.001`), exactly as on the
command line.

    python -m vit_jax.sweep experiments/patch_size_tradeoff.py[:arg] \
        --launcher=local|tpu|slurm [--dry_run] [--only=REGEX ...] [--max_trials=N]

`--only` (a regular expression searched in each trial name; repeat it for several) and
`--max_trials` (the first N, in the study's order, after `--only`) run a subset of a study
(`select`); the manifest still records every trial, so the report names the others as missing.

Launchers (local / TPU / SLURM) are vit_jax.study.launchers; the report is vit_jax.study.report.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
import dataclasses
import importlib.util
import itertools
import os
import re
from typing import Any

from vit_jax.checkpoints import workdir

Point = dict[str, Any]

OVERRIDE_PREFIX = "config."


def axis(key: str, values: Iterable[Any]) -> list[Point]:
  """One swept key: `[{key: v} for v in values]`."""
  values = list(values)
  if not values:
    raise ValueError(f"axis {key!r} has no values; give at least one.")
  return [{key: v} for v in values]


def _merge(points: Sequence[Point]) -> Point:
  merged: Point = {}
  for point in points:
    clash = merged.keys() & point.keys()
    if clash:
      raise ValueError(f"keys {sorted(clash)} are set twice in one trial; "
                       "sweep each key in one axis.")
    merged.update(point)
  return merged


def product(*sweeps: Sequence[Point]) -> list[Point]:
  """Cartesian product of sweeps, the last one varying fastest."""
  return [_merge(combo) for combo in itertools.product(*sweeps)]


def zip_(*sweeps: Sequence[Point]) -> list[Point]:
  """Element-wise combination of equally long sweeps (e.g. a learning rate per model size)."""
  lengths = {len(s) for s in sweeps}
  if len(lengths) > 1:
    raise ValueError(f"zip_ needs sweeps of equal length, got lengths {[len(s) for s in sweeps]}.")
  return [_merge(combo) for combo in zip(*sweeps)]


def _format_value(value: Any) -> str:
  """A value as `ml_collections` config flags and config-file args parse it."""
  if isinstance(value, (list, tuple)):
    return "(" + ",".join(_format_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def _slug(value: Any) -> str:
  text = _format_value(value)
  return "".join(c if c.isalnum() or c in "._=" else "-" for c in text).strip("-")


@dataclasses.dataclass(frozen=True)
class Trial:
  """One run of a study: a directory-safe name and the values it sets."""
  name: str
  config_args: Mapping[str, Any]
  overrides: Mapping[str, Any]

  def config_flag(self, config_file: str, base_args: Mapping[str, Any]) -> str:
    """The `--config=file:args` value for this trial."""
    args = {**base_args, **self.config_args}
    for key, value in args.items():
      if "," in _format_value(value) and not isinstance(value, (list, tuple)):
        raise ValueError(f"config arg {key}={value!r} contains ','; "
                         "config-file args are ','-separated.")
    arg_str = ",".join(f"{k}={_format_value(v)}" for k, v in args.items())
    return f"{config_file}:{arg_str}" if arg_str else config_file

  def override_flags(self) -> list[str]:
    """The `--config.key=value` flags for this trial."""
    return [f"--{OVERRIDE_PREFIX}{k}={_format_value(v)}" for k, v in self.overrides.items()]

  def values(self) -> Point:
    """Every swept value, overrides keyed as on the command line (`config.lr`)."""
    return {**self.config_args, **{OVERRIDE_PREFIX + k: v for k, v in self.overrides.items()}}


EMPTY_POINT_NAME = "default"  # A trial that sets nothing (the study's base config as is).


def without_seed(trial_name: str) -> str:
  """The trial's name without its `seed=` part: what trials repeated over seeds share (the empty
  point's name when the seed is all there is)."""
  setting = ",".join(part for part in trial_name.split(",") if not part.startswith("seed="))
  return setting or EMPTY_POINT_NAME


def trials(points: Sequence[Point]) -> list[Trial]:
  """Named trials from sweep points; a name reads like the point, e.g. `variant=Ti,patch=16`."""
  result = []
  for point in points:
    config_args = {k: v for k, v in point.items() if not k.startswith(OVERRIDE_PREFIX)}
    overrides = {k[len(OVERRIDE_PREFIX):]: v for k, v in point.items()
                 if k.startswith(OVERRIDE_PREFIX)}
    name = (",".join(f"{k.rsplit('.', 1)[-1]}={_slug(v)}" for k, v in point.items())
            or EMPTY_POINT_NAME)
    result.append(Trial(name, config_args, overrides))
  names = [t.name for t in result]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f"trial names {duplicates} repeat: two trials would share a workdir.")
  return result


@dataclasses.dataclass(frozen=True)
class Study:
  """A sweep: the config file (relative to the repository root), what every trial shares, the
  trials.

  `base_args` are config-file args and `base_overrides` config fields (`{"optim.lr": 1e-3}`) set for
  every trial; trials may override them; neither appears in trial names. `env` is exported for every
  trial's programs wherever they run (e.g. `TFDS_DATA_DIR`).
  """
  name: str
  config: str
  trials: Sequence[Trial]
  base_args: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  base_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  env: Mapping[str, str] = dataclasses.field(default_factory=dict)
  description: str = ""
  # The report's accuracy-by-setting plot: its x axis and the keys naming its lines (short names,
  # e.g. "patch" and ("width",)); by default the last swept key that varies, and the others.
  plot_x: str = ""
  plot_series: Sequence[str] = ()
  # Every trial of the study when `trials` is a selection of them (`select`); empty otherwise.
  all_trials: Sequence[Trial] = ()

  def train_args(self, trial: Trial) -> list[str]:
    """Config flags shared by `vit_jax.train` and `vit_jax.bench` for one trial."""
    base = Trial("base", {},
                 {k: v for k, v in self.base_overrides.items() if k not in trial.overrides})
    return [f"--config={trial.config_flag(self.config, self.base_args)}", *base.override_flags(),
            *trial.override_flags()]

  def to_json(self) -> dict[str, Any]:
    """The manifest: every trial of the study, selected for this launch or not."""
    return {
        "name": self.name, "config": self.config, "base_args": dict(self.base_args),
        "base_overrides": dict(self.base_overrides), "env": dict(self.env),
        "description": self.description, "plot_x": self.plot_x,
        "plot_series": list(self.plot_series),
        "trials": [{"name": t.name, "config_args": dict(t.config_args),
                    "overrides": dict(t.overrides), "values": t.values(),
                    "flags": self.train_args(t)} for t in (self.all_trials or self.trials)],
    }


def select(study: Study, only: Sequence[str] | None = None,
           max_trials: int | None = None) -> Study:
  """The study with only the trials whose name matches one of the `only` regular expressions
  (`re.search`), at most the first `max_trials` of them; `all_trials` keeps the whole study."""
  if max_trials is not None and max_trials < 1:
    raise ValueError(f"--max_trials={max_trials}: give at least 1.")
  chosen = list(study.trials)
  if only:
    try:
      patterns = [re.compile(p) for p in only]
    except re.error as e:
      raise ValueError(f"--only={e.pattern!r} is not a regular expression: {e}.") from None
    chosen = [t for t in chosen if any(p.search(t.name) for p in patterns)]
    if not chosen:
      raise ValueError(f"--only={list(only)} matches no trial of {study.name!r}; its trials: "
                       f"{[t.name for t in study.trials]}.")
  if max_trials is not None:
    chosen = chosen[:max_trials]
  if len(chosen) == len(study.trials):
    return study
  return dataclasses.replace(study, trials=chosen,
                             all_trials=study.all_trials or tuple(study.trials))


def load_study(spec: str, only: Sequence[str] | None = None,
               max_trials: int | None = None) -> Study:
  """Loads `path/to/study.py[:arg]`, calls its `get_sweep(arg)` and `select`s `only` /
  `max_trials`."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"study file {path!r} does not exist; pass e.g. "
                            "experiments/patch_size_tradeoff.py:local")
  module_spec = importlib.util.spec_from_file_location(f"_study_{os.path.basename(path)[:-3]}",
                                                       path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"{path} defines no get_sweep(arg) -> vit_jax.study.sweep.Study.")
  study = module.get_sweep(arg) if arg else module.get_sweep()
  if not isinstance(study, Study):
    raise ValueError(f"{path}:get_sweep returned {type(study).__name__}, "
                     "expected vit_jax.study.sweep.Study.")
  selected = select(study, only, max_trials)
  if selected is not study:
    print(f"selected {len(selected.trials)} of {len(study.trials)} trials of {study.name!r} "
          f"(--only / --max_trials): {', '.join(t.name for t in selected.trials)}", flush=True)
  return selected


def same_run(flags: Sequence[str]) -> tuple[frozenset[str], ...]:
  """What makes two trials' flags the same run: each flag, and each `file:a=1,b=2` config arg,
  whatever their order (a base arg a trial overrides moves, e.g. when a study's default changes)."""
  config = [f for f in flags if f.startswith("--config=")]
  args = [arg for flag in config for arg in flag.partition(":")[2].split(",") if arg]
  files = [flag.partition(":")[0] for flag in config]
  return frozenset(f for f in flags if f not in config), frozenset(files), frozenset(args)


def default_sweep_dir(study_name: str) -> str:
  """Where a local or Slurm launch puts a study's trials unless told otherwise."""
  return os.path.join("runs", "sweeps", study_name)


def check_ran_as_defined(study: dict[str, Any], manifest: dict[str, Any] | None,
                         sweep_dir: str | os.PathLike) -> None:
  """Raises ValueError if a trial of `study` (a `Study.to_json`) ran in `sweep_dir` with other
  flags than it defines now, by the sweep dir's `manifest` (its trials, and those an earlier
  version of the study dropped): its results would stand for a run it no longer describes."""
  if not manifest:
    return
  ran = {t["name"]: t.get("flags")
         for t in [*manifest.get("earlier_trials", ()), *manifest["trials"]]}
  for trial in study["trials"]:
    flags = ran.get(trial["name"])
    if flags is not None and same_run(flags) != same_run(trial["flags"]):
      raise ValueError(f"{sweep_dir}/{trial['name']} ran with {flags}, "
                       f"the study now says {trial['flags']}; "
                       "use another --sweep_dir or delete that trial's dir.")


def write_manifest(study: Study, sweep_dir: str) -> None:
  """Records the study next to its trials so the report can label every row.

  Refuses a sweep dir whose trials of the same name ran with other flags (`check_ran_as_defined`):
  they would be skipped as done (or resumed from checkpoints) although the study changed. Trials
  the study no longer defines stay recorded (`earlier_trials`), so one added back is checked too.
  """
  manifest = workdir.sweep_manifest(sweep_dir)
  new = study.to_json()
  old = workdir.read_json(manifest)
  check_ran_as_defined(new, old, sweep_dir)
  if old:
    names = {t["name"] for t in new["trials"]}
    earlier = {t["name"]: t for t in [*old.get("earlier_trials", ()), *old["trials"]]
               if t["name"] not in names}
    if earlier:
      new["earlier_trials"] = list(earlier.values())
  manifest.parent.mkdir(parents=True, exist_ok=True)
  workdir.write_json(manifest, new)
