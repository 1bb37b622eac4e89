"""Model layer: exact published parameter counts, names, options, logical axes, input errors."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import abstract_params
from vit_jax import models
from vit_jax.models import flops, variants, vit

# DESIGN.md: published counts at 224 px with 1000 classes.
PUBLISHED_COUNTS = {
    "ViT-Ti/16": 5_717_416,
    "ViT-S/16": 22_050_664,
    "ViT-S/32": 22_878_952,
    "ViT-B/16": 86_567_656,
    "ViT-B/32": 88_224_232,
    "ViT-B/8": 86_576_872,
    "ViT-L/16": 304_326_632,
    "ViT-L/32": 306_535_400,
    "ViT-H/14": 632_045_800,
    "R50+B/16": 98_659_112,
    "R26+S/32": 36_431_912,
    "R+Ti/16": 6_337_704,
}


def _param_shapes(model, image_size=224):
  return abstract_params(model, (image_size, image_size, 3))


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", sorted(PUBLISHED_COUNTS))
def test_published_parameter_counts(name):
  assert _count(_param_shapes(models.get_model(name, num_classes=1000))) == PUBLISHED_COUNTS[name]


def test_gap_without_pre_logits_count_and_scan_count():
  assert _count(_param_shapes(models.get_model("ViT-B/16", num_classes=1000,
                                               classifier="gap"))) == 86_566_120
  assert _count(_param_shapes(models.get_model("ViT-B/16", num_classes=1000,
                                               scan=True))) == PUBLISHED_COUNTS["ViT-B/16"]


def test_official_spelling_and_variants():
  assert variants.canonical_name("ViT-B_16") == "ViT-B/16"
  assert variants.canonical_name("R50+ViT-B_16") == "R50+B/16"
  assert models.model_kwargs("ViT-B_16") == models.model_kwargs("ViT-B/16")
  kw = models.model_kwargs("ViT-L/14")
  assert (kw["width"], kw["depth"], kw["mlp_dim"], kw["num_heads"], kw["patch_size"]) == (
      1024, 24, 4096, 16, (14, 14))
  for v in ("mu", "Ti", "S", "M", "B", "L", "H", "g", "G"):
    assert models.model_kwargs(f"ViT-{v}/16")["width"] == variants.VIT_DIMS[v][0]
  assert models.model_kwargs("ViT-B/16", patch_size=8)["patch_size"] == (8, 8)


def test_every_param_has_logical_axis_names():
  model = models.get_model("ViT-mu/4", num_classes=3, classifier="map", representation_size=8,
                           scan=True)
  boxed = abstract_params(model, (16, 16, 3), boxed=True)
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
  for x in leaves:
    assert len(x.names) == len(x.value.shape)
  qkv = boxed["Transformer"]["encoderblock"]["MultiHeadDotProductAttention_1"]["query"]["kernel"]
  assert qkv.names == ("layers", "embed", "heads", "kv")


@pytest.mark.parametrize("options", [
    dict(),
    dict(classifier="gap", posemb="sincos2d"),
    dict(classifier="map", representation_size=16),
    dict(scan=True, remat_policy="dots", stoch_depth=0.2, dropout=0.1, attention_dropout=0.1),
    dict(scan=False, remat_policy="full", stoch_depth=0.1),
])
@pytest.mark.slow
def test_options_forward_and_grad(options):
  model = models.get_model("ViT-mu/8", num_classes=5, depth=2, **options)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  params = nn.unbox(jax.jit(model.init)({"params": jax.random.key(0)}, x)["params"])
  # A non-zero head so gradients reach every layer.
  params["head"]["kernel"] = jax.random.normal(jax.random.key(3), params["head"]["kernel"].shape)

  def loss(p, rng):
    return jnp.sum(model.apply({"params": p}, x, train=True, rngs={"dropout": rng}) ** 2)

  g = jax.jit(jax.grad(loss))(params, jax.random.key(2))
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(g))
  assert float(jnp.abs(g["embedding"]["kernel"]).sum()) > 0
  assert jax.eval_shape(model.apply, {"params": params}, x).shape == (2, 5)
  features = jax.eval_shape(model.clone(num_classes=0).apply, {"params": params}, x)
  assert features.shape == (2, options.get("representation_size", 32))


@pytest.mark.slow
def test_remat_and_scan_do_not_change_the_function():
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  base = models.get_model("ViT-mu/4", num_classes=3, depth=3, scan=True)
  params = nn.unbox(base.init({"params": jax.random.key(0)}, x)["params"])
  params["head"]["kernel"] = jnp.ones_like(params["head"]["kernel"])
  def grads(model):
    return jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x) ** 2)))(params)

  ref = jax.jit(base.apply)({"params": params}, x)
  ref_grads = grads(base)
  for policy in ("full", "dots_no_batch"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
                 grads(base.clone(remat_policy=policy)), ref_grads)
  unscanned = {k: v for k, v in params.items() if k != "Transformer"}
  enc = params["Transformer"]
  unscanned["Transformer"] = {"encoder_norm": enc["encoder_norm"],
                              "posembed_input": enc["posembed_input"]}
  for i in range(3):
    unscanned["Transformer"][f"encoderblock_{i}"] = jax.tree.map(lambda a, i=i: a[i],
                                                                 enc["encoderblock"])
  np.testing.assert_allclose(jax.jit(base.clone(scan=False).apply)({"params": unscanned}, x), ref,
                             atol=1e-5)


@pytest.mark.slow
def test_bf16_compute_keeps_float32_params():
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  m32 = models.get_model("ViT-mu/4", num_classes=3, depth=2)
  params = nn.unbox(m32.init({"params": jax.random.key(0)}, x)["params"])
  params["head"]["kernel"] = jnp.ones_like(params["head"]["kernel"])
  bf16 = m32.clone(dtype=jnp.bfloat16)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(
      nn.unbox(bf16.init({"params": jax.random.key(0)}, x)["params"])))
  out = bf16.apply({"params": params}, x)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, m32.apply({"params": params}, x), rtol=0.05, atol=0.05)


def test_head_bias_init_sets_the_initial_logits():
  """A sigmoid loss over 21,843 classes starts at ~1 nat with bias -10, not 21843 * log(2)."""
  x = jnp.ones((2, 8, 8, 3))
  model = models.get_model("ViT-mu/4", num_classes=5, head_bias_init=-10.0)
  variables = model.init({"params": jax.random.key(0)}, x)
  np.testing.assert_array_equal(nn.unbox(variables["params"])["head"]["bias"], np.full(5, -10.0))
  np.testing.assert_allclose(model.apply(variables, x), -10.0)  # The head kernel starts at zero.


@pytest.mark.parametrize("scan", [False, True])
def test_stochastic_depth_rate_rises_linearly_and_rescales(scan):
  x = jnp.ones((4096, 1, 1))
  for rate in (0.0, 0.25):
    y = vit._drop_path(x, jnp.float32(rate), jax.random.key(0))
    kept = np.asarray(y[:, 0, 0] > 0)
    assert abs(kept.mean() - (1 - rate)) < 0.03
    np.testing.assert_allclose(y[kept], 1 / (1 - rate), rtol=1e-6)
  # The rate each block of the model applies: 0 at the first block, the configured one at the last.
  model = models.get_model("ViT-mu/4", num_classes=2, depth=4, stoch_depth=0.3, scan=scan)
  images = jnp.zeros((2, 8, 8, 3))
  params = model.init({"params": jax.random.key(0)}, images)["params"]
  _, state = model.apply({"params": params}, images, train=True, mutable=["intermediates"],
                         rngs={"dropout": jax.random.key(1)})
  blocks = state["intermediates"]["Transformer"]
  rates = (blocks["encoderblock"]["drop_path_rate"][0] if scan else
           [blocks[f"encoderblock_{i}"]["drop_path_rate"][0] for i in range(4)])
  np.testing.assert_allclose(np.ravel(rates), [0.0, 0.1, 0.2, 0.3], atol=1e-6)


def test_attention_uses_dot_product_attention_on_cpu_and_rejects_cudnn():
  x = jax.random.normal(jax.random.key(1), (1, 16, 16, 3))
  model = models.get_model("ViT-mu/4", num_classes=2, attention_impl="xla")
  params = model.init({"params": jax.random.key(0)}, x)
  model.apply(params, x)
  with pytest.raises(RuntimeError, match="cuDNN is not detected"):
    model.clone(attention_impl="cudnn").apply(params, x)


def test_flops_match_reference_figures():
  # DESIGN.md reference: B/16 35.1, S/16 9.2, Ti/16 2.5 forward GFLOPs at 224 px.
  for name, gflops in (("ViT-B/16", 35.1), ("ViT-S/16", 9.2), ("ViT-Ti/16", 2.5)):
    got = flops.forward_flops_per_image(models.model_kwargs(name), 224, num_classes=1000) / 1e9
    assert abs(got - gflops) < 0.05, (name, got)


@pytest.mark.parametrize("bad, message", [
    (dict(variant="ViT-Q/16"), "Unknown model name"),
    (dict(variant="ViT-B/16", classifier="cls"), "classifier='cls'"),
    (dict(variant="ViT-B/16", posemb="sincos"), "posemb='sincos'"),
    (dict(variant="ViT-B/16", remat_policy="everything"), "remat_policy"),
    (dict(variant="ViT-B/16", num_heads=7), "not divisible by num_heads=7"),
    (dict(variant="ViT-B/16", stoch_depth=1.0), "stoch_depth=1.0"),
    (dict(variant="ViT-B/16", patch=16), "Unknown model option"),
])
def test_bad_model_options(bad, message):
  with pytest.raises(ValueError, match=message):
    models.get_model(num_classes=10, **bad)


def test_image_not_divisible_by_patch_names_both():
  model = models.get_model("ViT-B/16", num_classes=10)
  with pytest.raises(ValueError,
                     match=r"Image size 30x30 is not divisible by the patch size 16x16"):
    jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, jnp.zeros((1, 30, 30, 3))))
  hybrid = models.get_model("R50+B/16", num_classes=10)
  with pytest.raises(ValueError, match=r"/16 ResNet stem"):
    jax.eval_shape(lambda: hybrid.init({"params": jax.random.key(0)}, jnp.zeros((1, 40, 40, 3))))


def test_wrong_channel_count():
  model = models.get_model("ViT-mu/4", num_classes=2)
  params = model.init({"params": jax.random.key(0)}, jnp.zeros((1, 8, 8, 3)))
  with pytest.raises(ValueError, match="1 channels but the patch embedding expects 3"):
    model.apply(params, jnp.zeros((1, 8, 8, 1)))


@pytest.mark.slow
def test_flexivit_call_at_another_patch_size_preserves_upsampled_tokens():
  # Same 6x6 token grid: 48 px at patch 8 vs the image upsampled 2x at patch 16. PI-resize makes the
  # token embeddings equal, the position embedding is unchanged, so the logits must match.
  model = models.get_model("ViT-mu/8", num_classes=4, depth=2)
  x = jax.random.normal(jax.random.key(1), (2, 48, 48, 3))
  params = nn.unbox(jax.jit(model.init)({"params": jax.random.key(0)}, x)["params"])
  params["head"]["kernel"] = jax.random.normal(jax.random.key(2), params["head"]["kernel"].shape)
  # Upsample every 8x8 patch on its own (a whole-image resize would blend neighbouring patches).
  patches = x.reshape(2, 6, 8, 6, 8, 3).transpose(0, 1, 3, 2, 4, 5)
  patches = jax.image.resize(patches, (2, 6, 6, 16, 16, 3), "bilinear", antialias=False)
  x_up = patches.transpose(0, 1, 3, 2, 4, 5).reshape(2, 96, 96, 3)
  apply = jax.jit(lambda p, im, ps: model.apply({"params": p}, im, patch_size=ps),
                  static_argnums=2)
  np.testing.assert_allclose(apply(params, x_up, (16, 16)), apply(params, x, None), atol=1e-4)
  # Another grid: the learned position embedding is resized on the fly.
  assert apply(params, x, (4, 4)).shape == (2, 4)


def test_a_learned_posemb_is_not_resized_to_a_non_square_grid_it_cannot_read():
  """2x8 and 4x4 grids both have 16 tokens: read as square, the embedding would be scrambled."""
  model = models.get_model("ViT-mu/16", num_classes=2)
  x = jnp.zeros((1, 32, 128, 3))
  variables = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, x))
  with pytest.raises(ValueError, match="non-square 4x16 grid.*posemb='sincos2d'"):
    jax.eval_shape(lambda v: model.apply(v, x, patch_size=(8, 8)), variables)
  sincos = models.get_model("ViT-mu/16", num_classes=2, posemb="sincos2d")
  variables = jax.eval_shape(lambda: sincos.init({"params": jax.random.key(0)}, x))
  logits = jax.eval_shape(lambda v: sincos.apply(v, x, patch_size=(8, 8)), variables)
  assert logits.shape == (1, 2)
