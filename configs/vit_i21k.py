r"""ViT pretraining on ImageNet-21k as in the ViT paper (Dosovitskiy et al. 2021).

    python -m vit_jax.train --config=configs/vit_i21k.py:variant=B/16 \
        --workdir=gs://BUCKET/vit_b16_i21k --config.input.data.data_dir=gs://BUCKET/tfds

Data: an ImageNet-21k tfds dataset prepared as ArrayRecord (`data=<name>`, default 'imagenet21k'
which tfds does not ship: register your own builder, or use data=imagefolder with
--config.input.data.root=DIR holding train/<class>/*.jpg).
Recipe (paper, Table 3 / App. B): batch 4096, Adam b1 0.9 b2 0.999, lr 1e-3, 10k warmup then linear
decay, weight decay 0.03 (lr-scaled here), grad clip 1.0, dropout 0.1, 90 epochs, pre-logits
(representation) layer, sigmoid cross-entropy as big_vision's i21k runs, 224 px,
inception crop + flip.

Expected: a checkpoint that fine-tunes to the paper's transfer numbers (e.g. ViT-B/16: ~84% ImageNet
top-1 at 384 px after fine-tuning, as published). Cost (our projection from analytic FLOPs, not
measured): B/16 training is 52.7 GFLOP/img, x 14.2M images x 90 epochs = 6.7e19 FLOP, about 4 days
on a TPUv3-32 (16 chips x 123 TFLOP/s) at 40% MFU.

Args: variant (B/16, L/16, ...), epochs (90), batch (4096), data (tfds name).
"""
from vit_jax import models
from vit_jax.config import base_config, parse_arg

NUM_CLASSES = 21843


def get_config(arg: str | None = None):
  a = parse_arg(arg, variant="B/16", epochs=90.0, batch=4096, data="imagenet21k")
  c = base_config()
  # The paper's pretraining head has a tanh pre-logits layer as wide as the model.
  width = models.model_kwargs(a.variant)["width"]
  c.model.update(variant=a.variant, dropout=0.1, representation_size=width, dtype="bfloat16")
  c.num_classes = NUM_CLASSES

  c.input.data.update(name=a.data, split="train")
  c.input.pp = f"decode|inception_crop(224)|flip_lr|value_range(-1, 1)|onehot({NUM_CLASSES})"
  c.batch_size = a.batch
  c.total_epochs = a.epochs
  c.loss = "sigmoid_xent"

  c.optim.name = "adamw"
  c.optim.lr = 1e-3
  c.optim.wd = 0.03
  c.optim.grad_clip_norm = 1.0
  c.optim.warmup_steps = 10_000
  c.optim.schedule = "linear"
  c.optim.mu_dtype = "bfloat16"

  c.log_every_steps = 100
  c.checkpoint_every_steps = 2_000
  return c
