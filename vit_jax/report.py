r"""Sweep report: one row per trial, with its accuracy, efficiency profile and projections.

    python -m vit_jax.report SWEEP_DIR [--out=DIR] [--metric=val/prec@1]

Writes `results.csv`, `results.md` and three plots into `--out` (default: SWEEP_DIR); both may be
local or gs:// (vit_jax.study.report).
"""
from typing import Sequence

from absl import flags

from vit_jax import cli
from vit_jax.config import bad_input
from vit_jax.study import report

_OUT = flags.DEFINE_string("out", None,
                           "Directory for the CSV, Markdown table and plots (default: SWEEP_DIR).")
_METRIC = flags.DEFINE_string(
    "metric", None, "Accuracy metric key (default: the first `*prec@1` eval metric).")


def main(argv: Sequence[str]) -> None:
  with bad_input():
    if len(argv) != 2:
      raise ValueError(f"expected one sweep dir, got {list(argv[1:])}; usage: python -m "
                       "vit_jax.report SWEEP_DIR [--out=DIR] [--metric=val/prec@1]")
    rows, metric = report.load_rows(argv[1], _METRIC.value)
  written = report.write_report(rows, metric, _OUT.value or argv[1])
  print(f"wrote {', '.join(written)} to {_OUT.value or argv[1]}")


if __name__ == "__main__":
  cli.run(main)
