"""Configs are data: every recipe loads with its typed args, keeps every base field (one default, in
the base config), names a real model, and every eval inherits the input's data directory."""
import ml_collections
import pytest

from helpers import config_module, load_config
from vit_jax import config as config_lib
from vit_jax import models
from vit_jax.models import flops
from vit_jax.training import optimizers

RECIPES = [
    ("quickstart", None), ("quickstart", "patch=7,width=32"),
    ("quickstart", "stem=True,patch=1,train_images=500,steps=703"),
    ("quickstart", "classes=5-9,per_class=10,res=56,patch=7,batch=25,steps=200"),
    ("vit_i1k", None), ("vit_i1k", "variant=B/16,epochs=300"), ("vit_i1k", "runlocal"),
    ("vit_i21k", "variant=L/16"), ("vit_i21k", "runlocal"), ("augreg_i21k", None),
    ("augreg_i21k", "variant=S/16,aug=strong2,runlocal"),
    ("finetune", "dataset=oxford_iiit_pet,res=224,variant=B/16"),
    ("finetune", "dataset=bundled_mnist,variant=Ti/16,runlocal"),
]


def _field_paths(config: ml_collections.ConfigDict, prefix: str = "") -> set[str]:
  paths = set()
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict) and key != "evals":
      paths |= _field_paths(value, f"{prefix}{key}.")
    else:
      paths.add(prefix + key)
  return paths


@pytest.mark.parametrize("name, arg", RECIPES)
def test_recipe_loads_and_names_a_real_model_and_optimizer(name, arg):
  doc = config_module(name).__doc__
  assert "python -m vit_jax.train" in doc and "Expected" in doc
  config = load_config(name, arg)
  models.model_kwargs(**config.model.to_dict())  # Raises on a bad variant or field.
  assert config.optim.name in optimizers.OPTIMIZERS and config.input.pp
  durations = [config[f"total_{u}"] for u in ("steps", "epochs", "examples")]
  assert [d is not None for d in durations].count(True) == 1


@pytest.mark.parametrize("name, arg", RECIPES)
def test_recipe_keeps_every_base_field_so_every_override_works(name, arg):
  """A recipe that replaced a sub-dict (`c.input.data = dict(...)`) would drop fields such as
  `input.data.root`, and `--config.input.data.root=...` would fail on it."""
  assert _field_paths(config_lib.base_config()) <= _field_paths(load_config(name, arg))


def test_base_model_fields_are_the_model_fields():
  assert set(config_lib.base_config().model) == {"variant", *models.FIELDS}


def test_a_variant_is_decoded_once_with_overrides_and_names_are_still_accepted():
  config = config_lib.base_config()
  config.model.update(variant="B/16", patch_size=8, dtype="bfloat16")
  fields = models.model_kwargs(**config.model.to_dict())
  assert (fields["width"], fields["patch_size"], str(fields["dtype"])) == (768, (8, 8), "bfloat16")
  assert models.model_kwargs("ViT-B_16") == models.model_kwargs("B", patch_size=16)
  with pytest.raises(ValueError, match=r"needs \['patch_size'\]"):
    models.model_kwargs("B")
  with pytest.raises(ValueError, match=r"needs \['patch_size', 'width', 'depth'"):
    models.model_kwargs(None, mlp_dim=8, num_heads=2)


def test_evals_inherit_the_data_dir_and_take_the_defaults():
  config = load_config("vit_i1k")
  config.input.data.data_dir = "gs://bucket/tfds"  # As --config.input.data.data_dir=... does.
  evals = config_lib.resolve_evals(config)
  assert {e.data.data_dir for e in evals.values()} == {"gs://bucket/tfds"}
  assert evals["val"].data.split == "validation" and evals["val"].type == "classification"
  quickstart = config_lib.resolve_evals(load_config("quickstart", "data_dir=/data/tfds"))["val"]
  assert (quickstart.data.data_dir, quickstart.every_steps, quickstart.threads) == (
      "/data/tfds", 250, 0)  # The input's threads (none: the digits are read from RAM).
  config.evals.val.data.data_dir = "/elsewhere"  # An eval may still name its own.
  assert config_lib.resolve_evals(config)["val"].data.data_dir == "/elsewhere"


def test_eval_entries_are_checked():
  config = config_lib.base_config()
  config.evals.val = dict(data=dict(name="x", split="test"), pp="decode", batch_size=8)
  with pytest.raises(ValueError, match="config.eval_batch_size"):
    config_lib.resolve_evals(config)
  config.evals.val = dict(data=dict(name="x", split="test"), pp="decode", evry_steps=8)
  with pytest.raises(ValueError, match=r"unknown fields \['evry_steps'\]"):
    config_lib.resolve_evals(config)


def test_parse_arg_types_and_errors():
  args = config_lib.parse_arg("variant=B/16,epochs=300,runlocal", variant="S/16", epochs=90.0,
                              runlocal=False)
  assert (args.variant, args.epochs, args.runlocal) == ("B/16", 300.0, True)
  with pytest.raises(ValueError, match="Unknown config arg 'epoch'"):
    config_lib.parse_arg("epoch=3", epochs=90.0)
  with pytest.raises(ValueError, match="must be of type int"):
    config_lib.parse_arg("batch=lots", batch=1024)


def test_quickstart_experiment_args_set_the_data_model_and_length():
  """The args the local experiments sweep: a class subset renumbered in the head and evals, a
  resolution in both pp strings, a hybrid stem, a prefix of the training digits, a step count."""
  c = load_config("quickstart", "classes=5-9,per_class=10,res=56,patch=7,steps=200")
  assert c.num_classes == 5 and c.input.data.classes == (5, 6, 7, 8, 9)
  assert c.input.data.per_class == 10 and (c.total_steps, c.total_epochs) == (200, None)
  assert c.input.pp == "decode(channels=1)|resize(56)|random_shift(4)|value_range(-1, 1)|onehot(5)"
  [val] = config_lib.resolve_evals(c).values()
  assert val.data["classes"] == (5, 6, 7, 8, 9) and "|resize(56)|" in val.pp
  c = load_config("quickstart", "stem=True,patch=1,train_images=500")
  assert c.input.data.split == "train[:500]" and c.model.resnet == {"num_layers": (),
                                                                     "width_factor": 1}
  kwargs = models.model_kwargs(**c.model.to_dict())
  # The stem (/4) then 1x1 patches: the 49 tokens of patch 4, plus the convolution's FLOPs.
  stem = 2 * 14 * 14 * 7 * 7 * 64
  assert flops.forward_flops_per_image(kwargs, 28, 1) - stem == flops.forward_flops_per_image(
      {**kwargs, "resnet": None, "patch_size": (4, 4)}, 28, 1) - 2 * 49 * 16 * 64 + 2 * 49 * 64 * 64
  default = load_config("quickstart")
  assert default.input.pp == "decode(channels=1)|random_shift(2)|value_range(-1, 1)|onehot(10)"
  assert default.model.resnet is None and default.input.data.split == "train"
