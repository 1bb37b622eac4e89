r"""Converts a checkpoint to an official `.npz` and a Hugging Face `ViTForImageClassification` directory.

  python -m vit_jax.convert --input=WORKDIR/checkpoints --model=ViT-Ti/16 --num_classes=10 \
      --output_dir=/tmp/export

`--input` is an official `.npz` or an Orbax train-state checkpoint (a step directory, or the
checkpoints root: its latest step). The params are checked against the named model (exact keys and
shapes) before anything is written. Output: `DIR/<model>.npz` (official layout, e.g. ViT-Ti_16.npz) and
`DIR/{config.json, model.safetensors, preprocessor_config.json}`, loadable with
`transformers.ViTForImageClassification.from_pretrained(DIR)`.
"""
import json
import sys
from typing import Any, Sequence

from absl import app
from absl import flags
from etils import epath
import flax
import jax
import jax.numpy as jnp

from vit_jax import models
from vit_jax.checkpoints import hf
from vit_jax.checkpoints import npz
from vit_jax.models import resnet

FORMATS = ("hf", "npz")

_INPUT = flags.DEFINE_string("input", None, "Official .npz file or Orbax checkpoint directory.")
_MODEL = flags.DEFINE_string("model", None, "Model name, e.g. 'ViT-Ti/16' or 'R50+B/16'.")
_NUM_CLASSES = flags.DEFINE_integer(
    "num_classes", None, "Classes of the checkpoint's head (0: no head). Default: read from the head.")
_OVERRIDES = flags.DEFINE_string(
    "overrides", "{}", "JSON dict of model options the checkpoint was trained with, e.g. "
    "'{\"classifier\": \"gap\", \"scan\": true}'.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Directory to write the exports into.")
_FORMATS = flags.DEFINE_list("formats", list(FORMATS), f"What to write, any of {FORMATS}.")
_VALUE_RANGE = flags.DEFINE_list(
    "value_range", ["-1", "1"], "Pixel range the model was trained on (for the HF image processor).")


def _num_classes(params: dict[str, Any], requested: int | None) -> int:
  head = params.get("head/kernel")
  found = 0 if head is None else int(head.shape[-1])
  if requested is not None and requested != found:
    raise ValueError(f"--num_classes={requested} but the checkpoint's head has {found} classes: "
                     f"pass --num_classes={found} (or leave it out).")
  return found


def _abstract_params(model_kwargs: dict[str, Any], num_classes: int, params: dict[str, Any]):
  """The model's params as ShapeDtypeStructs, at the image size the checkpoint's posemb implies."""
  stride = resnet.stem_stride(model_kwargs["resnet"]["num_layers"]) if model_kwargs.get("resnet") else 1
  grid = 1
  posemb = params.get("Transformer/posembed_input/pos_embedding")
  if posemb is not None:
    grid = max(int(round((posemb.shape[1] - int("cls" in params)) ** 0.5)), 1)
  ph, pw = model_kwargs["patch_size"]
  images = jax.ShapeDtypeStruct((1, grid * stride * ph, grid * stride * pw, 3), jnp.float32)
  model = models.Model(num_classes=num_classes, **model_kwargs)
  variables = jax.eval_shape(lambda x: model.init({"params": jax.random.key(0)}, x), images)
  return npz.to_per_layer(npz.flatten(flax.linen.unbox(variables["params"])))


def convert(input_path: str, model_name: str, output_dir: str, *, num_classes: int | None = None,
            overrides: dict[str, Any] | None = None, formats: Sequence[str] = FORMATS,
            value_range: tuple[float, float] = (-1.0, 1.0)) -> list[epath.Path]:
  """Checks the checkpoint against the model and writes the requested exports; returns the files."""
  unknown = sorted(set(formats) - set(FORMATS))
  if unknown or not formats:
    raise ValueError(f"--formats={','.join(formats)}: choose from {FORMATS}.")
  model_kwargs = models.model_kwargs(model_name, **(overrides or {}))
  if "hf" in formats:
    hf.check_exportable(model_kwargs)
  # The per-layer layout is the file format and what the HF mapping walks; GroupNorm params as (C,).
  params = npz.squeeze_groupnorm(npz.to_per_layer(npz.read_params(input_path)))
  num_classes = _num_classes(params, num_classes)
  npz.check_matches(params, _abstract_params(model_kwargs, num_classes, params), source=input_path,
                    fix=f"Fix: pass the --model, --num_classes and --overrides that {input_path} was "
                        "trained with.")
  output_dir = epath.Path(output_dir)
  written = []
  if "npz" in formats:
    path = output_dir / (models.variants.canonical_name(model_name).replace("/", "_") + ".npz")
    npz.save_npz(npz.unflatten(params), path)
    written.append(path)
  if "hf" in formats:
    hf.export(npz.unflatten(params), model_kwargs, output_dir, value_range=value_range)
    written += [output_dir / name for name in
                ("config.json", "model.safetensors", "preprocessor_config.json")]
  return written


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    missing = [f"--{f.name}" for f in (_INPUT, _MODEL, _OUTPUT_DIR) if not f.value]
    if missing:
      raise ValueError(f"Missing {', '.join(missing)}; e.g. python -m vit_jax.convert "
                       "--input=ViT-B_16.npz --model=ViT-B/16 --output_dir=/tmp/export")
    try:
      overrides = json.loads(_OVERRIDES.value)
      value_range = tuple(float(v) for v in _VALUE_RANGE.value)
    except ValueError as e:
      raise ValueError(f"--overrides must be a JSON dict and --value_range two numbers: {e}") from e
    if not isinstance(overrides, dict) or len(value_range) != 2 or value_range[0] >= value_range[1]:
      raise ValueError(f"--overrides={_OVERRIDES.value!r} must be a JSON dict and "
                       f"--value_range={_VALUE_RANGE.value} a 'low,high' pair, e.g. -1,1.")
    written = convert(_INPUT.value, _MODEL.value, _OUTPUT_DIR.value, num_classes=_NUM_CLASSES.value,
                      overrides=overrides, formats=_FORMATS.value, value_range=value_range)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print("Wrote:\n" + "\n".join(f"  {p}" for p in written))


def run() -> None:
  """Console-script entry point."""
  app.run(main)


if __name__ == "__main__":
  run()
