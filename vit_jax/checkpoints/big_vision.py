"""big_vision ViT `.npz` checkpoints (big_vision/models/vit.py): import.

big_vision saves params under its own module names, which differ from the official
google-research/vision_transformer ones (vit_jax/checkpoints/npz.py) in these ways only:

  big_vision                                    official (ours)
  params/... (train-state prefix; SigLIP: params/img/...)  (none)
  pos_embedding (1, h*w, D), top level          Transformer/posembed_input/pos_embedding
  Transformer/encoderblock/... (scanned: leading layer axis)  Transformer/encoderblock_{i}/...
  .../MultiHeadDotProductAttention_0            .../MultiHeadDotProductAttention_1
  .../LayerNorm_1 (pre-MLP)                     .../LayerNorm_2
  .../MlpBlock_0                                .../MlpBlock_3

`Transformer/encoder_norm`, `embedding`, `cls`, `MAPHead_0/...`, `pre_logits` and `head` are the
same. The numerics are the same too: flax's LayerNorm (eps 1e-6) and `nn.gelu` (tanh
approximation, `gelu_approximate=True`), a tanh after `pre_logits`, and big_vision's
`posemb_sincos_2d` (MoCo v3: omega = 1 / 10000**(i / (D/4 - 1)), features [sin x, cos x, sin y,
cos y] over a row-major (y, x) grid) is `vit_jax.models.vit.posemb_sincos_2d` term for term.

What the params imply is returned as `Model` fields: `classifier` from the pool type ('tok' has a
`cls`, 'map' a `MAPHead_0`, else big_vision's default 'gap'), `posemb` ('learn' with a
`pos_embedding`, else 'sincos2d', which has no param), `representation_size` (`pre_logits`), and
the dims (heads from the (D, heads, head_dim) query kernel). big_vision adds the position
embedding before prepending the class token, so with 'tok' the class token gets none: its row in
our embedding (which covers the class token) is zero. big_vision's pool types '0' (the first patch
token) and 'none' leave no trace in the params and have no counterpart; they import as 'gap'.
Older layouts big_vision's own loader fixes are read too: the position embedding under
`Transformer/` and one that already covers the class token (h*w + 1 rows).
"""
import io
import math
import re
from typing import Any, Mapping, Optional
import zipfile

from etils import epath
import numpy as np

from vit_jax.checkpoints import npz
from vit_jax.models import variants

FlatParams = dict[str, np.ndarray]

_PREFIXES = ("params/img/", "params/", "opt/target/", "img/")
# big_vision block names -> ours (inside Transformer/encoderblock_{i}/).
_BLOCK_NAMES = {"MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
                "LayerNorm_0": "LayerNorm_0", "LayerNorm_1": "LayerNorm_2",
                "MlpBlock_0": "MlpBlock_3"}
_BLOCK_KEY = re.compile(
    r"^Transformer/encoderblock(?P<index>_\d+)?/(?P<module>[^/]+)/(?P<rest>.+)$")


def strip_prefix(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Keeps the ViT params of a big_vision dump: under 'params/' (a train state), 'params/img/' or
  'img/' (a SigLIP / two-tower image encoder) or 'opt/target/' (old optimizer dumps)."""
  for prefix in _PREFIXES:
    if f"{prefix}embedding/kernel" in flat:
      return {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
  return dict(flat)


def is_big_vision(keys) -> bool:
  """True for big_vision's module names (not the official layout's)."""
  keys = set(keys)
  return "pos_embedding" in keys or "Transformer/pos_embedding" in keys or any(
      _BLOCK_KEY.match(k) and _BLOCK_KEY.match(k)["module"] in ("MlpBlock_0", "LayerNorm_1",
                                                                 "MultiHeadDotProductAttention_0")
      for k in keys)


def params_from_flat(flat: Mapping[str, np.ndarray], source: str = "the checkpoint"
                     ) -> tuple[FlatParams, dict[str, Any]]:
  """big_vision's flat params (prefix stripped) -> (our official per-layer params, `Model`
  fields)."""
  flat = {k: np.asarray(v, np.float32) for k, v in flat.items()}
  if "embedding/kernel" not in flat:
    raise ValueError(f"{source} has no 'embedding/kernel' (also looked under {list(_PREFIXES)}): "
                     "it is not a big_vision ViT checkpoint.")
  if "Transformer/posembed_input/pos_embedding" in flat or any(
      "MultiHeadDotProductAttention_1/" in k for k in flat):
    raise ValueError(f"{source} uses the official vit_jax names (posembed_input, "
                     "MultiHeadDotProductAttention_1), not big_vision's: load it as an official "
                     ".npz.")
  out: FlatParams = {}
  for key, value in npz.to_per_layer(flat).items():
    match = _BLOCK_KEY.match(key)
    if match is None:
      out[key] = value
      continue
    module = match["module"]
    if module not in _BLOCK_NAMES:
      raise ValueError(f"{source}: {key!r} is not part of a big_vision ViT block "
                       f"({sorted(_BLOCK_NAMES)}), so it cannot be imported faithfully.")
    out[f"Transformer/encoderblock{match['index']}/{_BLOCK_NAMES[module]}/{match['rest']}"] = value

  kh, kw, _, width = out["embedding/kernel"].shape
  has_cls = "cls" in out
  classifier = "token" if has_cls else ("map" if "MAPHead_0/probe" in out else "gap")
  if has_cls and "MAPHead_0/probe" in out:
    raise ValueError(f"{source} has both a class token and a MAP head; big_vision's ViT has one "
                     "pool type.")
  pos = out.pop("pos_embedding", None)
  if pos is None:
    pos = out.pop("Transformer/pos_embedding", None)
  posemb = "sincos2d" if pos is None else "learn"
  if pos is not None:
    tokens = pos.shape[1]
    # big_vision adds the position embedding to the patches only, then prepends the class token;
    # ours covers the class token, whose row is then zero. Older files already have that row.
    covers_cls = (has_cls and math.isqrt(tokens) ** 2 != tokens
                  and math.isqrt(tokens - 1) ** 2 == tokens - 1)
    if has_cls and not covers_cls:
      pos = np.concatenate([np.zeros((1, 1, width), np.float32), pos], axis=1)
    out["Transformer/posembed_input/pos_embedding"] = pos
  elif width % 4:
    raise ValueError(f"{source} has no pos_embedding (sincos2d) but width {width} is not "
                     "divisible by 4.")

  depth = len({k.split("/")[1] for k in out if k.startswith("Transformer/encoderblock_")})
  query = out.get("Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel")
  mlp = out.get("Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel")
  if not depth or query is None or mlp is None:
    raise ValueError(f"{source} has no complete encoder block 0 (Transformer/encoderblock[_0]/"
                     "MultiHeadDotProductAttention_0, MlpBlock_0): not a big_vision ViT.")
  allowed = re.compile(r"^(embedding|cls|Transformer/(encoderblock_\d+|posembed_input|"
                       r"encoder_norm)|MAPHead_0|pre_logits|head)/")
  unknown = sorted(k for k in out if not allowed.match(k) and k != "cls")
  if unknown:
    raise ValueError(f"{source} has params {unknown[:6]} that big_vision's ViT does not: it is "
                     "another model (a two-tower checkpoint needs its image tower, 'params/img/').")
  fields = dict(
      variant=None, patch_size=kh if kh == kw else (kh, kw), width=width, depth=depth,
      mlp_dim=mlp.shape[1], num_heads=query.shape[1], classifier=classifier, posemb=posemb,
      representation_size=(out["pre_logits/bias"].shape[0] if "pre_logits/bias" in out
                           else None),
      gelu_approximate=True, resnet=None)
  return {k: np.ascontiguousarray(v) for k, v in out.items()}, fields


def read_flat(path: str | epath.PathLike) -> dict[str, np.ndarray]:
  """A big_vision `.npz` as {"/"-joined key: array}, prefix ('params/', 'params/img/') stripped."""
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"No checkpoint at {path}.")
  try:
    with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as data:
      flat = {k: data[k] for k in data.files}
  except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, AttributeError) as e:
    raise ValueError(f"{path} is not a readable .npz checkpoint ({type(e).__name__}: {e}).") from e
  return strip_prefix(flat)


def read_params(path: str | epath.PathLike,
                model: Optional[str] = None) -> tuple[FlatParams, dict[str, Any]]:
  """Reads a big_vision ViT `.npz`: (our official per-layer flat params, the `Model` fields it
  implies: dims, classifier, posemb, representation_size, gelu_approximate).

  `model` (optional, e.g. 'ViT-S/16') must agree with the params' dims; ValueError otherwise.
  """
  params, fields = params_from_flat(read_flat(path), source=str(path))
  if model:
    named = variants.decode(model)
    if named.get("resnet"):
      raise ValueError(f"model={model!r} is a hybrid; big_vision's ViT has no ResNet stem.")
    got = dict(fields, patch_size=tuple(np.broadcast_to(fields["patch_size"], 2)))
    named["patch_size"] = tuple(named.get("patch_size", got["patch_size"]))
    diff = [f"{k}={named[k]!r} (checkpoint: {got[k]!r})" for k in
            ("patch_size", "width", "depth", "mlp_dim", "num_heads") if named[k] != got[k]]
    if diff:
      raise ValueError(f"model={model!r} does not match {path}: {', '.join(diff)}. Leave the model "
                       "out to take it from the checkpoint.")
  return params, fields
