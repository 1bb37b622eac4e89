"""timm ViT and hybrid checkpoints (`vit_*_patch*`, `vit_*_r*`): import and export.

Import (`read_params`) reads a timm `VisionTransformer` state dict, a `.safetensors` file, a torch
`.pth` / `.bin` file (torch.load with weights_only=True; a training checkpoint's 'state_dict' /
'model' entry is unwrapped) or a timm Hub directory (`config.json` naming the `architecture`, with
`model.safetensors` or `pytorch_model.bin`), and gives our official per-layer flat params (the
names of vit_jax/checkpoints/npz.py) plus the `Model` fields that reproduce timm's logits. Export
(`export`) is the inverse: a state dict that `timm.create_model(timm_model_name(kw),
**timm_model_args(kw, ...))` loads with `load_state_dict(strict=True)`, or a timm Hub directory
that `timm.create_model('local-dir:DIR', pretrained=True)` loads by itself. Neither direction needs
timm installed (torch only for .pth / .bin files).

Numerics (the `Model` fields that carry them, vit_jax/models/vit.py):

* timm's ViT MLP uses the exact erf GELU (`nn.GELU()`), the official ViT the tanh approximation:
  imports set `gelu_approximate=False`, unless the config names `act_layer='gelu_tanh'` (timm's
  SigLIP ViTs); an export of a tanh-GELU model passes `act_layer='gelu_tanh'`.
* timm's hybrids (ResNetV2 with StdConv2dSame(eps=1e-8), GroupNormAct) standardise weights as
  (w - mean) / sqrt(var + 1e-8) with GroupNorm eps 1e-5, the official ones (w - mean) / (std + 1e-5)
  with eps 1e-6: imports set `resnet_numerics='timm'`. Exporting an official-numerics hybrid is
  refused unless `exact=False` (timm's own vit_*_r* weights were converted the same way; logits
  move by ~1e-3).
* LayerNorm eps is 1e-6 in both.

Layout correspondences: timm's fused `qkv` (3D, D) splits into query/key/value (D, heads, head_dim)
kernels; `pos_embed` covers the prefix tokens unless timm's `no_embed_class` (then the class token's
row is zero in ours); timm orders tokens [cls, registers, patches], ours [cls, patches, registers]
(attention does not see the order) and a register's position-embedding row, if any, is folded into
the register. Pooling: 'token' -> classifier 'token' (a `fc_norm` after the class token equals a
final norm before it); 'avg' -> 'gap' (`fc_norm` -> our `fc_norm=True`); 'map' -> 'map'
(`attn_pool` -> `MAPHead_0`). Weights alone cannot tell timm's token pooling from average pooling
next to a class token (`class_token=True, global_pool='avg', fc_norm=False`): a state dict without
config is read as timm's default for class-token models, token pooling. The number of heads is
not in a state dict's shapes: it comes from the config, the `model` name (ours, 'ViT-B/16', or
timm's, 'vit_base_patch16_224'), q/k-norm shapes, or our named sizes' widths (32: 2, 192: 3,
384: 6, 512: 8, 768: 12, 1024 and up: 16).

What timm's VisionTransformer cannot represent is refused by name: rotary position embeddings,
parallel blocks, bias-free LayerNorms / MLPs (use_bias=False), a pre-logits layer (removed in timm
0.9) and ResNet stems other than timm's registered hybrids; on import, a class token next to 'avg'
or 'map' pooling (timm pools the patches only), DeiT distillation tokens, pre-norms, and any weight
left over.
"""
import functools
import io
import json
import math
import re
from typing import Any, Mapping, Optional, Sequence

from etils import epath
import flax
import jax
import numpy as np

from vit_jax.checkpoints import npz, tensor_files
from vit_jax.models import resnet as resnet_lib
from vit_jax.models import variants

FlatParams = dict[str, np.ndarray]
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")

# Width -> heads of our named sizes (mu 32: 2, Ti 192: 3, S 384: 6, M 512: 8, B 768: 12, L / H / g /
# G: 16), for state dicts that do not say.
_HEADS_BY_WIDTH = {w: h for w, _, _, h in variants.VIT_DIMS.values()}
# Size words of timm model names -> (width, heads).
_TIMM_SIZES = {"tiny": (192, 3), "small": (384, 6), "medium": (512, 8), "base": (768, 12),
               "large": (1024, 16), "huge": (1280, 16), "giant": (1408, 16),
               "gigantic": (1664, 16), "so400m": (1152, 16), "so150m": (896, 14)}
_SIZE_OF_VARIANT = {"Ti": "tiny", "S": "small", "M": "medium", "B": "base", "L": "large",
                    "H": "huge", "g": "giant", "G": "gigantic"}
# timm's registered (ViT size, patch) names at 224 px.
_TIMM_PLAIN = {("tiny", 16), ("small", 32), ("small", 16), ("small", 8), ("base", 32),
               ("base", 16), ("base", 8), ("large", 32), ("large", 16), ("large", 14),
               ("huge", 14), ("giant", 14), ("gigantic", 14)}
# timm hybrids: ResNet stage sizes -> (registered name, its ViT size, its patch size).
_TIMM_HYBRIDS = {
    (): ("vit_tiny_r_s16_p8_224", "tiny", 8),
    (2, 2, 2, 2): ("vit_small_r26_s32_224", "small", 1),
    (3, 4, 9): ("vit_base_r50_s16_224", "base", 1),
    (3, 4, 6, 3): ("vit_large_r50_s32_224", "large", 1),
}
_GELU_TANH = ("gelu_tanh", "gelu_pytorch_tanh")
_ACT_LAYERS = (None, "gelu", *_GELU_TANH)


# --- Files ----------------------------------------------------------------------------------------

def read_config(path: str | epath.PathLike) -> Optional[dict[str, Any]]:
  """The timm Hub `config.json` ({'architecture': ..., 'model_args': ...}) of the directory `path`
  (or of the weights file `path`'s directory), or None if there is none."""
  config = tensor_files.directory_config(path)
  return config if config and isinstance(config.get("architecture"), str) else None


def read_state_dict(path: str | epath.PathLike) -> dict[str, np.ndarray]:
  """The tensors of a timm checkpoint file or Hub directory, as float32 NumPy arrays."""
  path = epath.Path(path)
  if path.is_dir():
    found = [path / name for name in WEIGHT_FILES if (path / name).exists()]
    if not found:
      raise FileNotFoundError(f"{path} has no timm weights: expected one of "
                              f"{', '.join(WEIGHT_FILES)}.")
    path = found[0]
  if not path.exists():
    raise FileNotFoundError(f"No checkpoint at {path}.")
  data = path.read_bytes()
  if path.name.endswith(".safetensors"):
    state = tensor_files.read_safetensors(data, str(path))
  else:
    state = tensor_files.read_torch(data, str(path))
  if state and all(k.startswith("module.") for k in state):  # DistributedDataParallel
    state = {k[len("module."):]: v for k, v in state.items()}
  return {k: np.asarray(v, np.float32) for k, v in state.items()}


# --- Import ---------------------------------------------------------------------------------------

def _square_side(n: int) -> Optional[int]:
  side = math.isqrt(n)
  return side if side * side == n else None


def _heads(width: int, model: Optional[str], args: Mapping[str, Any],
           weights: Mapping[str, np.ndarray], source: str) -> int:
  """Heads from the config, the q/k-norm shapes, the model name or the standard width table."""
  if "num_heads" in args:
    return int(args["num_heads"])
  q_norm = weights.get("blocks.0.attn.q_norm.weight")
  if q_norm is not None:
    return width // q_norm.shape[0]
  if model:
    if model.startswith("vit_"):
      for word, (size_width, heads) in _TIMM_SIZES.items():
        if re.match(rf"^vit_{word}_", model) and size_width == width:
          return heads
    else:
      named = variants.decode(model)
      if named["width"] != width:
        raise ValueError(f"model={model!r} has width {named['width']}, {source} has {width}.")
      return named["num_heads"]
  if width in _HEADS_BY_WIDTH:
    return _HEADS_BY_WIDTH[width]
  raise ValueError(f"{source}: the number of attention heads of a width-{width} ViT is not in its "
                   "weights; name the model (e.g. model='ViT-B/16' or a timm name) or give a timm "
                   "config.json with model_args.num_heads.")


def _model_args(model: Optional[str], config: Optional[Mapping[str, Any]]) -> dict[str, Any]:
  """What the checkpoint's config (or timm model name) says about the VisionTransformer kwargs."""
  args = dict((config or {}).get("model_args") or {})
  name = (config or {}).get("architecture") or model or ""
  if "act_layer" not in args and "siglip" in name:  # timm's SigLIP ViTs use the tanh GELU
    args["act_layer"] = "gelu_tanh"
  return args


def _take(weights: dict[str, np.ndarray], key: str, source: str) -> np.ndarray:
  if key not in weights:
    raise ValueError(f"{source} has no {key!r}: it is not a timm VisionTransformer checkpoint "
                     "this importer knows.")
  return weights.pop(key)


def _resnet_params(weights: dict[str, np.ndarray], out: FlatParams,
                   source: str) -> dict[str, Any]:
  """timm ResNetV2 (non-pre-activation) stem -> our `conv_root` / `gn_root` / `block{s}/unit{u}`;
  returns the `resnet` field."""
  prefix = "patch_embed.backbone."
  stem = prefix + ("stem." if f"{prefix}stem.conv.weight" in weights else "")
  take = lambda key: _take(weights, key, source)
  conv = lambda key: take(key).transpose(2, 3, 1, 0)  # (O, I, kh, kw) -> (kh, kw, I, O)

  def norm(timm_name: str, ours: str) -> None:
    out[f"{ours}/scale"] = take(f"{timm_name}.weight")
    out[f"{ours}/bias"] = take(f"{timm_name}.bias")

  out["conv_root/kernel"] = conv(f"{stem}conv.weight")
  norm(f"{stem}norm", "gn_root")
  width = out["conv_root/kernel"].shape[-1]
  if width % 64:
    raise ValueError(f"{source}: a ResNet stem of width {width} is not a multiple of 64.")
  layers = []
  stage = re.compile(rf"^{re.escape(prefix)}stages\.(\d+)\.blocks\.(\d+)\.")
  found = sorted({(int(m[1]), int(m[2])) for k in weights if (m := stage.match(k))})
  for s in range(max((s for s, _ in found), default=-1) + 1):
    units = [u for t, u in found if t == s]
    if units != list(range(len(units))):
      raise ValueError(f"{source}: ResNet stage {s} has blocks {units}, not 0..n-1.")
    layers.append(len(units))
    for u in units:
      t, ours = f"{prefix}stages.{s}.blocks.{u}", f"block{s + 1}/unit{u + 1}"
      for i in (1, 2, 3):
        out[f"{ours}/conv{i}/kernel"] = conv(f"{t}.conv{i}.weight")
        norm(f"{t}.norm{i}", f"{ours}/gn{i}")
      if f"{t}.downsample.conv.weight" in weights:
        out[f"{ours}/conv_proj/kernel"] = conv(f"{t}.downsample.conv.weight")
        norm(f"{t}.downsample.norm", f"{ours}/gn_proj")
  return {"num_layers": tuple(layers), "width_factor": width // 64}


def params_from_state_dict(
    weights: Mapping[str, np.ndarray], *, model: Optional[str] = None,
    config: Optional[Mapping[str, Any]] = None,
    source: str = "the checkpoint") -> tuple[FlatParams, dict[str, Any]]:
  """{timm weight name: array} -> (our official per-layer flat params, `Model` fields)."""
  weights = {k: np.asarray(v, np.float32) for k, v in weights.items()}
  args = _model_args(model, config)
  take = lambda key: _take(weights, key, source)
  out: FlatParams = {}

  dense = functools.partial(tensor_files.torch_dense, out, take)
  norm = functools.partial(tensor_files.torch_norm, out, take)

  for bad, why in (("dist_token", "DeiT's distillation token"), ("norm_pre.weight",
                   "a pre-norm (CLIP's norm_pre)"), ("patch_embed.norm.weight",
                   "a patch-embedding norm")):
    if bad in weights:
      raise ValueError(f"{source} has {why} ({bad!r}): our ViT has no counterpart.")
  fields: dict[str, Any] = {"variant": None}
  hybrid = any(k.startswith("patch_embed.backbone.") for k in weights)
  fields["resnet"] = _resnet_params(weights, out, source) if hybrid else None
  if hybrid:
    fields["resnet_numerics"] = "timm"

  out["embedding/kernel"] = take("patch_embed.proj.weight").transpose(2, 3, 1, 0)
  out["embedding/bias"] = take("patch_embed.proj.bias")
  ph, pw, _, width = out["embedding/kernel"].shape
  depth = 1 + max((int(m[1]) for k in weights if (m := re.match(r"^blocks\.(\d+)\.", k))),
                  default=-1)
  if not depth:
    raise ValueError(f"{source} has no transformer blocks ('blocks.0....'): it is not a timm "
                     "VisionTransformer state dict.")
  num_heads = _heads(width, model, args, weights, source)
  if width % num_heads:
    raise ValueError(f"{source}: width {width} is not divisible by {num_heads} heads.")
  heads = (num_heads, width // num_heads)
  mlp_dim = weights["blocks.0.mlp.fc1.weight"].shape[0] if "blocks.0.mlp.fc1.weight" in weights \
      else None
  if "blocks.0.attn.qkv.bias" not in weights or "blocks.0.attn.proj.bias" not in weights:
    raise ValueError(f"{source} has no q/k/v or projection biases (timm qkv_bias=False / "
                     "proj_bias=False): our use_bias=False drops every bias (MLP and LayerNorms "
                     "too), so it cannot reproduce this model.")
  qk_norm = "blocks.0.attn.q_norm.weight" in weights
  layerscale = "blocks.0.ls1.gamma" in weights
  for i in range(depth):
    t, ours = f"blocks.{i}", f"Transformer/encoderblock_{i}"
    attn = f"{ours}/MultiHeadDotProductAttention_1"
    norm(f"{t}.norm1", f"{ours}/LayerNorm_0")
    qkv_w, qkv_b = take(f"{t}.attn.qkv.weight"), take(f"{t}.attn.qkv.bias")
    for j, proj in enumerate(("query", "key", "value")):
      out[f"{attn}/{proj}/kernel"] = qkv_w[j * width:(j + 1) * width].T.reshape(width, *heads)
      out[f"{attn}/{proj}/bias"] = qkv_b[j * width:(j + 1) * width].reshape(heads)
    if qk_norm:
      for timm_name, ours_name in (("q_norm", "query_ln"), ("k_norm", "key_ln")):
        out[f"{attn}/{ours_name}/scale"] = take(f"{t}.attn.{timm_name}.weight")
        bias = take(f"{t}.attn.{timm_name}.bias")
        if np.any(bias):
          raise ValueError(f"{source}: {t}.attn.{timm_name}.bias is not zero; our qk_norm "
                           "LayerNorm has a scale only (ViT-22B), so it cannot reproduce it.")
    dense(f"{t}.attn.proj", f"{attn}/out", in_shape=heads)
    norm(f"{t}.norm2", f"{ours}/LayerNorm_2")
    dense(f"{t}.mlp.fc1", f"{ours}/MlpBlock_3/Dense_0")
    dense(f"{t}.mlp.fc2", f"{ours}/MlpBlock_3/Dense_1")
    if layerscale:
      out[f"{ours}/LayerScale_attn/scale"] = take(f"{t}.ls1.gamma")
      out[f"{ours}/LayerScale_mlp/scale"] = take(f"{t}.ls2.gamma")

  # Tokens and position embedding.
  has_cls = "cls_token" in weights
  if has_cls:
    out["cls"] = take("cls_token")
  registers = weights.pop("reg_token", None)
  num_registers = 0 if registers is None else registers.shape[1]
  num_prefix = int(has_cls) + num_registers
  if "pos_embed" not in weights:
    raise ValueError(f"{source} has no 'pos_embed' (timm pos_embed='none'): our ViT always has "
                     "a position embedding.")
  pos = take("pos_embed")
  tokens = pos.shape[1]
  if "no_embed_class" in args:
    embed_prefix = not args["no_embed_class"]
  else:  # A square grid decides; timm's registered models are square.
    embed_prefix = num_prefix > 0 and _square_side(tokens) is None
    if num_prefix and _square_side(tokens) is None and _square_side(tokens - num_prefix) is None:
      raise ValueError(f"{source}: pos_embed has {tokens} tokens, neither a square grid nor one "
                       f"plus {num_prefix} prefix tokens; give a timm config.json with model_args "
                       "(img_size, no_embed_class).")
  grid_pos = pos[:, num_prefix:] if embed_prefix else pos
  zero = np.zeros((1, 1, width), np.float32)
  if embed_prefix and registers is not None:  # Constant per register: fold it in.
    registers = registers + pos[:, int(has_cls):num_prefix]
  if has_cls:
    cls_pos = pos[:, :1] if embed_prefix else zero
    grid_pos = np.concatenate([cls_pos, grid_pos], axis=1)
  out["Transformer/posembed_input/pos_embedding"] = grid_pos
  if registers is not None:
    out["registers"] = registers

  # Pooling, final norm and head.
  global_pool = args.get("global_pool")
  has_fc_norm = "fc_norm.weight" in weights
  if "attn_pool.latent" in weights:
    classifier = "map"
    mha = "MAPHead_0/MultiHeadDotProductAttention_0"
    latent = take("attn_pool.latent")
    if latent.shape[1] != 1:
      raise ValueError(f"{source}: attn_pool has {latent.shape[1]} latent queries; our MAP head "
                       "has one probe.")
    out["MAPHead_0/probe"] = latent
    dense("attn_pool.q", f"{mha}/query", out_shape=heads)
    kv_w, kv_b = take("attn_pool.kv.weight"), take("attn_pool.kv.bias")
    for j, proj in enumerate(("key", "value")):
      out[f"{mha}/{proj}/kernel"] = kv_w[j * width:(j + 1) * width].T.reshape(width, *heads)
      out[f"{mha}/{proj}/bias"] = kv_b[j * width:(j + 1) * width].reshape(heads)
    dense("attn_pool.proj", f"{mha}/out", in_shape=heads)
    norm("attn_pool.norm", "MAPHead_0/LayerNorm_0")
    dense("attn_pool.mlp.fc1", "MAPHead_0/MlpBlock_0/Dense_0")
    dense("attn_pool.mlp.fc2", "MAPHead_0/MlpBlock_0/Dense_1")
    if has_cls:
      raise ValueError(f"{source}: a class token with attention pooling ('map'): timm pools the "
                       "patch tokens only, our MAP head has no class token; no counterpart.")
  elif has_cls and (global_pool or "token") == "token" and not (
      has_fc_norm and global_pool is None):
    classifier = "token"
  elif not has_cls and (global_pool or "avg") == "avg":
    classifier = "gap"
  else:
    raise ValueError(
        f"{source}: timm pooling global_pool={global_pool or 'avg'!r} with "
        f"class_token={has_cls} (fc_norm={has_fc_norm}) has no counterpart: our 'gap' averages "
        "every token and has no class token. (A class token with fc_norm is timm's average "
        "pooling of MAE / BEiT fine-tunes; if it is token pooling, give a config.json with "
        "model_args.global_pool='token'.)")
  if has_fc_norm:  # After pooling; for the class token the same as before it.
    norm("fc_norm", "Transformer/encoder_norm")
  else:
    norm("norm", "Transformer/encoder_norm")
  if "pre_logits.fc.weight" in weights:  # timm < 0.9 representation layer
    dense("pre_logits.fc", "pre_logits")
  if "head.weight" in weights:
    dense("head", "head")
  if weights:
    raise ValueError(f"{source} has weights {sorted(weights)[:6]} that our ViT has no place for, "
                     "so it cannot be imported faithfully.")

  act = args.get("act_layer")
  if act not in _ACT_LAYERS:
    raise ValueError(f"{source}: act_layer={act!r}; our ViT's MLP activation is the exact or "
                     f"tanh GELU ({[a for a in _ACT_LAYERS if a]}).")
  fields.update(
      patch_size=ph if ph == pw else (ph, pw), width=width, depth=depth,
      mlp_dim=mlp_dim, num_heads=num_heads, classifier=classifier, posemb="learn",
      representation_size=(out["pre_logits/bias"].shape[0] if "pre_logits/bias" in out
                           else None),
      gelu_approximate=act in _GELU_TANH, num_registers=num_registers, qk_norm=qk_norm,
      layerscale_init=(float(args.get("init_values") or 1e-5) if layerscale else None),
      fc_norm=classifier == "gap" and has_fc_norm)
  return {k: np.ascontiguousarray(v) for k, v in out.items()}, fields


def read_params(path: str | epath.PathLike,
                model: Optional[str] = None) -> tuple[FlatParams, dict[str, Any]]:
  """Reads a timm ViT / hybrid checkpoint (file or Hub directory): (our official per-layer flat
  params, the `Model` fields that reproduce timm's logits).

  `model` (optional) is our name ('ViT-B/16', 'R26+S/32') or timm's ('vit_base_patch16_224'); it
  only supplies what the weights do not say (the number of heads) and must agree with them.
  """
  config = read_config(path)
  params, fields = params_from_state_dict(read_state_dict(path), model=model, config=config,
                                          source=str(path))
  if model and not model.startswith("vit_"):
    named = variants.decode(model)
    got = dict(fields, patch_size=tuple(np.broadcast_to(fields["patch_size"], 2)))
    named["patch_size"] = tuple(named.get("patch_size", got["patch_size"]))
    diff = [f"{k}={named[k]!r} (checkpoint: {got[k]!r})" for k in
            ("patch_size", "width", "depth", "mlp_dim", "num_heads")
            if k in named and named[k] != got[k]]
    if bool(named.get("resnet")) != bool(fields["resnet"]):
      diff.append(f"resnet={named.get('resnet')!r} (checkpoint: {fields['resnet']!r})")
    if diff:
      raise ValueError(f"model={model!r} does not match {path}: {', '.join(diff)}. Leave the model "
                       "out to take it from the checkpoint.")
  return params, fields


# --- Export ---------------------------------------------------------------------------------------

# Model options timm's VisionTransformer cannot represent: field -> (the value it can, why not).
_TIMM_NEEDS = {
    "posemb": (("learn", "sincos2d"), "timm's VisionTransformer has no rotary position embedding "
               "(posemb='rope2d'; timm's EVA models do)"),
    "use_bias": ((True,), "timm's VisionTransformer keeps LayerNorm and MLP biases (only its "
                 "qkv_bias / proj_bias turn off)"),
    "parallel_block": ((False,), "timm's VisionTransformer blocks are sequential"),
    "representation_size": ((None,), "timm's VisionTransformer has no pre-logits layer since "
                            "timm 0.9"),
}


def check_exportable(model_kwargs: Mapping[str, Any], *, exact: bool = True) -> None:
  """Raises ValueError naming every option timm's VisionTransformer cannot represent."""
  bad = {k: model_kwargs[k] for k, (ok, _) in _TIMM_NEEDS.items()
         if k in model_kwargs and model_kwargs[k] not in ok}
  reasons = [f"{k}={v!r}: {_TIMM_NEEDS[k][1]}" for k, v in bad.items()]
  res = model_kwargs.get("resnet")
  if res:
    layers = tuple(res["num_layers"])
    if layers not in _TIMM_HYBRIDS or int(res["width_factor"]) != 1:
      reasons.append(f"resnet={dict(res)!r}: timm registers hybrids with ResNet stages "
                     f"{sorted(_TIMM_HYBRIDS)} and width factor 1 only")
    if exact and model_kwargs.get("resnet_numerics", "official") != "timm":
      reasons.append(
          "resnet_numerics='official': timm's ResNetV2 standardises weights as (w - mean) / "
          "sqrt(var + 1e-8) with GroupNorm eps 1e-5 (resnet_numerics='timm'), so its logits "
          "would differ by ~1e-3 (export with exact=False to accept that, as timm's own vit_*_r* "
          "weights were converted)")
  width, mlp_dim = model_kwargs["width"], model_kwargs["mlp_dim"]
  if int(width * (mlp_dim / width)) != mlp_dim:
    reasons.append(f"mlp_dim={mlp_dim}: timm sizes the MLP as int(width * mlp_ratio), which "
                   f"misses {mlp_dim} for width {width}")
  if reasons:
    raise ValueError("timm's VisionTransformer cannot represent this model: "
                     + "; ".join(reasons) + ". Export the official .npz instead (it holds any "
                     "model).")


def timm_model_name(model_kwargs: Mapping[str, Any]) -> str:
  """The timm model registered for this architecture ('vit_base_patch16_224',
  'vit_small_r26_s32_224', ...); `timm_model_args` gives the kwargs that make it exactly ours
  (dims, image size, pooling, ...), so a non-standard model maps onto its nearest size's name."""
  res = model_kwargs.get("resnet")
  if res:
    layers = tuple(res["num_layers"])
    if layers not in _TIMM_HYBRIDS:
      raise ValueError(f"resnet={dict(res)!r}: timm registers hybrids with ResNet stages "
                       f"{sorted(_TIMM_HYBRIDS)} only.")
    return _TIMM_HYBRIDS[layers][0]
  width, patch = model_kwargs["width"], tuple(model_kwargs["patch_size"])
  size = min(_TIMM_SIZES, key=lambda s: (abs(_TIMM_SIZES[s][0] - width), s))
  registered = sorted(p for s, p in _TIMM_PLAIN if s == size) or [16]
  p = patch[0] if patch[0] in registered else min(registered, key=lambda q: abs(q - patch[0]))
  if (size, p) not in _TIMM_PLAIN:
    size, p = "base", 16
  return f"vit_{size}_patch{p}_224"


def _grid_and_image_size(flat: Mapping[str, np.ndarray], model_kwargs: Mapping[str, Any],
                         image_size: Optional[Sequence[int]]) -> tuple[int, int]:
  stride = (resnet_lib.stem_stride(model_kwargs["resnet"]["num_layers"])
            if model_kwargs.get("resnet") else 1)
  ph, pw = tuple(model_kwargs["patch_size"])
  if image_size is not None:
    return int(image_size[0]), int(image_size[1])
  pos = flat.get("Transformer/posembed_input/pos_embedding")
  if pos is None:
    return 224, 224
  grid = pos.shape[1] - (model_kwargs["classifier"] == "token")
  side = _square_side(grid)
  if side is None:
    raise ValueError(f"The position embedding has {grid} grid tokens, not a square grid: pass "
                     "image_size=(height, width) to export.")
  return side * ph * stride, side * pw * stride


def timm_model_args(model_kwargs: Mapping[str, Any], num_classes: int,
                    image_size: Sequence[int] = (224, 224), in_chans: int = 3) -> dict[str, Any]:
  """The `timm.create_model(timm_model_name(model_kwargs), **args)` kwargs of our model."""
  classifier = model_kwargs["classifier"]
  h, w = (int(s) for s in image_size)
  ph, pw = (int(p) for p in model_kwargs["patch_size"])
  args = dict(
      num_classes=int(num_classes), img_size=h if h == w else (h, w),
      patch_size=ph if ph == pw else (ph, pw), embed_dim=model_kwargs["width"],
      depth=model_kwargs["depth"], num_heads=model_kwargs["num_heads"],
      mlp_ratio=model_kwargs["mlp_dim"] / model_kwargs["width"],
      class_token=classifier == "token",
      global_pool={"token": "token", "gap": "avg", "map": "map"}[classifier],
      fc_norm=bool(model_kwargs.get("fc_norm", False)) and classifier == "gap",
      no_embed_class=False, reg_tokens=int(model_kwargs.get("num_registers", 0)),
      init_values=model_kwargs.get("layerscale_init"),
      qk_norm=bool(model_kwargs.get("qk_norm", False)),
      act_layer="gelu_tanh" if model_kwargs.get("gelu_approximate", True) else "gelu")
  if in_chans != 3:
    args["in_chans"] = in_chans
  return args


def timm_state_dict(params: Mapping[str, Any], model_kwargs: Mapping[str, Any], *,
                    image_size: Optional[Sequence[int]] = None,
                    exact: bool = True) -> dict[str, np.ndarray]:
  """Our params (either layer layout, boxed or not) -> {timm weight name: float32 array}."""
  check_exportable(model_kwargs, exact=exact)
  flat = npz.to_per_layer(npz.flatten(flax.linen.unbox(params)))
  flat = {k: np.asarray(jax.device_get(v), np.float32) for k, v in flat.items()}
  flat = npz.squeeze_groupnorm(flat)
  width, depth = model_kwargs["width"], model_kwargs["depth"]
  classifier = model_kwargs["classifier"]
  out: dict[str, np.ndarray] = {}

  def take(key: str) -> np.ndarray:
    if key not in flat:
      raise ValueError(f"Params have no {key!r}: they do not match the model "
                       f"(width {width}, depth {depth}, classifier {classifier!r}; check --model).")
    return flat.pop(key)

  def dense(timm_name: str, ours: str, in_dims: int = 1) -> None:
    kernel = take(f"{ours}/kernel")
    out[f"{timm_name}.weight"] = kernel.reshape(int(np.prod(kernel.shape[:in_dims])), -1).T
    out[f"{timm_name}.bias"] = take(f"{ours}/bias").reshape(-1)

  def norm(timm_name: str, ours: str) -> None:
    out[f"{timm_name}.weight"] = take(f"{ours}/scale")
    out[f"{timm_name}.bias"] = take(f"{ours}/bias")

  conv = lambda ours: take(f"{ours}/kernel").transpose(3, 2, 0, 1)  # (kh, kw, I, O) -> (O, I, ...)
  res = model_kwargs.get("resnet")
  if res:
    prefix = "patch_embed.backbone."
    stem = prefix + ("stem." if res["num_layers"] else "")
    out[f"{stem}conv.weight"] = conv("conv_root")
    norm(f"{stem}norm", "gn_root")
    for s, units in enumerate(res["num_layers"]):
      for u in range(units):
        t, ours = f"{prefix}stages.{s}.blocks.{u}", f"block{s + 1}/unit{u + 1}"
        if f"{ours}/conv_proj/kernel" in flat:
          out[f"{t}.downsample.conv.weight"] = conv(f"{ours}/conv_proj")
          norm(f"{t}.downsample.norm", f"{ours}/gn_proj")
        for i in (1, 2, 3):
          out[f"{t}.conv{i}.weight"] = conv(f"{ours}/conv{i}")
          norm(f"{t}.norm{i}", f"{ours}/gn{i}")
  out["patch_embed.proj.weight"] = conv("embedding")
  out["patch_embed.proj.bias"] = take("embedding/bias")

  has_cls = classifier == "token"
  if has_cls:
    out["cls_token"] = take("cls")
  registers = flat.pop("registers", None)
  if model_kwargs["posemb"] == "learn":
    pos = take("Transformer/posembed_input/pos_embedding")
  else:  # sincos2d: fixed, on the patches only; timm's learned pos_embed holds its values.
    from vit_jax.models import vit  # pylint: disable=g-import-not-at-top  (jax model code)
    h, w = _grid_and_image_size(flat, model_kwargs, image_size)
    stride = (resnet_lib.stem_stride(res["num_layers"]) if res else 1)
    ph, pw = tuple(model_kwargs["patch_size"])
    pos = np.asarray(vit.posemb_sincos_2d(h // (stride * ph), w // (stride * pw), width))
    if has_cls:
      pos = np.concatenate([np.zeros((1, 1, width), np.float32), pos], axis=1)
  if registers is not None:  # timm order [cls, registers, patches]; registers get no position.
    out["reg_token"] = registers
    n = int(has_cls)
    pos = np.concatenate([pos[:, :n], np.zeros((1, registers.shape[1], width), np.float32),
                          pos[:, n:]], axis=1)
  out["pos_embed"] = pos

  for i in range(depth):
    t, ours = f"blocks.{i}", f"Transformer/encoderblock_{i}"
    attn = f"{ours}/MultiHeadDotProductAttention_1"
    norm(f"{t}.norm1", f"{ours}/LayerNorm_0")
    qkv = [(take(f"{attn}/{p}/kernel"), take(f"{attn}/{p}/bias")) for p in
           ("query", "key", "value")]
    out[f"{t}.attn.qkv.weight"] = np.concatenate([k.reshape(width, -1).T for k, _ in qkv])
    out[f"{t}.attn.qkv.bias"] = np.concatenate([b.reshape(-1) for _, b in qkv])
    if model_kwargs.get("qk_norm"):
      for timm_name, ours_name in (("q_norm", "query_ln"), ("k_norm", "key_ln")):
        scale = take(f"{attn}/{ours_name}/scale")
        out[f"{t}.attn.{timm_name}.weight"] = scale
        out[f"{t}.attn.{timm_name}.bias"] = np.zeros_like(scale)
    dense(f"{t}.attn.proj", f"{attn}/out", in_dims=2)
    norm(f"{t}.norm2", f"{ours}/LayerNorm_2")
    dense(f"{t}.mlp.fc1", f"{ours}/MlpBlock_3/Dense_0")
    dense(f"{t}.mlp.fc2", f"{ours}/MlpBlock_3/Dense_1")
    if model_kwargs.get("layerscale_init") is not None:
      out[f"{t}.ls1.gamma"] = take(f"{ours}/LayerScale_attn/scale")
      out[f"{t}.ls2.gamma"] = take(f"{ours}/LayerScale_mlp/scale")
  fc_norm = classifier == "gap" and model_kwargs.get("fc_norm", False)
  norm("fc_norm" if fc_norm else "norm", "Transformer/encoder_norm")
  if classifier == "map":
    mha = "MAPHead_0/MultiHeadDotProductAttention_0"
    out["attn_pool.latent"] = take("MAPHead_0/probe")
    dense("attn_pool.q", f"{mha}/query")
    kv = [(take(f"{mha}/{p}/kernel"), take(f"{mha}/{p}/bias")) for p in ("key", "value")]
    out["attn_pool.kv.weight"] = np.concatenate([k.reshape(width, -1).T for k, _ in kv])
    out["attn_pool.kv.bias"] = np.concatenate([b.reshape(-1) for _, b in kv])
    dense("attn_pool.proj", f"{mha}/out", in_dims=2)
    norm("attn_pool.norm", "MAPHead_0/LayerNorm_0")
    dense("attn_pool.mlp.fc1", "MAPHead_0/MlpBlock_0/Dense_0")
    dense("attn_pool.mlp.fc2", "MAPHead_0/MlpBlock_0/Dense_1")
  if "head/kernel" in flat:
    dense("head", "head")
  if flat:
    raise ValueError(f"Params {sorted(flat)[:5]} have no place in timm's VisionTransformer: they "
                     "do not match the model (check --model and its options).")
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def export(params: Mapping[str, Any], model_kwargs: Mapping[str, Any], num_classes: int,
           output_path: str | epath.PathLike, *, image_size: Optional[Sequence[int]] = None,
           value_range: tuple[float, float] = (-1.0, 1.0), exact: bool = True) -> epath.Path:
  """Writes our model for timm; returns the path written.

  `output_path` ending in `.safetensors` / `.pth` / `.bin`: that state dict alone (load it into
  `timm.create_model(timm_model_name(kw), **timm_model_args(kw, ...))` with strict=True).
  Otherwise a directory in timm's Hub layout: `model.safetensors` and a `config.json` with the
  architecture, model_args and preprocessing (`value_range`), which
  `timm.create_model('local-dir:DIR', pretrained=True)` loads by itself. `image_size` defaults to
  the square grid of the position embedding (224 px for sincos2d models without one).
  """
  flat = npz.to_per_layer(npz.flatten(flax.linen.unbox(params)))
  image_size = _grid_and_image_size(flat, model_kwargs, image_size)
  weights = timm_state_dict(params, model_kwargs, image_size=image_size, exact=exact)
  head = weights.get("head.weight")
  if head is not None and head.shape[0] != num_classes:
    raise ValueError(f"num_classes={num_classes} but the params' head has {head.shape[0]} "
                     "classes.")
  first_conv = "patch_embed.proj"
  if model_kwargs.get("resnet"):
    first_conv = "patch_embed.backbone." + ("stem.conv" if model_kwargs["resnet"]["num_layers"]
                                            else "conv")
  in_chans = weights[f"{first_conv}.weight"].shape[1]
  output_path = epath.Path(output_path)
  suffix = output_path.name.rsplit(".", 1)[-1] if "." in output_path.name else ""
  if suffix in ("pth", "bin"):
    import torch  # pylint: disable=g-import-not-at-top  (optional)
    buffer = io.BytesIO()
    torch.save({k: torch.from_numpy(v) for k, v in weights.items()}, buffer)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    output_path.write_bytes(buffer.getvalue())
    return output_path
  from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
  data = safetensors_numpy.save(weights, metadata={"format": "pt"})
  if suffix == "safetensors":
    output_path.parent.mkdir(parents=True, exist_ok=True)
    output_path.write_bytes(data)
    return output_path
  output_path.mkdir(parents=True, exist_ok=True)
  (output_path / "model.safetensors").write_bytes(data)
  low, high = value_range
  name = timm_model_name(model_kwargs)
  args = timm_model_args(model_kwargs, num_classes, image_size, in_chans)
  config = {
      "architecture": name, "num_classes": int(num_classes),
      "num_features": int(model_kwargs["width"]), "global_pool": args["global_pool"],
      "model_args": {k: v for k, v in args.items() if k != "num_classes"},
      "pretrained_cfg": {
          "input_size": [in_chans, *image_size], "fixed_input_size": True,
          "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center",
          # (x - mean) / std == low + (high - low) * x for x in [0, 1]
          "mean": [-low / (high - low)] * in_chans, "std": [1.0 / (high - low)] * in_chans,
          "num_classes": int(num_classes), "pool_size": None,
          "first_conv": first_conv,
          "classifier": "head"},
  }
  (output_path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
  return output_path
