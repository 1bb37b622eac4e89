"""The recipe a run was started with, and what a resume would change of it.

A resumed run continues one experiment: the model, the data it sees, the optimizer and the
duration must be those the checkpoints were trained with, or the result is neither the old
experiment nor a new one. Where the run executes (mesh, data location, reader threads) and what it
reports (evals, intervals) may change freely.
"""
from __future__ import annotations

import json
from typing import Any

import ml_collections

# Config fields (and the fields under these prefixes) a resumed run may change.
OPERATIONAL = ("mesh", "dcn_mesh", "sharding_rules", "input.data.data_dir", "input.data.root",
               "input.data.on_corrupt", "input.threads", "input.prefetch", "evals",
               "eval_batch_size", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
               "async_checkpoints", "init", "dont_load", "model.attention_impl",
               "model.remat_policy")


def as_record(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as the JSON that WORKDIR/config.json holds (tuples become lists)."""
  return json.loads(json.dumps(config.to_dict(), default=str))


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(tree, dict):
    return {prefix[:-1]: tree}
  flat = {}
  for key, value in tree.items():
    flat.update(_flat(value, f"{prefix}{key}."))
  return flat


def _operational(key: str) -> bool:
  return any(key == field or key.startswith(field + ".") for field in OPERATIONAL)


def changes(recorded: dict[str, Any], config: ml_collections.ConfigDict) -> list[str]:
  """'field: old -> new' for every recipe field `config` changes from the `recorded` one."""
  old, new = _flat(recorded), _flat(as_record(config))
  return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(old.keys() | new.keys())
          if not _operational(key) and old.get(key) != new.get(key)]
