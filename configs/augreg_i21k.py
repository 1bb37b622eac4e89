r"""AugReg ViT pretraining on ImageNet-21k ("How to train your ViT?", arXiv 2106.10270).

    python -m vit_jax.train --config=configs/augreg_i21k.py:variant=B/16 \
        --workdir=gs://BUCKET/augreg_b16_i21k --config.input.data.data_dir=gs://BUCKET/tfds

Sources: big_vision/configs/vit_i21k.py (big_vision HEAD 0127fb6, the public config of the paper)
and the released AugReg checkpoints (google-research/vision_transformer README), whose names carry
their hyper-parameters, e.g. `B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0`. Every
field is pinned by tests/test_recipes.py.
Data: a tfds `imagenet21k` dataset with one `full` split (14.2M images, 21,843 classes), prepared
as ArrayRecord in data_dir. tfds does not ship its builder: register one under that name (tests
build a tiny one). The first 51,200 images are held out: test = full[:25600], val =
full[25600:51200]; training uses full[51200:].
Recipe (big_vision's config): batch 4096, 300 epochs (the paper also trains 30) at 224 px; Adam
(bf16 first moment), lr 1e-3, 10k warmup then cosine to 0, grad clip 1.0; decoupled weight decay
on kernels scaled by the schedule only: big_vision's 1e-4 is the checkpoints' "wd_0.1" in this
project's lr-scaled units; sigmoid cross-entropy with the head bias initialised to -10; inception
crop 224 + flip, then the `aug` setting's RandAugment and mixup (AUG below, the paper's grid).
The default aug / wd / dropout per variant are those of the recommended checkpoint of that
variant (RECOMMENDED below, vision_transformer README: best ImageNet-21k validation accuracy).

Kept different on purpose:
- Token classifier and no pre-logits layer, as the released checkpoints (big_vision loads them
  with pool_type='tok', vision_transformer with classifier='token', representation_size=None);
  big_vision's config file says pool_type='gap', which is not the model that was published.
- The learned position embedding starts at normal(0.02) (the original ViT init); big_vision's at
  normal(1/sqrt(width)).
- bfloat16 compute, global shuffling: as configs/vit_i1k.py says. No few-shot evaluators (not
  implemented here); the i21k test/val/train evals are as published.
- The `aug` names are the checkpoints' (none, light0, light1, medium1, medium2, strong1,
  strong2: the index of vision_transformer's vit_jax_augreg.ipynb); big_vision's config calls the
  same seven settings none, light1, light2, medium1, ... So the checkpoints' light1 (S/16, B/32,
  R26+S/32) is big_vision's light2, RandAugment(2, 10) with mixup 0.2, as big_vision's own
  default for B/32; the names agree from medium1 on.

Expected (published, not reproduced here): the recommended B/16 checkpoint (medium1, wd 0.1,
300 epochs) fine-tuned on ImageNet for 20k steps at 384 px (configs/finetune.py, its lr 0.03)
reaches 85.49% top-1; S/16 (light1, wd 0.03, lr 0.03) 83.73%; L/16 (strong1) 85.59% with
fine-tuning lr 0.01 (finetune.py's lr=0.01; also B/32, S/32 and the hybrids), as the fine-tuned
checkpoints' names say (vision_transformer README).
Published cost: none for these runs in the sources. Our projection (not measured): B/16 training is
105.5 GFLOP/img x 14.1M images x 300 epochs = 4.5e20 FLOP, about 3.5 days on a TPU v3-64
(32 chips x 123 TFLOP/s) at 35% MFU.

Args: variant (Ti/16, S/32, S/16, B/32, B/16, L/16), aug (none | light0 | light1 | medium1 |
medium2 | strong1 | strong2), wd (0.03 | 0.1), dropout (0.0 | 0.1; also sets stochastic depth, as
the paper's grid), epochs (300 | 30), runlocal (ViT-mu/16, 10 steps of 8 images, 16-image evals:
the smoke test of this recipe on a CPU).
"""
from vit_jax.config import base_config, parse_arg, shrink_to_runlocal

NUM_CLASSES = 21843
# setting (the checkpoints' names): (RandAugment (layers, magnitude) or None, mixup alpha); the
# values of big_vision's RANDAUG_DEF and MIXUP_DEF, whose light1 / light2 are light0 / light1 here.
# Magnitude 0 is not the identity (enhance factors 0.1, solarize inverts everything).
AUG = {
    "none": (None, 0.0),
    "light0": ((2, 0), 0.0),
    "light1": ((2, 10), 0.2),
    "medium1": ((2, 15), 0.2),
    "medium2": ((2, 15), 0.5),
    "strong1": ((2, 20), 0.5),
    "strong2": ((2, 20), 0.8),
}
# variant: (aug, wd, dropout = stochastic depth) of its recommended checkpoint (README).
RECOMMENDED = {
    "Ti/16": ("none", 0.03, 0.0), "S/32": ("none", 0.1, 0.0), "S/16": ("light1", 0.03, 0.0),
    "B/32": ("light1", 0.1, 0.0), "B/16": ("medium1", 0.1, 0.0), "L/16": ("strong1", 0.1, 0.0),
}
PP_EVAL = f"decode|resize_small(256)|central_crop(224)|value_range(-1, 1)|onehot({NUM_CLASSES})"
EVALS = {"test": "full[:25600]", "val": "full[25600:51200]", "train": "full[51200:76800]"}


def get_config(arg: str | None = None):
  a = parse_arg(arg, variant="B/16", aug="", wd=-1.0, dropout=-1.0, epochs=300.0, runlocal=False)
  recommended = RECOMMENDED.get(a.variant)
  if recommended is None and not (a.aug and a.wd >= 0 and a.dropout >= 0):
    raise ValueError(f"variant={a.variant} has no recommended AugReg checkpoint; give aug=, wd= "
                     f"and dropout= (or use one of {sorted(RECOMMENDED)}).")
  aug = a.aug or recommended[0]
  if aug not in AUG:
    raise ValueError(f"aug={aug!r}: choose one of {sorted(AUG)}.")
  wd = a.wd if a.wd >= 0 else recommended[1]
  dropout = a.dropout if a.dropout >= 0 else recommended[2]
  randaug, mixup_alpha = AUG[aug]

  c = base_config()
  c.model.update(variant="mu/16" if a.runlocal else a.variant, classifier="token",
                 posemb="learn", dropout=dropout, stoch_depth=dropout, dtype="bfloat16",
                 head_bias_init=-10.0)
  c.num_classes = NUM_CLASSES
  c.loss = "sigmoid_xent"

  c.input.data.update(name="imagenet21k", split="full[51200:]")
  c.input.pp = ("decode|inception_crop(224)|flip_lr"
                + (f"|randaug{randaug}" if randaug else "")
                + f"|value_range(-1, 1)|onehot({NUM_CLASSES})")
  c.input.mixup.mixup_alpha = mixup_alpha
  c.batch_size = 4096
  c.total_epochs = a.epochs

  c.optim.update(name="adamw", lr=1e-3, b1=0.9, b2=0.999, wd=wd, mu_dtype="bfloat16",
                 grad_clip_norm=1.0, warmup_steps=10_000, schedule="cosine", end_lr=0.0)

  for name, split in EVALS.items():
    c.evals[name] = dict(data=dict(name="imagenet21k", split=split), pp=PP_EVAL,
                         every_steps=1_000)
  c.eval_batch_size = 1024
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1_000

  if a.runlocal:
    shrink_to_runlocal(c, train_split="full[16:]")
  return c
