"""Official `.npz` interop: exact names/shapes, layouts, partial loads, resizes and bad input."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import abstract_params
from vit_jax import checkpoints, models
from vit_jax.checkpoints import manager, npz
from vit_jax.models import resize

TINY = dict(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=4)


def _is_box(x):
  return isinstance(x, flax.core.meta.AxisMetadata)


def _init(model, image_size, seed=0):
  """Params structured as `model.init`'s (logical-axis boxes included), random values from NumPy.

  Only `jax.eval_shape` runs the model: compiling a real init costs ~10 s even for tiny models.
  """
  abstract = abstract_params(model, (image_size, image_size, 3), boxed=True)
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda box: box.replace_boxed((0.1 * rng.normal(size=box.value.shape)).astype(np.float32)),
      abstract, is_leaf=_is_box)


def _logits(model, params, images):
  return jax.jit(model.apply)({"params": params}, images)


def _images(size, seed=2, n=2):
  return jax.random.normal(jax.random.key(seed), (n, size, size, 3))


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
  """A tiny token-classifier ViT (16 px, patch 4, 10 classes), its params and its `.npz`."""
  model = models.get_model("ViT-Ti/16", num_classes=10, **TINY)
  params = flax.linen.unbox(_init(model, 16))
  path = tmp_path_factory.mktemp("ckpt") / "tiny.npz"
  checkpoints.save_npz(params, path)
  return model, params, path


def _abstract_params(name, image_size, **overrides):
  model = models.get_model(name, num_classes=1000, **overrides)
  return npz.to_per_layer(npz.flatten(abstract_params(model, (image_size, image_size, 3))))


def _official_vit_b16_shapes():
  """The official ViT-B/16 (224 px, 1000 classes) `.npz` keys and shapes, as published."""
  shapes = {
      "embedding/kernel": (16, 16, 3, 768), "embedding/bias": (768,), "cls": (1, 1, 768),
      "Transformer/posembed_input/pos_embedding": (1, 197, 768),
      "Transformer/encoder_norm/scale": (768,), "Transformer/encoder_norm/bias": (768,),
      "head/kernel": (768, 1000), "head/bias": (1000,),
  }
  for i in range(12):
    block = f"Transformer/encoderblock_{i}"
    for norm in ("LayerNorm_0", "LayerNorm_2"):
      shapes.update({f"{block}/{norm}/scale": (768,), f"{block}/{norm}/bias": (768,)})
    for proj in ("query", "key", "value"):
      attn = f"{block}/MultiHeadDotProductAttention_1/{proj}"
      shapes.update({f"{attn}/kernel": (768, 12, 64), f"{attn}/bias": (12, 64)})
    shapes.update({
        f"{block}/MultiHeadDotProductAttention_1/out/kernel": (12, 64, 768),
        f"{block}/MultiHeadDotProductAttention_1/out/bias": (768,),
        f"{block}/MlpBlock_3/Dense_0/kernel": (768, 3072),
        f"{block}/MlpBlock_3/Dense_0/bias": (3072,),
        f"{block}/MlpBlock_3/Dense_1/kernel": (3072, 768),
        f"{block}/MlpBlock_3/Dense_1/bias": (768,),
    })
  return shapes


@pytest.mark.parametrize("scan", [False, True])
def test_vit_b16_tree_is_the_official_npz_layout(scan):
  flat = _abstract_params("ViT-B/16", 224, scan=scan)
  assert {k: tuple(v.shape) for k, v in flat.items()} == _official_vit_b16_shapes()


def test_r50_b16_tree_has_the_official_hybrid_keys():
  flat = _abstract_params("R50+B/16", 224)
  expected = {"conv_root/kernel": (7, 7, 3, 64), "gn_root/scale": (64,), "gn_root/bias": (64,),
              "embedding/kernel": (1, 1, 1024, 768)}
  in_ch = 64
  for stage, units in enumerate((3, 4, 9), start=1):
    width = 64 * 2 ** (stage - 1)
    for unit in range(1, units + 1):
      prefix = f"block{stage}/unit{unit}"
      expected.update({f"{prefix}/conv1/kernel": (1, 1, in_ch, width),
                       f"{prefix}/conv2/kernel": (3, 3, width, width),
                       f"{prefix}/conv3/kernel": (1, 1, width, 4 * width)})
      for i, ch in ((1, width), (2, width), (3, 4 * width)):
        expected.update({f"{prefix}/gn{i}/scale": (ch,), f"{prefix}/gn{i}/bias": (ch,)})
      if unit == 1:
        expected.update({f"{prefix}/conv_proj/kernel": (1, 1, in_ch, 4 * width),
                         f"{prefix}/gn_proj/scale": (4 * width,),
                         f"{prefix}/gn_proj/bias": (4 * width,)})
      in_ch = 4 * width
  got = {k: tuple(v.shape) for k, v in flat.items()
         if not k.startswith(("Transformer/", "cls", "head"))}
  assert got == {**expected, "embedding/bias": (768,)}


def test_save_load_roundtrip(tiny_ckpt):
  _, params, path = tiny_ckpt
  with np.load(path) as f:
    stored = dict(f)
  assert set(stored) == set(npz.flatten(params))
  assert all(v.dtype == np.float32 for v in stored.values())
  jax.tree.map(np.testing.assert_array_equal, checkpoints.load_npz(path), params)


@pytest.mark.parametrize("scan", [False, True])
def test_load_pretrained_gives_identical_logits_in_either_layout(tiny_ckpt, scan):
  model, params, path = tiny_ckpt
  target = models.get_model("ViT-Ti/16", num_classes=10, scan=scan, **TINY)
  init = _init(target, 16, seed=5)
  loaded = checkpoints.load_pretrained(init, str(path))
  # Logical-axis boxes survive, so the training code can still shard the result.
  assert jax.tree.structure(loaded, is_leaf=_is_box) == jax.tree.structure(init, is_leaf=_is_box)
  x = _images(16)
  np.testing.assert_allclose(_logits(target, loaded, x), _logits(model, params, x),
                             atol=1e-5)


def test_scanned_params_save_as_per_layer_and_convert_back():
  model = models.get_model("ViT-Ti/16", num_classes=3, scan=True, **TINY)
  flat = npz.flatten(flax.linen.unbox(_init(model, 8)))
  per_layer = npz.to_per_layer(flat)
  assert "Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel" in per_layer
  assert not any("encoderblock/" in k for k in per_layer)
  back = npz.to_scanned(per_layer)
  assert set(back) == set(flat)
  for k in flat:
    np.testing.assert_array_equal(back[k], flat[k])
  del per_layer["Transformer/encoderblock_0/LayerNorm_0/scale"]
  with pytest.raises(ValueError, match=r"layers \[1\] are not 0..0"):
    npz.to_scanned(per_layer)


def test_new_num_classes_keeps_the_fresh_head(tiny_ckpt):
  _, params, path = tiny_ckpt
  init = flax.linen.unbox(_init(models.get_model("ViT-Ti/16", num_classes=7, **TINY), 16, seed=9))
  loaded = checkpoints.load_pretrained(init, path)
  np.testing.assert_array_equal(loaded["head"]["kernel"], init["head"]["kernel"])
  np.testing.assert_array_equal(loaded["cls"], params["cls"])


@pytest.mark.parametrize("scan", [False, True])
def test_a_plain_checkpoint_fine_tunes_into_a_model_with_new_options(tiny_ckpt, scan):
  """Registers, QK-norm and LayerScale params the checkpoint lacks start at their init value."""
  _, params, path = tiny_ckpt
  model = models.get_model("ViT-Ti/16", num_classes=10, num_registers=2, qk_norm=True,
                           layerscale_init=1e-4, scan=scan, **TINY)
  init = flax.linen.unbox(_init(model, 16, seed=9))
  loaded = npz.to_per_layer(npz.flatten(checkpoints.load_pretrained(init, path)))
  init = npz.to_per_layer(npz.flatten(init))
  fresh = {k: v for k, v in init.items() if k not in npz.flatten(params)}
  assert fresh and all(k.startswith("registers") or "_ln/" in k or "LayerScale" in k
                       for k in fresh)
  for key, value in fresh.items():
    np.testing.assert_array_equal(loaded[key], value)
  np.testing.assert_array_equal(loaded["cls"], params["cls"])


def test_dont_load_keeps_init_values(tiny_ckpt):
  _, params, path = tiny_ckpt
  init = flax.linen.unbox(_init(models.get_model("ViT-Ti/16", num_classes=10, **TINY), 16, seed=9))
  loaded = checkpoints.load_pretrained(init, path, dont_load=("head/.*", r".*/encoderblock_1/.*"))
  np.testing.assert_array_equal(loaded["head"]["bias"], init["head"]["bias"])
  np.testing.assert_array_equal(loaded["Transformer"]["encoderblock_1"]["LayerNorm_0"]["scale"],
                                init["Transformer"]["encoderblock_1"]["LayerNorm_0"]["scale"])
  np.testing.assert_array_equal(loaded["Transformer"]["encoderblock_0"]["LayerNorm_0"]["scale"],
                                params["Transformer"]["encoderblock_0"]["LayerNorm_0"]["scale"])


def test_pre_logits_is_dropped_for_a_model_without_it(tmp_path):
  with_repr = models.get_model("ViT-Ti/16", num_classes=10, representation_size=16, **TINY)
  path = tmp_path / "repr.npz"
  checkpoints.save_npz(flax.linen.unbox(_init(with_repr, 16)), path)
  plain_init = _init(models.get_model("ViT-Ti/16", num_classes=5, **TINY), 16)
  loaded = checkpoints.load_pretrained(plain_init, path)
  assert "pre_logits" not in loaded
  # The reverse direction would leave pre_logits random: an error unless explicitly re-initialised.
  plain_path = tmp_path / "plain.npz"
  checkpoints.save_npz(plain_init, plain_path)
  with pytest.raises(ValueError, match="missing from the checkpoint:\n      pre_logits/"):
    checkpoints.load_pretrained(_init(with_repr, 16), plain_path)
  loaded = checkpoints.load_pretrained(_init(with_repr, 16), plain_path,
                                       dont_load=("pre_logits/.*",))
  assert flax.linen.unbox(loaded)["pre_logits"]["kernel"].shape == (32, 16)


@pytest.mark.parametrize("scan", [False, True])
def test_checkpoint_params_the_model_lacks_are_refused_unless_named(tmp_path, scan):
  """A LayerScale, 3-block checkpoint into a plain 2-block model would compute otherwise."""
  rich = models.get_model("ViT-Ti/16", num_classes=10, layerscale_init=1e-4,
                          **dict(TINY, depth=3))
  path = tmp_path / "rich.npz"
  checkpoints.save_npz(flax.linen.unbox(_init(rich, 16)), path)
  plain_init = _init(models.get_model("ViT-Ti/16", num_classes=10, scan=scan, **TINY), 16)
  with pytest.raises(ValueError, match="checkpoint params the model does not have") as error:
    checkpoints.load_pretrained(plain_init, path)
  assert "LayerScale_attn/scale" in str(error.value) and "dont_load" in str(error.value)
  if not scan:  # Scanned, the third block is a shape mismatch of the stacked params instead.
    assert "encoderblock_2/" in str(error.value)
    loaded = checkpoints.load_pretrained(plain_init, path,
                                         dont_load=(r".*LayerScale_.*", r".*encoderblock_2/.*"))
    assert "encoderblock_2" not in flax.linen.unbox(loaded)["Transformer"]


@pytest.mark.parametrize("classifier,prefix", [("token", 1), ("gap", 0)])
def test_resolution_change_resizes_the_posemb_grid(tmp_path, classifier, prefix):
  kw = dict(TINY, classifier=classifier)
  path = tmp_path / "ckpt.npz"
  params = flax.linen.unbox(_init(models.get_model("ViT-Ti/16", num_classes=10, **kw), 16))
  checkpoints.save_npz(params, path)
  target = models.get_model("ViT-Ti/16", num_classes=10, **kw)
  loaded = checkpoints.load_pretrained(_init(target, 24), path)  # 4x4 -> 6x6 grid
  posemb = params["Transformer"]["posembed_input"]["pos_embedding"]
  new = flax.linen.unbox(loaded)["Transformer"]["posembed_input"]["pos_embedding"]
  assert new.shape == (1, prefix + 36, 32)
  np.testing.assert_allclose(new, resize.resize_posemb(posemb, (6, 6), prefix), atol=1e-6)
  assert _logits(target, loaded, _images(24)).shape == (2, 10)


def test_loading_into_abstract_params_allocates_only_what_is_loaded(tiny_ckpt):
  _, params, path = tiny_ckpt
  init = abstract_params(models.get_model("ViT-Ti/16", num_classes=3, **TINY), (16, 16, 3),
                         boxed=True)
  loaded = flax.linen.unbox(checkpoints.load_pretrained(init, path))
  np.testing.assert_array_equal(loaded["embedding"]["kernel"], params["embedding"]["kernel"])
  assert isinstance(loaded["head"]["kernel"], jax.ShapeDtypeStruct)  # new head: left to the caller


def test_posemb_of_a_token_checkpoint_fits_a_gap_model(tiny_ckpt):
  _, params, path = tiny_ckpt
  gap = models.get_model("ViT-Ti/16", num_classes=10, classifier="gap", **TINY)
  gap_init = abstract_params(gap, (24, 24, 3), boxed=True)
  loaded = flax.linen.unbox(checkpoints.load_pretrained(gap_init, path))
  posemb = params["Transformer"]["posembed_input"]["pos_embedding"]
  np.testing.assert_allclose(loaded["Transformer"]["posembed_input"]["pos_embedding"],
                             resize.resize_posemb(posemb, (6, 6), 1)[:, 1:], atol=1e-6)
  assert "cls" not in loaded


def _to_patches(images, p):
  b, h, w, c = images.shape
  return images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)


def _from_patches(patches):
  b, gh, gw, p, _, c = patches.shape
  return patches.transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * p, gw * p, c)


def test_patch_size_change_runs_the_checkpoint_at_another_patch_size(tiny_ckpt):
  """Patch 4 -> 8 on 2x-upsampled patches: same grid, same tokens, same logits (FlexiViT)."""
  model, params, path = tiny_ckpt
  target = models.get_model("ViT-Ti/16", num_classes=10, **dict(TINY, patch_size=8))
  loaded = checkpoints.load_pretrained(_init(target, 32), path)
  assert flax.linen.unbox(loaded)["embedding"]["kernel"].shape == (8, 8, 3, 32)
  x = _images(16)
  upsample = lambda p: jax.image.resize(p, (8, 8, 3), "bilinear", antialias=False)
  patches = _to_patches(x, 4)
  big = _from_patches(jax.vmap(jax.vmap(jax.vmap(upsample)))(patches))
  np.testing.assert_allclose(_logits(target, loaded, big), _logits(model, params, x),
                             atol=1e-4)


def test_load_pretrained_reads_an_orbax_train_state(tiny_ckpt, tmp_path):
  model, params, _ = tiny_ckpt
  checkpointer = manager.TrainStateCheckpointer(tmp_path, save_every_steps=1, async_save=False)
  checkpointer.save(3, {"params": jax.tree.map(jnp.asarray, params), "step": jnp.asarray(3)},
                    force=True)
  checkpointer.close()
  scanned = models.get_model("ViT-Ti/16", num_classes=10, scan=True, **TINY)
  loaded = checkpoints.load_pretrained(_init(scanned, 16, seed=4), tmp_path)
  x = _images(16)
  np.testing.assert_allclose(_logits(scanned, loaded, x), _logits(model, params, x), atol=1e-5)


def test_hybrid_roundtrip_uses_the_official_groupnorm_shape(tmp_path):
  kw = dict(width=32, depth=1, mlp_dim=64, num_heads=2,
            resnet={"num_layers": (1,), "width_factor": 1})
  model = models.get_model("R+Ti/16", num_classes=4, **kw)
  params = flax.linen.unbox(_init(model, 32))
  path = tmp_path / "hybrid.npz"
  checkpoints.save_npz(params, path)
  with np.load(path) as f:
    assert f["gn_root/scale"].shape == (1, 1, 1, 64)  # as in the published R50+ViT files
    assert f["block1/unit1/gn_proj/bias"].shape == (1, 1, 1, 256)
  loaded = checkpoints.load_pretrained(_init(model, 32, seed=3), path)
  x = _images(32)
  np.testing.assert_allclose(_logits(model, loaded, x), _logits(model, params, x),
                             atol=1e-5)
  assert checkpoints.load_npz(path)["gn_root"]["scale"].shape == (64,)


def test_mismatching_checkpoint_lists_the_first_keys_and_the_fix(tiny_ckpt):
  _, _, path = tiny_ckpt
  wider = _init(models.get_model("ViT-Ti/16", num_classes=10, **dict(TINY, width=64)), 16)
  with pytest.raises(ValueError) as err:
    checkpoints.load_pretrained(wider, path)
  message = str(err.value)
  assert "36 shape mismatches:" in message and "bias: checkpoint (32,) vs model (64,)" in message
  assert "... and" in message and "Fix:" in message and "dont_load" in message
  deeper = _init(models.get_model("ViT-Ti/16", num_classes=10, **dict(TINY, depth=3)), 16)
  with pytest.raises(ValueError,
                     match="missing from the checkpoint:\n      Transformer/encoderblock_2/"):
    checkpoints.load_pretrained(deeper, path)
  map_init = _init(models.get_model("ViT-Ti/16", num_classes=10,
                                    **dict(TINY, classifier="map")), 16)
  with pytest.raises(ValueError, match="MAPHead_0/"):
    checkpoints.load_pretrained(map_init, path)
  loaded = checkpoints.load_pretrained(map_init, path, dont_load=("MAPHead_0/.*",))
  assert "MAPHead_0" in loaded


def test_bad_files_raise_clear_errors(tmp_path, tiny_ckpt):
  _, params, path = tiny_ckpt
  with pytest.raises(FileNotFoundError, match="No checkpoint at .*missing.npz"):
    checkpoints.load_pretrained(params, tmp_path / "missing.npz")
  garbage = tmp_path / "garbage.npz"
  garbage.write_bytes(b"not a checkpoint at all")
  with pytest.raises(ValueError, match="garbage.npz is not a readable .npz checkpoint"):
    checkpoints.load_npz(garbage)
  truncated = tmp_path / "truncated.npz"
  truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  with pytest.raises(ValueError, match="truncated.npz is not a readable .npz checkpoint"):
    checkpoints.load_npz(truncated)
  with pytest.raises(ValueError, match=r"pass variables\['params'\]"):
    checkpoints.load_pretrained({"params": params}, path)
