"""Vision Transformer (plain and hybrid), parameter-compatible with the official checkpoints.

Module and parameter names follow google-research/vision_transformer, so the official `.npz`
trees map 1:1 (see vit_jax/checkpoints). Every parameter carries logical axis names
('embed', 'mlp', 'heads', 'kv', 'classes', 'layers') that vit_jax/sharding.py maps to mesh axes.
"""
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from vit_jax.models import matmul, resize, resnet

Dtype = Any

CLASSIFIERS = ("token", "gap", "map")
POSEMBS = ("learn", "sincos2d")
ATTENTION_IMPLS = (None, "xla", "cudnn")
REMAT_POLICIES = {
    "none": None,  # no rematerialisation
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_attn_out": jax.checkpoint_policies.save_only_these_names("attn_out", "mlp_out"),
}


def _init(init_fn, axes: tuple[Optional[str], ...], shape: Optional[tuple[int, ...]] = None):
  """Initializer carrying logical axis names.

  `shape` is for DenseGeneral params with several in/out dims: flax initialises those flattened and
  unboxes before reshaping, so under a mesh (e.g. jit with shardings) the names would be applied to
  the flat value and fail; reshaping inside the box gives the names the shape they describe.
  """
  if shape is not None:
    flat_init = init_fn
    init_fn = lambda rng, flat_shape, dtype=jnp.float32: flat_init(rng, flat_shape, dtype).reshape(shape)
  return nn.with_logical_partitioning(init_fn, axes)


def _constrain(x: jax.Array, axes: tuple[Optional[str], ...]) -> jax.Array:
  return nn.with_logical_constraint(x, axes)


def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.0,
                     dtype=jnp.float32) -> jax.Array:
  """Fixed 2D sin-cos position embedding, shape (1, h*w, width)."""
  if width % 4:
    raise ValueError(f"posemb='sincos2d' needs width divisible by 4, got width={width}.")
  y, x = jnp.mgrid[:h, :w]
  omega = jnp.arange(width // 4) / max(width // 4 - 1, 1)
  omega = 1.0 / (temperature**omega)
  y = jnp.einsum("m,d->md", y.flatten(), omega)
  x = jnp.einsum("m,d->md", x.flatten(), omega)
  pe = jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)], axis=1)
  return jnp.asarray(pe, dtype)[None]


def uses_fused_attention_kernel(implementation: Optional[str], backend: Optional[str] = None) -> bool:
  """Whether attention runs `jax.nn.dot_product_attention` (True) or explicit head-major einsums.

  'xla' / 'cudnn' force that implementation of `dot_product_attention` ('cudnn' = flash attention,
  GPU only). None picks `dot_product_attention` on GPU, where cuDNN is fast, and the einsums
  elsewhere: on CPU the (B, T, H, Dh) layout that `dot_product_attention` works in costs transposes
  around every batched matmul, while einsums that emit (B, H, T, Dh) straight from the projections
  avoid them (numbers in experiments/SPEED.md).
  """
  if implementation not in ATTENTION_IMPLS:
    raise ValueError(f"attention_impl={implementation!r}; choose one of {ATTENTION_IMPLS}.")
  return implementation is not None or (backend or jax.default_backend()) == "gpu"


class _Projection(nn.Module):
  """Kernel and bias of one attention projection, named and initialised as nn.DenseGeneral would.

  Holding the parameters here (instead of calling DenseGeneral) lets the attention pick the einsum
  and the output layout, while the tree, the logical axes and the init stay those of the checkpoints.
  """
  kernel_shape: tuple[int, ...]
  kernel_axes: tuple[Optional[str], ...]
  bias_shape: tuple[int, ...]
  bias_axes: tuple[Optional[str], ...]
  num_in_dims: int  # Leading kernel dims that are contracted (fan-in), as DenseGeneral's `axis`.

  @nn.compact
  def __call__(self) -> tuple[jax.Array, jax.Array]:
    flat = (math.prod(self.kernel_shape[:self.num_in_dims]),
            math.prod(self.kernel_shape[self.num_in_dims:]))
    kernel = self.param("kernel", _init(nn.initializers.xavier_uniform(), self.kernel_axes,
                                        self.kernel_shape), flat, jnp.float32)
    bias = self.param("bias", _init(nn.initializers.zeros, self.bias_axes, self.bias_shape),
                      (math.prod(self.bias_shape),), jnp.float32)
    return kernel, bias


class MultiHeadDotProductAttention(nn.Module):
  """Multi-head attention with the official (D, H, Dh) / (H, Dh, D) kernels.

  See `uses_fused_attention_kernel` for the two computation paths; both compute
  softmax(q k^T / sqrt(Dh)) v. Attention dropout always takes the einsum path (the fused kernel has
  no dropout).
  """
  num_heads: int
  dtype: Dtype = jnp.float32
  attention_dropout: float = 0.0
  deterministic: bool = True
  implementation: Optional[str] = None

  @nn.compact
  def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array) -> jax.Array:
    width = inputs_q.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width={width} is not divisible by num_heads={self.num_heads}.")
    heads, head_dim = self.num_heads, width // self.num_heads
    in_proj = dict(kernel_shape=(width, heads, head_dim), kernel_axes=("embed", "heads", "kv"),
                   bias_shape=(heads, head_dim), bias_axes=("heads", "kv"), num_in_dims=1)
    (wq, bq), (wk, bk), (wv, bv) = (
        jax.tree.map(lambda a: a.astype(self.dtype), _Projection(**in_proj, name=n)())
        for n in ("query", "key", "value"))
    wo, bo = _Projection(kernel_shape=(heads, head_dim, width), kernel_axes=("heads", "kv", "embed"),
                         bias_shape=(width,), bias_axes=("embed",), num_in_dims=2, name="out")()
    wo, bo = wo.astype(self.dtype), bo.astype(self.dtype)
    self_attention = inputs_q is inputs_kv
    inputs_q, inputs_kv = inputs_q.astype(self.dtype), inputs_kv.astype(self.dtype)
    dropout = self.attention_dropout > 0.0 and not self.deterministic

    if uses_fused_attention_kernel(self.implementation) and not dropout:
      q, k, v = (jnp.einsum("btd,dhk->bthk", x, w) + b
                 for x, w, b in ((inputs_q, wq, bq), (inputs_kv, wk, bk), (inputs_kv, wv, bv)))
      q, k, v = (_constrain(t, ("batch", "length", "heads", "kv")) for t in (q, k, v))
      out = jax.nn.dot_product_attention(q, k, v, implementation=self.implementation)
      return jnp.einsum("bthk,hkd->btd", out, wo) + bo

    # Head-major (B, H, T, Dh) straight out of the projections: no transposes around the batched
    # matmuls. The 1/sqrt(Dh) scale is folded into the (small) query kernel instead of the logits.
    scale = jnp.asarray(head_dim**-0.5, self.dtype)
    wq, bq = wq * scale, bq * scale
    if self_attention:  # One matmul for q, k and v.
      batch, length = inputs_q.shape[:2]
      w_qkv = jnp.stack([wq, wk, wv], axis=1).reshape(width, 3 * heads * head_dim)
      qkv = matmul.dense_dot(inputs_q, w_qkv).reshape(batch, length, 3, heads, head_dim)
      qkv = jnp.transpose(qkv, (2, 0, 3, 1, 4)) + jnp.stack([bq, bk, bv])[:, None, :, None, :]
      q, k, v = qkv[0], qkv[1], qkv[2]
    else:
      q, k, v = (jnp.einsum("btd,dhk->bhtk", x, w) + b[:, None, :]
                 for x, w, b in ((inputs_q, wq, bq), (inputs_kv, wk, bk), (inputs_kv, wv, bv)))
    q, k, v = (_constrain(t, ("batch", "heads", "length", "kv")) for t in (q, k, v))
    logits = matmul.attention_logits(q, k)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    if dropout:
      probs = nn.Dropout(self.attention_dropout)(probs, deterministic=False)
    out = matmul.attention_output(probs, v)
    return jnp.einsum("bhqd,hdo->bqo", out, wo) + bo


class MlpBlock(nn.Module):
  """Dense -> GELU (tanh approximation, as the official models) -> Dense."""
  mlp_dim: int
  dtype: Dtype = jnp.float32
  dropout: float = 0.0
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    x = nn.Dense(self.mlp_dim, dtype=self.dtype, name="Dense_0", dot_general=matmul.dot_general,
                 kernel_init=_init(nn.initializers.xavier_uniform(), ("embed", "mlp")),
                 bias_init=_init(nn.initializers.normal(stddev=1e-6), ("mlp",)))(x)
    x = _constrain(nn.gelu(x), ("batch", "length", "mlp"))
    x = nn.Dropout(self.dropout)(x, deterministic=self.deterministic)
    x = nn.Dense(width, dtype=self.dtype, name="Dense_1", dot_general=matmul.dot_general,
                 kernel_init=_init(nn.initializers.xavier_uniform(), ("mlp", "embed")),
                 bias_init=_init(nn.initializers.normal(stddev=1e-6), ("embed",)))(x)
    return nn.Dropout(self.dropout)(x, deterministic=self.deterministic)


def _layer_norm(name: str, dtype: Dtype) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-6, dtype=dtype, name=name,
                      scale_init=_init(nn.initializers.ones, ("embed",)),
                      bias_init=_init(nn.initializers.zeros, ("embed",)))


def _drop_path(x: jax.Array, rate: jax.Array, rng: jax.Array) -> jax.Array:
  """Stochastic depth: drops the whole residual branch per example, rescaling survivors."""
  keep = 1.0 - rate
  mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / keep.astype(x.dtype), jnp.zeros_like(x))


class EncoderBlock(nn.Module):
  """Pre-norm transformer block. `drop_path_rate` is an argument so `nn.scan` can vary it by layer."""
  mlp_dim: int
  num_heads: int
  dtype: Dtype = jnp.float32
  dropout: float = 0.0
  attention_dropout: float = 0.0
  deterministic: bool = True
  attention_impl: Optional[str] = None

  @nn.compact
  def __call__(self, x: jax.Array, drop_path_rate: jax.Array) -> jax.Array:
    x = _constrain(x, ("batch", "length", "embed"))
    y = _layer_norm("LayerNorm_0", self.dtype)(x)
    y = MultiHeadDotProductAttention(
        self.num_heads, self.dtype, self.attention_dropout, self.deterministic,
        self.attention_impl, name="MultiHeadDotProductAttention_1")(y, y)
    y = nn.Dropout(self.dropout)(y, deterministic=self.deterministic)
    y = checkpoint_name(y, "attn_out")
    x = x + self._maybe_drop_path(y, drop_path_rate)
    y = _layer_norm("LayerNorm_2", self.dtype)(x)
    y = MlpBlock(self.mlp_dim, self.dtype, self.dropout, self.deterministic, name="MlpBlock_3")(y)
    y = checkpoint_name(y, "mlp_out")
    x = x + self._maybe_drop_path(y, drop_path_rate)
    return _constrain(x, ("batch", "length", "embed"))

  def _maybe_drop_path(self, y, rate):
    if self.deterministic or self.is_initializing():
      return y
    return _drop_path(y, rate, self.make_rng("dropout"))


class AddPositionEmbs(nn.Module):
  """Learned position embedding over every token (class token included, as the official models).

  The parameter keeps the grid it was initialised with; when a call sees another grid (FlexiViT
  patch sizes), the grid part is resized bilinearly on the fly and the prefix tokens are kept.
  """
  num_prefix_tokens: int = 0
  grid: Optional[tuple[int, int]] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shape = (1, x.shape[1], x.shape[2])
    if self.has_variable("params", "pos_embedding"):
      shape = nn.unbox(self.get_variable("params", "pos_embedding")).shape
    pe = self.param("pos_embedding", _init(nn.initializers.normal(stddev=0.02), (None, None, "embed")),
                    shape, jnp.float32)
    if pe.shape[1] != x.shape[1]:
      pe = resize.resize_posemb(pe, self.grid, self.num_prefix_tokens)
    return x + pe.astype(x.dtype)


class PatchEmbedding(nn.Module):
  """Non-overlapping patch projection (a strided conv, kernel (ph, pw, C, D)).

  Called with another `patch_size` than the kernel's, the kernel is PI-resized (FlexiViT), so one
  set of weights serves every patch size.
  """
  width: int
  kernel_size: tuple[int, int]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, patch_size: tuple[int, int]) -> jax.Array:
    kernel = self.param("kernel", _init(nn.initializers.lecun_normal(), (None, None, None, "embed")),
                        (*self.kernel_size, x.shape[-1], self.width), jnp.float32)
    bias = self.param("bias", _init(nn.initializers.zeros, ("embed",)), (self.width,), jnp.float32)
    kernel = resize.pi_resize_patch_kernel(kernel, patch_size)
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype), patch_size, "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias.astype(self.dtype)


class _ScannedBlock(EncoderBlock):
  """`EncoderBlock` with the (carry, xs) -> (carry, ys) signature `nn.scan` needs."""

  def __call__(self, x, drop_path_rate):  # pylint: disable=arguments-differ
    return super().__call__(x, drop_path_rate), None


class Encoder(nn.Module):
  """Position embedding + blocks + final norm; named 'Transformer' like the official tree."""
  depth: int
  mlp_dim: int
  num_heads: int
  posemb: str = "learn"
  dtype: Dtype = jnp.float32
  dropout: float = 0.0
  attention_dropout: float = 0.0
  stoch_depth: float = 0.0
  scan: bool = False
  remat_policy: str = "none"
  attention_impl: Optional[str] = None

  @nn.compact
  def __call__(self, x: jax.Array, grid: tuple[int, int], num_prefix_tokens: int,
               train: bool) -> jax.Array:
    if self.posemb == "learn":
      x = AddPositionEmbs(num_prefix_tokens, grid, name="posembed_input")(x)
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    block_kwargs = dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads, dtype=self.dtype,
                        dropout=self.dropout, attention_dropout=self.attention_dropout,
                        deterministic=not train, attention_impl=self.attention_impl)
    # Stochastic depth rate rises linearly from 0 at the first block to `stoch_depth` at the last.
    rates = jnp.linspace(0.0, self.stoch_depth, self.depth) if self.depth > 1 else jnp.full(
        (self.depth,), self.stoch_depth)
    policy = REMAT_POLICIES[self.remat_policy]
    if self.scan:
      body = _ScannedBlock
      if self.remat_policy != "none":
        body = nn.remat(body, policy=policy, prevent_cse=False)
      x, _ = nn.scan(
          body, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
          in_axes=0, length=self.depth,
          metadata_params={nn.PARTITION_NAME: "layers"})(**block_kwargs, name="encoderblock")(x, rates)
    else:
      block_cls = EncoderBlock
      if self.remat_policy != "none":
        block_cls = nn.remat(EncoderBlock, policy=policy)
      for i in range(self.depth):
        x = block_cls(**block_kwargs, name=f"encoderblock_{i}")(x, rates[i])
    return _layer_norm("encoder_norm", self.dtype)(x)


class MAPHead(nn.Module):
  """Multihead attention pooling: a learned probe attends over the tokens."""
  mlp_dim: int
  num_heads: int
  dtype: Dtype = jnp.float32
  attention_impl: Optional[str] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    probe = self.param("probe", _init(nn.initializers.xavier_uniform(), (None, None, "embed")),
                       (1, 1, width), jnp.float32)
    probe = jnp.tile(probe.astype(self.dtype), (x.shape[0], 1, 1))
    x = MultiHeadDotProductAttention(self.num_heads, self.dtype,
                                     implementation=self.attention_impl,
                                     name="MultiHeadDotProductAttention_0")(probe, x)
    y = _layer_norm("LayerNorm_0", self.dtype)(x)
    x = x + MlpBlock(self.mlp_dim, self.dtype, name="MlpBlock_0")(y)
    return x[:, 0]


class Model(nn.Module):
  """ViT classifier. Input NHWC images; output logits (B, num_classes), or features if num_classes=0."""
  num_classes: int
  patch_size: Sequence[int] = (16, 16)
  width: int = 768
  depth: int = 12
  mlp_dim: int = 3072
  num_heads: int = 12
  classifier: str = "token"
  posemb: str = "learn"
  representation_size: Optional[int] = None
  dropout: float = 0.0
  attention_dropout: float = 0.0
  stoch_depth: float = 0.0
  dtype: Dtype = jnp.float32
  scan: bool = False
  remat_policy: str = "none"
  resnet: Optional[dict] = None
  attention_impl: Optional[str] = None

  def __post_init__(self):
    _validate_fields(self)
    super().__post_init__()

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False,
               patch_size: Optional[Sequence[int]] = None) -> jax.Array:
    """Logits for NHWC `images`.

    `patch_size` (static) runs the model at another patch size than its kernel's (FlexiViT):
    the patch kernel is PI-resized and a learned position embedding resized to the new grid.
    """
    patch_size = tuple(patch_size or self.patch_size)
    self._check_input(images, patch_size)
    x = images.astype(self.dtype)
    if self.resnet is not None:
      x = resnet.resnet_stem(x, tuple(self.resnet["num_layers"]),
                             int(self.resnet.get("width_factor", 1)), self.dtype)
    x = PatchEmbedding(self.width, tuple(self.patch_size), self.dtype, name="embedding")(
        x, patch_size)
    b, gh, gw, d = x.shape
    x = jnp.reshape(x, (b, gh * gw, d))

    use_cls = self.classifier == "token"
    if self.posemb == "sincos2d":
      # Fixed embedding covers the patches only; the class token (if any) is added after.
      x = x + posemb_sincos_2d(gh, gw, d, dtype=x.dtype)
    if use_cls:
      cls = self.param("cls", _init(nn.initializers.zeros, (None, None, "embed")), (1, 1, d),
                       jnp.float32)
      x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), (b, 1, 1)), x], axis=1)
    x = _constrain(x, ("batch", "length", "embed"))

    encoder = Encoder(
        depth=self.depth, mlp_dim=self.mlp_dim, num_heads=self.num_heads, posemb=self.posemb,
        dtype=self.dtype, dropout=self.dropout, attention_dropout=self.attention_dropout,
        stoch_depth=self.stoch_depth, scan=self.scan, remat_policy=self.remat_policy,
        attention_impl=self.attention_impl, name="Transformer")
    x = encoder(x, (gh, gw), int(use_cls), train)

    if self.classifier == "token":
      x = x[:, 0]
    elif self.classifier == "gap":
      x = jnp.mean(x, axis=1)
    else:
      x = MAPHead(self.mlp_dim, self.num_heads, self.dtype, self.attention_impl,
                  name="MAPHead_0")(x)

    if self.representation_size is not None:
      x = nn.Dense(self.representation_size, dtype=self.dtype, name="pre_logits",
                   kernel_init=_init(nn.initializers.lecun_normal(), ("embed", None)),
                   bias_init=_init(nn.initializers.zeros, (None,)))(x)
      x = jnp.tanh(x)
    if not self.num_classes:
      return x
    # Zero-initialised head, as the official fine-tuning recipe.
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head",
                      kernel_init=_init(nn.initializers.zeros, ("embed", "classes")),
                      bias_init=_init(nn.initializers.zeros, ("classes",)))(x)
    return logits.astype(jnp.float32)

  def _check_input(self, images: jax.Array, patch_size: tuple[int, int]) -> None:
    if images.ndim != 4:
      raise ValueError(f"Expected NHWC images, got shape {images.shape}.")
    h, w = images.shape[1:3]
    stride = resnet.stem_stride(self.resnet["num_layers"]) if self.resnet is not None else 1
    ph, pw = patch_size
    if h % (stride * ph) or w % (stride * pw):
      what = f"patch size {ph}x{pw}" + (f" on a /{stride} ResNet stem" if stride > 1 else "")
      raise ValueError(
          f"Image size {h}x{w} is not divisible by the {what} ({stride * ph}x{stride * pw} px "
          f"per token): resize images to a multiple (e.g. {h - h % (stride * ph) or stride * ph}) "
          f"or choose another patch size.")
    if not self.is_initializing() and self.resnet is None:
      kernel = self.variables.get("params", {}).get("embedding", {}).get("kernel")
      if kernel is not None:
        expected = nn.unbox(kernel).shape[2]
        if images.shape[-1] != expected:
          raise ValueError(
              f"Images have {images.shape[-1]} channels but the patch embedding expects "
              f"{expected}: convert the input (e.g. grayscale -> RGB) or re-initialise the model.")


def _validate_fields(m: Model) -> None:
  if m.classifier not in CLASSIFIERS:
    raise ValueError(f"classifier={m.classifier!r}; choose one of {CLASSIFIERS}.")
  if m.posemb not in POSEMBS:
    raise ValueError(f"posemb={m.posemb!r}; choose one of {POSEMBS}.")
  if m.remat_policy not in REMAT_POLICIES:
    raise ValueError(f"remat_policy={m.remat_policy!r}; choose one of {sorted(REMAT_POLICIES)}.")
  if m.attention_impl not in ATTENTION_IMPLS:
    raise ValueError(f"attention_impl={m.attention_impl!r}; choose one of {ATTENTION_IMPLS}.")
  if m.width % m.num_heads:
    raise ValueError(f"width={m.width} is not divisible by num_heads={m.num_heads}.")
  if len(tuple(m.patch_size)) != 2 or min(m.patch_size) <= 0:
    raise ValueError(f"patch_size={m.patch_size!r} must be two positive ints, e.g. (16, 16).")
  for name in ("dropout", "attention_dropout", "stoch_depth"):
    if not 0.0 <= getattr(m, name) < 1.0:
      raise ValueError(f"{name}={getattr(m, name)} must be in [0, 1).")


def load(init_params, init_file: str, model_kwargs: Optional[dict] = None, dont_load=()):
  """big_vision-style loader: official `.npz` or Orbax checkpoint -> params shaped like init_params."""
  from vit_jax import checkpoints  # pylint: disable=g-import-not-at-top  (avoids an import cycle)
  del model_kwargs  # Shapes are taken from init_params; resizes are inferred from them.
  return checkpoints.load_pretrained(init_params, init_file, dont_load=dont_load)
