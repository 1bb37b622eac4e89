r"""Pretrain or fine-tune a ViT on one CPU, one GPU or a TPU pod slice with the same code.

    python -m vit_jax.train --config=configs/quickstart.py --workdir=/tmp/quickstart
    python -m vit_jax.train --config=configs/vit_i1k.py:variant=S/16,epochs=90 \
        --workdir=gs://b/run --config.batch_size=1024 --config.mesh='(("data", -1),)'

Writes WORKDIR/metrics.jsonl, TensorBoard events (WORKDIR/tb), Orbax checkpoints
(WORKDIR/checkpoints, resumed automatically) and, when the run completes, WORKDIR/summary.json.
Rerunning the same command resumes; rerunning a finished run changes nothing.

Exit codes: 0 finished (or already finished); 2 bad input (one message, nothing compiled or
written); 3 stopped by SIGTERM / Ctrl-C / preemption after saving a checkpoint (resumable: rerun
the same command); 4 diverged (non-finite loss or gradients; nothing from that step on was saved);
5 another process of a multi-process run was lost (rerun all processes to resume); 6 this process
made no progress for --stall_timeout_seconds (its stack is printed; rerun to resume).
The loop itself is vit_jax.training.loop.
"""
import sys
from typing import Sequence

from absl import flags

from vit_jax import cli

cli.run_flags()
_ACCEPT_CONFIG_CHANGE = flags.DEFINE_bool(
    "accept_config_change", False, "Resume a run even though its config differs from the one "
    "it was started with (the differences are named when this is refused).")


def main(argv: Sequence[str]) -> None:
  # Loaded once cli.run has checked the flags and the config: see vit_jax.cli.
  import jax

  from vit_jax.training import loop
  try:
    final = loop.train_and_evaluate(cli.required_config(), cli.run_flags().workdir.value or "",
                                    accept_config_change=_ACCEPT_CONFIG_CHANGE.value)
  except loop.Diverged as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(cli.EXIT_DIVERGED)
  if final.get("stopped_by"):
    print(f"Stopped by {final['stopped_by']} at step {final['step']} after saving a checkpoint; "
          "rerun the same command to resume.", file=sys.stderr)
    sys.exit(cli.EXIT_STOPPED)
  if jax.process_index() != 0:
    return
  shown = {k: v for k, v in final.items() if "/prec@1" in k or k in ("train/loss", "step")}
  prefix = "Already finished. Final: " if final.get("already_finished") else "Final: "
  print(prefix + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in shown.items()))


def run() -> None:
  """Console-script entry point (`vit-train`)."""
  cli.run(main, on_devices=True)


if __name__ == "__main__":
  run()
