r"""ViT-B/16 training throughput and MFU on one GPU: ours (bf16, cuDNN flash attention) vs
torch.compile, with XLA's attention and the projection model beside it.

    python experiments/speed_gpu.py                          # check, batch sweep, then the peers
    python experiments/speed_gpu.py --batches=256 --profile_dir=/tmp/vit_trace --skip_torch

Correct first: the loss and gradients of the bf16 model with cuDNN attention and with XLA's
attention are compared with the float32 model's (same params, same random batch) before anything
is timed; the cuDNN path must be no less accurate than the XLA one.

Ours: the trainer's own train step (vit_jax.efficiency.bench.fixed_batch_trainer: AdamW, placed
as the trainer places it, state donated) with compute dtype bfloat16 (params and optimizer state
float32) and attention_impl='cudnn'. Theirs: transformers ViTForImageClassification (SDPA
attention) under torch.autocast(bfloat16) + fused AdamW, compiled with torch.compile.
MFU = analytic training FLOPs (vit_jax.models.flops, 3x forward, no remat) x img/s / the GPU's
dense bf16 peak (vit_jax.runtime.hardware, 989 TFLOP/s for an H100 SXM).

Each setting is timed in --rounds rounds of --steps steps after a warm-up; the table shows the
mean img/s and the spread between rounds. At the best batch, the same step with
attention_impl='xla' (XLA's own fused attention) is timed in the same run, and the projection
model (vit_jax.efficiency.projection, calibrated on 8 x A100, never on this measurement) predicts
the step for one GPU of this kind at that batch, so its error on our own stack is read off.

--profile_dir writes a jax.profiler trace of a few steps at the best batch (open it in
TensorBoard's profile plugin or Perfetto) to see what the step spends its time on.
"""
import argparse
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vit_jax import models
from vit_jax.efficiency import bench, projection
from vit_jax.models import flops
from vit_jax.runtime import hardware

VARIANT, IMAGE_SIZE, NUM_CLASSES = "B/16", 224, 1000


def random_batch(batch_size: int, seed: int = 0) -> tuple[jax.Array, jax.Array]:
  """Images NHWC and one-hot labels, global."""
  images = jax.random.normal(jax.random.key(seed), (batch_size, IMAGE_SIZE, IMAGE_SIZE, 3))
  labels = jax.random.randint(jax.random.key(seed + 1), (batch_size,), 0, NUM_CLASSES)
  return images, jax.nn.one_hot(labels, NUM_CLASSES)


def attention_errors(batch_size: int = 8) -> dict[str, tuple[float, float]]:
  """attention_impl -> relative error of (loss, gradients) of the bf16 model against float32."""
  images, labels = random_batch(batch_size, seed=7)

  def loss_and_grads(dtype: str, attention_impl: str, params=None):
    model = models.get_model(VARIANT, num_classes=NUM_CLASSES, dtype=dtype,
                             attention_impl=attention_impl)
    if params is None:
      params = model.init(jax.random.key(3), images[:1])["params"]
      # Init gives a zero head: a random one makes the gradients reach every layer.
      params = jax.tree.map(lambda p: p + 0.02 * jax.random.normal(jax.random.key(4), p.shape),
                            params)
    loss = lambda p: optax.softmax_cross_entropy(
        model.apply({"params": p}, images).astype(jnp.float32), labels).mean()
    return params, jax.jit(jax.value_and_grad(loss))(params)

  with jax.default_matmul_precision("highest"):  # Not TF32: the reference is float32.
    params, (ref_loss, ref_grads) = loss_and_grads("float32", "xla")
  ref_flat = np.concatenate([np.ravel(g) for g in jax.tree.leaves(ref_grads)]).astype(np.float64)
  errors = {}
  for impl in ("xla", "cudnn"):
    _, (loss, grads) = loss_and_grads("bfloat16", impl, params)
    flat = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads)]).astype(np.float64)
    if not (np.isfinite(float(loss)) and np.isfinite(flat).all()):
      raise SystemExit(f"attention_impl={impl!r}: the bf16 loss or gradients are not finite.")
    errors[impl] = (abs(float(loss) - float(ref_loss)) / abs(float(ref_loss)),
                    float(np.linalg.norm(flat - ref_flat) / np.linalg.norm(ref_flat)))
  return errors


def ours_img_per_s(batch_size: int, steps: int, rounds: int, attention_impl: str = "cudnn",
                   profile_dir: str | None = None) -> list[float]:
  """Images/s of each round of our bf16 train step at `batch_size`."""
  config = bench.speed_config(VARIANT, NUM_CLASSES, dtype="bfloat16",
                              attention_impl=attention_impl)
  trainer = bench.fixed_batch_trainer(config, *random_batch(batch_size))
  jax.block_until_ready(trainer(3))  # Compile and warm up.
  rates = []
  for _ in range(rounds):
    start = time.perf_counter()
    jax.block_until_ready(trainer(steps))
    rates.append(batch_size * steps / (time.perf_counter() - start))
  if profile_dir:
    with jax.profiler.trace(profile_dir):
      for i in range(5):
        with jax.profiler.StepTraceAnnotation("train", step_num=i):
          metrics = trainer(1)
      jax.block_until_ready(metrics)
    print(f"  trace written to {profile_dir}")
  return rates


def torch_img_per_s(batch_size: int, steps: int) -> float:
  """Images/s of transformers ViT-B/16 + fused AdamW, bf16 autocast, torch.compile, on cuda."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  kw = models.model_kwargs(VARIANT)
  config = transformers.ViTConfig(
      hidden_size=kw["width"], num_hidden_layers=kw["depth"], num_attention_heads=kw["num_heads"],
      intermediate_size=kw["mlp_dim"], patch_size=kw["patch_size"][0], image_size=IMAGE_SIZE,
      hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, num_labels=NUM_CLASSES)
  model = transformers.ViTForImageClassification(config).cuda().train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4, fused=True)
  images = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, device="cuda")
  labels = torch.randint(0, NUM_CLASSES, (batch_size,), device="cuda")

  @torch.compile
  def loss_fn(x, y):
    with torch.autocast("cuda", dtype=torch.bfloat16):
      return model(pixel_values=x, labels=y).loss

  def step():
    loss = loss_fn(images, labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

  for _ in range(3):
    step()
  torch.cuda.synchronize()
  start = time.perf_counter()
  for _ in range(steps):
    step()
  torch.cuda.synchronize()
  return batch_size * steps / (time.perf_counter() - start)


def projected_img_per_s(batch_size: int) -> tuple[float, str]:
  """The projection model's img/s for one GPU of this kind at `batch_size`, and its bound."""
  kind = jax.devices()[0].device_kind.lower()
  node = next((t for t in projection.TARGETS.values()
               if t.chips == 8 and t.chip.lower() in kind), None)
  if node is None:
    return float("nan"), f"no projection target for {kind!r}"
  kw = models.model_kwargs(VARIANT)
  cost = projection.ProgramCost(0.0, 0.0, (), 1, batch_size,
                                projection.ModelShape.of_vit(kw, IMAGE_SIZE))
  target = dataclasses.replace(node, name=node.name.replace("-8x", "-1x"), chips=1)
  p = projection.project(cost, target, flops.train_flops_per_image(kw, IMAGE_SIZE,
                                                                    num_classes=NUM_CLASSES))
  return p["img_per_s"], p["bound"]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batches", default="64,128,256,512",
                      help="comma-separated global batches")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--profile_dir", default=None,
                      help="write a jax.profiler trace at the best batch")
  parser.add_argument("--skip_torch", action="store_true")
  args = parser.parse_args()
  if jax.default_backend() != "gpu":
    parser.error(f"needs a GPU; jax sees {jax.devices()[0].device_kind!r}. "
                 "Run it on a GPU machine.")

  peak = hardware.peak_flops_per_device()
  if peak.flops is None:
    parser.error(f"MFU needs the GPU's peak: {peak.source}.")
  train_flops = flops.train_flops_per_image(models.model_kwargs(VARIANT), IMAGE_SIZE,
                                            num_classes=NUM_CLASSES)
  print(f"ViT-{VARIANT} {IMAGE_SIZE}px bf16 on {jax.devices()[0].device_kind} (jax "
        f"{jax.__version__}); peak {peak.flops / 1e12:.0f} TFLOP/s ({peak.source}); "
        f"{train_flops / 1e9:.1f} GFLOP per training image", flush=True)
  for impl, (loss_err, grad_err) in attention_errors().items():
    print(f"  bf16 attention_impl={impl!r:8s} vs float32: loss rel. error {loss_err:.1e}, "
          f"gradients rel. error {grad_err:.1e}", flush=True)

  mfu = lambda img_s: 100 * img_s * train_flops / peak.flops
  row = lambda name, b, rates: print(
      f"  {name:28s} batch {b:4d}: {statistics.mean(rates):8.1f} img/s "
      f"(rounds {min(rates):.0f}-{max(rates):.0f})  MFU {mfu(statistics.mean(rates)):5.1f}%",
      flush=True)
  best = (0.0, None)
  for batch_size in (int(b) for b in args.batches.split(",")):
    try:
      rates = ours_img_per_s(batch_size, args.steps, args.rounds)
    except jax.errors.JaxRuntimeError as e:  # Out of memory at this batch: larger ones will be too.
      print(f"  ours batch {batch_size:4d}: {str(e).splitlines()[0][:120]}")
      break
    row("ours, cuDNN attention", batch_size, rates)
    best = max(best, (statistics.mean(rates), batch_size))
  if not best[1]:
    return
  row("ours, XLA attention", best[1], ours_img_per_s(best[1], args.steps, args.rounds, "xla"))
  projected, bound = projected_img_per_s(best[1])
  print(f"  {'projection (1 GPU)':28s} batch {best[1]:4d}: {projected:8.1f} img/s "
        f"({bound}-bound; ours/projected {best[0] / projected:.2f})", flush=True)
  if args.profile_dir:
    ours_img_per_s(best[1], args.steps, 1, profile_dir=args.profile_dir)
  if not args.skip_torch:
    img_s = torch_img_per_s(best[1], args.steps)
    print(f"  {'torch.compile':28s} batch {best[1]:4d}: {img_s:8.1f} img/s  MFU "
          f"{mfu(img_s):5.1f}%  (ours/torch {best[0] / img_s:.2f})")


if __name__ == "__main__":
  main()
