"""The train state: one pytree holding everything a resumed run needs besides the data position."""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """`ema_params` is None without EMA (`config.ema_decay`)."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  ema_params: Any = None


def make_state(tx: optax.GradientTransformation, params: Any, rng: jax.Array,
               ema: bool) -> TrainState:
  """The train state at step 0 for (possibly pretrained) `params`."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=rng, ema_params=params if ema else None)
