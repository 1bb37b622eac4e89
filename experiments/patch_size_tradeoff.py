r"""Patch size x model size: accuracy against measured, counted and projected cost.

Local scale (default; a CPU, the bundled digits; results and cost in
experiments/patch_size_tradeoff_local/README.md):

    python -m vit_jax.sweep experiments/patch_size_tradeoff.py --launcher=local --parallel=2
    python -m vit_jax.report experiments/patch_size_tradeoff.py \
        --out=experiments/patch_size_tradeoff_local

  ViTs of depth 2 at widths 16 / 32 / 64 (head dim 16) with patches 2, 4, 7 and 14 on the 28x28
  digits (196, 49, 16 and 4 patch tokens), the quickstart recipe (AdamW 3e-3, 100 warm-up steps,
  cosine, batch 128), 80-1280 epochs per setting (`LOCAL_EPOCHS`), seeds 0 / 1 / 2, evaluated every
  epoch.

Local scale, compute-matched (results in experiments/patch_size_tradeoff_compute_matched/):

    python -m vit_jax.sweep experiments/patch_size_tradeoff.py:scale=compute_matched \
        --launcher=local --parallel=2
    python -m vit_jax.report experiments/patch_size_tradeoff.py:scale=compute_matched \
        experiments/patch_size_tradeoff.py --out=experiments/patch_size_tradeoff_compute_matched

  The same 12 models, each given one training budget of 259 GFLOPs (20 epochs of width 32 / patch
  7): the epochs come from the analytic training FLOPs per image, so patch 14 trains 213 / 63 / 17.5
  epochs at widths 16 / 32 / 64 and patch 2 at width 64 a third of one. Warm-up: 100 steps, or a
  fifth of a shorter run.

ImageNet scale (Ti/S/B x patch 8/16/32, big_vision's 90-epoch plain-ViT recipe) on a TPU pod slice:

    python -m vit_jax.sweep \
        experiments/patch_size_tradeoff.py:scale=imagenet,data_dir=gs://BUCKET/tfds \
        --launcher=tpu --tpu_name=NAME --zone=ZONE \
        --workdir_root=gs://BUCKET/sweeps/patch_size_tradeoff \
        --repo_url=https://github.com/ORG/vit_jax --dry_run

  (drop --dry_run to launch; --launcher=slurm --nodes=2 --gpus_per_node=8 for a GPU cluster.)
"""
import itertools

from vit_jax import models
from vit_jax.config import parse_arg
from vit_jax.models import flops
from vit_jax.study import sweep

SEEDS = (0, 1, 2)
LOCAL_WIDTHS = sweep.zip_(sweep.axis("width", [16, 32, 64]), sweep.axis("heads", [1, 2, 4]))
LOCAL_PATCHES = (2, 4, 7, 14)
LOCAL_DEPTH = 2
# Epochs per (width, patch): a setting's schedule is doubled (from 20) until its seed mean moves
# < 0.3 points over the last quarter (history in experiments/patch_size_tradeoff_local/README.md).
LOCAL_EPOCHS = {(16, 2): 160.0, (16, 4): 320.0, (16, 7): 1280.0, (16, 14): 160.0,
                (32, 2): 160.0, (32, 4): 80.0, (32, 7): 160.0, (32, 14): 80.0,
                (64, 2): 80.0, (64, 4): 80.0, (64, 7): 80.0, (64, 14): 80.0}
LOCAL_EVAL_EVERY = 35  # One epoch of 4,500 digits at batch 128.
BUDGET_EPOCHS = 20.0  # The compute-matched budget: this many epochs of width 32 / patch 7.


BATCH = 128  # The quickstart's.
DIGITS_TRAIN_IMAGES = 4500


def _train_flops(width: int, heads: int, patch: int) -> float:
  """Analytic training FLOPs per 28x28x1 digit of the local grid's model."""
  model = models.model_kwargs(None, patch_size=patch, width=width, depth=LOCAL_DEPTH,
                              num_heads=heads, mlp_dim=4 * width)
  return flops.train_flops_per_image(model, 28, channels=1, num_classes=10)


def get_sweep(arg: str | None = None) -> sweep.Study:
  a = parse_arg(arg, scale="local", data_dir="")
  if a.scale == "local":
    grid = [{**point, "epochs": LOCAL_EPOCHS[point["width"], point["patch"]]}
            for point in sweep.product(sweep.axis("config.seed", SEEDS), LOCAL_WIDTHS,
                                       sweep.axis("patch", LOCAL_PATCHES))]
    return sweep.Study("patch_size_tradeoff_local", "configs/quickstart.py", sweep.trials(grid),
                       base_args={"depth": LOCAL_DEPTH},
                       base_overrides={"evals.val.every_steps": LOCAL_EVAL_EVERY},
                       plot_x="patch", plot_series=("width",),
                       description=f"ViT depth {LOCAL_DEPTH}, widths 16/32/64, patches "
                       "2/4/7/14, bundled digits, 80-1280 epochs (each setting's in its trial "
                       "name), seeds 0/1/2")
  if a.scale == "compute_matched":
    budget = BUDGET_EPOCHS * DIGITS_TRAIN_IMAGES * _train_flops(32, 2, 7)
    points = []
    for seed, size, patch in itertools.product(SEEDS, LOCAL_WIDTHS, LOCAL_PATCHES):
      images = budget / _train_flops(size["width"], size["heads"], patch)
      steps = images / BATCH
      # Warm-up: the quickstart's 100 steps, or a fifth of a run shorter than 500 steps.
      points.append({"config.seed": seed, **size, "patch": patch,
                     "epochs": round(images / DIGITS_TRAIN_IMAGES, 3),
                     "config.optim.warmup_steps": min(100, max(1, int(steps / 5))),
                     "config.evals.val.every_steps": max(1, int(steps / 10))})
    return sweep.Study("patch_size_tradeoff_compute_matched", "configs/quickstart.py",
                       sweep.trials(points), base_args={"depth": LOCAL_DEPTH},
                       plot_x="patch", plot_series=("width",),
                       description=f"The local grid at one training budget of {budget / 1e9:.1f} "
                       "GFLOP per trial (20 epochs of width 32 / patch 7), widths 16/32/64, "
                       "steps set from the analytic FLOPs, seeds 0/1/2")
  if a.scale == "imagenet":
    if not a.data_dir:
      raise ValueError("scale=imagenet needs data_dir=<where imagenet2012 is prepared>, e.g. "
                       "experiments/patch_size_tradeoff.py:scale=imagenet,data_dir=gs://BUCKET/tfds")
    variants = [f"{size}/{patch}" for size in ("Ti", "S", "B") for patch in (8, 16, 32)]
    return sweep.Study("patch_size_tradeoff_imagenet", "configs/vit_i1k.py",
                       sweep.trials(sweep.axis("variant", variants)), base_args={"epochs": 90.0},
                       env={"TFDS_DATA_DIR": a.data_dir},
                       description="ViT Ti/S/B x patch 8/16/32, ImageNet-1k, 90 epochs "
                       "(big_vision recipe)")
  raise ValueError(f"scale={a.scale!r}: choose scale=local or scale=imagenet.")
