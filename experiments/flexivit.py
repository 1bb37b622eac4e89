r"""FlexiViT at the scale of the bundled digits: one model trained with a random patch size per
step, against the models trained at one patch size each.

    python -m vit_jax.sweep experiments/flexivit.py[:ema[,epochs=E]] --launcher=local --parallel=3
    python -m vit_jax.report experiments/flexivit.py experiments/patch_size_tradeoff.py \
        --only=width=32 --prior=experiments/patch_size_tradeoff_local/results.csv \
        --out=experiments/flexivit_local

Expected (2-core x86 CPU, 2026-12-03, 3 runs at once: ~3.2 h each): 98.5 / 98.4 / 98.1 / 97.3% at
patches 2 / 4 / 7 / 14, mean over the 3 seeds (experiments/flexivit_local/README.md).
`:ema` (a constant learning rate, EMA params; report with `--metric=val_ema/prec@1` into
experiments/flexivit_local/ema) with `epochs=2560` gives the converged result: 98.7 / 98.8 / 98.4 /
97.4%, last-quarter changes -0.05 / -0.04 / -0.17 / +0.21 (~6.0 h of training per run, 3 at once,
2026-12-05). At 1,280 epochs (the default) it reached 98.8 / 98.9 / 98.4 / 97.1% but patch 7 rose
0.31 over the last quarter, missing the 0.3-point rule; at a constant lr a run's first 1,280 epochs
do not depend on its length, so the 2,560-epoch runs continued those.

The model and recipe are the patch-size study's width-32 ViT (`experiments/patch_size_tradeoff.py`:
depth 2, 2 heads, the quickstart recipe), trained 1,280 epochs. Its parameters are those of patch 4;
every step draws a patch size from {2, 4, 7, 14} and PI-resizes the patch embedding and resizes the
position embedding to it (`config.flexi.patch_sizes`, as FlexiViT, arXiv 2212.08013). Every eval
runs at each of the four sizes (`val/prec@1@p<P>`). The per-size models it is compared with are the
patch-size study's width-32 trials: same model size, batch and seeds, each trained until converged
(patches 2 / 7: 160 epochs, 4 / 14: 80). FlexiViT's epochs are shared by the four sizes, so each
size gets about a quarter of them; its seed means still rose over the last quarter at 80 epochs
(0.5-1.7 points), at 160 and at 320 (at 3 of the 4 sizes; by 0.7-0.8 at 320), and at 640 at
patches 2 and 14 (by 0.42 and 0.47), so it trains 1,280. At 1,280 the end points moved by at
most 0.4 points from 640, while patches 2 / 7 / 14 still rose 0.34 / 0.35 / 0.55 over the last
quarter.
Seeds 0 / 1 / 2.
"""
from vit_jax.config import parse_arg
from vit_jax.study import sweep

SEEDS = (0, 1, 2)
PATCH_SIZES = (2, 4, 7, 14)
EPOCHS = 1280.0  # 8x the longest per-size model's (experiments/patch_size_tradeoff.py, width 32).
# `:ema`: the same training at a constant learning rate, evaluated with EMA params, whose last
# quarter is flat once converged (a cosine schedule's rises with the annealing however long the
# run); evals every 70 steps, as each one runs at 4 sizes with both sets of params.
EMA = {"optim.schedule": "constant", "ema_decay": 0.999, "evals.val.every_steps": 70}


def get_sweep(arg: str | None = None) -> sweep.Study:
  a = parse_arg(arg, ema=False, epochs=EPOCHS)
  trials = sweep.trials(sweep.product(
      sweep.axis("config.seed", SEEDS),
      [{"width": 32, "heads": 2, "patch": 4, "config.flexi.patch_sizes": PATCH_SIZES,
        "epochs": a.epochs}]))
  return sweep.Study("flexivit_ema_local" if a.ema else "flexivit_local",
                     "configs/quickstart.py", trials, base_args={"depth": 2},
                     base_overrides=EMA if a.ema else {"evals.val.every_steps": 35},
                     plot_x="patch",
                     description="FlexiViT: ViT width 32, depth 2, patch sizes 2/4/7/14 drawn per "
                     f"step, bundled digits, {a.epochs:g} epochs, seeds 0/1/2"
                     + (", constant learning rate, EMA params (decay 0.999)" if a.ema else ""))
