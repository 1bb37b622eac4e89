r"""A/B training throughput on this CPU: our train step vs transformers ViT + torch AdamW.

    python experiments/speed_cpu.py  # ViT-Ti/16 and ViT-S/16, 224 px, batch 32, fp32
    python experiments/speed_cpu.py --variants=Ti/16 --steps=3 --rounds=5

Both sides train the same architecture (pre-norm ViT, tanh GELU, LayerNorm eps 1e-6, token
classifier, 1000 classes) on the same random batch with AdamW. Runs alternate (ours, theirs,
theirs, ours, ...) within one run so that load from other users of the machine hits both alike;
the reported figure per side is the median over rounds and the ratio is ours / theirs. The torch
side lives in a worker process that this script starts, so that it runs under default settings.
GFLOP/s use the analytic training FLOPs (vit_jax.models.flops) and are set against the probed
fp32 matmul rate of this CPU (vit_jax.runtime.hardware).

Our step is the trainer's own (vit_jax.training.program via vit_jax.efficiency.bench) and runs as
the trainer runs it on CPU: vit_jax.runtime.cpu gives one single-threaded XLA device per core, the
batch split over them by a data-parallel mesh, and makes malloc keep freed memory mapped.
`XLA_FLAGS=--xla_force_host_platform_device_count=1` times XLA's default device layout instead
(one device, multi-threaded ops), `GLIBC_TUNABLES=glibc.malloc.trim_threshold=131072` glibc's
default allocator behaviour. Needs the `bench` extra (torch, transformers).
"""
import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable

import jax
import numpy as np
import torch
import transformers

from vit_jax import models
from vit_jax.efficiency import bench
from vit_jax.models import flops
from vit_jax.runtime import cpu, hardware

NUM_CLASSES = 1000
LR, WD = 1e-3, 1e-4

# A runner does `steps` optimizer steps, returns once they have finished, and returns the CPU
# seconds (all threads) and minor page faults its process spent on them.
Runner = Callable[[int], tuple[float, int]]
THEIRS = "transformers+torch eager"
WARMUP_STEPS = 4  # Compilation and first allocations.
# Our heap grows by one step's temporaries at a time until it holds what the timed runs need
# (ViT-Ti/16: ~10 steps to 4.6 GB; runs of several steps need more than single steps, as async
# dispatch keeps two steps' temporaries live); until then some steps page-fault ~0.9 GB again.
# Timing starts after SETTLED_RUNS consecutive fault-free runs of the timed length.
SETTLED_RUNS, MAX_SETTLING_RUNS = 2, 12


def make_ours(variant: str, batch: np.ndarray, labels: np.ndarray, spec: str) -> Runner:
  """Our train step on a fixed batch, placed as the trainer places it (bench.fixed_batch_trainer).

  `spec` is 'ATTENTION_IMPL[:DTYPE]': 'auto' (the model's default choice), 'xla' or 'cudnn' for
  jax.nn.dot_product_attention, optionally with a compute dtype, e.g. 'auto:bfloat16'.
  """
  impl, _, dtype = spec.partition(":")
  config = bench.speed_config(variant, NUM_CLASSES, lr=LR, wd=WD, dtype=dtype or "float32",
                              attention_impl=None if impl == "auto" else impl)
  trainer = bench.fixed_batch_trainer(config, batch.transpose(0, 2, 3, 1),  # NCHW -> NHWC
                                      np.eye(NUM_CLASSES, dtype=np.float32)[labels])

  def run(steps: int) -> tuple[float, int]:
    start = _usage()
    jax.block_until_ready(trainer(steps))
    return _since(start)

  return run


def make_theirs(variant: str, batch: np.ndarray, labels: np.ndarray) -> Runner:
  """transformers ViTForImageClassification (SDPA attention) + torch.optim.AdamW, eager."""
  kw = models.model_kwargs(variant)
  config = transformers.ViTConfig(
      hidden_size=kw["width"], num_hidden_layers=kw["depth"], num_attention_heads=kw["num_heads"],
      intermediate_size=kw["mlp_dim"], patch_size=kw["patch_size"][0], image_size=batch.shape[-1],
      hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, num_labels=NUM_CLASSES,
      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  model = transformers.ViTForImageClassification(config)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
  images, targets = torch.from_numpy(batch), torch.from_numpy(labels).long()

  def run(steps: int) -> tuple[float, int]:
    start = _usage()
    for _ in range(steps):
      loss = model(pixel_values=images, labels=targets).loss
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
    return _since(start)

  return run


def _random_batch(batch_size: int, image_size: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(0)
  return (rng.standard_normal((batch_size, 3, image_size, image_size), dtype=np.float32),
          rng.integers(0, NUM_CLASSES, batch_size))


def serve_theirs(variant: str, batch_size: int, image_size: int) -> None:
  """Worker loop: reads a step count per line on stdin, runs it, answers its CPU seconds."""
  run = make_theirs(variant, *_random_batch(batch_size, image_size))
  print("ready", flush=True)
  for line in sys.stdin:
    print(*run(int(line)), flush=True)


def spawn_theirs(variant: str, batch_size: int, image_size: int) -> Runner:
  """The torch side in its own process, so that it runs under the default host settings (our
  process has cpu_runtime's malloc policy) and its heap does not share an arena with XLA's."""
  worker = subprocess.Popen(
      [sys.executable, __file__, f"--serve_theirs={variant}", f"--batch_size={batch_size}",
       f"--image_size={image_size}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

  def answer() -> str:
    line = worker.stdout.readline().strip()
    if not line:
      raise RuntimeError(f"the torch worker for ViT-{variant} died (exit code {worker.wait()}); "
                         "its traceback is above.")
    return line

  answer()  # "ready"

  def run(steps: int) -> tuple[float, int]:
    worker.stdin.write(f"{steps}\n")
    worker.stdin.flush()
    cpu, faults = answer().split()
    return float(cpu), int(faults)

  return run


def _usage() -> tuple[float, int]:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime, usage.ru_minflt


def _since(start: tuple[float, int]) -> tuple[float, int]:
  now = _usage()
  return now[0] - start[0], now[1] - start[1]


def _settle(run: Runner, steps: int) -> None:
  """Repeats runs of `steps` steps until SETTLED_RUNS in a row page-fault no more."""
  clean = 0
  for _ in range(MAX_SETTLING_RUNS):
    clean = clean + 1 if run(steps)[1] == 0 else 0
    if clean == SETTLED_RUNS:
      return
  print(f"  note: still page-faulting after {MAX_SETTLING_RUNS} warm-up runs of {steps} steps")


def compare(variant: str, *, batch_size: int, image_size: int, steps: int, rounds: int,
            ours: list[str], peak: float) -> dict:
  """Warms up every runner, then alternates timed runs; returns img/s, ratios and GFLOP/s.

  Each round runs all runners, in reversed order every other round. Per runner the median wall
  time over rounds gives img/s; the best round is kept too, being the least disturbed by other load.
  """
  batch, labels = _random_batch(batch_size, image_size)
  runners = {f"ours[{spec}]": make_ours(variant, batch, labels, spec) for spec in ours}
  runners[THEIRS] = spawn_theirs(variant, batch_size, image_size)
  for name, run in runners.items():
    run(WARMUP_STEPS)
    if name != THEIRS:  # Torch runs under its default allocator: its faults are its steady state.
      _settle(run, steps)
  walls, cpus, faults = ({name: [] for name in runners} for _ in range(3))
  for r in range(rounds):
    for name in (list(runners) if r % 2 == 0 else list(runners)[::-1]):
      start = time.perf_counter()
      cpu, fault_count = runners[name](steps)
      walls[name].append(time.perf_counter() - start)
      cpus[name].append(cpu)
      faults[name].append(fault_count)
  kw = models.model_kwargs(variant)
  train_flops = flops.train_flops_per_image(kw, image_size, num_classes=NUM_CLASSES)
  images = batch_size * steps
  rows = {}
  for name in runners:
    img_s = images / statistics.median(walls[name])
    rows[name] = dict(img_s=img_s, best_img_s=images / min(walls[name]),
                      gflops=img_s * train_flops / 1e9,
                      cpu_s_per_step=statistics.median(cpus[name]) / steps,
                      faults_per_step=statistics.median(faults[name]) / steps,
                      ratio=img_s / (images / statistics.median(walls[THEIRS])),
                      per_round_ratio=[t / w for w, t in zip(walls[name], walls[THEIRS])])
  return dict(variant=variant, rows=rows, peak_gflops=peak / 1e9)


def _print(res: dict) -> None:
  peak = res["peak_gflops"]
  print(f"  {'':28s} {'img/s':>7s} {'best':>7s} {'GFLOP/s':>8s} {'%peak':>6s} {'cpu s/step':>10s} "
        f"{'faults/step':>11s} {'ratio':>6s}  per-round ratios")
  for name, r in res["rows"].items():
    rounds = " ".join(f"{x:.2f}" for x in r["per_round_ratio"])
    print(f"  {name:28s} {r['img_s']:7.2f} {r['best_img_s']:7.2f} {r['gflops']:8.1f} "
          f"{100 * r['gflops'] / peak:5.1f}% {r['cpu_s_per_step']:10.2f} "
          f"{r['faults_per_step']:11.0f} "
          f"{r['ratio']:6.2f}  {rounds}")


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
  parser.add_argument("--serve_theirs", default="", help=argparse.SUPPRESS)  # The torch worker.
  args = parser.parse_args()
  if args.serve_theirs:
    serve_theirs(args.serve_theirs, args.batch_size, args.image_size)
    return
  cpu.apply_cpu_defaults()  # Before anything touches a device.
  if args.image_size % 16:
    parser.error(f"--image_size={args.image_size} must be a multiple of the patch size 16.")

  peak, source = hardware.probe_cpu_matmul_flops(), "probed fp32 matmul on this CPU (all cores)"
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
