"""The base config: every field the trainer reads, each with its one default.

Experiment configs (configs/*.py) start from `base_config()` and change what their experiment
changes, so `--config.<field>=...` works for every field on every config (ml_collections rejects
unknown fields) and no module re-defaults a field. A `None` model field means "the variant's value
or the model's own default" (vit_jax.models.Model).
"""
from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections import config_dict

# What an eval entry (`config.evals.<name>`) may set besides `data` and `pp`, and its default.
EVAL_DEFAULTS = {"type": "classification", "every_steps": None}  # None: at the last step only
# Fields of `config.input.data` that every eval inherits unless its own `data` sets them.
INHERITED_DATA_FIELDS = ("data_dir", "root", "on_corrupt", "classes", "cache_raw",
                         "cache_decoded")


def _unset(kind: type) -> config_dict.FieldReference:
  return config_dict.placeholder(kind)


def base_config() -> ml_collections.ConfigDict:
  """Every field the trainer reads, with defaults; experiment configs fill in the rest."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Model: a variant ('S/16', 'B', 'R50+B/16'; None for a model given by its dims) plus overrides
  # of any vit_jax.models.Model field. `patch_size` overrides the variant's patch size.
  c.model = ml_collections.ConfigDict(dict(
      variant="S/16", patch_size=_unset(int), width=_unset(int), depth=_unset(int),
      mlp_dim=_unset(int), num_heads=_unset(int), classifier=_unset(str), posemb=_unset(str),
      representation_size=_unset(int), dropout=_unset(float), attention_dropout=_unset(float),
      stoch_depth=_unset(float), dtype=_unset(str), scan=_unset(bool), remat_policy=_unset(str),
      resnet=_unset(object), attention_impl=_unset(str), head_bias_init=_unset(float),
      # Architecture options (vit_jax/models/vit.py), off when unset: posemb='rope2d' for RoPE.
      num_registers=_unset(int), qk_norm=_unset(bool), use_bias=_unset(bool),
      parallel_block=_unset(bool), layerscale_init=_unset(float), fc_norm=_unset(bool),
      # Numerics of other libraries (vit_jax/models/vit.py), official when unset.
      gelu_approximate=_unset(bool), resnet_numerics=_unset(str)))
  c.num_classes = 1000
  c.init = ""              # .npz or Orbax checkpoint to fine-tune from ('' = random init)
  c.dont_load = ()         # regexes of params kept at init when loading `init`

  c.input = ml_collections.ConfigDict()
  # data_dir / root / on_corrupt / classes / cache_raw / cache_decoded are inherited by every
  # eval (INHERITED_DATA_FIELDS).
  c.input.data = ml_collections.ConfigDict(dict(
      name="", split="train", data_dir=_unset(str), root=_unset(str), on_corrupt="skip",
      # A subset: the labels kept (renumbered 0..k-1 in this order; () = all) and the first
      # per_class examples of each (0 = all). Evals inherit `classes`.
      classes=(), per_class=0,
      # Keep the encoded examples in host RAM once read (small datasets: later epochs skip reads).
      cache_raw=False,
      # Keep each example's output of the pp chain's head up to its first random op (decode,
      # resize, ...) in host RAM: later epochs skip the decode. Decoded images must fit in RAM.
      cache_decoded=False))
  c.input.pp = ""
  c.input.threads = 8      # reader threads per host
  c.input.workers = 0      # grain worker processes per host
  c.input.prefetch = 2     # batches put on device ahead of use
  c.input.mixup = ml_collections.ConfigDict(dict(mixup_alpha=0.0, cutmix_alpha=0.0,
                                                 switch_prob=0.5))

  # Duration: exactly one of total_steps / total_epochs / total_examples.
  c.batch_size = 1024
  c.total_steps = _unset(int)
  c.total_epochs = _unset(float)
  c.total_examples = _unset(int)
  c.grad_accum_steps = 1

  c.optim = ml_collections.ConfigDict(dict(
      name="adamw", lr=1e-3, wd=1e-4, b1=0.9, b2=0.999, eps=1e-8, momentum=0.9, nesterov=False,
      mu_dtype=_unset(str), grad_clip_norm=1.0, schedule="cosine", end_lr=0.0,
      rsqrt_timescale=_unset(int),
      warmup_steps=_unset(int), warmup_epochs=_unset(float), warmup_examples=_unset(int),
      lr_mults=(), freeze=(),
      # Layer-wise lr decay (BEiT / timm --layer-decay): block i (1..depth) gets
      # layer_decay**(depth + 1 - i), the embeddings layer_decay**(depth + 1), the head 1.
      layer_decay=_unset(float)))
  c.loss = "softmax_xent"  # or 'sigmoid_xent'
  c.label_smoothing = 0.0
  c.ema_decay = _unset(float)
  # FlexiViT: each step trains at a patch size drawn from this set and every eval runs at each of
  # them (metrics `<eval>/<metric>@p<P>`); the model's own patch size keeps the plain keys.
  # () = off.
  c.flexi = ml_collections.ConfigDict(dict(patch_sizes=()))

  # Parallelism: mesh axes (data / fsdp / tensor) and logical-axis rules (None = the default table).
  c.mesh = (("data", -1),)
  # Multi-slice TPU jobs: how many slices each mesh axis spans, e.g. (("data", 2),); the mesh then
  # describes one slice. () = one slice.
  c.dcn_mesh = ()
  c.sharding_rules = _unset(tuple)

  # Evals: `c.evals.<name> = dict(data=dict(name=..., split=...), pp=..., every_steps=...,
  # type='classification')`; every eval uses `eval_batch_size`.
  c.evals = ml_collections.ConfigDict()
  c.eval_batch_size = 1024
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.async_checkpoints = True
  return c


def check_known_fields(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming every field of `config` that `base_config` lacks: a config file
  that sets `optim.warmup_step` (for `warmup_steps`) would otherwise train with the default.

  `--config.<field>=` flags are checked by ml_collections; this checks what a config file adds.
  An eval's `data` has the fields of `input.data`; the rest of an eval is `resolve_evals`' to
  check, `model` is `vit_jax.models.model_kwargs`'.
  """
  base = base_config()
  unknown = [*_unknown(config, base, "")]
  for name, entry in config.evals.items():
    if isinstance(entry.get("data"), (dict, ml_collections.ConfigDict)):
      unknown += _unknown(ml_collections.ConfigDict(dict(entry["data"])), base.input.data,
                          f"evals.{name}.data.")
  if unknown:
    raise ValueError(f"config.{', config.'.join(unknown)}: no such field (a typo?); every field "
                     "and its default is in vit_jax/config/base.py.")


def _unknown(config: ml_collections.ConfigDict, base: ml_collections.ConfigDict,
             prefix: str) -> list[str]:
  """Dotted names of `config`'s fields that `base` lacks, looking into the sub-configs `base` has
  (not into `evals` or `model`, checked elsewhere)."""
  found = []
  for key, value in config.items():
    if key not in base:
      found.append(prefix + key)
    elif (isinstance(base[key], ml_collections.ConfigDict) and key not in ("evals", "model")
          and isinstance(value, ml_collections.ConfigDict)):
      found += _unknown(value, base[key], f"{prefix}{key}.")
  return found


def resolve_evals(config: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
  """Every `config.evals` entry completed: defaults, the inherited data fields and reader settings.

  Raises ValueError naming an entry that misses `data` / `pp` or sets a field evals do not have.
  """
  resolved = {}
  for name, entry in config.evals.items():
    entry = dict(entry)
    if "batch_size" in entry:
      raise ValueError(f"config.evals.{name}.batch_size: evals have one batch size, "
                       f"config.eval_batch_size; set --config.eval_batch_size instead.")
    unknown = sorted(set(entry) - {"data", "pp", *EVAL_DEFAULTS})
    missing = [k for k in ("data", "pp") if not entry.get(k)]
    if unknown or missing:
      raise ValueError(f"config.evals.{name} has unknown fields {unknown} or misses {missing}; an "
                       f"eval is dict(data=dict(name=..., split=...), pp=..., every_steps=..., "
                       f"type=...).")
    data: dict[str, Any] = {k: config.input.data[k] for k in INHERITED_DATA_FIELDS}
    data.update({k: v for k, v in dict(entry.pop("data")).items() if v is not None})
    resolved[name] = ml_collections.ConfigDict({
        **EVAL_DEFAULTS, **entry, "data": data,
        "threads": config.input.threads, "prefetch": config.input.prefetch})
  return resolved


def shrink_to_runlocal(config: ml_collections.ConfigDict, train_split: str | None = None) -> None:
  """Shrinks a recipe in place to its smoke test on one CPU (big_vision's `runlocal`): 10 steps of
  8 images with 2 warmup steps, every step logged, each eval on the first 16 examples of its split,
  and `train_split` if given. The recipe picks its tiny model itself (e.g. ViT-mu/16)."""
  if train_split:
    config.input.data.split = train_split
  config.batch_size = config.eval_batch_size = 8
  config.total_steps, config.total_epochs, config.total_examples = 10, None, None
  config.optim.update(warmup_steps=2, warmup_epochs=None, warmup_examples=None)
  config.log_every_steps = 1
  for entry in config.evals.values():
    entry.data.split = entry.data.split.split("[")[0] + "[:16]"
