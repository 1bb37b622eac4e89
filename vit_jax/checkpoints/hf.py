"""Export to Hugging Face transformers: a `ViTForImageClassification` directory.

Writes `config.json`, `model.safetensors` and `preprocessor_config.json` with NumPy and safetensors
only (no torch needed to export). Weights use the Hub's ViT names (`vit.encoder.layer.{i}.attention.
attention.query.weight`, as google/vit-base-patch16-224), which transformers 4.x loads directly and
5.x renames on load.

Numerics that must agree with ours: LayerNorm eps 1e-6 (HF's default is 1e-12) and the
tanh-approximate GELU (`nn.gelu`'s default), which is HF's 'gelu_pytorch_tanh' (torch
`gelu(approximate='tanh')`). HF's ViT classifies from the class token with no pre-logits layer, so
only classifier='token', posemb='learn', representation_size=None plain (non-hybrid) ViTs map onto
it, and none of the architecture options (registers, qk_norm, use_bias=False, parallel_block,
layerscale_init, posemb='rope2d'): `check_exportable` names each one it meets.
"""
import json
from typing import Any, Mapping, Sequence

from etils import epath
import flax
import jax
import numpy as np

from vit_jax.checkpoints import npz

HF_HIDDEN_ACT = "gelu_pytorch_tanh"
LAYER_NORM_EPS = 1e-6


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
      "hidden_act": HF_HIDDEN_ACT,
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
