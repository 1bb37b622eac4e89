"""Vision Transformer (plain and hybrid), parameter-compatible with the official checkpoints.

Module and parameter names follow google-research/vision_transformer, so the official `.npz`
trees map 1:1 (see vit_jax/checkpoints). Every parameter carries logical axis names
('embed', 'mlp', 'heads', 'kv', 'classes', 'layers') that vit_jax/training/sharding.py maps to mesh
axes. Attention lives in attention.py; the backend-specific kernels are chosen in kernels.py.

Architecture options (`Model` fields), each off by default so that the default tree is exactly the
official one, each working scanned or not, with remat and at FlexiViT patch sizes:

* `num_registers=R`: R learned tokens `registers` (1, R, D), init normal(0.02), appended after the
  patch tokens once the position embedding is added (they get none, as DINOv2's registers, Darcet
  et al. 2023) and dropped after the encoder, so no classifier ('token', 'gap', 'map') pools them.
* `qk_norm=True`: LayerNorm (scale only) of queries and keys per head (ViT-22B); see attention.py.
* `use_bias=False`: no biases in the encoder: q/k/v/out and MLP dense layers and the LayerNorms
  (LayerNorm_0, LayerNorm_2, encoder_norm) (ViT-22B / PaLM). The LayerNorms still centre (ViT-22B
  also drops the centring). The patch embedding, MAP head, pre-logits and head keep their biases.
* `parallel_block=True`: y = x + attn(LN(x)) + mlp(LN(x)) with ONE LayerNorm (`LayerNorm_0`; there
  is no `LayerNorm_2`), as ViT-22B; stochastic depth drops the sum of both branches.
* `layerscale_init=v`: a per-channel scale (D,) initialised to v on each residual branch,
  `LayerScale_attn/scale` and `LayerScale_mlp/scale` (CaiT, Touvron et al. 2021; DeiT-III uses
  1e-4 to 1e-6 by depth).
* `fc_norm=True` (classifier='gap' only): the final LayerNorm (`Transformer/encoder_norm`, same
  params) normalises the average-pooled tokens instead of every token before the pool, as timm's
  `global_pool='avg'` ViTs (`fc_norm`), MAE and BEiT.
* `posemb='rope2d'`: 2D axial rotary embedding of q and k in every encoder attention instead of a
  learned/fixed position embedding (no parameters); class token and registers are not rotated.
* `posemb='none'`: no position information at all (a bag of patches; the ablation of the ViT
  paper's Table 8 / Appendix D.4).

Numerics of other libraries (`Model` fields), the official ones by default; an imported model sets
them to reproduce its source's logits (vit_jax/checkpoints/timm.py, hf.py); on real checkpoints
they move logits by ~5e-4..1e-3 (the design notes' measurement of stock timm vs the original):

* `gelu_approximate=True`: the MLP GELU (encoder blocks and the MAP head) is the tanh approximation,
  as the official ViT and big_vision (flax `nn.gelu` default); False: the exact erf GELU of timm and
  Hugging Face (PyTorch `nn.GELU()` default).
* `resnet_numerics='official'`: the hybrid ResNet stem standardises conv weights as
  (w - mean) / (std + 1e-5) and its GroupNorms use eps 1e-6 (the official hybrids); 'timm':
  (w - mean) / sqrt(var + 1e-8) (timm's StdConv2dSame) and GroupNorm eps 1e-5 (timm's
  GroupNormAct), as timm's `vit_*_r*` hybrids. No parameter changes; see resnet.py.

The official `.npz` format is a flat name -> array map, so it carries every option's params (an
options model loads back with the same options); the Hugging Face export refuses them by name
(vit_jax/checkpoints/hf.py `check_exportable`).
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp

from vit_jax.models import attention, resize, resnet
from vit_jax.models import kernels as kernels_lib
from vit_jax.models.partitioning import constrain as _constrain
from vit_jax.models.partitioning import init as _init

Dtype = Any

CLASSIFIERS = ("token", "gap", "map")
POSEMBS = ("learn", "sincos2d", "rope2d", "none")
REMAT_POLICIES = {
    "none": None,  # no rematerialisation
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_attn_out": jax.checkpoint_policies.save_only_these_names("attn_out", "mlp_out"),
}


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


class MlpBlock(nn.Module):
  """Dense -> GELU -> Dense. GELU is the tanh approximation (the official models) unless
  `gelu_approximate=False` (exact erf GELU, as timm and Hugging Face)."""
  mlp_dim: int
  dtype: Dtype = jnp.float32
  dropout: float = 0.0
  deterministic: bool = True
  kernels: Optional[kernels_lib.Kernels] = None  # None: kernels_lib.select()
  use_bias: bool = True
  gelu_approximate: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    dot_general = (self.kernels or kernels_lib.select()).dot_general
    x = nn.Dense(self.mlp_dim, dtype=self.dtype, name="Dense_0", dot_general=dot_general,
                 use_bias=self.use_bias,
                 kernel_init=_init(nn.initializers.xavier_uniform(), ("embed", "mlp")),
                 bias_init=_init(nn.initializers.normal(stddev=1e-6), ("mlp",)))(x)
    x = _constrain(nn.gelu(x, approximate=self.gelu_approximate), ("batch", "length", "mlp"))
    x = nn.Dropout(self.dropout)(x, deterministic=self.deterministic)
    x = nn.Dense(width, dtype=self.dtype, name="Dense_1", dot_general=dot_general,
                 use_bias=self.use_bias,
                 kernel_init=_init(nn.initializers.xavier_uniform(), ("mlp", "embed")),
                 bias_init=_init(nn.initializers.normal(stddev=1e-6), ("embed",)))(x)
    return nn.Dropout(self.dropout)(x, deterministic=self.deterministic)


def _layer_norm(name: str, dtype: Dtype, use_bias: bool = True) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-6, dtype=dtype, name=name, use_bias=use_bias,
                      scale_init=_init(nn.initializers.ones, ("embed",)),
                      bias_init=_init(nn.initializers.zeros, ("embed",)))


def _drop_path(x: jax.Array, rate: jax.Array, rng: jax.Array) -> jax.Array:
  """Stochastic depth: drops the whole residual branch per example, rescaling survivors."""
  keep = 1.0 - rate
  mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / keep.astype(x.dtype), jnp.zeros_like(x))


class LayerScale(nn.Module):
  """Per-channel scale of a residual branch (CaiT / DeiT-III), initialised to `init_value`."""
  init_value: float

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", _init(nn.initializers.constant(self.init_value), ("embed",)),
                       (x.shape[-1],), jnp.float32)
    return x * scale.astype(x.dtype)


class EncoderBlock(nn.Module):
  """Pre-norm transformer block (sequential, or ViT-22B's parallel attention + MLP).
  `drop_path_rate` is an argument so `nn.scan` can vary it by layer."""
  mlp_dim: int
  num_heads: int
  dtype: Dtype = jnp.float32
  dropout: float = 0.0
  attention_dropout: float = 0.0
  deterministic: bool = True
  kernels: Optional[kernels_lib.Kernels] = None
  use_bias: bool = True
  qk_norm: bool = False
  parallel_block: bool = False
  layerscale_init: Optional[float] = None
  rope: Optional[attention.RopeLayout] = None
  gelu_approximate: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, drop_path_rate: jax.Array) -> jax.Array:
    self.sow("intermediates", "drop_path_rate", drop_path_rate)
    x = _constrain(x, ("batch", "length", "embed"))
    y = _layer_norm("LayerNorm_0", self.dtype, self.use_bias)(x)
    a = attention.MultiHeadDotProductAttention(
        self.num_heads, self.dtype, self.attention_dropout, self.deterministic, self.kernels,
        use_bias=self.use_bias, qk_norm=self.qk_norm, rope=self.rope,
        name="MultiHeadDotProductAttention_1")(y, y)
    a = nn.Dropout(self.dropout)(a, deterministic=self.deterministic)
    a = self._scale(checkpoint_name(a, "attn_out"), "LayerScale_attn")
    if self.parallel_block:  # ViT-22B: both branches read the same normalised input.
      m = self._mlp(y)
      x = x + self._maybe_drop_path(a + m, drop_path_rate)
    else:
      x = x + self._maybe_drop_path(a, drop_path_rate)
      m = self._mlp(_layer_norm("LayerNorm_2", self.dtype, self.use_bias)(x))
      x = x + self._maybe_drop_path(m, drop_path_rate)
    return _constrain(x, ("batch", "length", "embed"))

  def _mlp(self, y: jax.Array) -> jax.Array:
    y = MlpBlock(self.mlp_dim, self.dtype, self.dropout, self.deterministic, self.kernels,
                 use_bias=self.use_bias, gelu_approximate=self.gelu_approximate,
                 name="MlpBlock_3")(y)
    return self._scale(checkpoint_name(y, "mlp_out"), "LayerScale_mlp")

  def _scale(self, y: jax.Array, name: str) -> jax.Array:
    if self.layerscale_init is None:
      return y
    return LayerScale(self.layerscale_init, name=name)(y)

  def _maybe_drop_path(self, y, rate):
    if self.deterministic or self.is_initializing():
      return y
    return _drop_path(y, rate, self.make_rng("dropout"))


class AddPositionEmbs(nn.Module):
  """Learned position embedding over every token (class token included, as the official models).

  The parameter keeps the grid it was initialised with; when a call sees another grid (FlexiViT
  patch sizes), the grid part is resized bilinearly on the fly and the prefix tokens are kept.
  Its token count does not say the shape of a non-square grid, so on-the-fly resizing takes the
  stored grid to be square and is refused for non-square images (sincos2d has no such limit).
  """
  num_prefix_tokens: int = 0
  grid: Optional[tuple[int, int]] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shape = (1, x.shape[1], x.shape[2])
    if self.has_variable("params", "pos_embedding"):
      shape = nn.unbox(self.get_variable("params", "pos_embedding")).shape
    pe = self.param("pos_embedding",
                    _init(nn.initializers.normal(stddev=0.02), (None, None, "embed")),
                    shape, jnp.float32)
    if pe.shape[1] != x.shape[1]:
      if self.grid[0] != self.grid[1]:
        raise ValueError(
            f"A learned position embedding of {pe.shape[1] - self.num_prefix_tokens} grid tokens "
            f"cannot be resized on the fly to the non-square {self.grid[0]}x{self.grid[1]} grid: "
            "its stored grid's shape is unknown. Use posemb='sincos2d' or square images, or "
            "resize it once with vit_jax.models.resize.resize_posemb(..., old_grid=...).")
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
    kernel = self.param("kernel",
                        _init(nn.initializers.lecun_normal(), (None, None, None, "embed")),
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
  kernels: Optional[kernels_lib.Kernels] = None
  use_bias: bool = True
  qk_norm: bool = False
  parallel_block: bool = False
  layerscale_init: Optional[float] = None
  gelu_approximate: bool = True
  fc_norm: bool = False  # Average the tokens (registers excluded), then encoder_norm: (B, 1, D).

  @nn.compact
  def __call__(self, x: jax.Array, grid: tuple[int, int], num_prefix_tokens: int,
               train: bool, registers: Optional[jax.Array] = None) -> jax.Array:
    """`x`: prefix tokens then the row-major `grid`; `registers` (1, R, D) are appended after
    the position embedding, so the output has R more tokens (the last R)."""
    if self.posemb == "learn":
      x = AddPositionEmbs(num_prefix_tokens, grid, name="posembed_input")(x)
    num_registers = 0
    if registers is not None:
      num_registers = registers.shape[1]
      x = jnp.concatenate([x, jnp.tile(registers.astype(x.dtype), (x.shape[0], 1, 1))], axis=1)
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    rope = None
    if self.posemb == "rope2d":
      rope = attention.RopeLayout(tuple(int(g) for g in grid), num_prefix_tokens, num_registers)
    block_kwargs = dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads, dtype=self.dtype,
                        dropout=self.dropout, attention_dropout=self.attention_dropout,
                        deterministic=not train, kernels=self.kernels, use_bias=self.use_bias,
                        qk_norm=self.qk_norm, parallel_block=self.parallel_block,
                        layerscale_init=self.layerscale_init, rope=rope,
                        gelu_approximate=self.gelu_approximate)
    # Stochastic depth rate rises linearly from 0 at the first block to `stoch_depth` at the last.
    rates = jnp.linspace(0.0, self.stoch_depth, self.depth) if self.depth > 1 else jnp.full(
        (self.depth,), self.stoch_depth)
    policy = REMAT_POLICIES[self.remat_policy]
    if self.scan:
      body = _ScannedBlock
      if self.remat_policy != "none":
        body = nn.remat(body, policy=policy, prevent_cse=False)
      x, _ = nn.scan(
          body, variable_axes={"params": 0, "intermediates": 0},
          split_rngs={"params": True, "dropout": True}, in_axes=0, length=self.depth,
          metadata_params={nn.PARTITION_NAME: "layers"})(
              **block_kwargs, name="encoderblock")(x, rates)
    else:
      block_cls = EncoderBlock
      if self.remat_policy != "none":
        block_cls = nn.remat(EncoderBlock, policy=policy)
      for i in range(self.depth):
        x = block_cls(**block_kwargs, name=f"encoderblock_{i}")(x, rates[i])
    if self.fc_norm:
      x = jnp.mean(x[:, :x.shape[1] - num_registers], axis=1, keepdims=True)
    return _layer_norm("encoder_norm", self.dtype, self.use_bias)(x)


class MAPHead(nn.Module):
  """Multihead attention pooling: a learned probe attends over the tokens."""
  mlp_dim: int
  num_heads: int
  dtype: Dtype = jnp.float32
  kernels: Optional[kernels_lib.Kernels] = None
  gelu_approximate: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    probe = self.param("probe", _init(nn.initializers.xavier_uniform(), (None, None, "embed")),
                       (1, 1, width), jnp.float32)
    probe = jnp.tile(probe.astype(self.dtype), (x.shape[0], 1, 1))
    x = attention.MultiHeadDotProductAttention(self.num_heads, self.dtype, kernels=self.kernels,
                                               name="MultiHeadDotProductAttention_0")(probe, x)
    y = _layer_norm("LayerNorm_0", self.dtype)(x)
    x = x + MlpBlock(self.mlp_dim, self.dtype, kernels=self.kernels,
                     gelu_approximate=self.gelu_approximate, name="MlpBlock_0")(y)
    return x[:, 0]


class Model(nn.Module):
  """ViT classifier. Input NHWC images; output logits (B, num_classes), or features if
  num_classes=0."""
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
  # Initial head bias. A sigmoid loss over many classes starts near its optimum with a negative
  # bias (big_vision's ImageNet-21k recipe: -10), instead of at ~0.69 nats per class.
  head_bias_init: float = 0.0
  # Architecture options (module docstring): off by default, the official architecture.
  num_registers: int = 0
  qk_norm: bool = False
  use_bias: bool = True
  parallel_block: bool = False
  layerscale_init: Optional[float] = None
  # Numerics of other libraries (module docstring), the official ones by default: imported timm /
  # Hugging Face models set them to reproduce their source's logits.
  gelu_approximate: bool = True
  resnet_numerics: str = "official"
  fc_norm: bool = False

  def __post_init__(self):
    _validate_fields(self)
    super().__post_init__()

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False,
               patch_size: Optional[Sequence[int]] = None) -> jax.Array:
    """Logits for NHWC `images`.

    `patch_size` (static) runs the model at another patch size than its kernel's (FlexiViT):
    the patch kernel is PI-resized and a learned position embedding resized to the new grid
    (with posemb='rope2d' the rotations are those of the new grid's positions)."""
    patch_size = tuple(patch_size or self.patch_size)
    self._check_input(images, patch_size)
    kernels = kernels_lib.select(self.attention_impl)
    x = images.astype(self.dtype)
    if self.resnet is not None:
      x = resnet.resnet_stem(x, tuple(self.resnet["num_layers"]),
                             int(self.resnet["width_factor"]), self.dtype, self.resnet_numerics)
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
    registers = None
    if self.num_registers:
      registers = self.param("registers", _init(nn.initializers.normal(stddev=0.02),
                                                (None, None, "embed")),
                             (1, self.num_registers, d), jnp.float32)

    encoder = Encoder(
        depth=self.depth, mlp_dim=self.mlp_dim, num_heads=self.num_heads, posemb=self.posemb,
        dtype=self.dtype, dropout=self.dropout, attention_dropout=self.attention_dropout,
        stoch_depth=self.stoch_depth, scan=self.scan, remat_policy=self.remat_policy,
        kernels=kernels, use_bias=self.use_bias, qk_norm=self.qk_norm,
        parallel_block=self.parallel_block, layerscale_init=self.layerscale_init,
        gelu_approximate=self.gelu_approximate, fc_norm=self.fc_norm, name="Transformer")
    x = encoder(x, (gh, gw), int(use_cls), train, registers)
    if self.num_registers and not self.fc_norm:  # Registers are never pooled.
      x = x[:, :x.shape[1] - self.num_registers]

    if self.classifier == "token":
      x = x[:, 0]
    elif self.classifier == "gap":
      x = jnp.mean(x, axis=1)
    else:
      x = MAPHead(self.mlp_dim, self.num_heads, self.dtype, kernels, self.gelu_approximate,
                  name="MAPHead_0")(x)

    if self.representation_size is not None:
      x = nn.Dense(self.representation_size, dtype=self.dtype, name="pre_logits",
                   kernel_init=_init(nn.initializers.lecun_normal(), ("embed", None)),
                   bias_init=_init(nn.initializers.zeros, (None,)))(x)
      x = jnp.tanh(x)
    if not self.num_classes:
      return x
    # Zero-initialised head kernel, as the official fine-tuning recipe.
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head",
                      kernel_init=_init(nn.initializers.zeros, ("embed", "classes")),
                      bias_init=_init(nn.initializers.constant(self.head_bias_init),
                                      ("classes",)))(x)
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
  if m.attention_impl not in kernels_lib.ATTENTION_IMPLS:
    raise ValueError(f"attention_impl={m.attention_impl!r}; choose one of "
                     f"{kernels_lib.ATTENTION_IMPLS}.")
  for name in ("width", "depth", "mlp_dim", "num_heads"):
    if not isinstance(getattr(m, name), int) or getattr(m, name) < 1:
      raise ValueError(f"{name}={getattr(m, name)!r} must be a positive int.")
  if m.width % m.num_heads:
    raise ValueError(f"width={m.width} is not divisible by num_heads={m.num_heads}.")
  if len(tuple(m.patch_size)) != 2 or min(m.patch_size) <= 0:
    raise ValueError(f"patch_size={m.patch_size!r} must be two positive ints, e.g. (16, 16).")
  for name in ("dropout", "attention_dropout", "stoch_depth"):
    if not 0.0 <= getattr(m, name) < 1.0:
      raise ValueError(f"{name}={getattr(m, name)} must be in [0, 1).")
  if isinstance(m.num_registers, bool) or not isinstance(m.num_registers, int) or (
      m.num_registers < 0):
    raise ValueError(f"num_registers={m.num_registers!r} must be an int >= 0 (0: no registers).")
  for name in ("qk_norm", "use_bias", "parallel_block", "gelu_approximate", "fc_norm"):
    if not isinstance(getattr(m, name), bool):
      raise ValueError(f"{name}={getattr(m, name)!r} must be True or False.")
  if m.layerscale_init is not None and not (
      isinstance(m.layerscale_init, (int, float)) and m.layerscale_init > 0):
    raise ValueError(f"layerscale_init={m.layerscale_init!r} must be a positive float (e.g. 1e-4, "
                     "as CaiT / DeiT-III) or None for no LayerScale.")
  if m.fc_norm and m.classifier != "gap":
    raise ValueError(f"fc_norm=True normalises the average-pooled tokens: it needs "
                     f"classifier='gap', got classifier={m.classifier!r}.")
  if m.resnet_numerics not in resnet.NUMERICS:
    raise ValueError(f"resnet_numerics={m.resnet_numerics!r}; choose one of "
                     f"{tuple(resnet.NUMERICS)}.")
  if m.posemb == "rope2d" and (m.width // m.num_heads) % 4:
    raise ValueError(f"posemb='rope2d' needs a head dim (width / num_heads = "
                     f"{m.width}/{m.num_heads} = {m.width // m.num_heads}) divisible by 4: "
                     "each of the two axes rotates pairs of channels. Change width or num_heads.")

