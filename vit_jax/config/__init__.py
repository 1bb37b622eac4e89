"""Experiment configs: the base config (every field's one default), config-file args, bad input.

Config files in configs/ start from `base_config()` and set what their experiment changes; the
trainer reads every field from the config as it is, so a default lives in `base.py` and nowhere
else.
"""
from vit_jax.config.args import parse_arg
from vit_jax.config.base import base_config, check_known_fields, resolve_evals, shrink_to_runlocal
from vit_jax.config.errors import BadInputError, bad_input

__all__ = ["BadInputError", "bad_input", "base_config", "check_known_fields", "parse_arg",
           "resolve_evals", "shrink_to_runlocal"]
