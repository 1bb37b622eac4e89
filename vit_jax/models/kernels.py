"""The one switch between the model's backend-specific kernels (as timm's `use_fused_attn()`).

`select(attention_impl)` reads the backend once per model trace and returns the `Kernels` every
layer of that trace uses:

* attention: `jax.nn.dot_product_attention` on (B, T, H, Dh) (`fused_attention`; cuDNN flash on
  GPU) or head-major einsums on (B, H, T, Dh). `attention_impl=None` picks the fused kernel on GPU
  and the einsums elsewhere: on CPU the (B, T, H, Dh) layout costs transposes around every batched
  matmul, while einsums that emit (B, H, T, Dh) straight from the projections avoid them
  (experiments/SPEED.md). 'xla' / 'cudnn' force that implementation of the fused kernel. On GPU
  an odd sequence length (196 patches + a class token) is padded by one masked token: cuDNN's
  flash kernel has no backward pass for odd lengths, and jax would otherwise fall back to XLA's
  attention (`None`) or fail at the first training step ('cudnn').
* products: on XLA:CPU the custom-VJP products of `cpu_kernels` (gradients laid out for YNNPACK);
  elsewhere the plain products.

Every choice computes the same function with the same parameters (tests/test_speed_invariants.py).
"""
import dataclasses
from typing import Callable, Optional

import jax
from jax import lax
import jax.numpy as jnp

from vit_jax.models import cpu_kernels

ATTENTION_IMPLS = (None, "xla", "cudnn")


@dataclasses.dataclass(frozen=True)
class Kernels:
  """The kernels of one model trace."""
  fused_attention: bool  # jax.nn.dot_product_attention instead of head-major einsums
  attention_impl: Optional[str]  # its `implementation` argument
  pad_odd_lengths: bool  # pad odd query / key lengths by one masked token (cuDNN)
  dense_dot: Callable  # x (..., K) @ w (K, F)
  attention_logits: Callable  # q (..., Tq, D), k (..., Tk, D) -> (..., Tq, Tk)
  attention_output: Callable  # probs (..., Tq, Tk), v (..., Tk, D) -> (..., Tq, D)
  dot_general: Callable  # nn.Dense's `dot_general`


def _logits(q: jax.Array, k: jax.Array) -> jax.Array:
  return jnp.einsum("...qd,...kd->...qk", q, k)


def select(attention_impl: Optional[str] = None, backend: Optional[str] = None) -> Kernels:
  """The kernels for `backend` (default: the one jax runs on) and the model's `attention_impl`."""
  if attention_impl not in ATTENTION_IMPLS:
    raise ValueError(f"attention_impl={attention_impl!r}; choose one of {ATTENTION_IMPLS}.")
  backend = backend or jax.default_backend()
  fused = attention_impl is not None or backend == "gpu"
  if backend == "cpu":
    return Kernels(fused, attention_impl, False, cpu_kernels.dense_dot,
                   cpu_kernels.attention_logits, cpu_kernels.attention_output,
                   cpu_kernels.dot_general)
  return Kernels(fused, attention_impl, backend == "gpu", jnp.matmul, _logits, jnp.matmul,
                 lax.dot_general)
