"""Every recipe config loads with its typed args, and bad args are named."""
import importlib.util
import os

import pytest

from vit_jax import config_lib
from vit_jax import models
from vit_jax import optim

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def _load(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIGS, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("name, arg", [
    ("quickstart", None), ("quickstart", "patch=7,width=32"),
    ("vit_i1k", None), ("vit_i1k", "variant=B/16,epochs=300"), ("vit_i1k", "runlocal"),
    ("vit_i21k", "variant=L/16"), ("finetune", "dataset=oxford_iiit_pet,res=224"),
])
def test_config_loads_and_names_a_real_model_and_optimizer(name, arg):
  module = _load(name)
  assert "python -m vit_jax.train" in module.__doc__ and "Expected" in module.__doc__
  config = module.get_config(arg)
  models.model_kwargs(config.model_name, **config.model)  # raises on a bad name / field
  assert config.optim.name in optim.OPTIMIZERS and config.input.pp
  assert [config.get(f"total_{u}") is not None for u in ("steps", "epochs", "examples")].count(True) == 1


def test_parse_arg_types_and_errors():
  args = config_lib.parse_arg("variant=B/16,epochs=300,runlocal", variant="S/16", epochs=90.0,
                              runlocal=False)
  assert (args.variant, args.epochs, args.runlocal) == ("B/16", 300.0, True)
  with pytest.raises(ValueError, match="Unknown config arg 'epoch'"):
    config_lib.parse_arg("epoch=3", epochs=90.0)
  with pytest.raises(ValueError, match="must be of type int"):
    config_lib.parse_arg("batch=lots", batch=1024)
