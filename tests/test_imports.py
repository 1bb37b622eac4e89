"""Checkpoints of other sources (vit_jax.checkpoints.imports): Hugging Face import with the same
logits, source detection and dispatch, the numerics check of `--config.init`, `vit_jax.convert`
from any source into .npz and Orbax."""
import copy
import json
import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest
import torch
import transformers

from helpers import REPO, tiny_config
from vit_jax import checkpoints, models
from vit_jax.checkpoints import export, hf, imports, npz, pretrained
from vit_jax.training import checks, evaluation
from vit_jax.training import program as program_lib

TINY_HF = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               image_size=32, patch_size=8, num_labels=5)


def _hf_model(directory, seed=0, **config):
  """A tiny ViTForImageClassification with weights of unit-scale activations (its own init keeps
  the MLP inputs so small that both GELUs agree), saved with save_pretrained."""
  torch.manual_seed(seed)
  model = transformers.ViTForImageClassification(transformers.ViTConfig(**{**TINY_HF, **config}))
  generator = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=generator)
      if "layernorm" in name and name.endswith("weight"):
        p.copy_(1 + 0.1 * noise)
      elif p.ndim == 1:
        p.copy_(0.3 * noise)
      else:
        p.copy_(noise / np.sqrt(np.prod(p.shape[1:])))
  model.save_pretrained(directory)
  return model.eval()


def _images(n=4, hw=32):
  return np.random.default_rng(0).uniform(-1, 1, (n, hw, hw, 3)).astype(np.float32)


def _hf_logits(model, images):
  with torch.no_grad():
    return model(torch.from_numpy(images.transpose(0, 3, 1, 2))).logits.numpy()


def _our_logits(params, fields, images, num_classes=5, **changes):
  model = models.get_model(num_classes=num_classes, **{**fields, **changes})
  return np.asarray(jax.jit(model.apply)({"params": npz.unflatten(params)}, images))


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  """{hidden_act: (directory, HF model)} for the exact and the tanh GELU, at HF's default eps."""
  root = tmp_path_factory.mktemp("hf")
  return {act: (str(root / act), _hf_model(root / act, hidden_act=act))
          for act in ("gelu", "gelu_pytorch_tanh")}


@pytest.mark.parametrize("act,approximate", [("gelu", False), ("gelu_pytorch_tanh", True)])
def test_hf_import_gives_transformers_logits(hf_dirs, act, approximate):
  directory, hf_model = hf_dirs[act]
  params, fields = hf.read_params(directory)
  assert fields == dict(variant=None, patch_size=8, width=32, depth=2, mlp_dim=64, num_heads=2,
                        gelu_approximate=approximate)
  images = _images()
  theirs = _hf_logits(hf_model, images)
  diff = float(np.abs(_our_logits(params, fields, images) - theirs).max())
  other_gelu = float(np.abs(_our_logits(params, fields, images, gelu_approximate=not approximate)
                            - theirs).max())
  print(f"hidden_act={act}, layer_norm_eps=1e-12: max |logit diff| {diff:.1e}; with the other "
        f"GELU {other_gelu:.1e} (max |logit| {np.abs(theirs).max():.2f})")
  assert np.abs(theirs).max() > 1.0
  assert diff <= 1e-4
  assert other_gelu > 1e-4  # The field is what makes them agree.


def test_hf_import_reads_bf16_safetensors_and_pytorch_bin(hf_dirs, tmp_path):
  directory, hf_model = hf_dirs["gelu"]
  reference, _ = hf.read_params(directory)
  copy.deepcopy(hf_model).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
  bf16, _ = hf.read_params(tmp_path / "bf16")
  assert {k: v.dtype for k, v in bf16.items()} == {k: np.float32 for k in reference}
  np.testing.assert_allclose(bf16["head/kernel"], reference["head/kernel"], rtol=1e-2, atol=1e-2)
  (tmp_path / "bin").mkdir()
  # transformers 5.x module names (vit.layers.0.attention.q_proj...), as a plain torch.save.
  torch.save(hf_model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
  (tmp_path / "bin" / "config.json").write_text(open(f"{directory}/config.json").read())
  jax.tree.map(np.testing.assert_array_equal, hf.read_params(tmp_path / "bin")[0], reference)
  # The weights file itself names the directory too.
  assert imports.detect(f"{directory}/model.safetensors") == "hf"
  jax.tree.map(np.testing.assert_array_equal,
               imports.read(f"{directory}/model.safetensors")[0], reference)


@pytest.mark.parametrize("change,message", [
    (dict(hidden_act="relu"), "hidden_act='relu' has no counterpart"),
    (dict(hidden_act="quick_gelu"), "hidden_act='quick_gelu'"),
    (dict(qkv_bias=False), "qkv_bias=false"),
    (dict(layer_norm_eps=1e-3), "layer_norm_eps=0.001"),
    (dict(model_type="deit", architectures=["DeiTForImageClassification"]), "model_type='deit'"),
    (dict(architectures=["ViTForMaskedImageModeling"]), "only transformers' ViTForImage"),
])
def test_hf_configs_our_vit_cannot_reproduce_are_refused(change, message):
  config = transformers.ViTConfig(**TINY_HF).to_dict()
  with pytest.raises(ValueError, match=message):
    hf.model_fields({**config, **change})
  # Any eps up to 1e-5 reproduces the logits (module docstring); HF's default is 1e-12.
  assert hf.model_fields({**config, "layer_norm_eps": 1e-5})["gelu_approximate"] is False


def test_hf_import_refuses_a_wrong_model_and_foreign_weights(hf_dirs, tmp_path):
  directory, hf_model = hf_dirs["gelu"]
  with pytest.raises(ValueError, match=r"--model=ViT-S/16 does not match .*width=384"):
    hf.read_params(directory, model="ViT-S/16")
  state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
  state["vit.embeddings.mask_token"] = np.zeros((1, 1, 32), np.float32)
  with pytest.raises(ValueError, match="has weights .*mask_token"):
    hf.params_from_state_dict(state, depth=2, num_heads=2)
  with pytest.raises(ValueError, match="no 'vit.encoder.layer.2.layernorm_before.weight'"):
    hf.params_from_state_dict(state, depth=3, num_heads=2)
  (tmp_path / "config.json").write_text(open(f"{directory}/config.json").read())
  (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
  with pytest.raises(ValueError, match="is not a readable safetensors file"):
    imports.read(tmp_path)


# --- Detection and dispatch -----------------------------------------------------------------------

def _npz(path, keys):
  np.savez(path, **{k: np.zeros((2,), np.float32) for k in keys})
  return str(path)


def test_each_source_is_detected(hf_dirs, tmp_path):
  official = ["embedding/kernel", "Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel",
              "Transformer/posembed_input/pos_embedding"]
  big_vision = ["params/embedding/kernel", "params/pos_embedding",
                "params/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel"]
  (tmp_path / "run" / "checkpoints" / "3" / "state").mkdir(parents=True)
  (tmp_path / "run" / "config.json").write_text(json.dumps({"model": {"variant": "Ti/16"}}))
  for name in ("w.safetensors", "w.pth", "w.bin", "w.PT", "junk.npz"):
    (tmp_path / name).write_bytes(b"junk")
  (tmp_path / "timm_hub").mkdir()
  (tmp_path / "timm_hub" / "config.json").write_text(
      json.dumps({"architecture": "vit_tiny_patch16_224", "num_classes": 10}))
  (tmp_path / "timm_hub" / "model.safetensors").write_bytes(b"junk")
  cases = {
      hf_dirs["gelu"][0]: "hf",
      f"{hf_dirs['gelu'][0]}/model.safetensors": "hf",
      str(tmp_path / "run"): "orbax",
      str(tmp_path / "run" / "checkpoints"): "orbax",
      str(tmp_path / "run" / "checkpoints" / "3"): "orbax",
      str(tmp_path / "w.safetensors"): "timm",
      str(tmp_path / "w.pth"): "timm",
      str(tmp_path / "w.bin"): "timm",
      str(tmp_path / "w.PT"): "timm",
      str(tmp_path / "timm_hub"): "timm",
      str(tmp_path / "timm_hub" / "model.safetensors"): "timm",
      _npz(tmp_path / "ViT-B_16.npz", official): "official",
      _npz(tmp_path / "prefixed.npz", ["params/" + k for k in official]): "official",
      _npz(tmp_path / "bv.npz", big_vision): "big_vision",
      _npz(tmp_path / "bv_unprefixed.npz", [k.removeprefix("params/") for k in big_vision]):
          "big_vision",
      _npz(tmp_path / "siglip.npz", [k.replace("params/", "params/img/") for k in big_vision[:2]]):
          "big_vision",
      str(tmp_path / "junk.npz"): "official",  # Its reader says what is wrong with it.
  }
  assert {path: imports.detect(path) for path in cases} == cases
  with pytest.raises(FileNotFoundError, match="No checkpoint at"):
    imports.detect(tmp_path / "missing.npz")
  with pytest.raises(ValueError, match="--from=onnx: choose from"):
    imports.read(tmp_path / "w.bin", "onnx")
  assert imports.model_fields(tmp_path / "ViT-B_16.npz") == {"variant": "ViT-B_16"}
  assert imports.model_fields(tmp_path / "prefixed.npz") is None
  assert imports.model_fields(tmp_path / "run")["variant"] == "Ti/16"
  assert imports.model_fields(tmp_path / "run")["gelu_approximate"] is True  # Recorded default.
  assert imports.model_fields(hf_dirs["gelu"][0])["gelu_approximate"] is False
  assert imports.image_channels(hf_dirs["gelu"][0]) == 3
  # --config.init= takes every kind (the readers report what is wrong inside a file).
  for path in cases:
    checks.check_checkpoint_path(path)
  (tmp_path / "notes.txt").write_text("")
  with pytest.raises(ValueError, match=r"is a file but not a checkpoint \(.npz, .safetensors"):
    checks.check_checkpoint_path(str(tmp_path / "notes.txt"))


@pytest.mark.parametrize("source,suffix", [("timm", ".safetensors"), ("big_vision", ".npz")])
def test_timm_and_big_vision_go_to_their_readers(monkeypatch, tmp_path, source, suffix):
  """The dispatch only: the readers themselves are tested with their modules."""
  path = tmp_path / f"w{suffix}"
  if suffix == ".npz":
    _npz(path, ["params/pos_embedding", "params/Transformer/encoderblock/MlpBlock_0/bias"])
  else:
    path.write_bytes(b"")
  calls = []

  def read_params(p, model=None):
    calls.append((p, model))
    return {"cls": np.zeros((1, 1, 4))}, {"gelu_approximate": False, "width": 4}

  fake = types.ModuleType(f"vit_jax.checkpoints.{source}")
  fake.read_params = read_params
  monkeypatch.setitem(sys.modules, fake.__name__, fake)
  assert imports.read(path, model="ViT-Ti/16")[1]["width"] == 4
  assert calls == [(str(path), "ViT-Ti/16")]
  assert imports.model_fields(path) == {"gelu_approximate": False, "width": 4}
  with pytest.raises(ValueError, match="--config.model.gelu_approximate=False"):
    pretrained.read_params(path, model_fields=models.model_kwargs("Ti/16"))

  monkeypatch.setitem(sys.modules, fake.__name__, None)  # The module is missing.
  with pytest.raises(ValueError, match=f"needs vit_jax.checkpoints.{source}, which this"):
    imports.read(path)

  def missing_package(name):
    raise ModuleNotFoundError("No module named 'timm'", name="timm")
  monkeypatch.setattr(imports.importlib, "import_module", missing_package)
  with pytest.raises(ValueError, match="pip install --no-deps timm"):
    imports.read(path, source)


# --- Fine-tuning from an import, and the converter ------------------------------------------------

def test_init_from_an_hf_dir_needs_its_numerics(hf_dirs, data_root):
  """`--config.init=<HF dir>`: refused before compiling while the model's GELU differs, then
  read, checked and fitted (new head, 4x4 -> 2x2 position grid) once it is set."""
  config = tiny_config(data_root)
  config.model.update(patch_size=8, width=32, depth=2, num_heads=2, mlp_dim=64)
  config.init = hf_dirs["gelu"][0]
  config.dont_load = ("head/.*",)
  with pytest.raises(ValueError, match=r"gelu_approximate=False .*set "
                                       r"--config\.model\.gelu_approximate=False"):
    program_lib.TrainProgram.from_config(config, devices=jax.devices()[:1]).pretrained_params()
  config.model.gelu_approximate = False
  program = program_lib.TrainProgram.from_config(config, devices=jax.devices()[:1])
  params = program.pretrained_params()
  np.testing.assert_array_equal(params["cls"], hf.read_params(hf_dirs["gelu"][0])[0]["cls"])


def test_evaluate_refuses_an_hf_dir_of_other_numerics(hf_dirs, data_root, tmp_path):
  """Evaluation loads a checkpoint as it is (no shape may change), and as it computes: the exact
  GELU is not evaluated with the tanh approximation, which no shape check would notice."""
  config = tiny_config(data_root)
  config.model.update(patch_size=8, width=32, depth=2, num_heads=2, mlp_dim=64)
  with pytest.raises(ValueError, match=r"gelu_approximate=False .*set "
                                       r"--config\.model\.gelu_approximate=False"):
    evaluation.evaluate_checkpoint(config, str(tmp_path), checkpoint=hf_dirs["gelu"][0],
                                   devices=jax.devices()[:1])


def test_convert_from_hf_to_npz_and_orbax_loads_back(hf_dirs, tmp_path):
  """The command line end to end: an HF dir (detected) to .npz + Orbax; both load with
  load_pretrained into the model and give transformers' logits; the Orbax output keeps the exact
  GELU, so loading it into a tanh-GELU model is refused, while the .npz cannot tell."""
  directory, hf_model = hf_dirs["gelu"]
  out = tmp_path / "out"
  result = subprocess.run(
      [sys.executable, "-m", "vit_jax.convert", f"--input={directory}", f"--output_dir={out}",
       "--formats=npz,orbax"], env=dict(os.environ, JAX_PLATFORMS="cpu"), cwd=REPO,
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert "--config.model.gelu_approximate=False" in result.stderr  # The .npz's caveat.
  assert sorted(os.listdir(out)) == ["ViT-custom.npz", "ViT-custom_orbax"]
  fields = imports.model_fields(out / "ViT-custom_orbax")
  assert fields["gelu_approximate"] is False and fields["width"] == 32
  model = models.get_model(num_classes=5, **fields)
  init = jax.eval_shape(lambda: model.init(jax.random.key(0), _images(1)))["params"]
  images = _images()
  theirs = _hf_logits(hf_model, images)
  for path in (out / "ViT-custom.npz", out / "ViT-custom_orbax"):
    loaded = checkpoints.load_pretrained(init, path, model_fields=models.model_kwargs(**fields))
    np.testing.assert_allclose(np.asarray(model.apply({"params": loaded}, images)), theirs,
                               atol=1e-4)
  tanh = models.model_kwargs(**dict(fields, gelu_approximate=True))
  with pytest.raises(ValueError, match="gelu_approximate=False"):
    checkpoints.load_pretrained(init, out / "ViT-custom_orbax", model_fields=tanh)
  checkpoints.load_pretrained(init, out / "ViT-custom.npz", model_fields=tanh)


def test_convert_refuses_overrides_against_the_source_numerics(hf_dirs, tmp_path):
  directory = hf_dirs["gelu"][0]
  with pytest.raises(ValueError, match=r"""--overrides='\{"gelu_approximate": false\}'"""):
    export.convert(directory, None, str(tmp_path), overrides={"gelu_approximate": True})
  with pytest.raises(ValueError, match="does not match"):
    export.convert(directory, "ViT-Ti/16", str(tmp_path))
  # Without overrides the source's numerics are kept: the HF export keeps the exact GELU.
  export.convert(directory, None, str(tmp_path), formats=["hf"], source="hf")
  assert json.loads((tmp_path / "config.json").read_text())["hidden_act"] == "gelu"
