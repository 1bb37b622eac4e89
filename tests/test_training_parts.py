"""Optimizers, schedules, per-parameter lr / freezing, losses, durations and gradient
accumulation."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vit_jax import models
from vit_jax.config import base_config
from vit_jax.evaluators import classification
from vit_jax.training import losses, optimizers, schedules
from vit_jax.training import state as state_lib
from vit_jax.training import step as step_lib

PARAMS = {"body": {"kernel": jnp.ones((3, 3)), "bias": jnp.ones((3,))},
          "head": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))}}


def _cfg(**kw):
  cfg = base_config().optim
  cfg.update({**dict(name="adamw", lr=0.1, wd=0.0, grad_clip_norm=None, schedule="constant"), **kw})
  return cfg


def _one_update(cfg, grads=None, total_steps=10, warmup_steps=0):
  tx, _ = optimizers.make_optimizer(cfg, PARAMS, total_steps=total_steps, warmup_steps=warmup_steps)
  grads = jax.tree.map(jnp.ones_like, PARAMS) if grads is None else grads
  updates, state = tx.update(grads, tx.init(PARAMS), PARAMS)
  return updates, state


@pytest.mark.parametrize("kind, at_end", [("cosine", 0.0), ("linear", 0.0), ("constant", 1.0)])
def test_schedule_warms_up_linearly_then_decays(kind, at_end):
  schedule = schedules.make_schedule(_cfg(schedule=kind), total_steps=110, warmup_steps=10)
  np.testing.assert_allclose([schedule(0), schedule(5), schedule(10)], [0.0, 0.05, 0.1], rtol=1e-6)
  np.testing.assert_allclose(schedule(110), 0.1 * at_end, atol=1e-7)


def test_rsqrt_schedule_decays_as_inverse_sqrt():
  schedule = schedules.make_schedule(_cfg(schedule="rsqrt", rsqrt_timescale=100), total_steps=1000,
                                 warmup_steps=0)
  np.testing.assert_allclose(schedule(300), 0.1 / 2, rtol=1e-6)


def test_weight_decay_only_on_kernels():
  zero = jax.tree.map(jnp.zeros_like, PARAMS)
  updates, _ = _one_update(_cfg(wd=0.5), grads=zero)
  np.testing.assert_allclose(updates["body"]["kernel"], -0.1 * 0.5)  # -lr * wd * w
  np.testing.assert_allclose(updates["body"]["bias"], 0.0)


def test_freeze_by_regex_gives_no_update_and_no_state():
  updates, state = _one_update(_cfg(freeze=("body/.*",)))
  assert not np.any(updates["body"]["kernel"]) and np.all(updates["head"]["kernel"] < 0)
  moments = [x for x in jax.tree.leaves(state) if getattr(x, "ndim", 0) > 0]
  assert {x.shape for x in moments} == {(3, 2), (2,)}  # head only


def test_lr_multipliers_by_regex():
  updates, _ = _one_update(_cfg(name="sgd", momentum=0.0, lr_mults=(("head/.*", 0.1),)))
  np.testing.assert_allclose(updates["body"]["kernel"], -0.1, rtol=1e-6)
  np.testing.assert_allclose(updates["head"]["kernel"], -0.01, rtol=1e-6)


def test_clipping_and_bf16_first_moment():
  grads = jax.tree.map(lambda p: 100.0 * jnp.ones_like(p), PARAMS)
  updates, state = _one_update(_cfg(name="sgd", momentum=0.9, grad_clip_norm=1.0,
                                    mu_dtype="bfloat16"), grads=grads)
  assert optax.tree.norm(updates) == pytest.approx(0.1, rel=1e-2)
  assert ({x.dtype for x in jax.tree.leaves(state) if getattr(x, "ndim", 0)} ==
          {jnp.dtype(jnp.bfloat16)})


def test_bad_optimizer_names():
  with pytest.raises(ValueError, match="Unknown optimizer config.optim.name='lamb'"):
    _one_update(_cfg(name="lamb"))
  with pytest.raises(ValueError, match="use 'adamw'"):
    _one_update(_cfg(name="adam", wd=0.1))


def test_losses_with_label_smoothing():
  logits = jnp.array([[2.0, 0.0, 0.0]])
  labels = jnp.array([[1.0, 0.0, 0.0]])
  plain = losses.softmax_xent(logits, labels)
  np.testing.assert_allclose(plain, -jax.nn.log_softmax(logits)[:, 0], rtol=1e-6)
  smooth = losses.softmax_xent(logits, labels, label_smoothing=0.3)
  expected = -(0.8 * jax.nn.log_softmax(logits)[0, 0] +
               0.1 * jax.nn.log_softmax(logits)[0, 1:].sum())
  np.testing.assert_allclose(smooth, expected, rtol=1e-6)
  sig = losses.sigmoid_xent(logits, labels)
  np.testing.assert_allclose(sig, optax.sigmoid_binary_cross_entropy(logits, labels).sum(-1),
                             rtol=1e-6)


def test_durations_in_steps_epochs_examples():
  c = base_config()
  c.total_epochs = 2.0
  assert schedules.duration_in_steps(c, "total", batch_size=100, num_train_examples=1000) == 20
  c.total_epochs, c.total_examples = None, 550
  opened = []  # The split's size is read only for a duration in epochs.
  size = lambda: opened.append(1) or 1000
  assert schedules.duration_in_steps(c, "total", batch_size=100, num_train_examples=size) == 6
  assert not opened
  c.total_steps = 5
  with pytest.raises(ValueError, match="Set only one of total_steps, total_examples"):
    schedules.duration_in_steps(c, "total", batch_size=1, num_train_examples=10)
  assert schedules.duration_in_steps(c.optim, "warmup", batch_size=1, num_train_examples=None,
                                     default=0) == 0


@pytest.mark.slow
def test_gradient_accumulation_matches_the_full_batch():
  model = models.get_model("ViT-mu/4", num_classes=3, width=16, num_heads=2, mlp_dim=32)
  images = jax.random.normal(jax.random.key(0), (8, 8, 8, 3))
  labels = jax.nn.one_hot(jnp.arange(8) % 3, 3)
  # Shifted from init so the zero-initialised head passes gradients to the body.
  params = jax.tree.map(lambda x: x + 0.01, nn.unbox(
      model.init({"params": jax.random.key(1)}, images[:1])["params"]))
  tx, schedule = optimizers.make_optimizer(_cfg(name="sgd", momentum=0.0), params, total_steps=1,
                                      warmup_steps=0)
  results = []
  for accum in (1, 4):
    step = jax.jit(step_lib.make_train_step(
        model, tx, loss_fn=losses.softmax_xent, schedule=schedule, label_smoothing=0.0,
        grad_accum_steps=accum, mixup_cfg=base_config().input.mixup, ema_decay=None))
    state = state_lib.make_state(tx, params, jax.random.PRNGKey(0), ema=False)
    results.append(step(state, {"image": images, "label": labels}))
  (one, m1), (four, m4) = results
  np.testing.assert_allclose(m1["train/loss"], m4["train/loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
               one.params, four.params)


def test_eval_counts_a_hit_only_on_the_largest_label():
  """A smoothed label is positive everywhere: only its true class may count as a hit. A multi-label
  row counts any of its labels; a row with no label counts nothing."""
  class Fixed(nn.Module):
    @nn.compact
    def __call__(self, images, train=False, patch_size=None):
      return images  # The "images" are the logits.
  logits = jnp.asarray([[0.0, 0.0, 9.0], [0.0, 9.0, 0.0], [9.0, 0.0, 0.0], [9.0, 0.0, 0.0]])
  labels = jnp.asarray([[0.05, 0.05, 0.9], [0.05, 0.05, 0.9], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
  step = classification.make_eval_step(Fixed(), lambda logits, labels: jnp.zeros(len(logits)))
  zeros = {k: jnp.zeros(()) for k in ("loss", "correct@1", "correct@5", "count")}
  sums = step({}, {"image": logits, "label": labels}, zeros)
  assert (sums["correct@1"], sums["correct@5"], sums["count"]) == (2.0, 3.0, 4.0)
