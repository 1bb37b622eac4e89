"""Architecture options (issue 16): registers, QK-LayerNorm, bias-free layers, parallel blocks,
LayerScale, 2D RoPE, layer-wise lr decay. Exact parameter counts, layouts, export refusals and a
tiny training run per option."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import abstract_params
from vit_jax import models
from vit_jax.checkpoints import export, hf, npz
from vit_jax.config import base_config
from vit_jax.models import attention, flops
from vit_jax.training import optimizers

# A ViT-mu-sized model: width D=32, 2 heads of Dh=16, MLP M=128, on 16x16 images with patch 4.
D, M, HEADS, DH, C = 32, 128, 2, 16, 5
IMAGE, PATCH = 16, 4
N = (IMAGE // PATCH) ** 2  # 16 patch tokens


def _model(depth=2, **options):
  return models.get_model("ViT-mu/4", num_classes=C, depth=depth, **options)


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _flat_shapes(model, image=IMAGE):
  flat = npz.flatten(abstract_params(model, (image, image, 3)))
  return {k: tuple(v.shape) for k, v in flat.items()}


def _official_count(depth):
  """The official token-classifier ViT: patch embedding, cls, position embedding, blocks, head."""
  block = (2 * D) + 3 * (D * D + D) + (D * D + D) + (2 * D) + (D * M + M) + (M * D + D)
  return (PATCH * PATCH * 3 * D + D) + D + (N + 1) * D + depth * block + 2 * D + (D * C + C)


OFFICIAL_KEYS_DEPTH_1 = {
    "embedding/kernel", "embedding/bias", "cls", "Transformer/posembed_input/pos_embedding",
    *(f"Transformer/encoderblock_0/{k}" for k in (
        "LayerNorm_0/scale", "LayerNorm_0/bias", "LayerNorm_2/scale", "LayerNorm_2/bias",
        *(f"MultiHeadDotProductAttention_1/{p}/{w}" for p in ("query", "key", "value", "out")
          for w in ("kernel", "bias")),
        *(f"MlpBlock_3/Dense_{i}/{w}" for i in (0, 1) for w in ("kernel", "bias")))),
    "Transformer/encoder_norm/scale", "Transformer/encoder_norm/bias", "head/kernel", "head/bias",
}


def test_defaults_are_the_official_tree():
  assert set(_flat_shapes(_model(depth=1))) == OFFICIAL_KEYS_DEPTH_1
  for depth in (1, 3):
    assert _count(abstract_params(_model(depth=depth), (IMAGE, IMAGE, 3))) == _official_count(depth)


@pytest.mark.parametrize("scan", [False, True])
def test_exact_parameter_counts_and_shapes(scan):
  depth = 3
  base = _official_count(depth)
  L = "Transformer/encoderblock" + ("" if scan else "_0")
  lead = (depth,) if scan else ()

  def shapes(**options):
    return _flat_shapes(_model(depth=depth, scan=scan, **options))

  def count(**options):
    return _count(abstract_params(_model(depth=depth, scan=scan, **options), (IMAGE, IMAGE, 3)))

  # Registers: + R*D, one (1, R, D) param; the position embedding still covers cls + patches only.
  R = 3
  s = shapes(num_registers=R)
  assert count(num_registers=R) == base + R * D
  assert s["registers"] == (1, R, D)
  assert s["Transformer/posembed_input/pos_embedding"] == (1, N + 1, D)
  # QK-LayerNorm: + 2*Dh per layer (scale of the q and k norms, shared by the heads, no bias).
  s = shapes(qk_norm=True)
  assert count(qk_norm=True) == base + depth * 2 * DH
  assert s[f"{L}/MultiHeadDotProductAttention_1/query_ln/scale"] == (*lead, DH)
  assert s[f"{L}/MultiHeadDotProductAttention_1/key_ln/scale"] == (*lead, DH)
  # Bias-free: per layer q, k, v, out (4D), MLP (M + D), LayerNorm_0/2 (2D); plus encoder_norm (D).
  s = shapes(use_bias=False)
  assert count(use_bias=False) == base - depth * (7 * D + M) - D
  assert not [k for k in s if k.startswith("Transformer/") and k.endswith("/bias")]
  assert {"embedding/bias", "head/bias"} <= set(s)
  # Parallel block: one shared LayerNorm, - 2D per layer.
  s = shapes(parallel_block=True)
  assert count(parallel_block=True) == base - depth * 2 * D
  assert f"{L}/LayerNorm_2/scale" not in s and s[f"{L}/LayerNorm_0/scale"] == (*lead, D)
  # LayerScale: + 2D per layer.
  s = shapes(layerscale_init=1e-4)
  assert count(layerscale_init=1e-4) == base + depth * 2 * D
  assert s[f"{L}/LayerScale_attn/scale"] == s[f"{L}/LayerScale_mlp/scale"] == (*lead, D)
  # RoPE: no parameters, and no learned position embedding: - (N + 1) * D.
  s = shapes(posemb="rope2d")
  assert count(posemb="rope2d") == base - (N + 1) * D
  assert not [k for k in s if "posembed" in k]
  # All together: the deltas add up.
  all_options = dict(num_registers=R, qk_norm=True, use_bias=False, parallel_block=True,
                     layerscale_init=1e-4, posemb="rope2d")
  assert count(**all_options) == (base + R * D + depth * 2 * DH - depth * (7 * D + M) - D
                                  + depth * D - depth * 2 * D + depth * 2 * D - (N + 1) * D)
  # (parallel + bias-free: the one remaining LayerNorm per layer has no bias either, so the
  # parallel block removes only LayerNorm_2's scale, D, once biases are gone.)


def test_options_init_as_documented():
  model = _model(depth=1, num_registers=2, qk_norm=True, layerscale_init=1e-3)
  params = nn.unbox(jax.jit(model.init)({"params": jax.random.key(0)},
                                        jnp.zeros((1, IMAGE, IMAGE, 3)))["params"])
  block = params["Transformer"]["encoderblock_0"]
  np.testing.assert_array_equal(block["LayerScale_attn"]["scale"], np.full((D,), 1e-3,
                                                                           np.float32))
  np.testing.assert_array_equal(block["MultiHeadDotProductAttention_1"]["query_ln"]["scale"], 1.0)
  regs = np.asarray(params["registers"])
  assert 0.005 < regs.std() < 0.05 and not np.allclose(regs[0, 0], regs[0, 1])  # normal(0.02)


@pytest.mark.parametrize("scan", [False, True])
def test_every_new_param_has_logical_axis_names(scan):
  model = _model(num_registers=2, qk_norm=True, use_bias=False, parallel_block=True,
                 layerscale_init=1e-4, posemb="rope2d", scan=scan)
  boxed = abstract_params(model, (IMAGE, IMAGE, 3), boxed=True)
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
  assert all(len(x.names) == len(x.value.shape) for x in leaves)
  block = boxed["Transformer"]["encoderblock" if scan else "encoderblock_0"]
  lead = ("layers",) if scan else ()
  assert block["MultiHeadDotProductAttention_1"]["query_ln"]["scale"].names == (*lead, "kv")
  assert block["LayerScale_mlp"]["scale"].names == (*lead, "embed")
  assert boxed["registers"].names == (None, None, "embed")


def _images(n=2, size=IMAGE, seed=1):
  return jax.random.normal(jax.random.key(seed), (n, size, size, 3))


def _init(model, x):
  params = nn.unbox(jax.jit(model.init)({"params": jax.random.key(0)}, x)["params"])
  # A non-zero head so that the logits depend on every layer.
  params["head"]["kernel"] = jax.random.normal(jax.random.key(3), params["head"]["kernel"].shape)
  return params


@pytest.mark.parametrize("options", [
    dict(num_registers=2, qk_norm=True, classifier="map"),
    dict(parallel_block=True, layerscale_init=0.5, use_bias=False, remat_policy="full"),
    dict(posemb="rope2d", num_registers=1, classifier="gap", remat_policy="dots"),
])
def test_scanned_and_per_layer_layouts_compute_the_same_function(options):
  x = _images()
  scanned = _model(depth=2, scan=True, **options)
  params = _init(scanned, x)
  per_layer = npz.unflatten(npz.to_per_layer(npz.flatten(params)))
  assert "encoderblock_1" in per_layer["Transformer"]
  ref = jax.jit(scanned.apply)({"params": params}, x)
  got = jax.jit(scanned.clone(scan=False).apply)({"params": per_layer}, x)
  np.testing.assert_allclose(got, ref, atol=1e-5)


def test_fused_and_einsum_attention_agree_with_the_attention_options():
  # attention_impl='xla' runs jax.nn.dot_product_attention on (B, T, H, Dh); None runs the
  # head-major einsums on CPU: both apply QK-LayerNorm, RoPE and the bias-free projections.
  x = _images()
  model = _model(qk_norm=True, use_bias=False, posemb="rope2d", num_registers=2)
  params = _init(model, x)
  fused = jax.jit(model.clone(attention_impl="xla").apply)({"params": params}, x)
  np.testing.assert_allclose(fused, jax.jit(model.apply)({"params": params}, x), atol=1e-5)


def test_rope_logits_depend_only_on_the_offset_and_leave_prefix_and_registers_alone():
  layout = attention.RopeLayout((5, 4), num_prefix=1, num_suffix=2)
  sin, cos = attention.rope_2d_tables(layout, DH)
  assert sin.shape == (1 + 20 + 2, 2, DH // 4)
  q0, k0 = np.random.default_rng(0).normal(size=(2, DH)).astype(np.float32)
  q = attention.apply_rope(jnp.tile(q0, (sin.shape[0], 1)), sin, cos)
  k = attention.apply_rope(jnp.tile(k0, (sin.shape[0], 1)), sin, cos)
  # Class token and registers are not rotated.
  for t in (0, 21, 22):
    np.testing.assert_allclose(q[t], q0, atol=1e-6)
  # Rotations keep norms; logits between grid tokens are a function of (row, col) offsets only.
  np.testing.assert_allclose(np.linalg.norm(q, axis=-1), np.linalg.norm(q0), rtol=1e-5)
  logits = np.asarray(q[1:21] @ k[1:21].T)
  pos = [(r, c) for r in range(5) for c in range(4)]
  by_offset = {}
  for i, (ri, ci) in enumerate(pos):
    for j, (rj, cj) in enumerate(pos):
      by_offset.setdefault((ri - rj, ci - cj), []).append(logits[i, j])
  assert len(by_offset) == 9 * 7
  for values in by_offset.values():
    np.testing.assert_allclose(values, values[0], atol=1e-4)
  # ... and they do depend on the offset (the rotation is not the identity).
  assert np.ptp([v[0] for v in by_offset.values()]) > 1e-2


def test_rope_follows_the_flexivit_grid():
  model = _model(posemb="rope2d", num_registers=1)
  x = _images(size=24)  # 6x6 grid at patch 4
  params = _init(model, x)
  apply = jax.jit(lambda p, im, ps: model.apply({"params": p}, im, patch_size=ps),
                  static_argnums=2)
  # Same 6x6 grid at patch 8 on a patch-wise 2x upsampled image: same tokens, same rotations.
  patches = x.reshape(2, 6, 4, 6, 4, 3).transpose(0, 1, 3, 2, 4, 5)
  patches = jax.image.resize(patches, (2, 6, 6, 8, 8, 3), "bilinear", antialias=False)
  x_up = patches.transpose(0, 1, 3, 2, 4, 5).reshape(2, 48, 48, 3)
  np.testing.assert_allclose(apply(params, x_up, (8, 8)), apply(params, x, None), atol=1e-4)
  # Another grid (12x12 at patch 2): the rotations are those of that grid.
  out = apply(params, x, (2, 2))
  assert out.shape == (2, C) and np.all(np.isfinite(out))


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_registers_are_not_pooled(classifier):
  R = 3
  model = _model(depth=1, num_registers=R, classifier=classifier).clone(num_classes=0)
  x = _images()
  params = nn.unbox(jax.jit(model.init)({"params": jax.random.key(0)}, x)["params"])
  features, state = jax.jit(lambda p: model.apply({"params": p}, x, capture_intermediates=True))(
      params)
  tokens = state["intermediates"]["Transformer"]["__call__"][0]
  n_in = N + (classifier == "token")
  assert tokens.shape == (2, n_in + R, D)
  expected = tokens[:, 0] if classifier == "token" else tokens[:, :n_in].mean(axis=1)
  np.testing.assert_allclose(features, expected, atol=1e-6)
  if classifier == "gap":
    assert not np.allclose(features, tokens.mean(axis=1), atol=1e-4)


TRAIN_OPTIONS = {
    "registers": dict(num_registers=2, classifier="gap", scan=True),
    "qk_norm": dict(qk_norm=True, remat_policy="full"),
    "no_bias": dict(use_bias=False, scan=True, remat_policy="dots"),
    "parallel": dict(parallel_block=True, classifier="map", stoch_depth=0.1),
    "layerscale": dict(layerscale_init=1e-2, scan=True),
    "rope2d": dict(posemb="rope2d", num_registers=1, scan=True, remat_policy="full"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TRAIN_OPTIONS))
def test_a_few_training_steps_reduce_the_loss(name):
  """Init and 6 Adam steps on one random batch, compiled as one program per option."""
  model = _model(depth=1, **TRAIN_OPTIONS[name])
  x = _images(n=8)
  labels = jnp.arange(8) % C
  tx = optax.adam(1e-2)

  def loss_fn(p, rng):
    logits = model.apply({"params": p}, x, train=True, rngs={"dropout": rng})
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  def step(carry, rng):
    p, opt_state = carry
    loss, grads = jax.value_and_grad(loss_fn)(p, rng)
    updates, opt_state = tx.update(grads, opt_state, p)
    return (optax.apply_updates(p, updates), opt_state), loss

  @jax.jit
  def train():
    params = nn.unbox(model.init({"params": jax.random.key(0)}, x)["params"])
    _, losses = jax.lax.scan(step, (params, tx.init(params)),
                             jax.random.split(jax.random.key(1), 6))
    return losses

  losses = np.asarray(train())
  assert np.all(np.isfinite(losses))
  assert losses[-1] < 0.7 * losses[0], losses


def _abstract(depth, scan, **options):
  return abstract_params(_model(depth=depth, scan=scan, num_registers=1, **options),
                         (IMAGE, IMAGE, 3))


@pytest.mark.parametrize("scan", [False, True])
def test_layer_decay_multipliers_follow_beit(scan):
  depth, decay = 3, 0.5
  params = _abstract(depth, scan, classifier="map", representation_size=8)
  assert optimizers.encoder_depth(params) == depth
  mults = npz.flatten(optimizers.layer_decay_multipliers(params, decay))
  for key in ("embedding/kernel", "embedding/bias", "registers",
              "Transformer/posembed_input/pos_embedding"):
    assert mults[key] == decay ** (depth + 1), key  # layer 0
  for key in ("Transformer/encoder_norm/scale", "MAPHead_0/probe", "pre_logits/kernel",
              "head/kernel", "head/bias"):
    assert mults[key] == 1.0, key  # layer depth + 1
  block_keys = [k for k in mults if "encoderblock" in k]
  assert block_keys
  for key in block_keys:
    if scan:
      leaf = npz.flatten(params)[key]
      assert mults[key].shape == (depth,) + (1,) * (len(leaf.shape) - 1)
      np.testing.assert_allclose(np.ravel(mults[key]), [decay ** (depth - i) for i in range(depth)])
    else:
      i = int(key.split("encoderblock_")[1].split("/")[0])
      assert mults[key] == decay ** (depth + 1 - (i + 1))


@pytest.mark.parametrize("scan", [False, True])
def test_layer_decay_scales_sgd_updates_and_composes_with_lr_mults(scan):
  depth, decay, lr = 2, 0.5, 0.1
  params = jax.tree.map(lambda s: jnp.ones(s.shape), _abstract(depth, scan))
  cfg = base_config().optim
  cfg.update(name="sgd", momentum=0.0, lr=lr, wd=0.0, grad_clip_norm=None, schedule="constant",
             layer_decay=decay, lr_mults=(("head/.*", 3.0),))
  tx, _ = optimizers.make_optimizer(cfg, params, total_steps=10, warmup_steps=0)
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  flat = npz.to_per_layer(npz.flatten(updates))
  np.testing.assert_allclose(flat["embedding/kernel"], -lr * decay ** (depth + 1), rtol=1e-6)
  for i in range(depth):
    np.testing.assert_allclose(
        flat[f"Transformer/encoderblock_{i}/MlpBlock_3/Dense_0/kernel"], -lr * decay ** (depth - i),
        rtol=1e-6)
  np.testing.assert_allclose(flat["Transformer/encoder_norm/scale"], -lr, rtol=1e-6)
  np.testing.assert_allclose(flat["head/kernel"], -lr * 3.0, rtol=1e-6)  # lr_mults x 1.0


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5])
def test_layer_decay_out_of_range_is_refused(bad):
  with pytest.raises(ValueError, match=r"layer_decay=.* must be in \(0, 1\]"):
    optimizers.layer_decay_multipliers(_abstract(1, False), bad)
  with pytest.raises(ValueError, match="needs a ViT with encoder blocks"):
    optimizers.layer_decay_multipliers({"head": {"kernel": jnp.ones((2, 2))}}, 0.5)


@pytest.mark.parametrize("option, value", [
    ("num_registers", 4), ("qk_norm", True), ("use_bias", False), ("parallel_block", True),
    ("layerscale_init", 1e-4), ("posemb", "rope2d"),
])
def test_hf_export_refuses_each_option_by_name(option, value):
  hf.check_exportable(models.model_kwargs("ViT-Ti/16"))
  with pytest.raises(ValueError, match=rf"cannot represent \{{'{option}': .*--formats=npz"):
    hf.check_exportable(models.model_kwargs("ViT-Ti/16", **{option: value}))


def test_npz_export_carries_every_option(tmp_path):
  """The official .npz is a flat name -> array map: it holds the options' params, no refusal."""
  options = dict(width=D, depth=2, mlp_dim=M, num_heads=HEADS, patch_size=PATCH, num_registers=2,
                 qk_norm=True, use_bias=False, parallel_block=True, layerscale_init=1e-4)
  model = models.get_model("ViT-Ti/16", num_classes=3, **options)
  params = nn.unbox(model.init({"params": jax.random.key(0)}, jnp.zeros((1, IMAGE, IMAGE, 3)))[
      "params"])
  npz.save_npz(params, tmp_path / "in.npz")
  (path,) = export.convert(str(tmp_path / "in.npz"), "ViT-Ti/16", str(tmp_path / "out"),
                           overrides=options, formats=["npz"])
  assert set(npz.read_npz(path)) == set(npz.flatten(params))
  with pytest.raises(ValueError, match="num_registers"):
    export.convert(str(tmp_path / "in.npz"), "ViT-Ti/16", str(tmp_path / "out2"),
                   overrides=options, formats=["hf"])


def test_registers_add_tokens_to_the_flops():
  kw = models.model_kwargs("ViT-B/16")
  d, m, depth, n = 768, 3072, 12, 197
  base = flops.forward_flops_per_image(kw, 224)
  with_regs = flops.forward_flops_per_image({**kw, "num_registers": 4}, 224)

  def layers(tokens):
    return depth * (8 * tokens * d * d + 4 * tokens * d * m + 4 * tokens * tokens * d)
  assert with_regs - base == layers(n + 4) - layers(n)
  for option in (dict(parallel_block=True), dict(qk_norm=True), dict(posemb="rope2d")):
    assert flops.forward_flops_per_image({**kw, **option}, 224) == base


def test_options_are_config_fields_a_study_can_sweep():
  config = base_config()
  assert config.optim.layer_decay is None
  config.model.update(variant="mu/4", depth=2, num_registers=2, qk_norm=True, use_bias=False,
                      parallel_block=True, layerscale_init=1e-4, posemb="rope2d")
  kwargs = models.model_kwargs(**config.model.to_dict())
  assert (kwargs["num_registers"], kwargs["qk_norm"], kwargs["use_bias"],
          kwargs["parallel_block"], kwargs["layerscale_init"], kwargs["posemb"]) == (
              2, True, False, True, 1e-4, "rope2d")
  defaults = models.model_kwargs(**base_config().model.to_dict())
  assert (defaults["num_registers"], defaults["qk_norm"], defaults["use_bias"],
          defaults["parallel_block"], defaults["layerscale_init"]) == (0, False, True, False, None)


@pytest.mark.parametrize("bad, message", [
    (dict(num_registers=-1), "num_registers=-1 must be an int >= 0"),
    (dict(layerscale_init=0.0), "layerscale_init=0.0 must be a positive float"),
    (dict(layerscale_init=-1e-4), "layerscale_init"),
    (dict(qk_norm="yes"), "qk_norm='yes' must be True or False"),
    (dict(posemb="rope2d", width=36), r"rope2d' needs a head dim .* = 18\) divisible by 4"),
])
def test_bad_option_values(bad, message):
  with pytest.raises(ValueError, match=message):
    models.get_model("ViT-mu/4", num_classes=2, **bad)


def test_without_a_position_embedding_a_gap_vit_sees_a_bag_of_patches():
  """posemb='none' has no position parameters; with average pooling, shuffling the image's
  patches leaves the logits unchanged, which a learned embedding does not."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, IMAGE, IMAGE, 3))
  g = IMAGE // PATCH
  blocks = x.reshape(2, g, PATCH, g, PATCH, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, g * g, -1)
  order = jax.random.permutation(jax.random.PRNGKey(1), g * g)
  shuffled = (blocks[:, order].reshape(2, g, g, PATCH, PATCH, 3).transpose(0, 1, 3, 2, 4, 5)
              .reshape(x.shape))
  for posemb, invariant in (("none", True), ("learn", False)):
    model = _model(posemb=posemb, classifier="gap")
    params = model.init(jax.random.PRNGKey(2), x, train=False)["params"]
    # Random values everywhere: a zero-initialised head would make every logit equal.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
    params = tree.unflatten([p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    assert ("posembed_input" in params["Transformer"]) is not invariant
    same = np.allclose(model.apply({"params": params}, x, train=False),
                       model.apply({"params": params}, shuffled, train=False), atol=1e-5)
    assert same is invariant, posemb
