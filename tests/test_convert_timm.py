"""timm ViT / hybrid checkpoints: import and export, verified by logits against timm itself.

Tiny timm models with random weights everywhere (LayerNorm scales around 1, non-zero biases and
tokens, so a mapping mistake shows) run on the same float images as our imported model (NCHW vs
NHWC); float32 logits must agree within 1e-4 (they agree to ~1e-7). timm is imported without
torchvision (tests/timm_shim.py).
"""
import importlib.util
import json

import jax
import numpy as np
import pytest
import torch

from helpers import abstract_params, random_params
from vit_jax import models
from vit_jax.checkpoints import npz
from vit_jax.checkpoints import timm as timm_ckpt

if importlib.util.find_spec("timm") is None:
  pytest.skip("timm is not installed (a test extra)", allow_module_level=True)

import timm_shim  # pylint: disable=g-import-not-at-top,wrong-import-position

timm = timm_shim.import_timm()
timm_vit = timm.models.vision_transformer

TOL = 1e-4
TINY_TIMM = dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=5)
TINY = dict(width=32, depth=2, mlp_dim=64, num_heads=2)


def _images(hw, seed=0):
  return np.random.RandomState(seed).uniform(-1, 1, (2, *hw, 3)).astype(np.float32)


def _randomize(model, seed=0):
  """Every timm parameter moved off its init (zero biases / tokens would hide mapping mistakes)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for _, p in model.named_parameters():
      p.add_(0.05 * torch.randn(p.shape, generator=gen))
  return model.eval()


def _timm_logits(model, images):
  with torch.no_grad():
    return model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()


def _our_logits(params, fields, images, num_classes=5):
  fields = dict(fields)
  fields.pop("variant")
  model = models.get_model(None, num_classes=num_classes, **fields)
  return np.asarray(jax.jit(model.apply)({"params": npz.unflatten(params)}, images))


def _save(model, path):
  state = {k: v.contiguous() for k, v in model.state_dict().items()}
  if str(path).endswith(".safetensors"):
    from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
    save_file(state, str(path))
  else:
    torch.save({"state_dict": state, "epoch": 3}, path)  # a timm training checkpoint


def _plain(**kw):
  return timm_vit.VisionTransformer(img_size=32, patch_size=8, **{**TINY_TIMM, **kw})


def _zero_qk_norm_bias(model):
  with torch.no_grad():
    for block in model.blocks:
      block.attn.q_norm.bias.zero_()
      block.attn.k_norm.bias.zero_()
  return model


IMPORT_CASES = {
    # name: (timm model, image size, file name, expected Model fields)
    "token": (lambda: _plain(), 32, "m.safetensors",
              dict(classifier="token", gelu_approximate=False, patch_size=8, width=32, depth=2,
                   mlp_dim=64, num_heads=2, fc_norm=False)),
    "gap_fc_norm": (lambda: _plain(class_token=False, global_pool="avg"), 32, "m.pth",
                    dict(classifier="gap", fc_norm=True)),
    "gap_norm_before_pool": (lambda: _plain(class_token=False, global_pool="avg", fc_norm=False),
                             32, "m.pth", dict(classifier="gap", fc_norm=False)),
    "map": (lambda: _plain(class_token=False, global_pool="map"), 32, "m.pth",
            dict(classifier="map")),
    "registers_layerscale_no_embed_class": (
        lambda: _plain(reg_tokens=2, no_embed_class=True, init_values=0.1), 32, "m.pth",
        dict(num_registers=2, layerscale_init=1e-5)),
    "registers_qk_norm": (lambda: _plain(reg_tokens=3, qk_norm=True), 32, "m.safetensors",
                          dict(num_registers=3, qk_norm=True)),
    "hybrid_stem_only": (
        lambda: timm.create_model("vit_tiny_r_s16_p8_224", img_size=64, **TINY_TIMM), 64, "m.pth",
        dict(resnet={"num_layers": (), "width_factor": 1}, resnet_numerics="timm", patch_size=8)),
    "hybrid_r26": (
        lambda: timm.create_model("vit_small_r26_s32_224", img_size=32, **{**TINY_TIMM,
                                                                            "depth": 1}),
        32, "m.safetensors",
        dict(resnet={"num_layers": (2, 2, 2, 2), "width_factor": 1}, resnet_numerics="timm",
             patch_size=1, depth=1)),
}


@pytest.mark.parametrize("case", sorted(IMPORT_CASES))
def test_import_reproduces_timm_logits(case, tmp_path):
  make, size, filename, expected = IMPORT_CASES[case]
  torch.manual_seed(0)
  model = _randomize(make())
  if "qk_norm" in case:  # timm's q/k LayerNorms have biases, ours only scales.
    _zero_qk_norm_bias(model)
  _save(model, tmp_path / filename)
  params, fields = timm_ckpt.read_params(str(tmp_path / filename))
  assert {k: fields[k] for k in expected} == expected
  images = _images((size, size))
  theirs = _timm_logits(model, images)
  ours = _our_logits(params, fields, images)
  diff = float(np.abs(ours - theirs).max())
  print(f"timm {case}: max |logit diff| {diff:.1e} (max |logit| {np.abs(theirs).max():.2f})")
  assert np.abs(theirs).max() > 0.05 and diff <= TOL


def test_numerics_options_are_what_reproduces_timm(tmp_path):
  """The stem-only hybrid imported with the official numerics instead (tanh GELU, std + 1e-5 weight
  standardisation, GroupNorm eps 1e-6) misses timm's logits by far more than the right ones."""
  torch.manual_seed(0)
  model = _randomize(timm.create_model("vit_tiny_r_s16_p8_224", img_size=64, **TINY_TIMM))
  with torch.no_grad():  # Small conv kernels: the weight-standardisation eps matters.
    model.patch_embed.backbone.conv.weight.mul_(1e-3)
  params, fields = timm_ckpt.params_from_state_dict(
      {k: v.numpy() for k, v in model.state_dict().items()})
  images = _images((64, 64))
  theirs = _timm_logits(model, images)
  right = np.abs(_our_logits(params, fields, images) - theirs).max()
  for wrong in (dict(gelu_approximate=True), dict(resnet_numerics="official")):
    off = np.abs(_our_logits(params, {**fields, **wrong}, images) - theirs).max()
    print(f"{wrong}: {off:.1e} vs {right:.1e}")
    assert right <= TOL and off > 10 * max(right, 1e-6), (wrong, off, right)


def test_hub_directory_carries_model_args(tmp_path):
  """timm's own `save_for_hf` layout (config.json + weights); act_layer='gelu_tanh' (SigLIP-like
  map pooling, no class token) imports as gelu_approximate=True."""
  torch.manual_seed(1)
  args = dict(img_size=32, patch_size=8, **TINY_TIMM, class_token=False, global_pool="map",
              act_layer="gelu_tanh")
  model = _randomize(timm.create_model("vit_base_patch16_224", **args))
  timm.models.save_for_hf(model, str(tmp_path / "hub"), model_args=args, safe_serialization=True)
  config = json.loads((tmp_path / "hub" / "config.json").read_text())
  assert config["model_args"]["act_layer"] == "gelu_tanh"
  params, fields = timm_ckpt.read_params(str(tmp_path / "hub"))
  assert fields["gelu_approximate"] is True and fields["classifier"] == "map"
  images = _images((32, 32))
  np.testing.assert_allclose(_our_logits(params, fields, images), _timm_logits(model, images),
                             atol=TOL)


def test_import_refuses_what_has_no_counterpart(tmp_path):
  def state(model):
    return {k: v.numpy() for k, v in model.state_dict().items()}
  with pytest.raises(ValueError, match="average pooling of MAE / BEiT"):
    timm_ckpt.params_from_state_dict(state(_plain(global_pool="avg")))  # class token + fc_norm
  with pytest.raises(ValueError, match="class token with attention pooling"):
    timm_ckpt.params_from_state_dict(state(_plain(global_pool="map")))
  with pytest.raises(ValueError, match="q_norm.bias is not zero"):
    timm_ckpt.params_from_state_dict(state(_randomize(_plain(qk_norm=True))))
  with pytest.raises(ValueError, match="no q/k/v or projection biases"):
    timm_ckpt.params_from_state_dict(state(_plain(qkv_bias=False)))
  with pytest.raises(ValueError, match="pre-norm"):
    timm_ckpt.params_from_state_dict(state(_plain(pre_norm=True)))
  with pytest.raises(ValueError, match="number of attention heads"):
    timm_ckpt.params_from_state_dict(state(_plain(embed_dim=40)))
  params, fields = timm_ckpt.params_from_state_dict(state(_plain(embed_dim=40)),
                                                    model="vit_tiny_patch16_224",
                                                    config={"model_args": {"num_heads": 4}})
  assert fields["num_heads"] == 4
  old_timm = state(_plain(num_classes=3))  # timm < 0.9 representation layer: Linear + tanh
  old_timm.update({"pre_logits.fc.weight": np.ones((24, 32), np.float32),
                   "pre_logits.fc.bias": np.zeros(24, np.float32),
                   "head.weight": np.ones((3, 24), np.float32)})
  params, fields = timm_ckpt.params_from_state_dict(old_timm)
  assert fields["representation_size"] == 24 and params["pre_logits/kernel"].shape == (32, 24)
  _save(_plain(), tmp_path / "m.pth")
  with pytest.raises(ValueError, match=r"model='ViT-S/8' has width 384"):
    timm_ckpt.read_params(str(tmp_path / "m.pth"), model="ViT-S/8")


EXPORT_CASES = {
    # name: (variant, Model overrides, image size, output name)
    "token_tanh_gelu": ("Ti/8", {}, 32, "out.safetensors"),
    "gap_fc_norm_exact_gelu": ("Ti/8", dict(classifier="gap", fc_norm=True,
                                            gelu_approximate=False), 32, "out.pth"),
    "gap_sincos2d": ("Ti/8", dict(classifier="gap", posemb="sincos2d"), 32, "dir"),
    "map_scanned": ("Ti/8", dict(classifier="map", scan=True), 32, "out.safetensors"),
    "registers_layerscale_qk_norm": ("Ti/8", dict(num_registers=2, layerscale_init=0.1,
                                                  qk_norm=True), 32, "dir"),
    "hybrid_stem_only": ("R+Ti/16", dict(resnet_numerics="timm"), 64, "dir"),
    "hybrid_r26": ("R26+S/32", dict(resnet_numerics="timm", depth=1), 32, "out.pth"),
}


@pytest.mark.parametrize("case", sorted(EXPORT_CASES))
def test_export_loads_strictly_into_timm_with_our_logits(case, tmp_path):
  variant, overrides, size, output = EXPORT_CASES[case]
  kwargs = models.model_kwargs(variant, **{**TINY, **overrides})
  model = models.Model(num_classes=5, **kwargs)
  params = random_params(model, (size, size))
  images = _images((size, size), seed=1)
  ours = np.asarray(jax.jit(model.apply)({"params": params}, images))
  written = timm_ckpt.export(params, kwargs, 5, str(tmp_path / output), image_size=(size, size))
  name = timm_ckpt.timm_model_name(kwargs)
  assert name in timm.list_models()
  if output == "dir":  # timm's Hub layout: timm builds and loads it by itself.
    theirs_model = timm.create_model(f"local-dir:{written}", pretrained=True).eval()
  else:
    theirs_model = timm.create_model(
        name, pretrained=False, **timm_ckpt.timm_model_args(kwargs, 5, (size, size))).eval()
    state = timm_ckpt.read_state_dict(str(written))
    theirs_model.load_state_dict({k: torch.tensor(v) for k, v in state.items()}, strict=True)
  theirs = _timm_logits(theirs_model, images)
  diff = float(np.abs(ours - theirs).max())
  print(f"timm export {case} ({name}): max |logit diff| {diff:.1e}")
  assert np.abs(ours).max() > 0.05 and diff <= TOL


def test_export_import_roundtrip_is_exact(tmp_path):
  kwargs = models.model_kwargs("Ti/8", **TINY, num_registers=1, gelu_approximate=False)
  params = random_params(models.Model(num_classes=3, **kwargs), (32, 32))
  timm_ckpt.export(params, kwargs, 3, str(tmp_path / "m.safetensors"))
  back, fields = timm_ckpt.read_params(str(tmp_path / "m.safetensors"))
  assert fields["num_registers"] == 1 and fields["gelu_approximate"] is False
  jax.tree.map(np.testing.assert_array_equal, npz.unflatten(back), params)


@pytest.mark.parametrize("variant", ["Ti/16", "S/32", "B/16", "L/16", "H/14", "R+Ti/16",
                                     "R26+S/32", "R50+B/16"])
def test_published_variants_map_to_timm_models_of_the_same_size(variant):
  kwargs = models.model_kwargs(variant, resnet_numerics="timm")
  name = timm_ckpt.timm_model_name(kwargs)
  timm_model = timm.create_model(name, pretrained=False, device="meta",
                                 **timm_ckpt.timm_model_args(kwargs, 1000))
  ours = abstract_params(models.Model(num_classes=1000, **kwargs), (224, 224, 3))
  assert sum(p.numel() for p in timm_model.parameters()) == sum(
      int(np.prod(x.shape)) for x in jax.tree.leaves(ours))


@pytest.mark.parametrize("overrides,message", [
    (dict(posemb="rope2d"), "posemb='rope2d'"),
    (dict(use_bias=False), "use_bias=False"),
    (dict(parallel_block=True), "parallel_block=True"),
    (dict(representation_size=16), "representation_size=16: timm's VisionTransformer has no "
     "pre-logits"),
    (dict(width=56, mlp_dim=61), "mlp_dim=61: timm sizes the MLP as int"),
])
def test_export_refuses_what_timm_cannot_represent(overrides, message):
  with pytest.raises(ValueError, match=message):
    timm_ckpt.check_exportable(models.model_kwargs("Ti/8", **{**TINY, **overrides}))


def test_export_refuses_official_hybrid_numerics_unless_inexact_is_accepted():
  kwargs = models.model_kwargs("R50+B/16")
  with pytest.raises(ValueError, match="resnet_numerics='official'.*exact=False"):
    timm_ckpt.check_exportable(kwargs)
  timm_ckpt.check_exportable(kwargs, exact=False)
  with pytest.raises(ValueError, match="ResNet stages"):
    timm_ckpt.check_exportable(models.model_kwargs(
        "R50+B/16", resnet={"num_layers": (3, 4), "width_factor": 2}, resnet_numerics="timm"))
