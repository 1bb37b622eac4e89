"""big_vision ViT `.npz` checkpoints: import, verified by logits against timm loading the same file.

A random tiny model of ours is written as big_vision would save it (`_to_big_vision` below: the
naming of big_vision/models/vit.py, its posemb-before-class-token order, optionally scanned, under
`params/`). timm reads such files itself (`vision_transformer._load_weights` detects big_vision's
layout, as for SigLIP), so timm's logits on the same images are the reference for our
`big_vision.read_params` import (<= 1e-4 in float32; ~1e-7 measured). timm has no fixed sincos2d
embedding: for those models timm gets the table from a NumPy re-derivation of big_vision's
`posemb_sincos_2d`, which is also checked against ours separately.
"""
import importlib.util
import re

import jax
import numpy as np
import pytest

from helpers import abstract_params, random_params
from vit_jax import models
from vit_jax.checkpoints import big_vision, npz

TINY = dict(width=32, depth=2, mlp_dim=64, num_heads=2)
TOL = 1e-4


# Our block module names -> big_vision's Encoder1DBlock ones (nn.LayerNorm() twice, then
# nn.MultiHeadDotProductAttention and MlpBlock, auto-named by flax in call order).
_BV_BLOCK = {"LayerNorm_0": "LayerNorm_0", "MultiHeadDotProductAttention_1":
             "MultiHeadDotProductAttention_0", "LayerNorm_2": "LayerNorm_1",
             "MlpBlock_3": "MlpBlock_0"}


def _to_big_vision(params, classifier: str, scanned: bool, prefix: str = "params/"):
  """Our params -> the flat dict big_vision's ViT would save for the same model."""
  flat = npz.to_per_layer(npz.flatten(params))
  out = {}
  for key, value in flat.items():
    value = np.asarray(value)
    if match := re.match(r"^Transformer/encoderblock_(\d+)/([^/]+)/(.+)$", key):
      out[f"Transformer/encoderblock_{match[1]}/{_BV_BLOCK[match[2]]}/{match[3]}"] = value
    elif key == "Transformer/posembed_input/pos_embedding":
      # big_vision adds the (patch-only) posemb, then prepends the class token: fold our class
      # token's row into the token.
      if classifier == "token":
        out["pos_embedding"] = value[:, 1:]
      else:
        out["pos_embedding"] = value
    else:
      out[key] = value
  if classifier == "token" and "pos_embedding" in out:
    out["cls"] = out["cls"] + flat["Transformer/posembed_input/pos_embedding"][:, :1]
  if scanned:
    out = npz.to_scanned(out)
  return {prefix + k: v for k, v in out.items()}


def _save(flat, path):
  np.savez(path, **flat)
  return str(path)


def _bv_posemb_sincos_2d(h, w, width, temperature=10_000.0):
  """big_vision's posemb_sincos_2d (MoCo v3), re-derived in NumPy."""
  y, x = np.mgrid[:h, :w]
  omega = np.arange(width // 4) / (width // 4 - 1)
  omega = 1.0 / temperature**omega
  y = y.flatten()[:, None] * omega[None]
  x = x.flatten()[:, None] * omega[None]
  return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)[None]


@pytest.mark.parametrize("hwd", [(14, 14, 384), (3, 5, 32), (2, 2, 8)])
def test_sincos2d_is_big_visions_formula(hwd):
  from vit_jax.models import vit  # pylint: disable=g-import-not-at-top
  np.testing.assert_allclose(np.asarray(vit.posemb_sincos_2d(*hwd)), _bv_posemb_sincos_2d(*hwd),
                             atol=2e-6)


def _ours(params, fields, images, num_classes):
  fields = dict(fields)
  fields.pop("variant")
  model = models.get_model(None, num_classes=num_classes, **fields)
  return np.asarray(jax.jit(model.apply)({"params": npz.unflatten(params)}, images))


CASES = {
    # name: (Model overrides, scanned, file prefix)
    "tok_learn_per_layer": (dict(classifier="token"), False, "params/"),
    "gap_sincos2d_scanned": (dict(classifier="gap", posemb="sincos2d"), True, "params/"),
    "map_learn_scanned_siglip_prefix": (dict(classifier="map"), True, "params/img/"),
    "tok_sincos2d_rep_size": (dict(classifier="token", posemb="sincos2d",
                                   representation_size=24), False, ""),
    "gap_learn_per_layer": (dict(classifier="gap"), False, "params/"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_import_matches_our_model(case, tmp_path):
  """The import gives back the model it was written from (same logits), with the fields
  big_vision's params imply."""
  overrides, scanned, prefix = CASES[case]
  model = models.get_model("Ti/8", num_classes=5, **TINY, **overrides)
  params = random_params(model, (32, 32))
  path = _save(_to_big_vision(params, overrides["classifier"], scanned, prefix),
               tmp_path / "bv.npz")
  imported, fields = big_vision.read_params(path)
  assert {k: fields[k] for k in overrides} == overrides
  assert fields["gelu_approximate"] is True and fields["num_heads"] == 2
  images = np.random.RandomState(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  want = np.asarray(jax.jit(model.apply)({"params": params}, images))
  np.testing.assert_allclose(_ours(imported, fields, images, 5), want, atol=1e-5)


_HAS_TIMM = importlib.util.find_spec("timm") is not None


@pytest.mark.skipif(not _HAS_TIMM, reason="timm is not installed (a test extra)")
@pytest.mark.parametrize("case", sorted(CASES))
def test_import_reproduces_timm_loading_the_same_file(case, tmp_path):
  import timm_shim  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  timm_shim.import_timm()
  from timm.models import vision_transformer as timm_vit  # pylint: disable=g-import-not-at-top

  overrides, scanned, prefix = CASES[case]
  classifier = overrides["classifier"]
  model = models.get_model("Ti/8", num_classes=5, **TINY, **overrides)
  params = random_params(model, (32, 32), seed=1)
  flat = _to_big_vision(params, classifier, scanned, prefix)
  path = _save(flat, tmp_path / "bv.npz")
  imported, fields = big_vision.read_params(path)

  rep = overrides.get("representation_size")
  timm_model = timm_vit.VisionTransformer(
      img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
      num_classes=0 if rep else 5, class_token=classifier == "token",
      global_pool={"token": "token", "gap": "avg", "map": "map"}[classifier], fc_norm=False,
      no_embed_class=True, act_layer="gelu_tanh").eval()
  timm_file = path
  if overrides.get("posemb") == "sincos2d":  # timm has no fixed sincos2d: hand it the table.
    timm_file = _save({**flat, f"{prefix}pos_embedding": _bv_posemb_sincos_2d(4, 4, 32)},
                      tmp_path / "bv_for_timm.npz")
  # timm detects big_vision's layout by the 'params/' prefix or the top-level pos_embedding.
  timm_vit._load_weights(timm_model, timm_file)  # pylint: disable=protected-access
  images = np.random.RandomState(2).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    theirs = timm_model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  if rep:  # timm dropped the pre-logits layer (0.9): big_vision's tanh(Dense) + head, in NumPy.
    p = {k[len(prefix):]: v for k, v in flat.items()}
    theirs = np.tanh(theirs @ p["pre_logits/kernel"] + p["pre_logits/bias"])
    theirs = theirs @ p["head/kernel"] + p["head/bias"]
  ours = _ours(imported, fields, images, 5)
  diff = float(np.abs(ours - theirs).max())
  print(f"big_vision {case}: max |logit diff| vs timm {diff:.1e} (max |logit| "
        f"{np.abs(theirs).max():.2f})")
  assert np.abs(theirs).max() > 0.05 and diff <= TOL


def test_big_vision_recipe_checkpoint_loads(tmp_path):
  """The issue's file: big_vision's own S/16 recipe model (gap, sincos2d, scanned blocks,
  params/ prefix, big_vision names) imports with exactly our model's param names and shapes."""
  model = models.get_model("S/16", num_classes=1000, classifier="gap", posemb="sincos2d",
                           scan=True)
  abstract = abstract_params(model, (224, 224, 3))
  zeros = jax.tree.map(lambda a: np.zeros(a.shape, np.float32), abstract)
  flat = _to_big_vision(zeros, "gap", scanned=True)
  assert "params/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel" in flat
  params, fields = big_vision.read_params(_save(flat, tmp_path / "bv_s16.npz"), model="ViT-S/16")
  assert (fields["classifier"], fields["posemb"], fields["representation_size"]) == (
      "gap", "sincos2d", None)
  expected = npz.to_per_layer(npz.flatten(abstract))
  assert len(expected) == 6 + 12 * 16  # embedding, encoder_norm, head; 16 arrays per block
  assert {k: v.shape for k, v in params.items()} == {k: v.shape for k, v in expected.items()}
  assert models.model_kwargs(**fields)["num_heads"] == 6


def test_refusals_name_the_problem(tmp_path):
  model = models.get_model("Ti/8", num_classes=5, **TINY)
  flat = _to_big_vision(random_params(model, (32, 32)), "token", scanned=False)
  official = _save({f"params/{k}": np.asarray(v) for k, v in
                    npz.flatten(random_params(model, (32, 32))).items()}, tmp_path / "o.npz")
  with pytest.raises(ValueError, match="official vit_jax names"):
    big_vision.read_params(official)
  extra = _save({**flat, "params/Transformer/encoderblock_0/Adapter_0/kernel": np.zeros(2)},
                tmp_path / "x.npz")
  with pytest.raises(ValueError, match="Adapter_0"):
    big_vision.read_params(extra)
  with pytest.raises(ValueError, match="does not match"):
    big_vision.read_params(_save(flat, tmp_path / "bv.npz"), model="ViT-S/8")
  with pytest.raises(ValueError, match="not a readable .npz"):
    (tmp_path / "bad.npz").write_bytes(b"nonsense")
    big_vision.read_params(str(tmp_path / "bad.npz"))
