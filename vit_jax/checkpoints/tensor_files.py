"""Tensor files of other libraries as NumPy arrays: safetensors (bfloat16 too) and torch state
dicts."""
from __future__ import annotations

import io
import json
from typing import Any, Callable, Mapping, Sequence

from etils import epath
import ml_dtypes
import numpy as np

_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
                       "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32,
                       "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def directory_config(path: str | epath.PathLike) -> dict[str, Any] | None:
  """The config.json object of the model directory `path` (or of the directory of the weights file
  `path`), or None if there is none or it is not a JSON object."""
  path = epath.Path(path)
  directory = path if path.is_dir() else path.parent
  try:
    config = json.loads((directory / "config.json").read_text())
  except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
    return None
  return config if isinstance(config, dict) else None


def read_safetensors(data: bytes, source: str = "safetensors file") -> dict[str, np.ndarray]:
  """A safetensors file's tensors as NumPy arrays; bfloat16 too (which safetensors.numpy
  refuses)."""
  try:
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
      if info["dtype"] not in _SAFETENSORS_DTYPES:
        raise ValueError(f"tensor {name} has dtype {info['dtype']}")
      dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
      start, end = info["data_offsets"]
      if 8 + size + end > len(data):
        raise ValueError(f"tensor {name} ends past the end of the file")
      out[name] = np.frombuffer(data, dtype, count=(end - start) // dtype.itemsize,
                                offset=8 + size + start).reshape(info["shape"])
  except (ValueError, KeyError, TypeError, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{source} is not a readable safetensors file ({type(e).__name__}: {e}); it "
                     "may be truncated: download it again.") from e
  return out


def read_torch(data: bytes, source: str = "torch file") -> dict[str, np.ndarray]:
  """A torch state dict (`torch.save`), read with weights_only=True, as NumPy arrays."""
  try:
    import torch  # pylint: disable=g-import-not-at-top  (optional: only .bin / .pth files need it)
  except ImportError as e:
    raise ValueError(f"Reading {source} needs torch: pip install torch --index-url "
                     "https://download.pytorch.org/whl/cpu (or use a .safetensors file).") from e
  try:
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  (torch raises many kinds on bad files)
    raise ValueError(f"{source} is not a readable torch checkpoint ({type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else ''}).") from e
  for key in ("state_dict", "model", "module"):  # Training checkpoints (timm, DeiT) wrap it.
    if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
      state = state[key]
      break
  if not isinstance(state, Mapping):
    raise ValueError(f"{source} holds a {type(state).__name__}, not a state dict of tensors.")
  return {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in state.items()
          if isinstance(v, torch.Tensor)}


def torch_dense(out: dict[str, np.ndarray], take: Callable[[str], np.ndarray], name: str,
                ours: str, in_shape: Sequence[int] = (), out_shape: Sequence[int] = ()) -> None:
  """Writes torch Linear `name` (weight (out, in), bias) as flax `ours/kernel` (in, out), reshaped
  to `in_shape` + `out_shape` where given (attention heads), and `ours/bias`."""
  kernel = take(f"{name}.weight").T
  out[f"{ours}/kernel"] = kernel.reshape(*(in_shape or kernel.shape[:1]),
                                         *(out_shape or kernel.shape[1:]))
  bias = take(f"{name}.bias")
  out[f"{ours}/bias"] = bias.reshape(*(out_shape or bias.shape))


def torch_norm(out: dict[str, np.ndarray], take: Callable[[str], np.ndarray], name: str,
               ours: str) -> None:
  """Writes torch LayerNorm / GroupNorm `name` (weight, bias) as flax `ours/{scale,bias}`."""
  out[f"{ours}/scale"] = take(f"{name}.weight")
  out[f"{ours}/bias"] = take(f"{name}.bias")
