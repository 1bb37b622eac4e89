"""Hugging Face transformers `ViTForImageClassification` directories: export and import.

Export writes `config.json`, `model.safetensors` and `preprocessor_config.json` with NumPy and
safetensors only (no torch needed). Weights use the Hub's ViT names
(`vit.encoder.layer.{i}.attention.attention.query.weight`, as google/vit-base-patch16-224), which
transformers 4.x and 5.x load.

Import (`read_params`) is the inverse mapping: a directory with `config.json` and
`model.safetensors` (or a sharded `model.safetensors.index.json`, or `pytorch_model.bin`, which
needs torch) gives our official per-layer params and the `Model` fields its config implies (dims
and `gelu_approximate`).

Numerics that must agree with ours: HF's `hidden_act` 'gelu' is the exact erf GELU
(`gelu_approximate=False`); 'gelu_pytorch_tanh' (what we export), 'gelu_new' and 'gelu_fast' are the
tanh approximation (`gelu_approximate=True`, the official ViT's). LayerNorm eps: ours is 1e-6; the
Hub's google/vit-* configs say 1e-12 (HF's default). Imports accept any eps <= 1e-5: for a
LayerNorm input of variance v the output moves by a relative ~(1e-6 - eps) / (2 v), below float32
noise for trained activations (tests/test_convert_hf.py measures the logits). HF's ViT classifies
from the class token with no pre-logits layer, so only classifier='token', posemb='learn',
representation_size=None plain (non-hybrid) ViTs map onto it, and none of the architecture options
(registers, qk_norm, use_bias=False, parallel_block, layerscale_init, posemb='rope2d'):
`check_exportable` names each one it meets; an import refuses `qkv_bias=False` (our use_bias=False
drops every bias, not only q/k/v's).
"""
import functools
import json
import re
from typing import Any, Mapping, Sequence

from absl import logging
from etils import epath
import flax
import jax
import numpy as np

from vit_jax.checkpoints import npz, tensor_files
from vit_jax.models import variants

HF_HIDDEN_ACT = "gelu_pytorch_tanh"  # Exported when gelu_approximate (the official tanh GELU).
HF_EXACT_GELU = "gelu"  # Exported when gelu_approximate=False (exact erf).
LAYER_NORM_EPS = 1e-6
MAX_IMPORT_EPS = 1e-5
ARCHITECTURE = "ViTForImageClassification"
# HF hidden_act -> our gelu_approximate.
HIDDEN_ACTS = {"gelu": False, "gelu_python": False, "gelu_pytorch_tanh": True, "gelu_new": True,
               "gelu_fast": True}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


# Model options ViTForImageClassification has no counterpart for: field -> (the value it can
# represent, why not / what to set instead).
_HF_NEEDS = {
    "classifier": ("token", "HF's ViT classifies from the class token: train with "
                   "classifier='token'"),
    "posemb": ("learn", "HF's ViT has only a learned position embedding (no 'sincos2d', no rotary "
               "'rope2d')"),
    "representation_size": (None, "HF's ViT has no pre-logits layer"),
    "resnet": (None, "HF's ViT has no ResNet stem (hybrids are ViTHybrid)"),
    "num_registers": (0, "HF's ViT has no register tokens"),
    "qk_norm": (False, "HF's ViT has no QK-LayerNorm"),
    "use_bias": (True, "HF's ViT always has q/k/v/out, MLP and LayerNorm biases"),
    "parallel_block": (False, "HF's ViT blocks are sequential (attention, then MLP)"),
    "layerscale_init": (None, "HF's ViT has no LayerScale"),
}


def check_exportable(model_kwargs: Mapping[str, Any]) -> None:
  """Raises ValueError naming every option that `ViTForImageClassification` cannot represent.

  Model kwargs made by `vit_jax.models.model_kwargs` are complete; a field missing here (a hand-made
  dict) counts as its default.
  """
  bad = {k: model_kwargs[k] for k, (want, _) in _HF_NEEDS.items()
         if k in model_kwargs and model_kwargs[k] != want}
  if bad:
    reasons = "; ".join(f"{k}={v!r}: {_HF_NEEDS[k][1]} (needs {k}={_HF_NEEDS[k][0]!r})"
                        for k, v in bad.items())
    raise ValueError(
        f"Hugging Face ViTForImageClassification cannot represent {bad}: "
        f"{reasons}. Export the official .npz only (--formats=npz), which holds any of these "
        "params, or train without these options.")


def _image_size(posemb_shape: Sequence[int], patch_size: Sequence[int]) -> tuple[int, int]:
  grid_tokens = posemb_shape[1] - 1  # minus the class token
  side = int(round(grid_tokens**0.5))
  if side * side != grid_tokens:
    raise ValueError(f"The position embedding has {grid_tokens} grid tokens, not a square grid: "
                     "the image size cannot be inferred for the Hugging Face config.")
  return side * patch_size[0], side * patch_size[1]


def _one_or_pair(hw: Sequence[int]) -> int | list[int]:
  return int(hw[0]) if hw[0] == hw[1] else [int(hw[0]), int(hw[1])]


def hf_config(model_kwargs: Mapping[str, Any], image_size: Sequence[int], num_channels: int,
              num_classes: int) -> dict[str, Any]:
  """The `config.json` of the equivalent `ViTForImageClassification`."""
  labels = {str(i): f"LABEL_{i}" for i in range(num_classes)}
  return {
      "architectures": ["ViTForImageClassification"],
      "model_type": "vit",
      "hidden_size": model_kwargs["width"],
      "num_hidden_layers": model_kwargs["depth"],
      "num_attention_heads": model_kwargs["num_heads"],
      "intermediate_size": model_kwargs["mlp_dim"],
      "hidden_act": (HF_HIDDEN_ACT if model_kwargs.get("gelu_approximate", True)
                     else HF_EXACT_GELU),
      "layer_norm_eps": LAYER_NORM_EPS,
      "hidden_dropout_prob": 0.0,
      "attention_probs_dropout_prob": 0.0,
      "image_size": _one_or_pair(image_size),
      "patch_size": _one_or_pair(model_kwargs["patch_size"]),
      "num_channels": num_channels,
      "qkv_bias": True,
      "encoder_stride": int(model_kwargs["patch_size"][0]),
      "id2label": labels,
      "label2id": {name: int(i) for i, name in labels.items()},
  }


def preprocessor_config(image_size: Sequence[int], value_range: tuple[float, float],
                        channels: int = 3) -> dict[str, Any]:
  """A `ViTImageProcessor` config mapping uint8 pixels to `value_range`, as our input pipeline
  does."""
  low, high = value_range
  # (x/255 - mean) / std == low + (high - low) * x/255
  mean, std = -low / (high - low), 1.0 / (high - low)
  return {
      "image_processor_type": "ViTImageProcessor",
      "do_resize": True, "size": {"height": int(image_size[0]), "width": int(image_size[1])},
      "resample": 2,  # PIL bilinear
      "do_rescale": True, "rescale_factor": 1 / 255,
      "do_normalize": True, "image_mean": [mean] * channels, "image_std": [std] * channels,
  }


def hf_state_dict(params: Mapping[str, Any],
                  model_kwargs: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Our params (either layer layout) -> {Hub ViT weight name: float32 array}, torch layouts."""
  check_exportable(model_kwargs)
  flat = npz.to_per_layer(npz.flatten(flax.linen.unbox(params)))
  flat = {k: np.asarray(jax.device_get(v), np.float32) for k, v in flat.items()}
  out = {}

  def take(key: str) -> np.ndarray:
    if key not in flat:
      raise ValueError(f"Params have no {key!r}: they are not a {model_kwargs['depth']}-layer "
                       "token-classifier ViT (check --model).")
    return flat.pop(key)

  def dense(hf: str, ours: str, in_dims: int = 1) -> None:
    # Flax kernels are (in..., out...); torch Linear weights are (out, in).
    kernel = take(f"{ours}/kernel")
    kernel = kernel.reshape(int(np.prod(kernel.shape[:in_dims])), -1)
    out[f"{hf}.weight"] = kernel.T
    out[f"{hf}.bias"] = take(f"{ours}/bias").reshape(-1)

  def norm(hf: str, ours: str) -> None:
    out[f"{hf}.weight"] = take(f"{ours}/scale")
    out[f"{hf}.bias"] = take(f"{ours}/bias")

  out["vit.embeddings.cls_token"] = take("cls")
  out["vit.embeddings.position_embeddings"] = take("Transformer/posembed_input/pos_embedding")
  out["vit.embeddings.patch_embeddings.projection.weight"] = (
      take("embedding/kernel").transpose(3, 2, 0, 1))
  out["vit.embeddings.patch_embeddings.projection.bias"] = take("embedding/bias")
  for i in range(model_kwargs["depth"]):
    hf, ours = f"vit.encoder.layer.{i}", f"Transformer/encoderblock_{i}"
    norm(f"{hf}.layernorm_before", f"{ours}/LayerNorm_0")
    for proj in ("query", "key", "value"):
      dense(f"{hf}.attention.attention.{proj}", f"{ours}/MultiHeadDotProductAttention_1/{proj}")
    dense(f"{hf}.attention.output.dense", f"{ours}/MultiHeadDotProductAttention_1/out", in_dims=2)
    norm(f"{hf}.layernorm_after", f"{ours}/LayerNorm_2")
    dense(f"{hf}.intermediate.dense", f"{ours}/MlpBlock_3/Dense_0")
    dense(f"{hf}.output.dense", f"{ours}/MlpBlock_3/Dense_1")
  norm("vit.layernorm", "Transformer/encoder_norm")
  if "head/kernel" in flat:
    dense("classifier", "head")
  if flat:
    raise ValueError(f"Params {sorted(flat)[:5]} have no place in ViTForImageClassification: the "
                     f"checkpoint is not a {model_kwargs['depth']}-layer token-classifier ViT "
                     "(check --model).")
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def export(params: Mapping[str, Any], model_kwargs: Mapping[str, Any],
           output_dir: str | epath.PathLike, *,
           value_range: tuple[float, float] = (-1.0, 1.0)) -> epath.Path:
  """Writes a `ViTForImageClassification` directory loadable with `from_pretrained(output_dir)`.

  `value_range` is the pixel range the model was trained on (our 'value_range(-1,1)' preprocessing
  by default); it goes into preprocessor_config.json so HF pipelines feed the same inputs.
  """
  from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top  (optional)

  weights = hf_state_dict(params, model_kwargs)
  kernel = weights["vit.embeddings.patch_embeddings.projection.weight"]
  image_size = _image_size(weights["vit.embeddings.position_embeddings"].shape,
                           model_kwargs["patch_size"])
  num_classes = weights["classifier.weight"].shape[0] if "classifier.weight" in weights else 0
  output_dir = epath.Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  (output_dir / "model.safetensors").write_bytes(
      safetensors_numpy.save(weights, metadata={"format": "pt"}))
  config = hf_config(model_kwargs, image_size, kernel.shape[1], num_classes)
  (output_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
  (output_dir / "preprocessor_config.json").write_text(
      json.dumps(preprocessor_config(image_size, value_range, kernel.shape[1]), indent=2) + "\n")
  return output_dir


# --- Import ---------------------------------------------------------------------------------------

# transformers' ViTConfig defaults, for keys a config.json leaves out.
_HF_DEFAULTS = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, hidden_act="gelu", layer_norm_eps=1e-12,
                    patch_size=16, num_channels=3, qkv_bias=True)
def read_config(path: str | epath.PathLike) -> dict[str, Any] | None:
  """The config.json of the Hugging Face model directory `path` (or of the directory of the weights
  file `path`), or None if it is not one: no config.json naming a `model_type` or `architectures`
  (a run's WORKDIR/config.json names neither)."""
  config = tensor_files.directory_config(path)
  return config if config and ("model_type" in config or "architectures" in config) else None


def model_fields(config: Mapping[str, Any], source: str = "config.json") -> dict[str, Any]:
  """The `Model` fields of the ViTForImageClassification `config`: dims and `gelu_approximate`.

  Raises ValueError for a config our ViT cannot reproduce (another architecture, activation,
  qkv_bias=False, a LayerNorm eps above 1e-5).
  """
  config = {**_HF_DEFAULTS, **config}
  archs = list(config.get("architectures") or [])
  if config.get("model_type") not in ("vit", None) or (archs and ARCHITECTURE not in archs):
    raise ValueError(
        f"{source}: model_type={config.get('model_type')!r}, architectures={archs}; only "
        f"transformers' {ARCHITECTURE} (model_type 'vit') imports as a Hugging Face checkpoint.")
  act = config["hidden_act"]
  if act not in HIDDEN_ACTS:
    raise ValueError(f"{source}: hidden_act={act!r} has no counterpart in our ViT, whose MLP "
                     f"activation is the exact or tanh GELU ({sorted(HIDDEN_ACTS)}).")
  eps = float(config["layer_norm_eps"])
  if eps > MAX_IMPORT_EPS:
    raise ValueError(f"{source}: layer_norm_eps={eps:g}; our LayerNorms use {LAYER_NORM_EPS:g}, "
                     f"which reproduces logits only for eps <= {MAX_IMPORT_EPS:g}.")
  if not config["qkv_bias"]:
    raise ValueError(f"{source}: qkv_bias=false (no query/key/value biases) has no counterpart: "
                     "our use_bias=False drops every bias (MLP, LayerNorms, attention output "
                     "too).")
  patch = config["patch_size"]
  patch = int(patch) if isinstance(patch, int) else [int(p) for p in patch]
  if isinstance(patch, list) and patch[0] == patch[1]:
    patch = patch[0]
  return dict(variant=None, patch_size=patch, width=int(config["hidden_size"]),
              depth=int(config["num_hidden_layers"]), mlp_dim=int(config["intermediate_size"]),
              num_heads=int(config["num_attention_heads"]),
              gelu_approximate=HIDDEN_ACTS[act])


def num_channels(config: Mapping[str, Any]) -> int:
  return int(config.get("num_channels", _HF_DEFAULTS["num_channels"]))


def read_weights(directory: str | epath.PathLike) -> dict[str, np.ndarray]:
  """The weights of a Hugging Face model directory: model.safetensors, its sharded index, or
  pytorch_model.bin."""
  directory = epath.Path(directory)
  if (directory / "model.safetensors").exists():
    path = directory / "model.safetensors"
    return tensor_files.read_safetensors(path.read_bytes(), str(path))
  if (directory / "model.safetensors.index.json").exists():
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    weights = {}
    for shard in sorted(set(index["weight_map"].values())):
      shard_path = directory / shard
      weights.update(tensor_files.read_safetensors(shard_path.read_bytes(), str(shard_path)))
    return weights
  if (directory / "pytorch_model.bin").exists():
    path = directory / "pytorch_model.bin"
    return tensor_files.read_torch(path.read_bytes(), str(path))
  raise FileNotFoundError(f"{directory} has a config.json but no weights: expected one of "
                          f"{', '.join(WEIGHT_FILES)}.")


# transformers 5.x module names (what `model.state_dict()` gives; save_pretrained writes the Hub
# names) -> the Hub names.
_V5_NAMES = [(re.compile(rf"^vit\.layers\.(\d+)\.{v5}\."), rf"vit.encoder.layer.\1.{hub}.")
             for v5, hub in (("attention.q_proj", "attention.attention.query"),
                             ("attention.k_proj", "attention.attention.key"),
                             ("attention.v_proj", "attention.attention.value"),
                             ("attention.o_proj", "attention.output.dense"),
                             ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense"),
                             ("layernorm_before", "layernorm_before"),
                             ("layernorm_after", "layernorm_after"))]


def _hub_name(name: str) -> str:
  for pattern, hub in _V5_NAMES:
    if pattern.match(name):
      return pattern.sub(hub, name)
  return name


def params_from_state_dict(weights: Mapping[str, np.ndarray], *, depth: int, num_heads: int,
                           source: str = "the checkpoint") -> dict[str, np.ndarray]:
  """{ViT weight name: array} -> our official per-layer flat params (float32); the inverse of
  `hf_state_dict`. Names are the Hub's (what save_pretrained writes) or transformers 5.x module
  names (`vit.layers.{i}.attention.q_proj.weight`, a 5.x `state_dict()`)."""
  weights = {_hub_name(k): v for k, v in weights.items()}

  def take(key: str) -> np.ndarray:
    if key not in weights:
      raise ValueError(f"{source} has no {key!r}: it is not a {depth}-layer {ARCHITECTURE} "
                       "(config.json's num_hidden_layers).")
    return np.asarray(weights.pop(key), np.float32)

  out = {}

  dense = functools.partial(tensor_files.torch_dense, out, take)
  norm = functools.partial(tensor_files.torch_norm, out, take)

  out["cls"] = take("vit.embeddings.cls_token")
  out["Transformer/posembed_input/pos_embedding"] = take("vit.embeddings.position_embeddings")
  out["embedding/kernel"] = take(
      "vit.embeddings.patch_embeddings.projection.weight").transpose(2, 3, 1, 0)
  out["embedding/bias"] = take("vit.embeddings.patch_embeddings.projection.bias")
  width = out["embedding/bias"].shape[0]
  if width % num_heads:
    raise ValueError(f"{source}: width {width} is not divisible by num_attention_heads="
                     f"{num_heads}.")
  heads = (num_heads, width // num_heads)
  for i in range(depth):
    hf, ours = f"vit.encoder.layer.{i}", f"Transformer/encoderblock_{i}"
    attn = f"{ours}/MultiHeadDotProductAttention_1"
    norm(f"{hf}.layernorm_before", f"{ours}/LayerNorm_0")
    for proj in ("query", "key", "value"):
      dense(f"{hf}.attention.attention.{proj}", f"{attn}/{proj}", out_shape=heads)
    dense(f"{hf}.attention.output.dense", f"{attn}/out", in_shape=heads)
    norm(f"{hf}.layernorm_after", f"{ours}/LayerNorm_2")
    dense(f"{hf}.intermediate.dense", f"{ours}/MlpBlock_3/Dense_0")
    dense(f"{hf}.output.dense", f"{ours}/MlpBlock_3/Dense_1")
  norm("vit.layernorm", "Transformer/encoder_norm")
  if "classifier.weight" in weights:
    dense("classifier", "head")
  if weights:
    raise ValueError(f"{source} has weights {sorted(weights)[:5]} that a {depth}-layer "
                     f"{ARCHITECTURE} does not (config.json's num_hidden_layers), so it cannot "
                     "be imported faithfully.")
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def read_params(path: str | epath.PathLike,
                model: str | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Reads a `ViTForImageClassification` directory (or its weights file): (our official per-layer
  flat params, the `Model` fields its config.json implies: dims and `gelu_approximate`).

  `model` (optional, e.g. 'ViT-B/16') must agree with the config's dims; ValueError otherwise.
  """
  path = epath.Path(path)
  directory = path if path.is_dir() else path.parent
  config = read_config(directory)
  if config is None:
    raise ValueError(f"{path} is not a Hugging Face model directory: it has no config.json naming "
                     f"model_type 'vit' / architectures [{ARCHITECTURE!r}].")
  fields = model_fields(config, source=str(directory / "config.json"))
  if model:
    _check_named_model(model, fields, directory)
  eps = float(config.get("layer_norm_eps", _HF_DEFAULTS["layer_norm_eps"]))
  if eps != LAYER_NORM_EPS:
    logging.info("%s: layer_norm_eps=%g, ours is %g (a relative change of ~%.0e / variance in "
                 "each LayerNorm: negligible).", directory, eps, LAYER_NORM_EPS,
                 abs(LAYER_NORM_EPS - eps) / 2)
  params = params_from_state_dict(read_weights(directory), depth=fields["depth"],
                                  num_heads=fields["num_heads"], source=str(directory))
  return params, fields


def _check_named_model(model: str, fields: Mapping[str, Any], directory: epath.Path) -> None:
  named = variants.decode(model)
  if named.get("resnet"):
    raise ValueError(f"--model={model} is a hybrid; {ARCHITECTURE} has no ResNet stem.")
  patch = fields["patch_size"]
  ours = dict(fields, patch_size=tuple(patch) if isinstance(patch, list) else (patch, patch))
  diff = [f"{k}={named[k]!r} (config.json: {ours[k]!r})" for k in
          ("patch_size", "width", "depth", "mlp_dim", "num_heads")
          if k in named and tuple(np.atleast_1d(named[k])) != tuple(np.atleast_1d(ours[k]))]
  if diff:
    raise ValueError(f"--model={model} does not match {directory}/config.json: {', '.join(diff)}. "
                     "Leave --model out to take the model from config.json.")
