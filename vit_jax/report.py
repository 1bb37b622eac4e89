r"""Sweep report: one row per trial, with its accuracy, efficiency profile and projections.

    python -m vit_jax.report SOURCE [SOURCE ...] [--out=DIR] [--metric=val/prec@1]
        [--only=REGEX ...] [--prior=RESULTS_CSV ...]

A SOURCE is a sweep dir or a study file (`experiments/<study>.py[:arg]`, its trials in
runs/sweeps/<name>). Writes `results.csv`, `results.md` and five plots into `--out` (default: the
first SOURCE's sweep dir); all may be local or gs:// (vit_jax.study.report). Several sources are
reported together: a study and its baselines (e.g. FlexiViT and the per-size models), each row
naming its study. `--prior` takes the rows of trials finished elsewhere from an earlier report's
results.csv.
"""
from typing import Sequence

from absl import flags

from vit_jax import cli
from vit_jax.config import bad_input
from vit_jax.study import report

_OUT = flags.DEFINE_string("out", None,
                           "Directory for the CSV, Markdown table and plots (default: the first "
                           "source's sweep dir).")
_ONLY = flags.DEFINE_multi_string(
    "only", None, "Report only the trials whose name matches one of these regular expressions.")
_PRIOR = flags.DEFINE_multi_string(
    "prior", None, "results.csv of an earlier report: its finished trials stand in for the "
    "trials without a final result in the sources (e.g. run in another checkout).")
_METRIC = flags.DEFINE_string(
    "metric", None, "Accuracy metric key (default: the first `*prec@1` eval metric).")


def main(argv: Sequence[str]) -> None:
  with bad_input():
    if len(argv) < 2:
      raise ValueError("expected at least one sweep dir or study file; usage: python -m "
                       "vit_jax.report SOURCE [SOURCE ...] [--out=DIR] [--prior=RESULTS_CSV]")
    rows, metric = report.load_rows(argv[1:], _METRIC.value, _ONLY.value or (),
                                    _PRIOR.value or ())
  out = _OUT.value or rows.home
  written = report.write_report(rows, metric, out)
  print(f"wrote {', '.join(written)} to {out}")


if __name__ == "__main__":
  cli.run(main)
