"""x @ w whose weight gradient transposes the smaller operand (an XLA:CPU speed-up, same maths).

The weight gradient of y = x @ w is x^T @ dy, contracted over every token. XLA:CPU's matmul
library wants the contracted dimension innermost in the left operand, so it copies one operand
into transposed order first, and it often picks the larger one: in a ViT-Ti/16 step the (tokens,
768) MLP gradient and the (tokens, 576) QKV gradient, where the (tokens, 192) activations would do.
`dense_dot` transposes whichever of x and dy has fewer columns, behind an optimization barrier so
XLA keeps that choice (ViT-Ti/16 train step on CPU: +2.9%, experiments/SPEED.md lever 12).
On GPU and TPU the matmul libraries read transposed operands in place, so there it is plain x @ w.
"""
from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax import lax


def transposes_in_weight_grad(backend: Optional[str] = None) -> bool:
  """Whether `dense_dot` lays out the weight gradient itself (XLA:CPU) or leaves it to XLA."""
  return (backend or jax.default_backend()) == "cpu"


def _weight_grad(x: jax.Array, dy: jax.Array) -> jax.Array:
  """x^T @ dy for x (N, K), dy (N, F): the (N, min(K, F)) operand is the one transposed."""
  if x.shape[1] <= dy.shape[1]:
    return lax.optimization_barrier(x.T) @ dy
  return (lax.optimization_barrier(dy.T) @ x).T


@jax.custom_vjp
def _dot_cpu_grad(x: jax.Array, w: jax.Array) -> jax.Array:
  return x @ w


def _dot_fwd(x, w):
  return x @ w, (x, w)


def _dot_bwd(residuals, dy):
  x, w = residuals
  dx = dy @ w.T
  dw = _weight_grad(x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1]))
  return dx, dw.astype(w.dtype)


_dot_cpu_grad.defvjp(_dot_fwd, _dot_bwd)


def dense_dot(x: jax.Array, w: jax.Array) -> jax.Array:
  """x (..., K) @ w (K, F) -> (..., F)."""
  return _dot_cpu_grad(x, w) if transposes_in_weight_grad() else x @ w


def dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision=None,
                preferred_element_type: Any = None) -> jax.Array:
  """`nn.Dense(dot_general=...)`: `dense_dot` for Dense's contraction, lax.dot_general otherwise."""
  (lhs_contract, rhs_contract), batch = dimension_numbers
  dense = (tuple(lhs_contract) == (lhs.ndim - 1,) and tuple(rhs_contract) == (0,) and rhs.ndim == 2
           and batch == ((), ()) and precision is None
           and preferred_element_type in (None, jnp.result_type(lhs, rhs)))
  if dense:
    return dense_dot(lhs, rhs)
  return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                         preferred_element_type=preferred_element_type)
