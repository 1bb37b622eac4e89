"""Converts a checkpoint of any source into an official `.npz`, a Hugging Face
`ViTForImageClassification` directory and an Orbax params checkpoint.

The library side of `python -m vit_jax.convert`. The input is read by vit_jax.checkpoints.imports
(an official or big_vision `.npz`, an Orbax train-state checkpoint, a Hugging Face ViT directory, a
timm file; the source detected or given). The model is `--model` (+ overrides), else the one the
input implies (a run's recorded config, a Hugging Face config.json, a timm / big_vision file, an
official file's name). The params are checked against it (exact keys and shapes) before anything is
written. Output in DIR:

  <model>.npz                 official layout, e.g. ViT-Ti_16.npz (format 'npz')
  config.json, model.safetensors, preprocessor_config.json
                              loadable with transformers' ViTForImageClassification (format 'hf')
  <model>_orbax/state/        Orbax PyTree {'params': ...}, per-layer layout, and
  <model>_orbax/config.json   {'model': fields, 'input': {'pp': ...}} (format 'orbax'); loads with
                              `load_pretrained` / --config.init= keeping the numerics fields
                              (e.g. gelu_approximate=False), which the .npz cannot record
"""
import json
from typing import Any, Mapping, Sequence

from absl import logging
from etils import epath
import flax
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from vit_jax import models
from vit_jax.checkpoints import hf, imports, npz, pretrained, workdir
from vit_jax.models import resnet

FORMATS = ("hf", "npz", "orbax")
DEFAULT_FORMATS = ("hf", "npz")
_DIMS = ("patch_size", "width", "depth", "mlp_dim", "num_heads")


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




def model_name(variant: str | None, model_kwargs: Mapping[str, Any]) -> str:
  """The name outputs are given: the plain-ViT variant the dims are (ViT-B/16), else `variant`'s
  canonical name (hybrids), else 'ViT-custom'."""
  ph, pw = model_kwargs["patch_size"]
  dims = tuple(model_kwargs[k] for k in ("width", "depth", "mlp_dim", "num_heads"))
  if model_kwargs["resnet"] is None and ph == pw:
    for name, named_dims in models.variants.VIT_DIMS.items():
      if named_dims == dims:
        return f"ViT-{name}/{ph}"
  return models.variants.canonical_name(variant) if variant else "ViT-custom"


def recorded_fields(model_kwargs: Mapping[str, Any], variant: str | None = None) -> dict[str, Any]:
  """Model fields as a run records them in config.json (`config.model`): the dims, the variant
  and every field that is not its default; a square patch size as one int."""
  defaults = models.model_kwargs(patch_size=1, width=1, depth=1, mlp_dim=1, num_heads=1)
  fields = {"variant": variant}
  for k, v in model_kwargs.items():
    if k in _DIMS or v != defaults.get(k):
      fields[k] = v
  ph, pw = fields["patch_size"]
  fields["patch_size"] = int(ph) if ph == pw else [int(ph), int(pw)]
  if "dtype" in fields:
    fields["dtype"] = str(jnp.dtype(fields["dtype"]))
  return fields


def save_orbax(params: Mapping[str, Any], path: str | epath.PathLike,
               record: Mapping[str, Any]) -> epath.Path:
  """Writes `{'params': params}` as an Orbax PyTree checkpoint at PATH/state and `record` as
  PATH/config.json: a step directory that `manager.load_params` and `load_pretrained` read."""
  path = workdir.resolve(path)
  path.mkdir(parents=True, exist_ok=True)
  params = jax.tree.map(lambda x: jax.numpy.asarray(x, jnp.float32), dict(params))
  ocp.PyTreeCheckpointer().save(path / "state", args=ocp.args.PyTreeSave({"params": params}),
                                force=True)
  workdir.write_json(path / "config.json", record)
  return path


def numerics_note(model_kwargs: Mapping[str, Any]) -> str | None:
  """What to set when loading an official .npz of a model whose numerics are not the official
  ones (the format cannot record them), or None."""
  defaults = models.model_kwargs("Ti/16")
  changed = {k: model_kwargs[k] for k in imports.NUMERICS
             if k in model_kwargs and model_kwargs[k] != defaults[k]}
  if not changed:
    return None
  flags = " ".join(imports.config_flag(k, v) for k, v in changed.items())
  return (f"The model computes with {changed}, which an official .npz cannot record: load the .npz "
          f"with {flags} (the Orbax output, --formats=orbax, records it).")


def _overrides_flag(field: str, value: Any) -> str:
  return f"--overrides='{json.dumps({field: value})}' (or leave it out)"


def convert(input_path: str, model: str | None, output_dir: str, *, source: str | None = None,
            num_classes: int | None = None, overrides: dict[str, Any] | None = None,
            formats: Sequence[str] = DEFAULT_FORMATS,
            value_range: tuple[float, float] = (-1.0, 1.0)) -> list[epath.Path]:
  """Reads `input_path` (`source`: one of imports.SOURCES, None to detect), checks it against the
  model and writes the requested formats; returns the files (and directories) written.

  Without `model` the model is the one the input implies (module docstring). The source's numerics
  (e.g. Hugging Face's exact GELU) are kept unless `overrides` sets them, which must then agree.
  """
  unknown = sorted(set(formats) - set(FORMATS))
  if unknown or not formats:
    raise ValueError(f"--formats={','.join(formats)}: choose from {FORMATS}.")
  source = imports.check_source(source)
  overrides = dict(overrides or {})
  if model:
    model_kwargs = models.model_kwargs(model, **overrides)
    if "hf" in formats:
      hf.check_exportable(model_kwargs)
  source = source or imports.detect(input_path)
  if not model and source in ("official", "orbax") and not imports.model_fields(input_path,
                                                                                 source):
    raise ValueError(f"{input_path} is not in a workdir with a config.json nor named after a "
                     "model (like ViT-B_16.npz), so its model is unknown: pass --model (e.g. "
                     "--model=ViT-B/16) and --overrides.")
  params, detected = imports.read(input_path, source, model=model)
  if model:
    model_kwargs = models.model_kwargs(model, **{**imports.numerics(detected), **overrides})
  else:
    model_kwargs = models.model_kwargs(**{**detected, **overrides})
  imports.check_model(detected, model_kwargs, source=input_path, fix=_overrides_flag)
  if "hf" in formats:
    hf.check_exportable(model_kwargs)
  # The per-layer layout is the file format and what the HF mapping walks; GroupNorm params as (C,).
  params = npz.squeeze_groupnorm(npz.to_per_layer(params))
  num_classes = _num_classes(params, num_classes)
  pretrained.check_matches(
      params, _abstract_params(model_kwargs, num_classes, params), source=input_path,
      fix=f"Fix: pass the --model, --num_classes and --overrides that {input_path} "
          "was trained with (or leave --model out for a checkpoint that implies its model).")
  name = model_name(model or detected.get("variant"), model_kwargs)
  output_dir = workdir.resolve(output_dir)
  written = []
  if "npz" in formats:
    path = output_dir / (name.replace("/", "_") + ".npz")
    npz.save_npz(npz.unflatten(params), path)
    written.append(path)
    note = numerics_note(model_kwargs)
    if note:
      logging.warning("%s: %s", path, note)
  if "hf" in formats:
    hf.export(npz.unflatten(params), model_kwargs, output_dir, value_range=value_range)
    written += [output_dir / f for f in
                ("config.json", "model.safetensors", "preprocessor_config.json")]
  if "orbax" in formats:
    channels = int(params["embedding/kernel" if model_kwargs["resnet"] is None
                          else "conv_root/kernel"].shape[2])
    low, high = value_range
    record = {"model": recorded_fields(model_kwargs, model or detected.get("variant")),
              "num_classes": num_classes,
              "input": {"pp": f"decode(channels={channels})|value_range({low:g}, {high:g})"},
              "converted_from": {"path": str(input_path), "source": source}}
    written.append(save_orbax(npz.unflatten(params),
                              output_dir / (name.replace("/", "_") + "_orbax"), record))
  return written
