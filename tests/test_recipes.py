"""Recipes as published: every field a recipe copies from its source is pinned here with the source
it comes from, and the `runlocal` variant of every recipe trains end to end through the real loop
on a locally built stand-in for its dataset (tfds mock data, a tiny tfds builder, image folders).

Sources: big_vision HEAD 0127fb6 (configs/vit_s16_i1k.py, configs/vit_i21k.py, optax.py, utils.py),
google-research/vision_transformer (configs/common.py, configs/augreg.py, input_pipeline.py,
train.py, README, issue #2), arXiv 2010.11929 (ViT), 2106.10270 (AugReg), 2205.01580 (plain ViT).
"""
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from helpers import load_config
from vit_jax.checkpoints import workdir as workdir_lib
from vit_jax.training import loop


def _field(config, path):
  for key in path.split("."):
    config = config[key]
  return config


def _assert_pinned(config, pinned):
  got = {path: _field(config, path) for path in pinned}
  assert got == pinned


# --- vit_i1k: big_vision configs/vit_s16_i1k.py --------------------------------------------------

def test_vit_i1k_is_big_vision_plain_vit_s16():
  c = load_config("vit_i1k")
  # vit_s16_i1k.py model: variant S/16, rep_size=True (a width-384 pre-logits), gap, sincos2d.
  _assert_pinned(c, {"model.variant": "S/16", "model.representation_size": 384,
                     "model.classifier": "gap", "model.posemb": "sincos2d",
                     "model.dropout": None, "model.stoch_depth": None})
  # vit_s16_i1k.py: 90 epochs of imagenet2012 train[:99%], batch 1024, 1000 classes, softmax xent.
  _assert_pinned(c, {"total_epochs": 90.0, "batch_size": 1024, "num_classes": 1000,
                     "input.data.name": "imagenet2012", "input.data.split": "train[:99%]",
                     "loss": "softmax_xent", "label_smoothing": 0.0})
  # vit_s16_i1k.py optimizer: scale_by_adam (optax defaults) with mu_dtype bf16, lr 1e-3, clip 1,
  # 10k warmup + cosine; optax.py applies wd 1e-4 to kernels, scaled by the schedule, not the lr.
  _assert_pinned(c, {"optim.name": "adamw", "optim.b1": 0.9, "optim.b2": 0.999,
                     "optim.eps": 1e-8, "optim.mu_dtype": "bfloat16", "optim.lr": 1e-3,
                     "optim.grad_clip_norm": 1.0, "optim.warmup_steps": 10_000,
                     "optim.schedule": "cosine", "optim.end_lr": 0.0})
  assert c.optim.wd * c.optim.lr == pytest.approx(1e-4)
  # vit_s16_i1k.py pp: decode_jpeg_and_inception_crop(224)|flip_lr|randaug(2,10); mixup p=0.2;
  # eval decode|resize_small(256)|central_crop(224).
  assert c.input.pp == ("decode|inception_crop(224)|flip_lr|randaug(2, 10)|value_range(-1, 1)"
                        "|onehot(1000)")
  assert (c.input.mixup.mixup_alpha, c.input.mixup.cutmix_alpha) == (0.2, 0.0)
  # vit_s16_i1k.py evals: train[:2%], minival train[99%:], val, imagenet_v2 test; every 2500 steps.
  assert {k: (e.data.name, e.data.split) for k, e in c.evals.items()} == {
      "train": ("imagenet2012", "train[:2%]"), "minival": ("imagenet2012", "train[99%:]"),
      "val": ("imagenet2012", "validation"), "v2": ("imagenet_v2", "test")}
  assert {e.pp for e in c.evals.values()} == {
      "decode|resize_small(256)|central_crop(224)|value_range(-1, 1)|onehot(1000)"}
  assert {e.every_steps for e in c.evals.values()} == {2_500}


# --- vit_i21k: the ViT paper, vision_transformer issue #2 ----------------------------------------

def test_vit_i21k_is_the_vit_paper_recipe():
  c = load_config("vit_i21k")
  # Issue #2 / paper Table 3: B/16, token head, 768-wide tanh pre-logits, dropout 0.1, bias -10.
  _assert_pinned(c, {"model.variant": "B/16", "model.classifier": "token", "model.posemb": "learn",
                     "model.representation_size": 768, "model.dropout": 0.1,
                     "model.head_bias_init": -10.0})
  # Issue #2 / #34: batch 4096, 90 epochs, 21,843 classes, sigmoid cross-entropy.
  _assert_pinned(c, {"batch_size": 4096, "total_epochs": 90.0, "num_classes": 21843,
                     "loss": "sigmoid_xent", "input.data.name": "imagenet21k"})
  # Issue #2 / paper App. B.1: Adam 0.9/0.999, lr 1e-3, 10k warmup, linear decay to 1e-5, wd 0.03
  # relative to the lr (Flax Adam); float32 moments.
  _assert_pinned(c, {"optim.name": "adamw", "optim.b1": 0.9, "optim.b2": 0.999, "optim.lr": 1e-3,
                     "optim.warmup_steps": 10_000, "optim.schedule": "linear",
                     "optim.end_lr": 1e-5, "optim.wd": 0.03, "optim.mu_dtype": None})
  # Issue #2 / #34: the released crop (inception, 5-100% area) at 224 px; no RandAugment, no mixup.
  assert c.input.pp == "decode|inception_crop(224)|flip_lr|value_range(-1, 1)|onehot(21843)"
  assert c.input.mixup.mixup_alpha == 0.0


# --- augreg_i21k: big_vision configs/vit_i21k.py and the released AugReg checkpoints ------------

@pytest.mark.parametrize("variant, randaug, mixup_alpha, wd", [
    ("B/16", "randaug(2, 15)", 0.2, 0.1),   # B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0
    ("L/16", "randaug(2, 20)", 0.5, 0.1),   # L_16-i21k-300ep-lr_0.001-aug_strong1-wd_0.1-do_0.0
    ("Ti/16", None, 0.0, 0.03),             # Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0
    # S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0: the index's light1 is big_vision's light2.
    ("S/16", "randaug(2, 10)", 0.2, 0.03),
])
def test_augreg_i21k_is_the_released_checkpoints_recipe(variant, randaug, mixup_alpha, wd):
  c = load_config("augreg_i21k", f"variant={variant}")
  # Checkpoint names (aug, wd, do, sd) with big_vision's RANDAUG_DEF / MIXUP_DEF for the aug.
  assert c.input.pp == ("decode|inception_crop(224)|flip_lr" + (f"|{randaug}" if randaug else "")
                        + "|value_range(-1, 1)|onehot(21843)")
  _assert_pinned(c, {"input.mixup.mixup_alpha": mixup_alpha, "optim.wd": wd,
                     "model.dropout": 0.0, "model.stoch_depth": 0.0})
  # Released checkpoints: class token, no pre-logits; big_vision vit_i21k.py: head bias -10,
  # sigmoid xent, batch 4096, 300 epochs of full[51200:].
  _assert_pinned(c, {"model.classifier": "token", "model.representation_size": None,
                     "model.posemb": "learn", "model.head_bias_init": -10.0,
                     "loss": "sigmoid_xent", "batch_size": 4096, "total_epochs": 300.0,
                     "input.data.split": "full[51200:]"})
  # big_vision vit_i21k.py optimizer: scale_by_adam, mu bf16, lr 1e-3, clip 1, 10k warmup, cosine.
  _assert_pinned(c, {"optim.name": "adamw", "optim.mu_dtype": "bfloat16", "optim.lr": 1e-3,
                     "optim.grad_clip_norm": 1.0, "optim.warmup_steps": 10_000,
                     "optim.schedule": "cosine", "optim.end_lr": 0.0})
  # big_vision vit_i21k.py evals on the held-out slices.
  assert {k: e.data.split for k, e in c.evals.items()} == {
      "test": "full[:25600]", "val": "full[25600:51200]", "train": "full[51200:76800]"}


# --- finetune: the ViT paper App. B.1.1 and vision_transformer's configs -------------------------

@pytest.mark.parametrize("dataset, splits, steps, warmup, lr", [
    ("cifar10", ("train[:98%]", "test"), 10_000, 500, 0.01),         # common.py; vit.py b16 lr
    ("cifar100", ("train[:98%]", "test"), 10_000, 500, 0.03),        # common.py DATASET_PRESETS
    ("imagenet2012", ("train[:99%]", "validation"), 20_000, 500, 0.03),  # common.py
    ("oxford_iiit_pet", ("train[:90%]", "test"), 500, 100, 0.03),    # augreg.py; paper Table 4
    ("oxford_flowers102", ("train[:90%]", "test"), 500, 100, 0.03),  # big_vision transfer.py
])
def test_finetune_is_the_vit_transfer_protocol(dataset, splits, steps, warmup, lr):
  c = load_config("finetune", f"dataset={dataset},variant=B/16")
  assert (c.input.data.split, c.evals.val.data.split) == splits
  _assert_pinned(c, {"total_steps": steps, "optim.warmup_steps": warmup, "optim.lr": lr})
  # Paper App. B.1.1 / train.py: SGD momentum 0.9 (bf16 accumulator), batch 512, no wd, clip 1,
  # cosine; softmax xent; no dropout at fine-tuning (models.py B/16), a fresh zero head.
  _assert_pinned(c, {"optim.name": "sgd", "optim.momentum": 0.9, "optim.nesterov": False,
                     "optim.mu_dtype": "bfloat16", "batch_size": 512, "optim.wd": 0.0,
                     "optim.grad_clip_norm": 1.0, "optim.schedule": "cosine",
                     "loss": "softmax_xent", "model.dropout": 0.0,
                     "model.representation_size": None, "dont_load": ("head/.*",)})
  # input_pipeline.py: train = inception crop (5-100%) + flip at 384; eval = resize to 384.
  n = c.num_classes
  assert c.input.pp == f"decode(3)|inception_crop(384)|flip_lr|value_range(-1, 1)|onehot({n})"
  assert c.evals.val.pp == f"decode(3)|resize(384)|value_range(-1, 1)|onehot({n})"


def test_finetune_takes_the_class_count_from_any_dataset_and_the_model_from_init(tmp_path):
  assert load_config("finetune", "dataset=caltech101,variant=S/16").num_classes == 102
  digits = load_config("finetune", "dataset=bundled_mnist,init=/ckpt/ViT-B_16.npz")
  assert (digits.num_classes, digits.model.variant, digits.init) == (10, "ViT-B_16",
                                                                      "/ckpt/ViT-B_16.npz")
  # A mirrored digit is another digit (or none); a 5% crop of one is no digit.
  assert "flip_lr" not in digits.input.pp and "inception_crop" not in digits.input.pp
  augreg = load_config("finetune", "dataset=cifar100,init=/c/S_16-i21k-300ep-lr_0.001-aug_light1-"
                       "wd_0.03-do_0.0-sd_0.0.npz")
  assert augreg.model.variant == "S_16"
  with pytest.raises(ValueError, match="give variant="):
    load_config("finetune", "dataset=cifar10,init=/ckpt/my_model.npz")
  with pytest.raises(ValueError, match="Unknown tfds dataset 'cifar11'"):
    load_config("finetune", "dataset=cifar11,variant=B/16")
  for split in ("train", "test"):
    for label in ("cat", "dog", "fox"):
      os.makedirs(tmp_path / split / label)
  folder = load_config("finetune", f"dataset=imagefolder,root={tmp_path},variant=Ti/16")
  assert (folder.num_classes, folder.input.data.root) == (3, str(tmp_path))


# --- runlocal: every recipe trains here ----------------------------------------------------------

I21K_CLASSES = 21843


class Imagenet21k(tfds.core.GeneratorBasedBuilder):
  """A tiny local stand-in for ImageNet-21k (which tfds does not ship) with its name, its single
  `full` split and its 21,843 classes: random JPEGs of varied sizes and labels."""

  VERSION = tfds.core.Version("0.0.1")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(encoding_format="jpeg"),
        "label": tfds.features.ClassLabel(num_classes=I21K_CLASSES)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"full": self._generate_examples()}

  def _generate_examples(self):
    rng = np.random.default_rng(0)
    for i in range(40):
      h, w = rng.integers(24, 64, size=2)
      yield i, {"image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
                "label": int(rng.integers(0, I21K_CLASSES))}


def _train(config, workdir):
  final = loop.train_and_evaluate(config, str(workdir))
  assert final["step"] == config.total_steps and np.isfinite(final["train/loss"])
  assert workdir_lib.Workdir(str(workdir)).read_summary()["done"]
  return final


@pytest.mark.slow
def test_vit_i1k_runlocal_trains_then_finetunes_on_an_image_folder(tmp_path, data_root):
  with tfds.testing.mock_data(num_examples=24):  # imagenet2012 and imagenet_v2 stand-ins.
    final = _train(load_config("vit_i1k", "runlocal"), tmp_path / "i1k")
  assert {"val/prec@1", "v2/prec@1", "minival/prec@1", "train/prec@1"} <= set(final)
  # The model comes from the run's config.json, the classes from the folder.
  finetune = load_config("finetune", f"dataset=imagefolder,root={data_root},"
                         f"init={tmp_path / 'i1k' / 'checkpoints'},runlocal")
  assert (finetune.model.variant, finetune.num_classes) == ("mu/16", 4)
  _train(finetune, tmp_path / "ft_folder")


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["vit_i21k", "augreg_i21k"])
def test_i21k_recipes_runlocal_train_on_a_local_imagenet21k_builder(recipe, tmp_path_factory):
  data_dir = tmp_path_factory.getbasetemp() / "tfds_i21k"
  builder = Imagenet21k(data_dir=str(data_dir), file_format="array_record")
  if not builder.is_prepared():
    builder.download_and_prepare()
  config = load_config(recipe, "runlocal")
  config.input.data.data_dir = str(data_dir)
  final = _train(config, tmp_path_factory.mktemp(recipe))
  assert {"val/prec@1", "test/prec@1"} <= set(final)
  # The -10 head bias starts the sigmoid loss near its optimum, not at 21843 x log(2) nats.
  assert final["train/loss"] < 20


@pytest.mark.slow
def test_finetune_runlocal_on_the_bundled_digits_from_a_grayscale_run(tmp_path):
  """A 1-channel model pretrained on the digits keeps its channel count when fine-tuned."""
  pretrain = load_config("quickstart", f"width=16,depth=1,heads=2,data_dir={tmp_path / 'tfds'}")
  pretrain.total_epochs, pretrain.total_steps = None, 2
  pretrain.optim.warmup_steps = 1
  pretrain.evals, pretrain.eval_batch_size = {}, 64
  _train(pretrain, tmp_path / "digits")
  config = load_config("finetune", f"dataset=bundled_mnist,init={tmp_path / 'digits'},res=28,"
                       f"data_dir={tmp_path / 'tfds'},runlocal")
  assert config.input.pp.startswith("decode(1)|resize(28)|random_shift(2)|value_range")
  _train(config, tmp_path / "ft_digits")
  recorded = json.loads((tmp_path / "ft_digits" / "config.json").read_text())
  assert recorded["model"]["width"] == pretrain.model.width
