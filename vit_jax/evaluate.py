r"""Evaluate a trained model without training: every evaluator in `config.evals`, one full pass
each.

    python -m vit_jax.evaluate --config=configs/quickstart.py --workdir=/tmp/vit_quickstart
    python -m vit_jax.evaluate --config=configs/finetune.py:dataset=cifar10,variant=B/16 \
        --workdir=/tmp/eval --checkpoint=/path/to/ViT-B_16-cifar10.npz

Params come from `--checkpoint` (an official `.npz` or an Orbax checkpoint directory) or else from
the latest checkpoint in WORKDIR/checkpoints. Prints the metrics and writes them to
WORKDIR/eval.json.
Bad config values exit with code 2 before anything is compiled.
"""
from typing import Sequence

from absl import flags

from vit_jax import cli

cli.run_flags()
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "An .npz file or Orbax checkpoint directory "
                                  "(default: the latest in WORKDIR/checkpoints).")


def main(argv: Sequence[str]) -> None:
  # Loaded once cli.run has checked the flags and the config: see vit_jax.cli.
  import jax

  from vit_jax.training import evaluation
  results = evaluation.evaluate_checkpoint(cli.required_config(),
                                           cli.run_flags().workdir.value or "", _CHECKPOINT.value)
  if jax.process_index() == 0:
    print("\n".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}"
                    for k, v in results.items()))


def run() -> None:
  """Console-script entry point (`vit-evaluate`)."""
  cli.run(main, on_devices=True)


if __name__ == "__main__":
  run()
