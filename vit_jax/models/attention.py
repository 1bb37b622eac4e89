"""Multi-head dot-product attention with the official (D, H, Dh) / (H, Dh, D) kernels.

The parameters are those nn.DenseGeneral would create (names, shapes, logical axes, init), so the
official checkpoints load 1:1; holding them here lets the attention choose its einsums and output
layout. Which kernels run is `vit_jax.models.kernels`' choice; every path computes
softmax(q k^T / sqrt(Dh)) v.

Options (all off by default, so the default parameters are exactly the official ones):

* `use_bias=False`: no q/k/v/out biases (ViT-22B, Dehghani et al. 2023).
* `qk_norm=True`: LayerNorm of q and k over the head dim before the logits (ViT-22B), as flax's
  `nn.MultiHeadDotProductAttention(normalize_qk=True)`: params `query_ln/scale` and `key_ln/scale`
  of shape (Dh,), shared by the heads, no bias, eps 1e-6.
* `rope`: a `RopeLayout`; q and k are rotated by 2D axial rotary embeddings of their patch's
  (row, column) (RoPE-ViT "axial", Heo et al. 2024; EVA-02): the first half of each head's
  channels rotates with the column, the second half with the row, `Dh/4` frequencies
  theta^(-j/(Dh/4)) each (theta = 100, RoPE-ViT's). Tokens before / after the grid (class token,
  registers) are not rotated. No parameters; the tables are constants of the traced grid, so a
  FlexiViT call at another grid gets the rotations of that grid.
"""
import functools
import math
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models import kernels as kernels_lib
from vit_jax.models import partitioning

Dtype = Any

ROPE_THETA = 100.0  # RoPE-ViT's axial base frequency for image grids


def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array, implementation: str,
                    pad_odd_lengths: bool) -> jax.Array:
  """`jax.nn.dot_product_attention` on (B, T, H, Dh), with odd lengths padded if asked.

  cuDNN's flash kernel trains only even query and key lengths. Padding adds one zero token at the
  end, which the kernel's padding mask (`key_value_seq_lengths`) hides from every query; the
  padded query row is sliced off. The function is unchanged.
  """
  tq, tk = q.shape[1], k.shape[1]
  if not (pad_odd_lengths and (tq % 2 or tk % 2)):
    return jax.nn.dot_product_attention(q, k, v, implementation=implementation)
  to_even = lambda x: jnp.pad(x, ((0, 0), (0, x.shape[1] % 2), (0, 0), (0, 0)))
  lengths = lambda t: jnp.full((q.shape[0],), t, jnp.int32)
  out = jax.nn.dot_product_attention(
      to_even(q), to_even(k), to_even(v), implementation=implementation,
      query_seq_lengths=lengths(tq), key_value_seq_lengths=lengths(tk))
  return out[:, :tq]


class RopeLayout(NamedTuple):
  """Where the grid tokens are in a sequence: `num_prefix` unrotated tokens (class token), then
  the row-major `grid` (rows, cols), then `num_suffix` unrotated tokens (registers)."""
  grid: tuple[int, int]
  num_prefix: int = 0
  num_suffix: int = 0


@functools.lru_cache(maxsize=None)
def rope_2d_tables(layout: RopeLayout, head_dim: int,
                   theta: float = ROPE_THETA) -> tuple[np.ndarray, np.ndarray]:
  """(sin, cos), each (tokens, 2, Dh/4): angle of token t, axis a (0: column, 1: row), freq j."""
  if head_dim % 4:
    raise ValueError(f"posemb='rope2d' needs a head dim divisible by 4, got {head_dim}.")
  freqs = theta ** (-np.arange(head_dim // 4) / (head_dim // 4))
  rows, cols = np.meshgrid(np.arange(layout.grid[0]), np.arange(layout.grid[1]), indexing="ij")
  pos = np.stack([cols.ravel(), rows.ravel()], axis=-1).astype(np.float64)  # (gh*gw, 2)
  angles = pos[:, :, None] * freqs  # (gh*gw, 2, Dh/4)
  angles = np.concatenate([np.zeros((layout.num_prefix, 2, head_dim // 4)), angles,
                           np.zeros((layout.num_suffix, 2, head_dim // 4))])
  return np.sin(angles).astype(np.float32), np.cos(angles).astype(np.float32)


def apply_rope(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
  """Rotates x (..., Dh) channel pairs (j, j + Dh/4) of each half by the angles of `sin`/`cos`,
  which broadcast against (..., 2, Dh/4) (the token axis of x aligned with theirs)."""
  quarter = x.shape[-1] // 4
  parts = x.reshape(*x.shape[:-1], 2, 2, quarter)  # (..., axis, half, Dh/4)
  a, b = parts[..., 0, :], parts[..., 1, :]
  sin, cos = sin.astype(x.dtype), cos.astype(x.dtype)
  rotated = jnp.stack([a * cos - b * sin, a * sin + b * cos], axis=-2)
  return rotated.reshape(x.shape)


class _Projection(nn.Module):
  """Kernel and bias of one projection, named and initialised as nn.DenseGeneral would."""
  kernel_shape: tuple[int, ...]
  kernel_axes: partitioning.Axes
  bias_shape: tuple[int, ...]
  bias_axes: partitioning.Axes
  num_in_dims: int  # Leading kernel dims that are contracted (fan-in), as DenseGeneral's `axis`.
  use_bias: bool = True

  @nn.compact
  def __call__(self) -> tuple[jax.Array, Optional[jax.Array]]:
    flat = (math.prod(self.kernel_shape[:self.num_in_dims]),
            math.prod(self.kernel_shape[self.num_in_dims:]))
    kernel = self.param("kernel", partitioning.init(nn.initializers.xavier_uniform(),
                                                    self.kernel_axes, self.kernel_shape),
                        flat, jnp.float32)
    if not self.use_bias:
      return kernel, None
    bias = self.param("bias", partitioning.init(nn.initializers.zeros, self.bias_axes,
                                                self.bias_shape),
                      (math.prod(self.bias_shape),), jnp.float32)
    return kernel, bias


class MultiHeadDotProductAttention(nn.Module):
  """Attention of `inputs_q` over `inputs_kv` (self-attention when they are the same array).

  Attention dropout always runs on the einsum path (the fused kernel has no dropout).
  """
  num_heads: int
  dtype: Dtype = jnp.float32
  attention_dropout: float = 0.0
  deterministic: bool = True
  kernels: Optional[kernels_lib.Kernels] = None  # None: kernels_lib.select()
  use_bias: bool = True
  qk_norm: bool = False
  rope: Optional[RopeLayout] = None  # self-attention only

  @nn.compact
  def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array) -> jax.Array:
    kernels = self.kernels or kernels_lib.select()
    width = inputs_q.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width={width} is not divisible by num_heads={self.num_heads}.")
    heads, head_dim = self.num_heads, width // self.num_heads
    in_proj = dict(kernel_shape=(width, heads, head_dim), kernel_axes=("embed", "heads", "kv"),
                   bias_shape=(heads, head_dim), bias_axes=("heads", "kv"), num_in_dims=1,
                   use_bias=self.use_bias)
    (wq, bq), (wk, bk), (wv, bv) = (
        jax.tree.map(lambda a: a.astype(self.dtype), _Projection(**in_proj, name=n)())
        for n in ("query", "key", "value"))
    wo, bo = jax.tree.map(lambda a: a.astype(self.dtype), _Projection(
        kernel_shape=(heads, head_dim, width), kernel_axes=("heads", "kv", "embed"),
        bias_shape=(width,), bias_axes=("embed",), num_in_dims=2, use_bias=self.use_bias,
        name="out")())
    self_attention = inputs_q is inputs_kv
    if self.rope is not None and not self_attention:
      raise ValueError("Rotary embeddings (posemb='rope2d') need self-attention.")
    inputs_q, inputs_kv = inputs_q.astype(self.dtype), inputs_kv.astype(self.dtype)
    dropout = self.attention_dropout > 0.0 and not self.deterministic
    sin = cos = None
    if self.rope is not None:
      sin, cos = (jnp.asarray(t) for t in rope_2d_tables(self.rope, head_dim))
      if sin.shape[0] != inputs_q.shape[1]:
        raise ValueError(f"Rotary layout {self.rope} covers {sin.shape[0]} tokens, the input has "
                         f"{inputs_q.shape[1]}.")
    add = lambda x, b: x if b is None else x + b

    if kernels.fused_attention and not dropout:
      q, k, v = (add(jnp.einsum("btd,dhk->bthk", x, w), b)
                 for x, w, b in ((inputs_q, wq, bq), (inputs_kv, wk, bk), (inputs_kv, wv, bv)))
      if sin is not None:  # tables (T, 2, Dh/4) -> (T, 1, 2, Dh/4) over the heads axis
        sin, cos = sin[:, None], cos[:, None]
      q, k = self._normalize_and_rotate(q, k, sin, cos)
      q, k, v = (partitioning.constrain(t, ("batch", "length", "heads", "kv")) for t in (q, k, v))
      implementation = kernels_lib.attention_implementation(kernels, q)
      out = fused_attention(q, k, v, implementation, pad_odd_lengths=implementation == "cudnn")
      return add(jnp.einsum("bthk,hkd->btd", out, wo), bo)

    # Head-major (B, H, T, Dh) straight out of the projections: no transposes around the batched
    # matmuls. The 1/sqrt(Dh) scale is folded into the (small) query kernel instead of the logits
    # (after the query's LayerNorm with qk_norm, which a scale does not commute with).
    scale = jnp.asarray(head_dim**-0.5, self.dtype)
    if not self.qk_norm:
      wq, bq = wq * scale, (None if bq is None else bq * scale)
    if self_attention:  # One matmul for q, k and v.
      batch, length = inputs_q.shape[:2]
      w_qkv = jnp.stack([wq, wk, wv], axis=1).reshape(width, 3 * heads * head_dim)
      qkv = kernels.dense_dot(inputs_q, w_qkv).reshape(batch, length, 3, heads, head_dim)
      qkv = jnp.transpose(qkv, (2, 0, 3, 1, 4))
      if self.use_bias:
        qkv = qkv + jnp.stack([bq, bk, bv])[:, None, :, None, :]
      q, k, v = qkv[0], qkv[1], qkv[2]
    else:
      q, k, v = (add(jnp.einsum("btd,dhk->bhtk", x, w), None if b is None else b[:, None, :])
                 for x, w, b in ((inputs_q, wq, bq), (inputs_kv, wk, bk), (inputs_kv, wv, bv)))
    q, k = self._normalize_and_rotate(q, k, sin, cos)
    if self.qk_norm:
      q = q * scale
    q, k, v = (partitioning.constrain(t, ("batch", "heads", "length", "kv")) for t in (q, k, v))
    logits = kernels.attention_logits(q, k)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    if dropout:
      probs = nn.Dropout(self.attention_dropout)(probs, deterministic=False)
    out = kernels.attention_output(probs, v)
    return add(jnp.einsum("bhqd,hdo->bqo", out, wo), bo)

  def _normalize_and_rotate(self, q, k, sin, cos):
    """QK-LayerNorm (over the head dim), then the rotary embedding, of q and k in any layout."""
    if self.qk_norm:
      q, k = (nn.LayerNorm(epsilon=1e-6, use_bias=False, dtype=self.dtype, name=name,
                           scale_init=partitioning.init(nn.initializers.ones, ("kv",)))(t)
              for name, t in (("query_ln", q), ("key_ln", k)))
    if sin is not None:
      q, k = apply_rope(q, sin, cos), apply_rope(k, sin, cos)
    return q, k
