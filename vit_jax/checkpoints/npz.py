"""Official google-research/vision_transformer `.npz` checkpoints: the file format, read and
written.

The file is a flat mapping from "/"-joined parameter paths to float32 arrays, e.g.
`Transformer/encoderblock_3/MlpBlock_3/Dense_0/kernel`. Our param tree uses the same names, so
(un)flattening is a join/split. Two layout differences are bridged here:

* scanned models keep the blocks as one `Transformer/encoderblock` subtree whose leaves carry a
  leading layer axis; the file always has one `encoderblock_{i}` subtree per layer;
* the published hybrid (ResNet stem) files store GroupNorm scale/bias as (1, 1, 1, C) (pre-0.3.6
  Flax, see google/flax#1721); the model uses (C,).

Loading a checkpoint into a model (head reset, resizes, partial loads) is `pretrained.py`'s job.
"""
import collections
import io
import re
from typing import Any, Iterable, Mapping
import zipfile

from absl import logging
from etils import epath
import flax
import jax
import numpy as np

FlatParams = dict[str, Any]

_SCANNED_KEY = re.compile(r"^(?P<prefix>(?:.*/)?)encoderblock/(?P<rest>.+)$")
_LAYER_KEY = re.compile(r"^(?P<prefix>(?:.*/)?)encoderblock_(?P<index>\d+)/(?P<rest>.+)$")
GROUPNORM_KEY = re.compile(r"(?:^|/)gn(?:_root|_proj|\d+)/(?:scale|bias)$")


def flatten(tree: Mapping[str, Any]) -> FlatParams:
  """Nested params -> {"a/b/c": leaf}. Flax metadata boxes (logical axis names) are kept as
  leaves."""
  return flax.traverse_util.flatten_dict(tree, sep="/")


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{"a/b/c": leaf} -> nested dicts."""
  return flax.traverse_util.unflatten_dict(dict(flat), sep="/")


def to_per_layer(flat: Mapping[str, Any]) -> FlatParams:
  """Splits scanned `.../encoderblock/X` (leading layer axis) into `.../encoderblock_{i}/X`.

  Works on arrays and on abstract `jax.ShapeDtypeStruct` leaves (from `jax.eval_shape`).
  """
  out = {}
  for key, value in flat.items():
    match = _SCANNED_KEY.match(key)
    if match is None:
      out[key] = value
      continue
    for i in range(value.shape[0]):
      layer = (jax.ShapeDtypeStruct(value.shape[1:], value.dtype)
               if isinstance(value, jax.ShapeDtypeStruct) else value[i])
      out[f"{match['prefix']}encoderblock_{i}/{match['rest']}"] = layer
  return out


def to_scanned(flat: Mapping[str, Any]) -> FlatParams:
  """Stacks `.../encoderblock_{i}/X` for i = 0..depth-1 into `.../encoderblock/X` (layer axis
  first)."""
  out, layers = {}, collections.defaultdict(dict)
  for key, value in flat.items():
    match = _LAYER_KEY.match(key)
    if match is None:
      out[key] = value
    else:
      layers[(match["prefix"], match["rest"])][int(match["index"])] = value
  for (prefix, rest), by_index in layers.items():
    if sorted(by_index) != list(range(len(by_index))):
      raise ValueError(f"Cannot stack {prefix}encoderblock_*/{rest}: layers {sorted(by_index)} "
                       f"are not 0..{len(by_index) - 1}; the checkpoint is missing blocks.")
    out[f"{prefix}encoderblock/{rest}"] = np.stack(
        [np.asarray(by_index[i]) for i in range(len(by_index))])
  return out


def is_scanned(keys: Iterable[str]) -> bool:
  return any(_SCANNED_KEY.match(k) for k in keys)


def is_per_layer(keys: Iterable[str]) -> bool:
  return any(_LAYER_KEY.match(k) for k in keys)


def read_npz(path: str | epath.PathLike) -> FlatParams:
  """Reads a `.npz` checkpoint into {"/"-joined key: np.ndarray}, as stored (no layout changes).

  Keys under a top-level "params/" (big_vision train-state dumps) are returned without that prefix.
  """
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"No checkpoint at {path}: check the path "
                            f"(official files are named like 'ViT-B_16.npz').")
  try:
    with path.open("rb") as f:
      npz = np.load(f, allow_pickle=False)
      if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError("it holds a single array, not named parameters")
      with npz:
        flat = {key: npz[key] for key in npz.files}
  except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
    raise ValueError(f"{path} is not a readable .npz checkpoint ({type(e).__name__}: {e}); "
                     f"it may be truncated: download or export it again.") from e
  if not flat:
    raise ValueError(f"{path} holds no arrays: it is not a parameter checkpoint.")
  if any(k.startswith("params/") for k in flat):
    flat = {k[len("params/"):]: v for k, v in flat.items() if k.startswith("params/")}
  return flat


def squeeze_groupnorm(flat: Mapping[str, Any]) -> FlatParams:
  """Legacy (1, 1, 1, C) GroupNorm scale/bias of the published hybrid files -> (C,), as the
  model's."""
  return {k: v.reshape(v.shape[-1:]) if GROUPNORM_KEY.search(k) else v for k, v in flat.items()}


def load_npz(path: str | epath.PathLike) -> dict[str, Any]:
  """Reads an official `.npz` into a nested param tree in the per-layer layout, GroupNorm as
  (C,)."""
  return unflatten(squeeze_groupnorm(read_npz(path)))


def save_npz(params: Mapping[str, Any], path: str | epath.PathLike) -> None:
  """Writes params (scanned or not, boxed or not, on device or host) as an official `.npz`.

  The file uses the official layout: per-layer blocks, float32, GroupNorm scale/bias as
  (1, 1, 1, C). It is written to a temporary name first, so a crash never leaves a torn file.
  """
  flat = to_per_layer(flatten(flax.linen.unbox(params)))
  arrays = {}
  for key, value in flat.items():
    value = np.asarray(jax.device_get(value), np.float32)
    arrays[key] = value.reshape(1, 1, 1, -1) if GROUPNORM_KEY.search(key) else value
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  tmp = path.parent / f".{path.name}.tmp"
  tmp.write_bytes(buffer.getvalue())
  tmp.replace(path)
  logging.info("Saved %d arrays to %s", len(arrays), path)
