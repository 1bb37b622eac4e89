r"""Input throughput: decode + inception crop + flip of real JPEGs, ours vs plain PIL vs tf.data.

    python -m vit_jax.data_bench [--num_images=2000] [--threads=1] [--size=224]

Offline (scikit-learn's sample photos, re-encoded at ImageNet-like sizes); see
vit_jax.efficiency.data_bench. Rows are comparable within one run, not across runs.
"""
import os
from typing import Sequence

from absl import flags

from vit_jax import cli
from vit_jax.config import BadInputError
from vit_jax.efficiency import data_bench

_NUM_IMAGES = flags.DEFINE_integer("num_images", 2000, "Images per method (after warm-up).")
_THREADS = flags.DEFINE_integer("threads", 1, "Reader threads of our pipeline and tf.data.")
_SIZE = flags.DEFINE_integer("size", 224, "Output crop size.")
_FILES = flags.DEFINE_integer("files", 500, "Distinct JPEG files in the synthetic folder.")


def main(argv: Sequence[str]) -> None:
  cli.no_positional_args(argv)
  for flag in (_NUM_IMAGES, _SIZE, _FILES):
    if flag.value < 1:
      raise BadInputError(f"--{flag.name}={flag.value} must be positive.")
  if _FILES.value < 32:
    raise BadInputError(f"--files={_FILES.value}: give at least one batch (32) of files.")
  if _THREADS.value < 1:
    raise BadInputError(f"--threads={_THREADS.value}: give 1 or more (tf.data, one of the methods "
                        "compared, cannot read with 0 threads).")
  load_before = os.getloadavg()[0]
  rows = data_bench.run(_NUM_IMAGES.value, _THREADS.value, _SIZE.value, _FILES.value)
  print(data_bench.format_table(rows, _THREADS.value))
  print(f"\nhost: {os.cpu_count()} cores, 1-min load average {load_before:.1f} before / "
        f"{os.getloadavg()[0]:.1f} after (other processes share these cores; compare rows, not "
        f"runs). Target: >= 300 img/s per core.")


if __name__ == "__main__":
  cli.run(main)
