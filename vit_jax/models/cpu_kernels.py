"""The model's matmuls with gradients laid out for XLA:CPU's matmul library (same maths).

A gradient like x^T @ dy (a weight gradient, or attention's dK and dV) contracts the leading,
token axis of both operands. XLA:CPU's fast matmul library (YNNPACK) wants the contracted axis
innermost in the left operand, so XLA either copies one operand into transposed order first,
often the larger one (the (tokens, 768) MLP gradient where the (tokens, 192) activations would do),
or leaves the product to its slower Eigen fallback (attention's dK and dV). `_contract_tokens`
transposes the operand with fewer columns itself, behind optimization barriers so that XLA keeps
that layout. ViT-Ti/16 train step on CPU: weight gradients +2.7%, attention +4.7%
(experiments/SPEED.md, levers 12 and 13). GPU and TPU matmul libraries read transposed operands
in place: vit_jax.models.kernels uses these products on XLA:CPU only.
"""
from typing import Any, Callable

import jax
from jax import lax
import jax.numpy as jnp


def _swap(x: jax.Array) -> jax.Array:
  return jnp.swapaxes(x, -1, -2)


def _contract_tokens(x: jax.Array, y: jax.Array) -> jax.Array:
  """x^T @ y over the token axis: x (..., N, K), y (..., N, F) -> (..., K, F)."""
  if x.shape[-1] <= y.shape[-1]:
    return lax.optimization_barrier(_swap(x)) @ y
  return _swap(lax.optimization_barrier(lax.optimization_barrier(_swap(y)) @ x))


def _with_gradient_layout(product: Callable, backward: Callable) -> Callable:
  """`product(a, b)`, differentiated by `backward(a, b, g) -> (da, db)`."""
  custom = jax.custom_vjp(product)
  custom.defvjp(lambda a, b: (product(a, b), (a, b)), lambda saved, g: backward(*saved, g))
  return custom


def _logits_product(q, k):
  return jnp.einsum("...qd,...kd->...qk", q, k)


def _dense_backward(x, w, dy):
  dw = _contract_tokens(x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1]))
  return dy @ w.T, dw.astype(w.dtype)


# x (..., K) @ w (K, F) -> (..., F).
dense_dot = _with_gradient_layout(jnp.matmul, _dense_backward)
# q (..., Tq, D), k (..., Tk, D) -> q k^T (..., Tq, Tk).
attention_logits = _with_gradient_layout(
    _logits_product, lambda q, k, dlogits: (dlogits @ k, _contract_tokens(dlogits, q)))
# probs (..., Tq, Tk), v (..., Tk, D) -> probs v (..., Tq, D).
attention_output = _with_gradient_layout(
    jnp.matmul, lambda probs, v, dout: (_logits_product(dout, v), _contract_tokens(probs, dout)))


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
