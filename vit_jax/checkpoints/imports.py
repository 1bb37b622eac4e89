"""Checkpoints of any source, read as our official params: the one dispatcher.

`read(path, source=None)` returns (official per-layer flat params, the `Model` fields the source
implies). Sources and how `detect` tells them apart (first match wins):

  hf          a directory (or a weights file in one) whose config.json names model_type 'vit' /
              architectures [ViTForImageClassification] (vit_jax.checkpoints.hf)
  timm        a timm Hub directory (config.json naming an 'architecture'), or any `.safetensors`,
              `.pth`, `.pt` or `.bin` file (vit_jax.checkpoints.timm)
  orbax       any other directory: an Orbax train-state checkpoint (a step directory, a
              checkpoints root or a workdir; its latest step); fields from the run's config.json
  big_vision  a `.npz` with big_vision's names (`MlpBlock_0`, `LayerNorm_1`,
              `MultiHeadDotProductAttention_0` in the encoder blocks, a `pos_embedding` outside
              `posembed_input`) under any prefix (`params/`, `params/img/`) or none
              (vit_jax.checkpoints.big_vision)
  official    any other file: an official google-research/vision_transformer `.npz` (also under a
              `params/` prefix); fields from its name (ViT-B_16.npz, B_16-i21k-...npz) if any

Numerics: a source may compute differently from the official ViT (Hugging Face's and timm's exact
GELU, timm's hybrid stem). The fields it implies carry that (`gelu_approximate=False`, ...), and
`check_model` refuses to load it into a model set otherwise: fine-tuning must not change what the
pretrained model computes behind the user's back. The official `.npz` has no such record: it means
the official numerics, and a conversion to it says which fields to set when loading it back.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import re
from typing import Any, Callable, Mapping
import zipfile

from absl import logging
from etils import epath

from vit_jax import models
from vit_jax.checkpoints import hf, manager, npz, workdir
from vit_jax.checkpoints.npz import FlatParams

SOURCES = ("official", "hf", "timm", "big_vision", "orbax")
TORCH_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
FILE_SUFFIXES = (".npz", *TORCH_SUFFIXES)
# Model fields that change what a checkpoint computes without changing its params' shapes: a
# mismatch between the checkpoint's and the model's would go unnoticed by the shape checks.
NUMERICS = ("gelu_approximate", "resnet_numerics", "parallel_block", "fc_norm")
# Why a field matters, for the messages.
_WHY = {"gelu_approximate": "True: the tanh-approximate GELU of the official ViT; False: the exact "
                            "erf GELU of timm and Hugging Face",
        "resnet_numerics": "the hybrid stem's weight standardisation and GroupNorm eps",
        "parallel_block": "parallel attention + MLP blocks",
        "fc_norm": "the final LayerNorm after the average pooling (timm's fc_norm)"}
# Packages a reader may need, and how to install them without disturbing the pinned ones.
_INSTALL = {"timm": "pip install --no-deps timm",
            "torch": "pip install torch --index-url https://download.pytorch.org/whl/cpu",
            "safetensors": "pip install safetensors"}
# Block names (inside Transformer/encoderblock[_i]/) of big_vision's and the official layout.
_BIG_VISION_NAMES = re.compile(
    r"(^|/)encoderblock(_\d+)?/(MlpBlock_0|LayerNorm_1|MultiHeadDotProductAttention_0)/")
_OFFICIAL_NAMES = re.compile(
    r"(^|/)encoderblock(_\d+)?/(MlpBlock_3|LayerNorm_2|MultiHeadDotProductAttention_1)/"
    r"|posembed_input/")


def check_source(source: str | None) -> str | None:
  """`source` validated; None (or 'auto') means detect it."""
  if source in (None, "", "auto"):
    return None
  if source not in SOURCES:
    raise ValueError(f"--from={source}: choose from {SOURCES} or auto (detect from the path).")
  return source


def detect(path: str | epath.PathLike) -> str:
  """The source of the checkpoint at `path` (module docstring); FileNotFoundError if there is
  none."""
  resolved = workdir.resolve(path)
  if not resolved.exists():
    raise FileNotFoundError(f"No checkpoint at {resolved}: check the path (official files are "
                            "named like 'ViT-B_16.npz'; Hugging Face models are directories with "
                            "config.json; Orbax checkpoints are directories of steps).")
  if resolved.is_dir() or resolved.name in hf.WEIGHT_FILES:
    if hf.read_config(resolved) is not None:
      return "hf"
    if _is_timm_hub_dir(resolved):
      return "timm"
  if resolved.is_dir():
    return "orbax"
  suffix = resolved.suffix.lower()
  if suffix in TORCH_SUFFIXES:
    return "timm"
  if suffix == ".npz" and _is_big_vision_npz(resolved):
    return "big_vision"
  return "official"


def _is_timm_hub_dir(path: epath.Path) -> bool:
  """A timm Hub directory (or a weights file in one): its config.json names an 'architecture'."""
  directory = path if path.is_dir() else path.parent
  try:
    config = json.loads((directory / "config.json").read_text())
  except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
    return False
  return isinstance(config, dict) and isinstance(config.get("architecture"), str)


def _npz_keys(path: epath.Path) -> list[str]:
  """The array names of an .npz (its zip directory only); [] if it is not a readable zip (the
  official reader reports that)."""
  try:
    with path.open("rb") as f, zipfile.ZipFile(f) as archive:
      return [n.removesuffix(".npy") for n in archive.namelist()]
  except (zipfile.BadZipFile, OSError, EOFError, ValueError):
    return []


def _is_big_vision_npz(path: epath.Path) -> bool:
  keys = _npz_keys(path)
  big_vision = any(_BIG_VISION_NAMES.search(k) or (k.endswith("pos_embedding") and
                                                   "posembed_input" not in k) for k in keys)
  return big_vision and not any(_OFFICIAL_NAMES.search(k) for k in keys)


def read(path: str | epath.PathLike, source: str | None = None,
         model: str | None = None) -> tuple[FlatParams, dict[str, Any]]:
  """(flat params in our official names, the `Model` fields the checkpoint implies) of any source.

  The params keep the checkpoint's layer layout (an Orbax one may be scanned); the importers give
  the per-layer layout. `model` (e.g. 'ViT-B/16') is passed to the importers that need or check it.
  """
  source = check_source(source) or detect(path)
  if source == "official":
    return npz.read_npz(path), _named_fields(path) or {}
  if source == "orbax":
    return npz.flatten(manager.load_params(path)), _recorded_fields(path) or {}
  if source == "hf":
    return hf.read_params(path, model)
  return _reader(source)(str(path), model)


def model_fields(path: str | epath.PathLike, source: str | None = None) -> dict[str, Any] | None:
  """The model fields the checkpoint at `path` implies (a variant or its dims, plus numerics), or
  None where it implies none (an official .npz not named after a model, an Orbax checkpoint
  outside a workdir).

  Cheap for hf (config.json), orbax (the run's config.json) and official (the file name); a timm or
  big_vision file is read. A path that does not exist (yet, or not from here) gives what its name
  says, as an official file's.
  """
  if not source and not workdir.resolve(path).exists():
    return _named_fields(path)
  source = check_source(source) or detect(path)
  if source == "official":
    return _named_fields(path)
  if source == "orbax":
    return _recorded_fields(path)
  if source == "hf":
    directory = workdir.resolve(path)
    return hf.model_fields(hf.read_config(directory) or {}, source=f"{path}/config.json")
  module = _module(source)
  cheap = getattr(module, "model_fields", None)
  return (cheap(str(path)) if cheap else module.read_params(str(path), None)[1]) or None


def image_channels(path: str | epath.PathLike, source: str | None = None) -> int:
  """The image channels the checkpoint was trained on where its source records them (a Hugging
  Face config's num_channels, the first kernel of an Orbax checkpoint); else 3."""
  if not source and not workdir.resolve(path).exists():
    return 3
  source = check_source(source) or detect(path)
  if source == "hf":
    return hf.num_channels(hf.read_config(workdir.resolve(path)) or {})
  if source == "orbax":  # The first kernel's input channels, from the checkpoint's metadata.
    step_dir = manager.checkpoint_step_dir(path)
    params = manager.saved_params(step_dir.parent, int(step_dir.name)) or {}
    kernel = (params.get("conv_root") or params.get("embedding") or {}).get("kernel")
    return int(kernel.shape[2]) if kernel is not None else 3
  return 3


def numerics(fields: Mapping[str, Any] | None) -> dict[str, Any]:
  """The numerics fields (`NUMERICS`) among `fields` that are set."""
  return {k: fields[k] for k in NUMERICS if fields and fields.get(k) is not None}


def config_flag(field: str, value: Any) -> str:
  return f"--config.model.{field}={value}"


def check_model(detected: Mapping[str, Any] | None, model_fields_: Mapping[str, Any], *,
                source: str, fix: Callable[[str, Any], str] = config_flag) -> None:
  """Raises ValueError if the model computes otherwise than the checkpoint was trained to:
  a numerics field (`NUMERICS`) the checkpoint implies that the model sets to another value.

  `model_fields_` is the model's (complete, `vit_jax.models.model_kwargs`); `fix(field, value)`
  words the setting that resolves it (default: the --config.model flag).
  """
  bad = {k: v for k, v in numerics(detected).items()
         if k in model_fields_ and model_fields_[k] != v}
  if bad:
    lines = "; ".join(f"{k}={v!r} ({_WHY.get(k, 'numerics')}), the model has "
                      f"{k}={model_fields_[k]!r}" for k, v in bad.items())
    fixes = " ".join(fix(k, v) for k, v in bad.items())
    raise ValueError(f"{source} was trained with {lines}. Loading it would change what it "
                     f"computes: set {fixes} (or convert it with python -m vit_jax.convert and "
                     "load the .npz, accepting the change).")


# --- Sources --------------------------------------------------------------------------------------

def _named_fields(path: str | epath.PathLike) -> dict[str, Any] | None:
  """{'variant': name} of an official file named after its model (ViT-B_16.npz, R50+ViT-B_16.npz,
  B_16-i21k-300ep-...npz), else None."""
  stem = re.sub(r"\.npz$", "", epath.Path(path).name)
  for name in (stem, stem.split("-i")[0]):
    try:
      models.model_kwargs(name)
    except ValueError:
      continue
    return {"variant": name}
  return None


def _recorded_config(path: str | epath.PathLike) -> dict[str, Any] | None:
  try:
    return workdir.recorded_config(path)
  except ValueError as e:  # A damaged config.json: the params still load.
    logging.warning("%s", e)
    return None


def _recorded_fields(path: str | epath.PathLike) -> dict[str, Any] | None:
  """The model a run recorded in its WORKDIR/config.json, numerics made explicit (a run recorded
  before a numerics field existed used its default)."""
  run = _recorded_config(path)
  if run is None or not isinstance(run.get("model"), dict):
    return None
  defaults = {f.name: f.default for f in dataclasses.fields(models.Model)}
  recorded = dict(run["model"])
  for field in NUMERICS:
    if recorded.get(field) is None and field in defaults:
      recorded[field] = defaults[field]
  return recorded


def _module(source: str):
  name = f"vit_jax.checkpoints.{source}"
  try:
    return importlib.import_module(name)
  except ModuleNotFoundError as e:
    if e.name == name:
      raise ValueError(f"Reading {source} checkpoints needs {name}, which this installation of "
                       "vit_jax lacks: update vit_jax.") from e
    package = (e.name or "").split(".")[0]
    raise ValueError(f"Reading {source} checkpoints needs the {package!r} package: "
                     f"{_INSTALL.get(package, f'pip install {package}')}.") from e


def _reader(source: str) -> Callable[[str, str | None], tuple[FlatParams, dict[str, Any]]]:
  return _module(source).read_params
