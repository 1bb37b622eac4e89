"""Typed arguments of config files:
`--config=configs/vit_i1k.py:variant=B/16,epochs=300,runlocal`."""
from __future__ import annotations

from typing import Any

import ml_collections


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """'variant=B/16,runlocal' -> ConfigDict(variant='B/16', runlocal=True, <other defaults>).

  Each value is converted to the type of its default; a bare name sets a bool default to True.
  """
  result = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, has_value, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"Unknown config arg {key!r} in {arg!r}; known args: {sorted(defaults)}.")
    default = defaults[key]
    if not has_value:
      if not isinstance(default, bool):
        raise ValueError(f"Config arg {key!r} needs a value ({key}=...).")
      result[key] = True
    elif isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"Config arg {key}={value!r} must be true or false.")
      result[key] = value.lower() in ("true", "1")
    elif default is None:
      result[key] = value
    else:
      try:
        result[key] = type(default)(value)
      except ValueError as e:
        raise ValueError(
            f"Config arg {key}={value!r} must be of type {type(default).__name__}.") from e
  return ml_collections.ConfigDict(result)
