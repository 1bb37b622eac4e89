r"""ViT-B/16 training throughput and MFU on one GPU: ours (bf16, cuDNN flash attention) vs
torch.compile.

    python experiments/speed_gpu.py                          # batch sweep, ours then torch.compile
    python experiments/speed_gpu.py --batches=256 --profile_dir=/tmp/vit_trace --skip_torch

Ours: the trainer's own train step (vit_jax.efficiency.bench.fixed_batch_trainer: AdamW, placed
as the trainer places it, state donated) with compute dtype bfloat16 (params and optimizer state
float32) and attention_impl='cudnn'. Theirs: transformers ViTForImageClassification (SDPA
attention) under torch.autocast(bfloat16) + fused AdamW, compiled with torch.compile.
MFU = analytic training FLOPs (vit_jax.models.flops, 3x forward, no remat) x img/s / the GPU's
dense bf16 peak (vit_jax.runtime.hardware, 989 TFLOP/s for an H100 SXM).

--profile_dir writes a jax.profiler trace of a few steps at the best batch (open it in
TensorBoard's profile plugin or Perfetto) to see what the step spends its time on.
"""
import argparse
import time

import jax

from vit_jax import models
from vit_jax.efficiency import bench
from vit_jax.models import flops
from vit_jax.runtime import hardware

VARIANT, IMAGE_SIZE, NUM_CLASSES = "B/16", 224, 1000


def ours_img_per_s(batch_size: int, steps: int, profile_dir: str | None = None) -> float:
  """Images/s of our bf16 train step with cuDNN flash attention at `batch_size`."""
  config = bench.speed_config(VARIANT, NUM_CLASSES, dtype="bfloat16", attention_impl="cudnn")
  images = jax.random.normal(jax.random.key(0), (batch_size, IMAGE_SIZE, IMAGE_SIZE, 3))
  labels = jax.nn.one_hot(jax.random.randint(jax.random.key(1), (batch_size,), 0, NUM_CLASSES),
                          NUM_CLASSES)
  trainer = bench.fixed_batch_trainer(config, images, labels)
  jax.block_until_ready(trainer(3))  # Compile and warm up.
  start = time.perf_counter()
  jax.block_until_ready(trainer(steps))
  seconds = time.perf_counter() - start
  if profile_dir:
    with jax.profiler.trace(profile_dir):
      for i in range(5):
        with jax.profiler.StepTraceAnnotation("train", step_num=i):
          metrics = trainer(1)
      jax.block_until_ready(metrics)
    print(f"  trace written to {profile_dir}")
  return batch_size * steps / seconds


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


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batches", default="64,128,256,384,512",
                      help="comma-separated global batches")
  parser.add_argument("--steps", type=int, default=20)
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
  print(f"ViT-{VARIANT} {IMAGE_SIZE}px bf16 on {jax.devices()[0].device_kind}; peak "
        f"{peak.flops / 1e12:.0f} TFLOP/s ({peak.source}); {train_flops / 1e9:.1f} GFLOP per "
        "training image")
  mfu = lambda img_s: 100 * img_s * train_flops / peak.flops
  best = (0.0, None)
  for batch_size in (int(b) for b in args.batches.split(",")):
    try:
      img_s = ours_img_per_s(batch_size, args.steps)
    except jax.errors.JaxRuntimeError as e:  # Out of memory at this batch: larger ones will be too.
      print(f"  ours  batch {batch_size:4d}: {str(e).splitlines()[0][:120]}")
      break
    print(f"  ours  batch {batch_size:4d}: {img_s:8.1f} img/s  MFU {mfu(img_s):5.1f}%", flush=True)
    best = max(best, (img_s, batch_size))
  if args.profile_dir and best[1]:
    ours_img_per_s(best[1], args.steps, args.profile_dir)
  if not args.skip_torch and best[1]:
    img_s = torch_img_per_s(best[1], args.steps)
    print(f"  torch.compile batch {best[1]:4d}: {img_s:8.1f} img/s  MFU {mfu(img_s):5.1f}%  "
          f"(ours/torch {best[0] / img_s:.2f})")


if __name__ == "__main__":
  main()
