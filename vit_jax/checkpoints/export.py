"""Exports a checkpoint as an official `.npz` and a Hugging Face `ViTForImageClassification` dir.

The library side of `python -m vit_jax.convert`. The input is an official `.npz` or an Orbax
train-state checkpoint (a step directory, or the checkpoints root: its latest step). The params are
checked against the named model (exact keys and shapes) before anything is written. Output:
`DIR/<model>.npz` (official layout, e.g. ViT-Ti_16.npz) and `DIR/{config.json, model.safetensors,
preprocessor_config.json}`, loadable with `transformers.ViTForImageClassification.from_pretrained`.
"""
from typing import Any, Sequence

from etils import epath
import flax
import jax
import jax.numpy as jnp

from vit_jax import models
from vit_jax.checkpoints import hf, npz, pretrained, workdir
from vit_jax.models import resnet

FORMATS = ("hf", "npz")


def _num_classes(params: dict[str, Any], requested: int | None) -> int:
  head = params.get("head/kernel")
  found = 0 if head is None else int(head.shape[-1])
  if requested is not None and requested != found:
    raise ValueError(f"--num_classes={requested} but the checkpoint's head has {found} classes: "
                     f"pass --num_classes={found} (or leave it out).")
  return found


def _abstract_params(model_kwargs: dict[str, Any], num_classes: int, params: dict[str, Any]):
  """The model's params as ShapeDtypeStructs, at the image size and channel count the
  checkpoint's position embedding and first kernel imply."""
  resnet_cfg = model_kwargs["resnet"]
  stride = resnet.stem_stride(resnet_cfg["num_layers"]) if resnet_cfg else 1
  first_kernel = params.get("conv_root/kernel" if resnet_cfg else "embedding/kernel")
  channels = 3 if first_kernel is None else int(first_kernel.shape[2])  # None: no fit, reported.
  grid = 1
  posemb = params.get("Transformer/posembed_input/pos_embedding")
  if posemb is not None:
    grid = max(int(round((posemb.shape[1] - int("cls" in params)) ** 0.5)), 1)
  ph, pw = model_kwargs["patch_size"]
  images = jax.ShapeDtypeStruct((1, grid * stride * ph, grid * stride * pw, channels), jnp.float32)
  model = models.Model(num_classes=num_classes, **model_kwargs)
  variables = jax.eval_shape(lambda x: model.init({"params": jax.random.key(0)}, x), images)
  return npz.to_per_layer(npz.flatten(flax.linen.unbox(variables["params"])))


def convert(input_path: str, model_name: str | None, output_dir: str, *,
            num_classes: int | None = None, overrides: dict[str, Any] | None = None,
            formats: Sequence[str] = FORMATS,
            value_range: tuple[float, float] = (-1.0, 1.0)) -> list[epath.Path]:
  """Checks the checkpoint against the model and writes the requested exports; returns the files.

  Without `model_name` the model is the one the run recorded in its WORKDIR/config.json.
  """
  unknown = sorted(set(formats) - set(FORMATS))
  if unknown or not formats:
    raise ValueError(f"--formats={','.join(formats)}: choose from {FORMATS}.")
  if model_name:
    model_kwargs = models.model_kwargs(model_name, **(overrides or {}))
  else:
    run_config = workdir.recorded_config(input_path)
    if run_config is None:
      raise ValueError(f"{input_path} is not in a workdir with a config.json, so its model is "
                       "unknown: pass --model (e.g. --model=ViT-B/16) and --overrides.")
    recorded = run_config["model"]
    model_name = recorded["variant"]
    model_kwargs = models.model_kwargs(**{**recorded, **(overrides or {})})
  if "hf" in formats:
    hf.check_exportable(model_kwargs)
  # The per-layer layout is the file format and what the HF mapping walks; GroupNorm params as (C,).
  params = npz.squeeze_groupnorm(npz.to_per_layer(pretrained.read_params(input_path)))
  num_classes = _num_classes(params, num_classes)
  pretrained.check_matches(
      params, _abstract_params(model_kwargs, num_classes, params), source=input_path,
      fix=f"Fix: pass the --model, --num_classes and --overrides that {input_path} "
          "was trained with (or leave --model out for a checkpoint in a workdir).")
  output_dir = workdir.resolve(output_dir)
  written = []
  if "npz" in formats:
    name = models.variants.canonical_name(model_name) if model_name else "ViT-custom"
    path = output_dir / (name.replace("/", "_") + ".npz")
    npz.save_npz(npz.unflatten(params), path)
    written.append(path)
  if "hf" in formats:
    hf.export(npz.unflatten(params), model_kwargs, output_dir, value_range=value_range)
    written += [output_dir / name for name in
                ("config.json", "model.safetensors", "preprocessor_config.json")]
  return written
