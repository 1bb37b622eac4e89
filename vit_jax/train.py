r"""Pretrain or fine-tune a ViT on one CPU, one GPU or a TPU pod slice with the same code.

    python -m vit_jax.train --config=configs/quickstart.py --workdir=/tmp/quickstart
    python -m vit_jax.train --config=configs/vit_i1k.py:variant=S/16,epochs=90 --workdir=gs://b/run \
        --config.batch_size=1024 --config.mesh='(("data", -1),)'

Writes WORKDIR/metrics.jsonl, TensorBoard events (WORKDIR/tb), Orbax checkpoints (WORKDIR/checkpoints,
resumed automatically) and, when the run completes, WORKDIR/summary.json. SIGTERM or Ctrl-C finishes the
current step, saves a checkpoint and exits cleanly; rerunning the same command resumes.
Bad config values exit with code 2 and one message before anything is compiled.
The loop itself is vit_jax.training.loop.
"""
from typing import Sequence

import jax

from vit_jax import cli
from vit_jax.training import loop

cli.run_flags()


def main(argv: Sequence[str]) -> None:
  cli.no_positional_args(argv)
  final = loop.train_and_evaluate(cli.required_config(), cli.run_flags().workdir.value or "")
  if jax.process_index() == 0:
    shown = {k: v for k, v in final.items() if "/prec@1" in k or k in ("train/loss", "step")}
    print("Final: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in shown.items()))


def run() -> None:
  """Console-script entry point (`vit-train`)."""
  cli.run(main, on_devices=True)


if __name__ == "__main__":
  run()
