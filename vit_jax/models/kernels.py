"""The one switch between the model's backend-specific kernels (as timm's `use_fused_attn()`).

`select(attention_impl)` reads the backend once per model trace and returns the `Kernels` every
layer of that trace uses:

* attention: `jax.nn.dot_product_attention` on (B, T, H, Dh) (`fused_attention`) or head-major
  einsums on (B, H, T, Dh). `attention_impl=None` picks the fused kernel on GPU and the einsums
  elsewhere: on CPU the (B, T, H, Dh) layout costs transposes around every batched matmul, while
  einsums that emit (B, H, T, Dh) straight from the projections avoid them (experiments/SPEED.md).
  On GPU the fused kernel is cuDNN's flash attention wherever it trains the call (bf16 / fp16,
  head dim a multiple of 8 up to 128; `attention_implementation`), else XLA's: jax's own
  `implementation=None` always means XLA's, 1.33x slower for a ViT-B/16 step on an H200.
  'xla' / 'cudnn' force that implementation. cuDNN's kernel has no backward pass for odd lengths
  (196 patches + a class token), so they are padded by one masked token.
* products: on XLA:CPU the custom-VJP products of `cpu_kernels` (gradients laid out for YNNPACK);
  elsewhere the plain products.

Every choice computes the same function with the same parameters (tests/test_speed_invariants.py).
"""
import dataclasses
from typing import Any, Callable, Optional

import jax
from jax import lax
import jax.numpy as jnp

from vit_jax.models import cpu_kernels

ATTENTION_IMPLS = (None, "xla", "cudnn")


@dataclasses.dataclass(frozen=True)
class Kernels:
  """The kernels of one model trace."""
  fused_attention: bool  # jax.nn.dot_product_attention instead of head-major einsums
  attention_impl: Optional[str]  # what the model asked for (None: per call, on GPU)
  on_gpu: bool  # the fused kernel may then be cuDNN's (attention_implementation)
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


CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
CUDNN_MAX_HEAD_DIM = 128  # 256 needs Hopper and cuDNN >= 9.5; ViT heads are 64 (ViT-22B: 128).


def why_not_cudnn(dtype: Any, head_dim: int) -> Optional[str]:
  """What keeps cuDNN's flash kernel from training attention of this dtype and head dim (None:
  nothing), with the fix."""
  if jnp.dtype(dtype) not in CUDNN_DTYPES:
    return (f"it computes in bfloat16 or float16, not model.dtype='{jnp.dtype(dtype)}': set "
            "--config.model.dtype=bfloat16")
  if head_dim % 8 or head_dim > CUDNN_MAX_HEAD_DIM:
    return (f"it needs a head dim (width / num_heads) that is a multiple of 8 up to "
            f"{CUDNN_MAX_HEAD_DIM}, not {head_dim}: set --config.model.attention_impl=xla")
  return None


def attention_implementation(kernels: Kernels, q: jax.Array) -> str:
  """The `implementation` of `jax.nn.dot_product_attention` for queries `q` (B, T, H, Dh)."""
  if kernels.attention_impl is not None:
    return kernels.attention_impl
  return "cudnn" if kernels.on_gpu and why_not_cudnn(q.dtype, q.shape[-1]) is None else "xla"


def attention_kernel(attention_impl: Optional[str], backend: str, dtype: Any, head_dim: int,
                     attention_dropout: float = 0.0) -> str:
  """What runs a model's attention in training: 'einsum' (head-major einsums), 'xla' or 'cudnn'
  (jax.nn.dot_product_attention's implementations). Attention dropout takes the einsums."""
  kernels = select(attention_impl, backend)
  if not kernels.fused_attention or attention_dropout > 0:
    return "einsum"
  return attention_implementation(kernels, jax.ShapeDtypeStruct((1, 1, 1, head_dim), dtype))


def check_attention_impl(attention_impl: Optional[str], platform: str, dtype: str,
                         head_dim: int) -> None:
  """An explicit `model.attention_impl='cudnn'` must be a call cuDNN's flash kernel can train."""
  if attention_impl != "cudnn":
    return
  reason = (f"it needs a GPU and this run's devices are {platform}: set "
            "--config.model.attention_impl=xla" if platform != "gpu"
            else why_not_cudnn(dtype, head_dim))
  if reason:
    raise ValueError(f"model.attention_impl='cudnn' cannot run here: {reason}, or leave "
                     "model.attention_impl unset (cuDNN on GPU wherever it applies).")
