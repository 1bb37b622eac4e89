"""Speed work must not change what the model computes (attention paths, init, remat), and the CPU
runtime defaults must do what they claim."""
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import models
from vit_jax.models import attention, cpu_kernels, kernels, partitioning, vit


def _reference_attention(params, x_q: np.ndarray, x_kv: np.ndarray) -> np.ndarray:
  """softmax(q k^T / sqrt(Dh)) v with the official (D, H, Dh) kernels, in float64 NumPy."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), nn.meta.unbox(params))
  proj = lambda x, name: np.einsum("btd,dhk->bthk", x, p[name]["kernel"]) + p[name]["bias"]
  q, k, v = proj(x_q, "query"), proj(x_kv, "key"), proj(x_kv, "value")
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  out = np.einsum("bhqk,bkhd->bqhd", probs, v)
  return np.einsum("bqhd,hdo->bqo", out, p["out"]["kernel"]) + p["out"]["bias"]


def _random_params(init, *inputs, seed: int):
  """Params of the shapes `init(key, *inputs)` makes, all random: init gives zero biases, and
  random ones make the check cover them. Only shapes are traced: an eager init compiles each op."""
  abstract = nn.meta.unbox(jax.eval_shape(init, jax.random.key(0), *inputs)["params"])
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: jnp.asarray(0.3 * rng.standard_normal(a.shape), jnp.float32),
                      abstract)


@pytest.mark.parametrize("implementation", [None, "xla"])
# self-attention (fused QKV matmul) and a MAP-style probe
@pytest.mark.parametrize("num_queries", [7, 1])
def test_attention_paths_match_reference(implementation, num_queries):
  width, heads, tokens = 24, 3, 7
  x_kv = jax.random.normal(jax.random.key(0), (2, tokens, width))
  x_q = x_kv if num_queries == tokens else jax.random.normal(jax.random.key(1), (2, 1, width))
  layer = attention.MultiHeadDotProductAttention(heads, kernels=kernels.select(implementation))
  params = _random_params(layer.init, x_q, x_kv, seed=3)
  out = layer.apply({"params": params}, x_q, x_kv)
  expected = _reference_attention(params, np.asarray(x_q), np.asarray(x_kv))
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)


# self-attention over 7 tokens and a MAP-style probe (1 query): odd lengths, padded to even
@pytest.mark.parametrize("num_queries", [7, 1])
def test_padding_odd_lengths_for_cudnn_changes_neither_values_nor_gradients(num_queries):
  """cuDNN trains even lengths only, so the GPU path pads odd ones with one masked token; XLA's
  implementation of the same masked call runs here, so the padding itself is what is checked."""
  keys = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(keys[0], (2, num_queries, 3, 8))
  k, v = (jax.random.normal(key, (2, 7, 3, 8)) for key in keys[1:])

  def value_and_grads(pad):
    loss = lambda *qkv: jnp.sum(jnp.sin(attention.fused_attention(*qkv, "xla", pad)))
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)

  (value, grads), (padded_value, padded_grads) = value_and_grads(False), value_and_grads(True)
  np.testing.assert_allclose(padded_value, value, rtol=1e-5)
  for a, b in zip(padded_grads, grads):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  qd, kd, vd = (np.asarray(t, np.float64) for t in (q, k, v))
  logits = np.einsum("bqhd,bkhd->bhqk", qd, kd) / np.sqrt(8)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  expected = np.einsum("bhqk,bkhd->bqhd", probs / probs.sum(-1, keepdims=True), vd)
  padded = jax.jit(attention.fused_attention, static_argnums=(3, 4))(q, k, v, "xla", True)
  np.testing.assert_allclose(np.asarray(padded), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attention_impl,backend,dtype,head_dim,expected", [
    (None, "gpu", jnp.bfloat16, 64, "cudnn"),  # jax's own None would be XLA's kernel
    (None, "gpu", jnp.float16, 128, "cudnn"),
    (None, "gpu", jnp.float32, 64, "xla"),  # cuDNN's flash kernel takes half precision only
    (None, "gpu", jnp.bfloat16, 20, "xla"),  # head dim not a multiple of 8
    (None, "gpu", jnp.bfloat16, 256, "xla"),
    (None, "tpu", jnp.bfloat16, 64, "xla"),
    ("xla", "gpu", jnp.bfloat16, 64, "xla"),  # what the model asks for, it gets
    ("cudnn", "gpu", jnp.float32, 64, "cudnn")])
def test_gpu_attention_defaults_to_cudnn_where_it_trains_the_call(attention_impl, backend, dtype,
                                                                  head_dim, expected):
  chosen = kernels.select(attention_impl, backend)
  q = jnp.zeros((2, 197, 3, head_dim), dtype)
  assert kernels.attention_implementation(chosen, q) == expected


@pytest.mark.parametrize("attention_impl,backend,dtype,dropout,expected", [
    (None, "cpu", "float32", 0.0, "einsum"), (None, "tpu", "bfloat16", 0.0, "einsum"),
    ("xla", "cpu", "float32", 0.0, "xla"), (None, "gpu", "bfloat16", 0.0, "cudnn"),
    (None, "gpu", "float32", 0.0, "xla"), (None, "gpu", "bfloat16", 0.1, "einsum")])
def test_the_attention_kernel_a_run_reports_is_the_one_its_layers_choose(attention_impl, backend,
                                                                         dtype, dropout, expected):
  assert kernels.attention_kernel(attention_impl, backend, dtype, 64, dropout) == expected


@pytest.mark.parametrize("platform,dtype,head_dim,message", [
    ("cpu", "bfloat16", 64, "needs a GPU and this run's devices are cpu"),
    ("gpu", "float32", 64, "not model.dtype='float32': set --config.model.dtype=bfloat16"),
    ("gpu", "bfloat16", 20, "multiple of 8 up to 128, not 20"),
    ("gpu", "float16", 256, "not 256")])
def test_asking_for_cudnn_where_it_cannot_train_is_a_bad_config(platform, dtype, head_dim,
                                                                  message):
  with pytest.raises(ValueError, match=message):
    kernels.check_attention_impl("cudnn", platform, dtype, head_dim)
  kernels.check_attention_impl("cudnn", "gpu", "bfloat16", 64)
  kernels.check_attention_impl(None, platform, dtype, head_dim)


def test_attention_params_and_init_are_those_of_dense_general():
  """Same tree, shapes, logical axes and initial values as nn.DenseGeneral projections
  (checkpoints)."""

  class DenseGeneralAttentionParams(nn.Module):
    @nn.compact
    def __call__(self, x):
      def dense(name, features, axis, kernel_axes, bias_axes, kernel_shape, bias_shape):
        return nn.DenseGeneral(
            features, axis=axis, name=name,
            kernel_init=partitioning.init(nn.initializers.xavier_uniform(), kernel_axes,
                                          kernel_shape),
            bias_init=partitioning.init(nn.initializers.zeros, bias_axes, bias_shape))
      h = [dense(n, (3, 8), -1, ("embed", "heads", "kv"), ("heads", "kv"), (24, 3, 8), (3, 8))(x)
           for n in ("query", "key", "value")]
      return dense("out", 24, (-2, -1), ("heads", "kv", "embed"), ("embed",), (3, 8, 24),
                   (24,))(h[0])

  x = jnp.ones((1, 5, 24))
  ours = attention.MultiHeadDotProductAttention(3).init(jax.random.key(0), x, x)["params"]
  theirs = DenseGeneralAttentionParams().init(jax.random.key(0), x)["params"]
  assert jax.tree.structure(ours) == jax.tree.structure(theirs)
  for a, b in zip(jax.tree.leaves(ours, is_leaf=lambda leaf: isinstance(leaf, nn.Partitioned)),
                  jax.tree.leaves(theirs, is_leaf=lambda leaf: isinstance(leaf, nn.Partitioned))):
    assert a.names == b.names
    np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value))


@pytest.mark.parametrize("implementation,backend,fused", [
    (None, "cpu", False), (None, "tpu", False), (None, "gpu", True),
    ("xla", "cpu", True), ("cudnn", "gpu", True)])
def test_kernels_are_chosen_in_one_place(implementation, backend, fused):
  chosen = kernels.select(implementation, backend)
  assert chosen.fused_attention is fused and chosen.attention_impl == implementation
  assert chosen.on_gpu == (backend == "gpu")
  # The custom-VJP products on XLA:CPU only.
  assert (chosen.dense_dot is cpu_kernels.dense_dot) == (backend == "cpu")
  assert (chosen.dot_general is cpu_kernels.dot_general) == (backend == "cpu")


def test_unknown_attention_impl_is_rejected_with_the_choices():
  with pytest.raises(ValueError, match="attention_impl='flash'.*cudnn"):
    models.get_model("ViT-Ti/16", num_classes=10, attention_impl="flash")


def test_attention_dropout_runs_on_the_einsum_path_even_when_xla_is_asked():
  x = jax.random.normal(jax.random.key(0), (2, 6, 16))
  layer = attention.MultiHeadDotProductAttention(2, attention_dropout=0.5, deterministic=False,
                                                 kernels=kernels.select("xla"))
  params = layer.init(jax.random.key(1), x, x)["params"]
  a, b = (layer.apply({"params": params}, x, x, rngs={"dropout": jax.random.key(s)})
          for s in (2, 3))
  assert not np.allclose(np.asarray(a), np.asarray(b))  # Dropout was applied, with its own rng.


@pytest.mark.slow
@pytest.mark.parametrize("scan", [False, True])
def test_remat_policies_give_identical_gradients(scan):
  images = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  labels = jax.nn.one_hot(jnp.array([1, 3]), 5)

  def grads(policy):
    model = models.get_model("ViT-Ti/16", num_classes=5, patch_size=8, width=32, depth=2,
                             num_heads=2, mlp_dim=64, scan=scan, remat_policy=policy,
                             stoch_depth=0.1)
    params = _random_params(model.init, images, seed=4)

    def loss(p):
      logits = model.apply({"params": p}, images, train=True, rngs={"dropout": jax.random.key(5)})
      return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(logits), -1))
    return jax.jit(jax.grad(loss))(params)

  reference = grads("none")
  for policy in sorted(set(vit.REMAT_POLICIES) - {"none"}):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 grads(policy), reference)


def test_cpu_flags_give_one_single_threaded_device_per_core_unless_the_user_chose(monkeypatch):
  from vit_jax.runtime import cpu  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(cpu.os, "sched_getaffinity", lambda _: {0, 1, 2}, raising=False)
  monkeypatch.setattr(cpu, "keep_freed_host_memory", lambda: False)  # Not in this process.
  monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
  assert cpu.apply_cpu_defaults() == ("--xla_dump_to=/tmp/x"
                                      " --xla_force_host_platform_device_count=3"
                                      " --xla_cpu_multi_thread_eigen=false")
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  assert cpu.apply_cpu_defaults() == "--xla_force_host_platform_device_count=1"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_cpu_malloc_policy_applies_on_cpu_unless_the_user_chose_or_an_accelerator_runs(tmp_path):
  """Run in fresh processes: the policy must precede every other thread. Its effect (page faults
  per step) is measured by experiments/speed_cpu.py's faults/step column, not here: on a single
  64 MiB temporary glibc's heap placement makes the fault count vary from run to run."""
  script = "from vit_jax.runtime import cpu; print(cpu.keep_freed_host_memory())"
  def applied(**env):
    environ = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JAX_PLATFORMS")}
    out = subprocess.run([sys.executable, "-c", script], env=environ | env, capture_output=True,
                         text=True, check=True, cwd=tmp_path)
    return out.stdout.split()[-1]
  assert applied(JAX_PLATFORMS="cpu") == "True"
  assert applied(JAX_PLATFORMS="cpu",
                 GLIBC_TUNABLES="glibc.malloc.trim_threshold=131072") == "False"
  assert applied(JAX_PLATFORMS="cuda,cpu") == "False"


@pytest.mark.parametrize("name,shapes,plain", [
    ("dense_dot", ((2, 5, 6), (6, 20)), lambda x, w: x @ w),  # transposes the activations
    ("dense_dot", ((2, 5, 20), (20, 6)), lambda x, w: x @ w),  # transposes the output gradient
    ("attention_logits", ((2, 3, 7, 4), (2, 3, 7, 4)),
     lambda q, k: jnp.einsum("bhqd,bhkd->bhqk", q, k)),
    ("attention_output", ((2, 3, 7, 7), (2, 3, 7, 4)),
     lambda p, v: jnp.einsum("bhqk,bhkd->bhqd", p, v)),
])
def test_cpu_kernel_gradients_are_those_of_the_plain_products(name, shapes, plain):
  a, b = (jax.random.normal(jax.random.key(i), s) for i, s in enumerate(shapes))
  ours_fn = getattr(cpu_kernels, name)
  np.testing.assert_allclose(np.asarray(ours_fn(a, b)), np.asarray(plain(a, b)), rtol=1e-5,
                             atol=1e-6)
  dy = jax.random.normal(jax.random.key(2), plain(a, b).shape)
  grads = lambda f: jax.jit(jax.grad(lambda a, b: jnp.sum(f(a, b) * dy), argnums=(0, 1)))(a, b)
  for ours, expected in zip(grads(ours_fn), grads(plain)):
    np.testing.assert_allclose(np.asarray(ours), np.asarray(expected), rtol=1e-5, atol=1e-5)


def test_attention_gradients_match_between_paths():
  """The CPU path (fused QKV matmul, dense_dot weight gradients) differentiates like the plain
  einsums."""
  x = jax.random.normal(jax.random.key(0), (2, 7, 24))
  dy = jax.random.normal(jax.random.key(1), (2, 7, 24))
  grads = {}
  for implementation in (None, "xla"):
    layer = attention.MultiHeadDotProductAttention(3, kernels=kernels.select(implementation, "cpu"))
    params = _random_params(layer.init, x, x, seed=3)
    loss = lambda p, x, layer=layer: jnp.sum(layer.apply({"params": p}, x, x) * dy)
    grads[implementation] = jax.grad(loss, argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(grads[None]), jax.tree.leaves(grads["xla"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
