r"""Sweep report: one row per trial, with its accuracy, efficiency profile and projections.

    python -m vit_jax.report SWEEP_DIR [SWEEP_DIR ...] [--out=DIR] [--metric=val/prec@1]
        [--only=REGEX ...]

Writes `results.csv`, `results.md` and five plots into `--out` (default: the first SWEEP_DIR); all
may be local or gs:// (vit_jax.study.report). Several sweep dirs are reported together: a study
and its baselines (e.g. FlexiViT and the per-size models), each row naming its study.
"""
from typing import Sequence

from absl import flags

from vit_jax import cli
from vit_jax.config import bad_input
from vit_jax.study import report

_OUT = flags.DEFINE_string("out", None,
                           "Directory for the CSV, Markdown table and plots (default: SWEEP_DIR).")
_ONLY = flags.DEFINE_multi_string(
    "only", None, "Report only the trials whose name matches one of these regular expressions.")
_METRIC = flags.DEFINE_string(
    "metric", None, "Accuracy metric key (default: the first `*prec@1` eval metric).")


def main(argv: Sequence[str]) -> None:
  with bad_input():
    if len(argv) < 2:
      raise ValueError("expected at least one sweep dir; usage: python -m vit_jax.report "
                       "SWEEP_DIR [SWEEP_DIR ...] [--out=DIR] [--metric=val/prec@1]")
    rows, metric = report.load_rows(argv[1:], _METRIC.value, _ONLY.value or ())
  written = report.write_report(rows, metric, _OUT.value or argv[1])
  print(f"wrote {', '.join(written)} to {_OUT.value or argv[1]}")


if __name__ == "__main__":
  cli.run(main)
