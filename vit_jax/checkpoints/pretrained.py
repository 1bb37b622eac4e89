"""Pretrained params into a model: any checkpoint file, adapted to a freshly initialised tree.

`load_pretrained(init_params, path)` is the one loader: it reads an official `.npz`, an Orbax
train-state checkpoint, a Hugging Face ViT directory, a timm or a big_vision file (`read_params`,
through vit_jax.checkpoints.imports) and fits it to the model (`merge_pretrained`): partial loads
(`dont_load`), a new classification head, a resized position-embedding grid, a PI-resized patch
kernel (FlexiViT), either layer layout (scanned or per-layer). `load_exact` is for evaluation, where
nothing may change.
"""
import re
from typing import Any, Mapping, Sequence

from absl import logging
from etils import epath
import flax
import jax
import numpy as np

from vit_jax.checkpoints import imports, npz
from vit_jax.checkpoints.npz import FlatParams, flatten, unflatten
from vit_jax.models import resize

_POSEMB_KEY = "Transformer/posembed_input/pos_embedding"
_PATCH_KERNEL_KEY = "embedding/kernel"
_HEAD_PREFIX = "head/"
# Params of architecture options (vit_jax.models.vit) that a checkpoint trained without the option
# lacks; fine-tuning adds them at their init value (registers, QK-norm scales, LayerScale).
_OPTION_PARAMS = re.compile(r"(registers|.*/(query_ln|key_ln|LayerScale_attn|LayerScale_mlp)/.*)")
# Checkpoint params a fine-tuning model may lack: a new head, no representation layer, pooling
# instead of a class token. Dropping anything else changes what the pretrained model computes.
_DROPPED_BY_DESIGN = re.compile(r"(head|pre_logits)/.*|cls")
_SHOWN = 5  # How many offending keys an error message lists.


def read_params(path: str | epath.PathLike, *, model_fields: Mapping[str, Any] | None = None,
                source: str | None = None) -> FlatParams:
  """Flat params (our names) of a checkpoint of any source (`vit_jax.checkpoints.imports`): an
  official `.npz`, an Orbax train-state checkpoint directory (a step directory, or a checkpoints
  root whose latest step is taken), a Hugging Face ViT directory, a timm or big_vision file.

  With `model_fields` (the model's complete fields, `vit_jax.models.model_kwargs`), a checkpoint
  whose source computes otherwise (e.g. Hugging Face's exact GELU into a model with
  gelu_approximate=True) raises ValueError naming the field to set (`imports.check_model`).
  """
  params, detected = imports.read(path, source)
  if model_fields is not None:
    imports.check_model(detected, model_fields, source=str(path))
  return params


def load_pretrained(init_params: Mapping[str, Any], path: str | epath.PathLike, *,
                    dont_load: Sequence[str] = (), posemb_method: str = "bilinear",
                    model_fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Loads a checkpoint (`read_params`, which checks the numerics against `model_fields` if given)
  into params shaped like `init_params` (`merge_pretrained`)."""
  return merge_pretrained(init_params, read_params(path, model_fields=model_fields),
                          dont_load=dont_load, posemb_method=posemb_method, source=str(path))


def merge_pretrained(init_params: Mapping[str, Any], pretrained: Mapping[str, Any], *,
                     dont_load: Sequence[str] = (), posemb_method: str = "bilinear",
                     source: str = "the checkpoint") -> dict[str, Any]:
  """Fills a freshly initialised param tree with pretrained values, adapting what is meant to
  change.

  Args:
    init_params: the model's `variables['params']` (plain or boxed with logical axis names, concrete
      or abstract). It decides the result's structure, layout (scanned or not), shapes and dtypes;
      its values are kept wherever nothing is loaded.
    pretrained: pretrained params, nested or flat ("/"-joined keys), either layer layout.
    dont_load: regexes; model params whose "/"-joined name fully matches one keep their init
      value (e.g. `('head/.*', 'pre_logits/.*')`), and checkpoint params the model lacks that
      match one are dropped on purpose.
    posemb_method: 'bilinear' (official vit_jax numerics) or 'bicubic', for a grid change.
    source: names the checkpoint in messages.

  Returns:
    A tree like `init_params` (boxes kept) whose loaded leaves are host NumPy arrays. Adaptations: a
    `head` that is missing or of another shape (new num_classes) keeps its init value, as do the
    params of architecture options the checkpoint was trained without (registers, QK-norm,
    LayerScale); a position embedding of another grid is resized (class-token entry kept); a patch
    kernel of another patch size is PI-resized (FlexiViT). The checkpoint's head, `pre_logits` and
    class token are dropped when the model lacks them. Anything else that does not fit raises a
    ValueError listing it, including checkpoint params the model lacks (LayerScale, registers,
    extra blocks: the model would compute otherwise than the checkpoint) unless `dont_load` names
    them.
  """
  if set(init_params) == {"params"}:
    raise ValueError("init_params looks like a variables dict {'params': ...}: "
                     "pass variables['params'].")
  init_flat = flatten(init_params)
  ckpt = match_layout(flatten(flax.linen.unbox(pretrained)), init_flat)
  patterns = [re.compile(p) for p in dont_load]

  out, missing, mismatched = {}, [], []
  for key, init_leaf in init_flat.items():
    target = flax.linen.unbox(init_leaf)
    if any(p.fullmatch(key) for p in patterns):
      out[key] = init_leaf
      continue
    if key not in ckpt:
      if key.startswith(_HEAD_PREFIX) or _OPTION_PARAMS.fullmatch(key):
        logging.info("%s has no %s: keeping its fresh initialisation.", source, key)
        out[key] = init_leaf
      else:
        missing.append(key)
      continue
    value = _adapt(key, np.asarray(ckpt[key]), target, ckpt, init_flat, posemb_method)
    if value is None:
      if key.startswith(_HEAD_PREFIX):
        logging.info("New head: %s %s -> %s, keeping its fresh initialisation.", key,
                     ckpt[key].shape, target.shape)
        out[key] = init_leaf
      else:
        mismatched.append(f"{key}: checkpoint {tuple(ckpt[key].shape)} "
                          f"vs model {tuple(target.shape)}")
      continue
    value = value.astype(target.dtype)
    out[key] = (init_leaf.replace_boxed(value)
                if isinstance(init_leaf, flax.core.meta.AxisMetadata) else value)

  for pattern in patterns:
    if not any(pattern.fullmatch(k) for k in init_flat):
      logging.warning("dont_load pattern %r matches no model param (it must match the whole "
                      "'/'-joined name, e.g. 'head/.*').", pattern.pattern)
  unused = sorted(set(ckpt) - set(init_flat))
  dropped = [k for k in unused if _DROPPED_BY_DESIGN.fullmatch(k)
             or any(p.fullmatch(k) for p in patterns)]
  unwanted = [k for k in unused if k not in dropped]
  if missing or mismatched or unwanted:
    raise ValueError(_mismatch_message(source, sorted(missing), sorted(mismatched), unwanted,
                                       _LOAD_FIX))
  if dropped:
    logging.info("Dropped the checkpoint's params the model does not have:%s", _first(dropped))
  return unflatten(out)


def match_layout(flat: Mapping[str, Any], like: Mapping[str, Any]) -> FlatParams:
  """`flat` converted to the scanned or per-layer layout of the flat tree `like`."""
  if npz.is_scanned(like) and npz.is_per_layer(flat):
    return npz.to_scanned(flat)
  if npz.is_per_layer(like) and npz.is_scanned(flat):
    return npz.to_per_layer(flat)
  return dict(flat)


def load_exact(path: str | epath.PathLike, expected: Mapping[str, Any], *, fix: str,
               model_fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Params of `path` that must be exactly the model of `expected` (names and shapes), e.g. for
  eval; with `model_fields`, computed as the checkpoint was trained (`read_params`).

  Either layer layout is accepted; anything else that differs raises the `check_matches` error.
  """
  return fit_exact(read_params(path, model_fields=model_fields), expected, source=str(path),
                   fix=fix)


def fit_exact(flat: Mapping[str, Any], expected: Mapping[str, Any], *, source: str,
              fix: str) -> dict[str, Any]:
  """Flat params, in `expected`'s layer layout and nesting; `check_matches` raises if they are
  not exactly its names and shapes."""
  flat = match_layout(flat, flatten(expected))
  check_matches(flat, expected, source=source, fix=fix)
  return unflatten(flat)


def check_matches(params: Mapping[str, Any], expected: Mapping[str, Any], *, source: str,
                  fix: str) -> None:
  """Raises ValueError unless `params` has exactly the keys and shapes of `expected`.

  Both may be nested or flat, in the same layer layout; the error lists the first offenders and
  `fix`.
  """
  got, want = flatten(params), flatten(flax.linen.unbox(expected))
  missing = sorted(set(want) - set(got))
  unused = sorted(set(got) - set(want))
  mismatched = sorted(f"{k}: checkpoint {tuple(got[k].shape)} vs model {tuple(want[k].shape)}"
                      for k in set(got) & set(want) if tuple(got[k].shape) != tuple(want[k].shape))
  if missing or unused or mismatched:
    raise ValueError(_mismatch_message(source, missing, mismatched, unused, fix))


def _adapt(key: str, value: np.ndarray, target: Any, ckpt: Mapping[str, Any],
           init_flat: Mapping[str, Any], posemb_method: str) -> np.ndarray | None:
  """`value` shaped as `target`, or None when the shapes cannot be reconciled."""
  if value.shape == target.shape:
    return value
  if npz.GROUPNORM_KEY.search(key) and value.size == np.prod(target.shape):
    return value.reshape(target.shape)  # Legacy (1, 1, 1, C) GroupNorm params.
  if key == _POSEMB_KEY and value.shape[-1] == target.shape[-1]:
    return _resize_posemb(value, target.shape, ckpt, init_flat, posemb_method)
  if key == _PATCH_KERNEL_KEY and value.shape[2:] == target.shape[2:]:
    logging.info("PI-resizing the patch kernel %s -> %s (FlexiViT).", value.shape, target.shape)
    return np.asarray(resize.pi_resize_patch_kernel(value, target.shape[:2]))
  return None


def _resize_posemb(value: np.ndarray, target_shape: tuple[int, ...], ckpt: Mapping[str, Any],
                   init_flat: Mapping[str, Any], method: str) -> np.ndarray:
  """Resizes the grid part; the class-token entry is kept (or taken from init if only one side has
  it)."""
  old_prefix, new_prefix = int("cls" in ckpt), int("cls" in init_flat)
  new_tokens = target_shape[1] - new_prefix
  side = int(round(new_tokens**0.5))
  if side * side != new_tokens:
    raise ValueError(f"The model's position embedding has {new_tokens} grid tokens, "
                     "not a square grid: resize it yourself with "
                     "vit_jax.models.resize.resize_posemb(..., old_grid=...).")
  logging.info("Resizing the position embedding %s -> %s (%s).", value.shape, target_shape, method)
  resized = np.asarray(resize.resize_posemb(value, (side, side), old_prefix, method))
  if old_prefix == new_prefix:
    return resized
  grid = resized[:, old_prefix:]
  if not new_prefix:
    return grid  # e.g. a token-classifier checkpoint into a gap model: the class entry goes.
  init_posemb = flax.linen.unbox(init_flat[_POSEMB_KEY])
  if isinstance(init_posemb, jax.ShapeDtypeStruct):  # Abstract init: only the shapes are checked.
    init_posemb = np.zeros(init_posemb.shape, init_posemb.dtype)
  return np.concatenate([np.asarray(init_posemb)[:, :new_prefix], grid], axis=1)


def _first(keys: Sequence[str]) -> str:
  more = f"\n      ... and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
  return "".join(f"\n      {k}" for k in keys[:_SHOWN]) + more


_LOAD_FIX = ("Fix: build the model the checkpoint was trained with (variant, classifier, "
             "representation_size, resnet, num_registers, qk_norm, layerscale_init), or name "
             "the params to leave out (the model's keep their init value, the checkpoint's are "
             "dropped) with dont_load=(regex, ...), e.g. dont_load=('MAPHead_0/.*',).")


def _mismatch_message(source: str, missing: list[str], mismatched: list[str], unused: list[str],
                      fix: str) -> str:
  lines = [f"{source} does not fit the model:"]
  if missing:
    lines.append(f"  {len(missing)} model params missing from the checkpoint:{_first(missing)}")
  if mismatched:
    lines.append(f"  {len(mismatched)} shape mismatches:{_first(mismatched)}")
  if unused:
    lines.append(f"  {len(unused)} checkpoint params the model does not have:{_first(unused)}")
  lines.append(fix)
  return "\n".join(lines)
