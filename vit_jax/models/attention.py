"""Multi-head dot-product attention with the official (D, H, Dh) / (H, Dh, D) kernels.

The parameters are those nn.DenseGeneral would create (names, shapes, logical axes, init), so the
official checkpoints load 1:1; holding them here lets the attention choose its einsums and output
layout. Which kernels run is `vit_jax.models.kernels`' choice; every path computes
softmax(q k^T / sqrt(Dh)) v.
"""
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models import kernels as kernels_lib
from vit_jax.models import partitioning

Dtype = Any


class _Projection(nn.Module):
  """Kernel and bias of one projection, named and initialised as nn.DenseGeneral would."""
  kernel_shape: tuple[int, ...]
  kernel_axes: partitioning.Axes
  bias_shape: tuple[int, ...]
  bias_axes: partitioning.Axes
  num_in_dims: int  # Leading kernel dims that are contracted (fan-in), as DenseGeneral's `axis`.

  @nn.compact
  def __call__(self) -> tuple[jax.Array, jax.Array]:
    flat = (math.prod(self.kernel_shape[:self.num_in_dims]),
            math.prod(self.kernel_shape[self.num_in_dims:]))
    kernel = self.param("kernel", partitioning.init(nn.initializers.xavier_uniform(),
                                                    self.kernel_axes, self.kernel_shape),
                        flat, jnp.float32)
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

  @nn.compact
  def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array) -> jax.Array:
    kernels = self.kernels or kernels_lib.select()
    width = inputs_q.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width={width} is not divisible by num_heads={self.num_heads}.")
    heads, head_dim = self.num_heads, width // self.num_heads
    in_proj = dict(kernel_shape=(width, heads, head_dim), kernel_axes=("embed", "heads", "kv"),
                   bias_shape=(heads, head_dim), bias_axes=("heads", "kv"), num_in_dims=1)
    (wq, bq), (wk, bk), (wv, bv) = (
        jax.tree.map(lambda a: a.astype(self.dtype), _Projection(**in_proj, name=n)())
        for n in ("query", "key", "value"))
    wo, bo = _Projection(kernel_shape=(heads, head_dim, width),
                         kernel_axes=("heads", "kv", "embed"), bias_shape=(width,),
                         bias_axes=("embed",), num_in_dims=2, name="out")()
    wo, bo = wo.astype(self.dtype), bo.astype(self.dtype)
    self_attention = inputs_q is inputs_kv
    inputs_q, inputs_kv = inputs_q.astype(self.dtype), inputs_kv.astype(self.dtype)
    dropout = self.attention_dropout > 0.0 and not self.deterministic

    if kernels.fused_attention and not dropout:
      q, k, v = (jnp.einsum("btd,dhk->bthk", x, w) + b
                 for x, w, b in ((inputs_q, wq, bq), (inputs_kv, wk, bk), (inputs_kv, wv, bv)))
      q, k, v = (partitioning.constrain(t, ("batch", "length", "heads", "kv")) for t in (q, k, v))
      out = jax.nn.dot_product_attention(q, k, v, implementation=kernels.attention_impl)
      return jnp.einsum("bthk,hkd->btd", out, wo) + bo

    # Head-major (B, H, T, Dh) straight out of the projections: no transposes around the batched
    # matmuls. The 1/sqrt(Dh) scale is folded into the (small) query kernel instead of the logits.
    scale = jnp.asarray(head_dim**-0.5, self.dtype)
    wq, bq = wq * scale, bq * scale
    if self_attention:  # One matmul for q, k and v.
      batch, length = inputs_q.shape[:2]
      w_qkv = jnp.stack([wq, wk, wv], axis=1).reshape(width, 3 * heads * head_dim)
      qkv = kernels.dense_dot(inputs_q, w_qkv).reshape(batch, length, 3, heads, head_dim)
      qkv = jnp.transpose(qkv, (2, 0, 3, 1, 4)) + jnp.stack([bq, bk, bv])[:, None, :, None, :]
      q, k, v = qkv[0], qkv[1], qkv[2]
    else:
      q, k, v = (jnp.einsum("btd,dhk->bhtk", x, w) + b[:, None, :]
                 for x, w, b in ((inputs_q, wq, bq), (inputs_kv, wk, bk), (inputs_kv, wv, bv)))
    q, k, v = (partitioning.constrain(t, ("batch", "heads", "length", "kv")) for t in (q, k, v))
    logits = kernels.attention_logits(q, k)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    if dropout:
      probs = nn.Dropout(self.attention_dropout)(probs, deterministic=False)
    out = kernels.attention_output(probs, v)
    return jnp.einsum("bhqd,hdo->bqo", out, wo) + bo
