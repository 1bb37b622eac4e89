r"""Fine-tune a pretrained ViT on a tfds classification dataset at a chosen resolution (ViT paper
recipe).

    python -m vit_jax.train --config=configs/finetune.py:dataset=cifar10,res=384,variant=B/16 \
        --workdir=/tmp/ft_cifar10 --config.init=/path/to/ViT-B_16.npz \
        --config.input.data.data_dir=~/tensorflow_datasets

`init` is an official `.npz` (e.g. gs://vit_models/imagenet21k/ViT-B_16.npz, downloaded beforehand)
or an Orbax checkpoint directory of a previous run; the head is re-initialised for the new classes
(zero init) and the position embedding is resized to the new grid. Datasets must be prepared as
ArrayRecord in data_dir (the error names the `tfds build` command).
Recipe (ViT paper App. B.1.1): SGD momentum 0.9, batch 512, grad clip 1.0, no weight decay,
cosine decay after 500 warmup steps, lr 0.03 (sweep 0.001-0.03), steps per dataset below.

Expected (published for ViT-B/16 pretrained on ImageNet-21k, fine-tuned at 384 px; not reproduced
here): about 98-99% CIFAR-10, 91-92% CIFAR-100, ~94% Oxford-IIIT Pets, ~99% Flowers-102 top-1.
Cost (projection from analytic FLOPs: B/16 at 384 px is ~3x the 224 px cost, 156 GFLOP/img for
training): CIFAR-10's 10k steps x 512 images = 8e17 FLOP, about 1 h on one H100 at 25% MFU.

Args: dataset (cifar10 | cifar100 | oxford_iiit_pet | oxford_flowers102 | imagenet2012),
variant (B/16), res (384), steps (default per dataset), lr (0.03), batch (512).
"""
from vit_jax.config import base_config, parse_arg

# tfds name: (classes, train split, eval split, default steps)
DATASETS = {
    "cifar10": (10, "train[:98%]", "test", 10_000),
    "cifar100": (100, "train[:98%]", "test", 10_000),
    "oxford_iiit_pet": (37, "train[:90%]", "test", 500),
    "oxford_flowers102": (102, "train", "test", 500),
    "imagenet2012": (1000, "train[:99%]", "validation", 20_000),
}


def get_config(arg: str | None = None):
  a = parse_arg(arg, dataset="cifar10", variant="B/16", res=384, steps=0, lr=0.03, batch=512)
  if a.dataset not in DATASETS:
    raise ValueError(f"Unknown dataset={a.dataset!r}; choose one of {sorted(DATASETS)}.")
  num_classes, train_split, eval_split, default_steps = DATASETS[a.dataset]
  c = base_config()
  c.model.variant = a.variant
  c.num_classes = num_classes
  c.init = ""  # required: --config.init=PATH (.npz or Orbax checkpoint)
  c.dont_load = ("head/.*",)

  c.input.data.update(name=a.dataset, split=train_split)
  c.input.pp = (f"decode|inception_crop({a.res})|flip_lr|value_range(-1, 1)"
                f"|onehot({num_classes})")
  c.batch_size = a.batch
  c.total_steps = a.steps or default_steps

  c.optim.name = "sgd"
  c.optim.momentum = 0.9
  c.optim.lr = a.lr
  c.optim.wd = 0.0
  c.optim.grad_clip_norm = 1.0
  c.optim.warmup_steps = 500 if c.total_steps > 1_000 else c.total_steps // 10
  c.optim.schedule = "cosine"

  c.evals.val = dict(data=dict(name=a.dataset, split=eval_split),
                     pp=f"decode|resize({a.res})|value_range(-1, 1)|onehot({num_classes})",
                     every_steps=1_000)
  c.eval_batch_size = 512
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1_000
  return c
