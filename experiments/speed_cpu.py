r"""A/B training throughput on this CPU: our train step vs transformers ViT + torch AdamW.

    python experiments/speed_cpu.py                       # ViT-Ti/16 and ViT-S/16, 224 px, batch 32, fp32
    python experiments/speed_cpu.py --variants=Ti/16 --steps=3 --rounds=5

Both sides train the same architecture (pre-norm ViT, tanh GELU, LayerNorm eps 1e-6, token
classifier, 1000 classes) on the same random batch with AdamW. Runs alternate (ours, theirs,
theirs, ours, ...) in one process so that load from other users of the machine hits both alike;
the reported figure per side is the median over rounds and the ratio is ours / theirs.
GFLOP/s use the analytic training FLOPs (vit_jax.flops) and are set against the probed fp32
matmul rate of this CPU (vit_jax.hardware).

Our step runs as the trainer runs it on CPU: vit_jax.xla_flags gives one single-threaded XLA
device per core and the batch is split over them by a data-parallel mesh (vit_jax.sharding).
`XLA_FLAGS=--xla_force_host_platform_device_count=1` times XLA's default instead (one device,
multi-threaded ops). Needs the `bench` extra (torch, transformers).
"""
import argparse
import os
import resource
import statistics
import time
from typing import Callable

from vit_jax import xla_flags

xla_flags.apply_cpu_defaults()

# pylint: disable=g-import-not-at-top,wrong-import-position
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import torch
import transformers

from vit_jax import flops
from vit_jax import hardware
from vit_jax import models
from vit_jax import optim
from vit_jax import sharding
from vit_jax import train
# pylint: enable=g-import-not-at-top,wrong-import-position

NUM_CLASSES = 1000
LR, WD = 1e-3, 1e-4

# A runner does `steps` optimizer steps and returns only once they have finished.
Runner = Callable[[int], None]
THEIRS = "transformers+torch eager"


def make_ours(variant: str, batch: np.ndarray, labels: np.ndarray, spec: str) -> Runner:
  """Our train step (vit_jax.train.make_train_step, jitted once, state donated) on a fixed batch.

  `spec` is 'ATTENTION_IMPL[:DTYPE]': 'auto' (the model's default choice), 'xla' or 'cudnn' for
  jax.nn.dot_product_attention, optionally with a compute dtype, e.g. 'auto:bfloat16'.
  """
  impl, _, dtype = spec.partition(":")
  model = models.get_model(f"ViT-{variant}", num_classes=NUM_CLASSES, dtype=jnp.dtype(dtype or "float32"),
                           attention_impl=None if impl == "auto" else impl)
  mesh, rules = sharding.make_mesh([("data", -1)]), sharding.DEFAULT_RULES
  abstract, param_shardings = train.abstract_params(model, (1,) + batch.shape[2:] + (3,), mesh, rules)
  cfg = ml_collections.ConfigDict(dict(name="adamw", lr=LR, wd=WD, schedule="constant"))
  tx, schedule = optim.make_optimizer(cfg, abstract, total_steps=1_000_000, warmup_steps=0)
  state_shardings = train.state_shardings(tx, abstract, param_shardings, mesh, ema=False)
  batch_sharding = sharding.batch_sharding(mesh)
  data = {"image": jax.device_put(batch.transpose(0, 2, 3, 1), batch_sharding),  # NCHW -> NHWC
          "label": jax.device_put(np.eye(NUM_CLASSES, dtype=np.float32)[labels], batch_sharding)}
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.mesh_rules(mesh, rules)):
    params = train.jit_init_params(model, (1,) + data["image"].shape[1:], param_shardings)(
        jax.random.key(0))
    state = jax.device_put(train.make_state(tx, params, jax.random.key(1), ema=False), state_shardings)
    step_fn = train.jit_train_step(
        train.make_train_step(model, tx, loss_fn=optim.softmax_xent, schedule=schedule), mesh,
        state_shardings)

  def run(steps: int) -> None:
    nonlocal state
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.mesh_rules(mesh, rules)):
      for _ in range(steps):
        state, metrics = step_fn(state, data)
    jax.block_until_ready((state, metrics))

  return run


def make_theirs(variant: str, batch: np.ndarray, labels: np.ndarray) -> Runner:
  """transformers ViTForImageClassification (SDPA attention) + torch.optim.AdamW, eager."""
  kw = models.model_kwargs(f"ViT-{variant}")
  config = transformers.ViTConfig(
      hidden_size=kw["width"], num_hidden_layers=kw["depth"], num_attention_heads=kw["num_heads"],
      intermediate_size=kw["mlp_dim"], patch_size=kw["patch_size"][0], image_size=batch.shape[-1],
      hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, num_labels=NUM_CLASSES,
      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  model = transformers.ViTForImageClassification(config)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
  images, targets = torch.from_numpy(batch), torch.from_numpy(labels).long()

  def run(steps: int) -> None:
    for _ in range(steps):
      loss = model(pixel_values=images, labels=targets).loss
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()

  return run


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _timed(run: Runner, steps: int) -> tuple[float, float]:
  """(wall seconds, CPU seconds of this process, all threads) for `steps` steps."""
  start, start_cpu = time.perf_counter(), _cpu_seconds()
  run(steps)
  return time.perf_counter() - start, _cpu_seconds() - start_cpu


def compare(variant: str, *, batch_size: int, image_size: int, steps: int, rounds: int,
            ours: list[str], peak: float) -> dict:
  """Warms up every runner, then alternates timed runs; returns img/s, ratios and GFLOP/s.

  Each round runs all runners, in reversed order every other round. Per runner the median wall
  time over rounds gives img/s; the best round is kept too, being the least disturbed by other load.
  """
  rng = np.random.default_rng(0)
  batch = rng.standard_normal((batch_size, 3, image_size, image_size), dtype=np.float32)
  labels = rng.integers(0, NUM_CLASSES, batch_size)
  runners = {f"ours[{spec}]": make_ours(variant, batch, labels, spec) for spec in ours}
  runners[THEIRS] = make_theirs(variant, batch, labels)
  for run in runners.values():  # Compile / allocate; the second step is the first steady one.
    run(2)
  walls, cpus = {name: [] for name in runners}, {name: [] for name in runners}
  for r in range(rounds):
    for name in (list(runners) if r % 2 == 0 else list(runners)[::-1]):
      wall, cpu = _timed(runners[name], steps)
      walls[name].append(wall)
      cpus[name].append(cpu)
  kw = models.model_kwargs(f"ViT-{variant}")
  train_flops = flops.train_flops_per_image(kw, image_size, num_classes=NUM_CLASSES)
  images = batch_size * steps
  rows = {}
  for name in runners:
    img_s = images / statistics.median(walls[name])
    rows[name] = dict(img_s=img_s, best_img_s=images / min(walls[name]),
                      gflops=img_s * train_flops / 1e9,
                      cpu_s_per_step=statistics.median(cpus[name]) / steps,
                      ratio=img_s / (images / statistics.median(walls[THEIRS])),
                      per_round_ratio=[t / w for w, t in zip(walls[name], walls[THEIRS])])
  return dict(variant=variant, rows=rows, peak_gflops=peak / 1e9)


def _print(res: dict) -> None:
  peak = res["peak_gflops"]
  print(f"  {'':28s} {'img/s':>7s} {'best':>7s} {'GFLOP/s':>8s} {'%peak':>6s} {'cpu s/step':>10s} "
        f"{'ratio':>6s}  per-round ratios")
  for name, r in res["rows"].items():
    rounds = " ".join(f"{x:.2f}" for x in r["per_round_ratio"])
    print(f"  {name:28s} {r['img_s']:7.2f} {r['best_img_s']:7.2f} {r['gflops']:8.1f} "
          f"{100 * r['gflops'] / peak:5.1f}% {r['cpu_s_per_step']:10.2f} {r['ratio']:6.2f}  {rounds}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--variants", default="Ti/16,S/16", help="comma-separated, e.g. Ti/16,S/16")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--steps", type=int, default=4, help="optimizer steps per timed run")
  parser.add_argument("--rounds", type=int, default=4, help="timed runs per side, alternating")
  parser.add_argument("--ours", default="auto",
                      help="comma-separated configurations of our step to time, each "
                           "ATTENTION_IMPL[:DTYPE] with ATTENTION_IMPL in auto|xla|cudnn, e.g. "
                           "'auto,xla,auto:bfloat16' (torch always runs float32)")
  args = parser.parse_args()
  if args.image_size % 16:
    parser.error(f"--image_size={args.image_size} must be a multiple of the patch size 16.")

  peak, source = hardware.peak_flops_per_device()
  print(f"jax {jax.__version__} ({jax.devices()[0].device_kind}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), transformers {transformers.__version__}")
  print(f"XLA_FLAGS: {os.environ.get('XLA_FLAGS') or '(none)'}")
  print(f"peak: {peak / 1e9:.0f} GFLOP/s ({source})")
  for variant in args.variants.split(","):
    print(f"ViT-{variant} {args.image_size}px batch {args.batch_size}, {args.rounds} rounds x "
          f"{args.steps} steps (ratio = img/s / torch img/s, from median wall times)")
    _print(compare(variant, batch_size=args.batch_size, image_size=args.image_size,
                   steps=args.steps, rounds=args.rounds, ours=args.ours.split(","), peak=peak))


if __name__ == "__main__":
  main()
