r"""Patch size x model size: accuracy against measured and projected cost, in one table and three
plots.

Local scale (default; a CPU, bundled digits; ~20 minutes for the whole study on a shared 2-core
box):

    python -m vit_jax.sweep experiments/patch_size_tradeoff.py --launcher=local
    python -m vit_jax.report runs/sweeps/patch_size_tradeoff_local \
        --out=experiments/patch_size_tradeoff_local

  ViTs of depth 2 at widths 16 and 32 (head dim 16) with patches 2, 4, 7 and 14 on the 28x28 digits
  (196, 49, 16 and 4 patch tokens), 2 epochs each (70 steps of batch 128, 7 warm-up steps), the
  quickstart recipe otherwise. Small on purpose: every trial fits in a couple of minutes on a shared
  CPU. Plus one FlexiViT trial: the width-32 model (its own patch 4) trained with a patch size of 4,
  7 or 14 drawn per step and evaluated at each, so one run gives its own accuracy-vs-patch-size
  curve.

ImageNet scale (Ti/S/B x patch 8/16/32, big_vision's 90-epoch plain-ViT recipe) on a TPU pod slice:

    python -m vit_jax.sweep \
        experiments/patch_size_tradeoff.py:scale=imagenet,data_dir=gs://BUCKET/tfds \
        --launcher=tpu --tpu_name=NAME --zone=ZONE \
        --workdir_root=gs://BUCKET/sweeps/patch_size_tradeoff \
        --repo_url=https://github.com/ORG/vit_jax --dry_run

  (drop --dry_run to launch; --launcher=slurm --nodes=2 --gpus_per_node=8 for a GPU cluster.)
"""
from vit_jax.config import parse_arg
from vit_jax.study import sweep


def get_sweep(arg: str | None = None) -> sweep.Study:
  a = parse_arg(arg, scale="local", data_dir="")
  if a.scale == "local":
    widths = sweep.zip_(sweep.axis("width", [16, 32]), sweep.axis("heads", [1, 2]))
    flexi = [{"width": 32, "heads": 2, "config.flexi.patch_sizes": (4, 7, 14)}]
    trials = sweep.trials(sweep.product(widths, sweep.axis("patch", [2, 4, 7, 14])) + flexi)
    return sweep.Study("patch_size_tradeoff_local", "configs/quickstart.py", trials,
                       base_args={"depth": 2, "epochs": 2.0},
                       # The quickstart's 100 warm-up steps would outlast these 70-step runs.
                       base_overrides={"optim.warmup_steps": 7},
                       description="ViT depth 2, widths 16/32, patches 2/4/7/14, bundled digits, "
                       "2 epochs; FlexiViT width 32 at patches 4/7/14")
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
