"""`python -m vit_jax.convert`: official .npz + Hugging Face ViTForImageClassification, same
logits."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from helpers import abstract_params, final_params, tiny_config
from vit_jax import checkpoints, models
from vit_jax.checkpoints import export, hf, manager, npz
from vit_jax.training import loop

TINY = dict(width=32, depth=2, mlp_dim=64, num_heads=2)


def _random_params(model, image_hw, seed=0, scale=0.05):
  """Random values everywhere, LayerNorm scales around 1 (the real init zeroes head and biases,
  which would hide mapping mistakes there). Built from `eval_shape`: no init compile."""
  abstract = abstract_params(model, (*image_hw, 3))
  rng = np.random.default_rng(seed)

  def sample(path, leaf):
    noise = scale * rng.normal(size=leaf.shape)
    return (noise + (path[-1].key == "scale")).astype(np.float32)

  return jax.tree_util.tree_map_with_path(sample, abstract)


def _hf_logits(directory, images):
  model, info = transformers.ViTForImageClassification.from_pretrained(
      directory, output_loading_info=True)
  assert not any(info.values()), info  # no missing / unexpected / mismatched weights
  assert model.dtype == torch.float32
  with torch.no_grad():
    return model.eval()(torch.from_numpy(np.array(images).transpose(0, 3, 1, 2))).logits.numpy()


@pytest.mark.slow
def test_vit_ti16_export_matches_transformers_logits(tmp_path):
  """Real ViT-Ti/16 at 224 px, randomly initialised, through the converter into transformers."""
  model = models.get_model("ViT-Ti/16", num_classes=10)
  params = _random_params(model, (224, 224))
  source = tmp_path / "in.npz"
  checkpoints.save_npz(params, source)
  written = export.convert(str(source), "ViT-Ti/16", str(tmp_path / "out"), num_classes=10)
  assert sorted(p.name for p in written) == ["ViT-Ti_16.npz", "config.json", "model.safetensors",
                                             "preprocessor_config.json"]
  images = jax.random.uniform(jax.random.key(1), (2, 224, 224, 3), minval=-1.0, maxval=1.0)
  ours = np.asarray(jax.jit(model.apply)({"params": params}, images))
  theirs = _hf_logits(tmp_path / "out", images)
  max_diff = float(np.abs(ours - theirs).max())
  print(f"ViT-Ti/16 @224, batch 2: max |logit diff| vs transformers {transformers.__version__} = "
        f"{max_diff:.2e} (max |logit| {np.abs(ours).max():.2f})")
  assert np.abs(ours).max() > 0.5  # non-trivial logits
  assert max_diff <= 1e-4
  config = json.loads((tmp_path / "out" / "config.json").read_text())
  assert config["hidden_act"] == "gelu_pytorch_tanh" and config["layer_norm_eps"] == 1e-6
  jax.tree.map(np.testing.assert_array_equal,
               checkpoints.load_npz(tmp_path / "out" / "ViT-Ti_16.npz"), params)


def test_orbax_scanned_non_square_patches_export(tmp_path):
  """Orbax train-state input, scanned layers, (4, 2) patches on 16x8 images, through the CLI
  code."""
  kwargs = dict(TINY, patch_size=(4, 2), scan=True)
  model = models.get_model("ViT-Ti/16", num_classes=5, **kwargs)
  params = _random_params(model, (16, 8))
  ckpt = manager.TrainStateCheckpointer(tmp_path / "ckpts", save_every_steps=1, async_save=False)
  ckpt.save(7, {"params": jax.tree.map(jnp.asarray, params), "step": jnp.asarray(7)}, force=True)
  ckpt.close()
  export.convert(str(tmp_path / "ckpts"), "ViT-Ti/16", str(tmp_path / "out"),
                  overrides=dict(TINY, patch_size=[4, 2], scan=True))
  images = jax.random.normal(jax.random.key(2), (2, 16, 8, 3))
  ours = np.asarray(jax.jit(model.apply)({"params": params}, images))
  np.testing.assert_allclose(_hf_logits(tmp_path / "out", images), ours, atol=1e-5)
  config = json.loads((tmp_path / "out" / "config.json").read_text())
  assert (config["image_size"], config["patch_size"]) == ([16, 8], [4, 2])


@pytest.mark.parametrize("gelu_approximate", [True, False])
def test_export_then_import_gives_back_the_params_and_the_model(tmp_path, gelu_approximate):
  """hf.read_params inverts hf.export exactly (non-square patches too); the exact-GELU model
  exports as hidden_act 'gelu' with our logits and imports back with gelu_approximate=False."""
  kwargs = dict(TINY, patch_size=(4, 2), gelu_approximate=gelu_approximate)
  model = models.get_model("ViT-Ti/16", num_classes=3, **kwargs)
  params = _random_params(model, (16, 8), scale=0.5)
  hf.export(params, models.model_kwargs("ViT-Ti/16", **kwargs), tmp_path)
  imported, fields = hf.read_params(tmp_path)
  jax.tree.map(np.testing.assert_array_equal, npz.unflatten(imported), params)
  assert models.model_kwargs(**fields) == models.model_kwargs("ViT-Ti/16", **kwargs)
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["hidden_act"] == ("gelu_pytorch_tanh" if gelu_approximate else "gelu")
  images = jax.random.normal(jax.random.key(3), (2, 16, 8, 3))
  ours = np.asarray(jax.jit(model.apply)({"params": params}, images))
  np.testing.assert_allclose(_hf_logits(tmp_path, images), ours, atol=1e-4)


def test_preprocessor_maps_uint8_to_the_training_value_range(tmp_path):
  model = models.get_model("ViT-Ti/16", num_classes=3, **dict(TINY, patch_size=8))
  hf.export(_random_params(model, (16, 16)), models.model_kwargs("ViT-Ti/16", **TINY, patch_size=8),
            tmp_path)
  processor = transformers.AutoImageProcessor.from_pretrained(tmp_path)
  pixels = np.zeros((16, 16, 3), np.uint8)
  pixels[0, 0] = 255
  out = processor(images=pixels, return_tensors="np")["pixel_values"][0]
  assert out.shape == (3, 16, 16)
  np.testing.assert_allclose([out.min(), out.max()], [-1.0, 1.0], atol=1e-6)


@pytest.mark.parametrize("overrides,message", [
    (dict(classifier="gap"), r"cannot represent \{'classifier': 'gap'\}"),
    (dict(representation_size=16), "representation_size"),
    (dict(posemb="sincos2d"), "posemb"),
])
def test_models_without_an_hf_equivalent_are_refused(tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message):
    export.convert(str(tmp_path / "unused.npz"), "ViT-Ti/16", str(tmp_path), overrides=overrides)
  with pytest.raises(ValueError, match="resnet"):
    hf.check_exportable(models.model_kwargs("R50+B/16"))


def test_npz_only_export_works_for_any_model(tmp_path):
  kwargs = dict(TINY, patch_size=4, classifier="map", posemb="sincos2d")
  params = _random_params(models.get_model("ViT-Ti/16", num_classes=4, **kwargs), (16, 16))
  checkpoints.save_npz(params, tmp_path / "in.npz")
  written = export.convert(str(tmp_path / "in.npz"), "ViT-Ti/16", str(tmp_path / "out"),
                            overrides=kwargs, formats=["npz"])
  assert [p.name for p in written] == ["ViT-Ti_16.npz"]


def test_wrong_model_or_classes_name_the_problem(tmp_path):
  params = _random_params(models.get_model("ViT-Ti/16", num_classes=4, **TINY, patch_size=4),
                          (16, 16))
  checkpoints.save_npz(params, tmp_path / "in.npz")
  with pytest.raises(ValueError, match="--num_classes=7 but the checkpoint's head has 4 classes"):
    export.convert(str(tmp_path / "in.npz"), "ViT-Ti/4", str(tmp_path), num_classes=7,
                   overrides=TINY)
  with pytest.raises(ValueError, match=r"(?s)shape mismatches:.*Fix: pass the --model"):
    export.convert(str(tmp_path / "in.npz"), "ViT-S/4", str(tmp_path), overrides=dict(depth=2))
  with pytest.raises(ValueError, match="--formats=onnx"):
    export.convert(str(tmp_path / "in.npz"), "ViT-Ti/4", str(tmp_path), formats=["onnx"])


def test_cli_exits_2_with_the_error_on_bad_input(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = lambda *args: subprocess.run([sys.executable, "-m", "vit_jax.convert", *args], env=env,
                                     capture_output=True, text=True, timeout=300)
  result = run(f"--input={tmp_path}/missing.npz", "--model=ViT-Ti/16", f"--output_dir={tmp_path}")
  assert result.returncode == 2 and "No checkpoint at" in result.stderr, result.stderr
  result = run("--model=ViT-Ti/16")
  assert result.returncode == 2 and "Missing --input, --output_dir" in result.stderr, result.stderr


@pytest.mark.slow
def test_a_trained_grayscale_run_exports_from_its_workdir_record(data_root, tmp_path):
  """The quickstart's kind of model (1 channel, no named variant): `--input=WORKDIR/checkpoints`
  alone, the model read from the run's config.json, into a 1-channel HF model with our logits."""
  config = tiny_config(data_root, total_steps=2)
  config.input.pp = "decode(channels=1)|value_range(-1, 1)|onehot(4)"
  config.evals.val.pp = config.input.pp
  workdir = tmp_path / "run"
  loop.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1])
  written = export.convert(str(workdir / "checkpoints"), None, str(tmp_path / "out"))
  assert "ViT-custom.npz" in {p.name for p in written}
  processor = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
  assert len(processor["image_mean"]) == len(processor["image_std"]) == 1
  params = final_params(str(workdir))
  model = models.get_model(num_classes=4, **config.model.to_dict())
  images = jax.random.uniform(jax.random.key(1), (2, 16, 16, 1), minval=-1.0, maxval=1.0)
  ours = np.asarray(jax.jit(model.apply)({"params": params}, images))
  np.testing.assert_allclose(_hf_logits(tmp_path / "out", images), ours, atol=1e-5)
