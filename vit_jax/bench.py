r"""Efficiency profile of a training config: what a step costs, measured and counted.

    python -m vit_jax.bench --config=configs/quickstart.py:patch=7 [--output=WORKDIR/bench.json]
        [--targets=tpu-v5e-16,h100-8x] [--steps=10] [--image_size=224]

Prints and writes the profile of vit_jax.efficiency.bench: parameters, analytic and XLA-counted
GFLOPs per image, compile time, step time, img/s and MFU of the trainer's own jitted step on random
data, the step's memory per device as XLA planned it, and per `--targets` a projection onto hardware
we don't have. For a FlexiViT config (`config.flexi.patch_sizes`) the step at every patch size is
profiled too, as training runs it: the same weights, the patch kernel resized, FLOPs and MFU of
that size. The image shape comes from one preprocessed training example, or `--image_size` when the
data is not prepared here.
"""
from typing import Sequence

from absl import flags, logging
import jax

from vit_jax import cli
from vit_jax.checkpoints import workdir
from vit_jax.config import bad_input
from vit_jax.data import pipeline
from vit_jax.efficiency import bench, projection
from vit_jax.training import checks

cli.run_flags()
_OUTPUT = flags.DEFINE_string("output", None,
                              "Write the profile as JSON here (a trial's bench.json).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed training steps (after 2 warm-up steps).",
                              lower_bound=1)
_BATCH = flags.DEFINE_integer("batch_size", None, "Global batch (default: config.batch_size).",
                              lower_bound=1)
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "Square image side; skips reading the data.")
_CHANNELS = flags.DEFINE_integer("channels", 3, "Image channels, with --image_size.")
_TARGETS = flags.DEFINE_list("targets", [], f"Projection targets: {sorted(projection.TARGETS)}.")
_MFU = flags.DEFINE_float(
    "assumed_mfu", projection.DEFAULT_MFU, "Fraction of peak FLOP/s the projections assume large "
    "matmuls reach (default: the model's calibrated value; see vit_jax.efficiency.projection).")
flags.register_validator("assumed_mfu", lambda mfu: mfu is None or 0 < mfu <= 1,
                         "must be in (0, 1], a fraction of peak FLOP/s (e.g. 0.5), or left out for "
                         "the calibrated model")


def main(argv: Sequence[str]) -> None:
  config = cli.required_config()
  with bad_input():
    for target in _TARGETS.value:
      projection.get_target(target)
    hwc = ((_IMAGE_SIZE.value, _IMAGE_SIZE.value, _CHANNELS.value) if _IMAGE_SIZE.value
           else pipeline.example_shape(config.input))
    program = bench.program_for(config, hwc)  # Checks the config against these devices.
    batch_size = _BATCH.value or config.batch_size
    checks.check_batch(batch_size, data_parallel=program.data_parallel,
                       num_processes=jax.process_count(), grad_accum_steps=config.grad_accum_steps)
  result = bench.profile(config, hwc, batch_size, _STEPS.value, _TARGETS.value, _MFU.value)
  if config.flexi.patch_sizes:
    result["per_patch_size"] = {
        str(p): bench.profile(config, hwc, batch_size, _STEPS.value, patch_size=p)
        for p in config.flexi.patch_sizes}
  print(bench.format_profile(result), flush=True)
  if _OUTPUT.value and jax.process_index() == 0:
    path = workdir.resolve(_OUTPUT.value)
    path.parent.mkdir(parents=True, exist_ok=True)
    workdir.write_json(path, result)
    logging.info("Wrote %s", path)


def run() -> None:
  cli.run(main, on_devices=True)


if __name__ == "__main__":
  run()
