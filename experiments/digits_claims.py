r"""Claims about ViTs, each tested as a small experiment on the bundled digits (local scale).

    python -m vit_jax.sweep experiments/digits_claims.py:claim=CLAIM --launcher=local --parallel=3
    python -m vit_jax.report experiments/digits_claims.py:claim=CLAIM [...] --out=experiments/...

CLAIM is one of:
* `transfer_pretrain`, then `transfer_finetune`, `transfer_scratch` and `transfer_scratch_ema`:
  pre-training helps a small labelled set. Pre-train on digits 0-4 (2,243 training images, 28 px,
  patch 4: a 7x7 grid), fine-tune on digits 5-9 with 10 or 50 labels per class at 56 px and patch 7
  (an 8x8 grid: the position embedding is resized and the patch embedding PI-resized on load),
  against the same model trained from scratch on the same labels, each arm until it converged, with
  this project's recipe for its task: configs/finetune.py's SGD for the fine-tunes (3,000 steps with
  10 labels per class, 12,000 with 50), the quickstart's AdamW from scratch (3,000 steps with 10;
  with 50, `transfer_scratch_ema`: 48,000 steps at a constant learning rate, evaluated with EMA
  params, as under the cosine schedule its last quarter rose at every length up to 96,000).
* `hybrid`: a convolutional stem helps most when data is scarce (the ViT paper's inductive-bias
  claim). ViT with 4x4 patches against a hybrid (a 7x7/2 convolution and a 3x3/2 max-pool, 64
  channels, then 1x1 patches: the same 49 tokens) on the first 500 / 1,500 / 4,500 training digits,
  2,812 steps each (80 epochs of the full set: where the patch-size study's width 32 / patch 4
  converged), 5,624 on 1,500 digits (where the ViT still rose at 2,812).
* `posemb`: which position embedding, learned or 2-D sin-cos, under the quickstart's cosine
  schedule.
* `posemb_ema`: whether position information matters: none against learned, at a constant learning
  rate, evaluated with EMA params.
* `pool`: class token against global average pooling.

The EMA claims (`--config.optim.schedule=constant --config.ema_decay=0.999`) are reported with
`--metric=val_ema/prec@1`. A cosine schedule's last quarter anneals the learning rate, so accuracy
rises there however long the run is; at a constant rate the last quarter measures whether training
still makes progress, so the 0.3-point convergence rule can be met.

Every trial is the patch-size study's width-32 model (depth 2, 2 heads, the quickstart recipe):
patch 4 for transfer and hybrid, patch 7 (16 tokens: the cheapest model above 90%) for position
embeddings and pooling (160 epochs: where the patch-size study's width 32 / patch 7 converged; 320
for sin-cos, for learned with EMA and for pre-training on half the data; 2,560 for no position
embedding); seeds 0 / 1 / 2, evaluated on the 500 test digits (the 250 of digits 5-9 for transfer)
every 35 steps (every 50 for the few-shot trainings).
"""
from vit_jax.config import parse_arg
from vit_jax.study import sweep

SEEDS = (0, 1, 2)
MODEL = {"width": 32, "heads": 2, "depth": 2, "patch": 4}
# Hybrid claim, steps per training-set size: 2,812 is 80 epochs of the 4,500 training digits at
# batch 128 (where width 32 / patch 4 converged); the ViT on 1,500 digits still rose 0.4 points over
# the last quarter at 2,812, so both arms there train twice as long.
HYBRID_STEPS = {500: 2812, 1500: 5624, 4500: 2812}
# Pre-training on the 2,243 digits 0-4: 320 epochs, 5,625 steps (width 32 / patch 4 still rose 1.3
# points over the last quarter at 40 epochs and 0.3 at 160).
PRETRAIN_EPOCHS = 320.0
# Per arm, under the quickstart's cosine schedule: 160 epochs (as pooling, where width 32 / patch 7
# converged) for learned; sin-cos still rose 0.7 points over the last quarter at 160, so it trains
# 320. No position embedding is the posemb_ema claim's: under cosine its last quarter still rose
# 0.3-0.9 points at every length from 160 to 2,560 epochs (experiments/posemb_local/README.md).
POSEMB_EPOCHS = {"learn": 160.0, "sincos2d": 320.0}
# Constant learning rate + EMA params (the posemb_ema claim): none 2,560 epochs (its EMA accuracy
# rose 0.7 points over the last quarter at 320, 0.3 at 640 (3 seeds) and 0.32 at 1,280 (6 seeds);
# +0.09 at 2,560: experiments/posemb_ema_local/README.md); learned 320 (+0.12).
POSEMB_EMA_EPOCHS = {"none": 2560.0, "learn": 320.0}
# A constant learning rate, evaluated with EMA params: a converged run's last quarter is flat, where
# a cosine schedule's anneals and rises however long the run.
EMA = {"optim.schedule": "constant", "ema_decay": 0.999}
POOL_EPOCHS = 160.0  # experiments/patch_size_tradeoff.py's LOCAL_EPOCHS for width 32 / patch 7.
EVAL_EVERY = 35
# Few-shot transfer: digits 5-9, batches of 24 images (the 50-image set holds 2 batches), at 56 px
# with 7x7 patches. Every arm was still rising over the last quarter at 200 steps (by 2.5-4.8
# points) and at 1,000 (by 1.2-1.9); the fine-tune on 50 labels per class still rose 0.8 at 3,000
# and 0.34 at 6,000, and converged at 12,000 (-0.15).
FEWSHOT = {"classes": "5-9", "res": 56, "batch": 24}
FINETUNE_STEPS = {10: 3000, 50: 12000}  # Per labels-per-class count.
SCRATCH_STEPS = 3000  # From scratch on 10 labels per class.
# From scratch on 50 labels per class, at a constant learning rate with EMA params: under the cosine
# schedule its last quarter still rose 0.33 / 0.60 / 0.31 / 0.56 points at 12,000 / 24,000 / 48,000
# / 96,000 steps while its end point held at 97.9-98.4% from 24,000 on
# (experiments/transfer_local/README.md).
SCRATCH_EMA_STEPS = 48000
FEWSHOT_EVAL_EVERY = 50


def _seeded(points: list[dict], seeds: tuple[int, ...] = SEEDS) -> list[sweep.Trial]:
  return sweep.trials(sweep.product(sweep.axis("config.seed", seeds), points))


def _arms(key: str, lengths: dict, length_key: str, base) -> list[dict]:
  """One point per value of `key`, with its own training length (`lengths[value]`, set as
  `length_key`) where that differs from `base`, the study's: arms at the base length keep their
  trial names, so their finished runs stay done when another arm's length changes."""
  return [{key: value, **({length_key: n} if n != base else {})} for value, n in lengths.items()]


def _lengths(lengths: dict, unit: str) -> str:
  """Per-arm training lengths for a description, e.g. `2,812 / 5,624 steps`."""
  return " / ".join(f"{n:,g}" for n in lengths.values()) + " " + unit


def get_sweep(arg: str | None = None) -> sweep.Study:
  a = parse_arg(arg, claim="", pretrain_dir="runs/sweeps/transfer_pretrain_local")
  every = {"evals.val.every_steps": EVAL_EVERY}
  if a.claim == "transfer_pretrain":
    return sweep.Study("transfer_pretrain_local", "configs/quickstart.py",
                       _seeded([{}]),
                       base_args={**MODEL, "classes": "0-4", "epochs": PRETRAIN_EPOCHS},
                       base_overrides=every,
                       description="ViT width 32, depth 2, patch 4 pre-trained on digits 0-4, "
                       f"28 px, {PRETRAIN_EPOCHS:g} epochs")
  if a.claim == "transfer_finetune":
    # Each seed fine-tunes the pre-training of its own seed; the name leaves the path out.
    trials = [sweep.Trial(t.name, {**t.config_args,
                                   "init": f"{a.pretrain_dir}/seed={t.overrides['seed']}"},
                          t.overrides)
              for t in _seeded(_arms("per_class", FINETUNE_STEPS, "steps", FINETUNE_STEPS[10]))]
    return sweep.Study("transfer_finetune_local", "configs/finetune.py", trials,
                       base_args={"dataset": "bundled_mnist", **FEWSHOT,
                                  "steps": FINETUNE_STEPS[10]},
                       base_overrides={"model.patch_size": 7,
                                       "evals.val.every_steps": FEWSHOT_EVAL_EVERY},
                       plot_x="per_class",
                       description="ViT width 32 fine-tuned from digits 0-4 on digits 5-9 with "
                       "10 / 50 labels per class at 56 px, patch 7, "
                       + _lengths(FINETUNE_STEPS, "steps"))
  if a.claim == "transfer_scratch":
    return sweep.Study("transfer_scratch_local", "configs/quickstart.py",
                       _seeded([{"per_class": 10}]),
                       base_args={**MODEL, **FEWSHOT, "patch": 7, "steps": SCRATCH_STEPS},
                       base_overrides={"evals.val.every_steps": FEWSHOT_EVAL_EVERY},
                       plot_x="per_class",
                       description="ViT width 32 trained from scratch on digits 5-9 with 10 labels "
                       f"per class at 56 px, patch 7, {SCRATCH_STEPS:,} steps")
  if a.claim == "transfer_scratch_ema":
    return sweep.Study("transfer_scratch_ema_local", "configs/quickstart.py",
                       _seeded([{"per_class": 50}]),
                       base_args={**MODEL, **FEWSHOT, "patch": 7, "steps": SCRATCH_EMA_STEPS},
                       base_overrides={"evals.val.every_steps": FEWSHOT_EVAL_EVERY, **EMA},
                       plot_x="per_class",
                       description="ViT width 32 trained from scratch on digits 5-9 with 50 labels "
                       "per class at 56 px, patch 7, constant learning rate, EMA params (decay "
                       f"0.999), {SCRATCH_EMA_STEPS:,} steps")
  if a.claim == "hybrid":
    points = sweep.product([{"stem": False}, {"stem": True, "patch": 1}],
                           _arms("train_images", HYBRID_STEPS, "steps", HYBRID_STEPS[500]))
    return sweep.Study("hybrid_local", "configs/quickstart.py", _seeded(points),
                       base_args={**MODEL, "steps": HYBRID_STEPS[500]}, base_overrides=every,
                       plot_x="train_images", plot_series=("stem",),
                       description="ViT width 32, patch 4 vs hybrid (conv stem, patch 1) on 500 / "
                       "1,500 / 4,500 training digits, " + _lengths(HYBRID_STEPS, "steps"))
  if a.claim == "posemb":
    arms = _arms("config.model.posemb", POSEMB_EPOCHS, "epochs", POSEMB_EPOCHS["learn"])
    return sweep.Study("posemb_local", "configs/quickstart.py",
                       _seeded(arms),
                       base_args={**MODEL, "patch": 7, "epochs": POSEMB_EPOCHS["learn"]},
                       base_overrides=every, plot_x="posemb",
                       description="ViT width 32, patch 7: position embedding learned / sincos2d, "
                       + _lengths(POSEMB_EPOCHS, "epochs"))
  if a.claim == "posemb_ema":
    arms = _arms("config.model.posemb", POSEMB_EMA_EPOCHS, "epochs", POSEMB_EMA_EPOCHS["learn"])
    return sweep.Study("posemb_ema_local", "configs/quickstart.py",
                       _seeded(arms),
                       base_args={**MODEL, "patch": 7, "epochs": POSEMB_EMA_EPOCHS["learn"]},
                       base_overrides={**every, **EMA}, plot_x="posemb",
                       description="ViT width 32, patch 7: no position embedding vs learned at a "
                       "constant learning rate, EMA params (decay 0.999), "
                       + _lengths(POSEMB_EMA_EPOCHS, "epochs"))
  if a.claim == "pool":
    return sweep.Study("pool_local", "configs/quickstart.py",
                       _seeded(sweep.axis("config.model.classifier", ["token", "gap"])),
                       base_args={**MODEL, "patch": 7, "epochs": POOL_EPOCHS},
                       base_overrides=every,
                       description="ViT width 32, patch 7: class token vs global average "
                       f"pooling, {POOL_EPOCHS:g} epochs")
  raise ValueError(f"claim={a.claim!r}: choose transfer_pretrain, transfer_finetune, "
                   "transfer_scratch, transfer_scratch_ema, hybrid, posemb, posemb_ema or pool.")
