r"""Converts a checkpoint of any source to an official `.npz`, a Hugging Face
`ViTForImageClassification` directory and/or an Orbax params checkpoint.

  python -m vit_jax.convert --input=WORKDIR/checkpoints --output_dir=/tmp/export
  python -m vit_jax.convert --input=ViT-B_16.npz --output_dir=/tmp/export
  python -m vit_jax.convert --input=/models/vit-base-patch16-224 --output_dir=/tmp/b16 \
      --formats=npz,orbax
  python -m vit_jax.convert --from=timm --input=vit_small.safetensors --output_dir=/tmp/s16

`--input` is an official or big_vision `.npz`, an Orbax train-state checkpoint (a step directory,
the checkpoints root or the workdir: its latest step), a Hugging Face ViT directory or a timm file;
`--from` names the source or leaves it to detection (vit_jax.checkpoints.imports). Paths may be
local or gs://. The model is --model (+ --overrides) or the one the input implies; the params are
checked against it (exact keys and shapes) before anything is written
(vit_jax.checkpoints.export).
"""
import json
from typing import Sequence

from absl import flags

from vit_jax import cli
from vit_jax.checkpoints import export, imports
from vit_jax.config import bad_input

_INPUT = flags.DEFINE_string(
    "input", None, "Checkpoint: official or big_vision .npz, Orbax checkpoint directory, Hugging "
    "Face ViT directory, timm .safetensors / .pth / .bin.")
_FROM = flags.DEFINE_enum("from", "auto", ["auto", *imports.SOURCES],
                          "Source of --input (auto: detected from the path).")
_MODEL = flags.DEFINE_string(
    "model", None, "Model name, e.g. 'ViT-Ti/16' or 'R50+B/16' (default: the model the input "
    "implies: a run's WORKDIR/config.json, a Hugging Face config.json, an official file's name).")
_NUM_CLASSES = flags.DEFINE_integer(
    "num_classes", None,
    "Classes of the checkpoint's head (0: no head). Default: read from the head.")
_OVERRIDES = flags.DEFINE_string(
    "overrides", "{}", "JSON dict of model options the checkpoint was trained with, e.g. "
    "'{\"classifier\": \"gap\", \"scan\": true}'.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Directory to write the exports into.")
_FORMATS = flags.DEFINE_list("formats", list(export.DEFAULT_FORMATS),
                             f"What to write, any of {export.FORMATS}.")
_VALUE_RANGE = flags.DEFINE_list(
    "value_range", ["-1", "1"],
    "Pixel range the model was trained on (for the HF image processor).")


def main(argv: Sequence[str]) -> None:
  cli.no_positional_args(argv)
  with bad_input():
    missing = [f"--{f.name}" for f in (_INPUT, _OUTPUT_DIR) if not f.value]
    if missing:
      raise ValueError(f"Missing {', '.join(missing)}; e.g. python -m vit_jax.convert "
                       "--input=ViT-B_16.npz --output_dir=/tmp/export")
    try:
      overrides = json.loads(_OVERRIDES.value)
      value_range = tuple(float(v) for v in _VALUE_RANGE.value)
    except ValueError as e:
      raise ValueError(f"--overrides must be a JSON dict and --value_range two numbers: {e}") from e
    if not isinstance(overrides, dict) or len(value_range) != 2 or value_range[0] >= value_range[1]:
      raise ValueError(f"--overrides={_OVERRIDES.value!r} must be a JSON dict and "
                       f"--value_range={_VALUE_RANGE.value} a 'low,high' pair, e.g. -1,1.")
    written = export.convert(_INPUT.value, _MODEL.value, _OUTPUT_DIR.value, source=_FROM.value,
                             num_classes=_NUM_CLASSES.value, overrides=overrides,
                             formats=_FORMATS.value, value_range=value_range)
  print("Wrote:\n" + "\n".join(f"  {p}" for p in written))


def run() -> None:
  """Console-script entry point (`vit-convert`)."""
  cli.run(main)


if __name__ == "__main__":
  run()
