"""A training program built from a config: the one recipe that train, evaluate, bench and the
experiments share.

    program = TrainProgram.from_config(config)            # checks everything, compiles nothing
    state = program.init(program.pretrained_params())     # fresh, or fitted from config.init
    with program.mesh_context():
      state, metrics = program.train_step()(state, batch)  # jitted once per patch size
      results = {name: evaluate(state.params) for name, evaluate in program.evaluators().items()}

Building a program traces shapes only: the mesh, the model (validated against the image shape),
the optimizer and schedule, and every sharding of the train state. The model's parameters carry
logical axis names; `mesh_context()` maps them to the mesh's axes while steps are traced.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Callable, Iterator, Sequence

from absl import logging
import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vit_jax import config as config_lib
from vit_jax import evaluators as evaluators_lib
from vit_jax import models
from vit_jax.checkpoints import pretrained
from vit_jax.data import pipeline, sources
from vit_jax.models import flops, kernels
from vit_jax.runtime import hardware
from vit_jax.training import checks, losses, optimizers, schedules, sharding
from vit_jax.training import state as state_lib
from vit_jax.training import step as step_lib


@dataclasses.dataclass(frozen=True)
class TrainProgram:
  """Everything derived from a config and a set of devices; see the module docstring."""
  config: ml_collections.ConfigDict
  devices: tuple[jax.Device, ...]
  mesh: jax.sharding.Mesh
  axis_rules: tuple[tuple[str, Any], ...]  # logical axis name -> mesh axes of this mesh
  model: models.Model
  model_fields: dict[str, Any]  # the Model fields config.model decodes to
  image_shape: tuple[int, int, int]  # (H, W, C) of a preprocessed image
  total_steps: int
  warmup_steps: int
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  loss_fn: Callable[..., jax.Array]
  abstract_params: Any  # jax.ShapeDtypeStruct leaves
  param_shardings: Any
  state_shardings: state_lib.TrainState
  _train_steps: dict[int | None, Callable] = dataclasses.field(default_factory=dict, repr=False)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, *,
                  devices: Sequence[jax.Device] | None = None,
                  image_shape: Sequence[int] | None = None,
                  schedule_steps: tuple[int, int] | None = None) -> TrainProgram:
    """Builds and checks the program; raises ValueError / FileNotFoundError naming a bad value.

    Args:
      config: an experiment config (vit_jax.config.base_config and configs/).
      devices: the devices of the mesh (default: all).
      image_shape: (H, W, C) of the images; default: one preprocessed example of config.input.
      schedule_steps: (total, warmup) steps of the lr schedule instead of the config's durations,
        for programs that never run a whole training (benchmarks, evaluation).
    """
    config_lib.check_known_fields(config)
    devices = tuple(jax.devices() if devices is None else devices)
    mesh = sharding.make_mesh(config.mesh, devices, config.dcn_mesh)
    rules = config.sharding_rules or sharding.DEFAULT_RULES
    model_fields = models.model_kwargs(**config.model.to_dict())
    model = models.Model(num_classes=config.num_classes, **model_fields)
    kernels.check_attention_impl(model_fields["attention_impl"], devices[0].platform,
                                 model_fields["dtype"],
                                 model_fields["width"] // model_fields["num_heads"])
    loss_fn = losses.get_loss(config.loss)
    checks.check_labels(config)
    image_shape = tuple(image_shape or pipeline.example_shape(config.input))
    checks.check_flexi_patch_sizes(config.flexi.patch_sizes, image_shape[:2],
                                   model_fields["posemb"])
    abstract, param_shardings = _abstract_params(model, image_shape, mesh, rules)
    if schedule_steps is None:
      schedule_steps = _schedule_steps(config)
    total_steps, warmup_steps = schedule_steps
    tx, schedule = optimizers.make_optimizer(config.optim, abstract, total_steps=total_steps,
                                             warmup_steps=warmup_steps)
    return cls(config=config, devices=devices, mesh=mesh,
               axis_rules=sharding.mesh_rules(mesh, rules), model=model,
               model_fields=model_fields, image_shape=image_shape, total_steps=total_steps,
               warmup_steps=warmup_steps, tx=tx, schedule=schedule, loss_fn=loss_fn,
               abstract_params=abstract, param_shardings=param_shardings,
               state_shardings=_state_shardings(tx, abstract, param_shardings, mesh,
                                                bool(config.ema_decay)))

  # --- Placement ----------------------------------------------------------------------------------

  @contextlib.contextmanager
  def mesh_context(self) -> Iterator[None]:
    """The mesh and logical-axis rules that steps are traced (first called) under."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.axis_rules):
      yield

  @property
  def batch_sharding(self) -> jax.sharding.NamedSharding:
    return sharding.batch_sharding(self.mesh)

  @property
  def data_parallel(self) -> int:
    return sharding.data_parallel_size(self.mesh)

  @property
  def attention_kernel(self) -> str:
    """'einsum', 'xla' or 'cudnn': what runs the model's attention in a training step."""
    f = self.model_fields
    return kernels.attention_kernel(f["attention_impl"], self.devices[0].platform, f["dtype"],
                                    f["width"] // f["num_heads"], f["attention_dropout"])

  @property
  def num_params(self) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.abstract_params))

  def abstract_state(self) -> state_lib.TrainState:
    """The train state as shapes with this program's shardings: the target of a restore."""
    shapes = jax.eval_shape(self._make_state, self.abstract_params, jax.random.PRNGKey(0))
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes,
                        self.state_shardings)

  def abstract_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """A global batch as shapes, for lowering a step without data."""
    spec = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=self.batch_sharding)
    return {"image": spec(batch_size, *self.image_shape),
            "label": spec(batch_size, self.config.num_classes)}

  # --- Initial state ------------------------------------------------------------------------------

  def pretrained_params(self) -> dict[str, Any] | None:
    """config.init's params, read and checked against the model before anything is compiled.

    None without config.init. Raises ValueError / FileNotFoundError for a file that is missing,
    unreadable or of another model.
    """
    if not self.config.init:
      return None
    checks.check_checkpoint_path(self.config.init)
    # An init whose source computes otherwise (Hugging Face's exact GELU) needs the model so.
    params = pretrained.read_params(self.config.init, model_fields=self.model_fields)
    # Fitting onto the abstract init raises what fitting the real one would: shapes, missing keys.
    pretrained.merge_pretrained(self.abstract_params, params, dont_load=self.config.dont_load,
                                source=self.config.init)
    return params

  def init(self, pretrained_params: dict[str, Any] | None = None) -> state_lib.TrainState:
    """The train state at step 0: fresh params from config.seed, fitted with `pretrained_params`.

    Traced outside the mesh context (see `_abstract_params`); each function compiles once.
    """
    params_rng, state_rng = jax.random.split(jax.random.PRNGKey(self.config.seed))
    init_params = jax.jit(
        lambda rng: nn.meta.unbox(self.model.init({"params": rng}, self._zeros_image(),
                                                  train=False)["params"]),
        out_shardings=self.param_shardings)
    params = init_params(params_rng)
    if pretrained_params is not None:
      fitted = pretrained.merge_pretrained(_to_host(params), pretrained_params,
                                           dont_load=self.config.dont_load,
                                           source=self.config.init)
      params = jax.device_put(fitted, self.param_shardings)
      logging.info("Initialised from %s.", self.config.init)
    make_state = jax.jit(self._make_state,
                         in_shardings=(self.param_shardings, sharding.replicated(self.mesh)),
                         out_shardings=self.state_shardings, donate_argnums=0)
    return make_state(params, state_rng)

  def _make_state(self, params: Any, rng: jax.Array) -> state_lib.TrainState:
    return state_lib.make_state(self.tx, params, rng, ema=bool(self.config.ema_decay))

  def _zeros_image(self) -> jax.Array:
    return jnp.zeros((1, *self.image_shape), jnp.float32)

  # --- Steps --------------------------------------------------------------------------------------

  def train_step(self, patch_size: int | None = None) -> step_lib.TrainStep:
    """The jitted train step (state donated), at `patch_size` for FlexiViT; built once per size."""
    if patch_size not in self._train_steps:
      c = self.config
      step = step_lib.make_train_step(
          self.model, self.tx, loss_fn=self.loss_fn, schedule=self.schedule,
          label_smoothing=c.label_smoothing, grad_accum_steps=c.grad_accum_steps,
          mixup_cfg=c.input.mixup, ema_decay=c.ema_decay,
          patch_size=(patch_size, patch_size) if patch_size else None)
      self._train_steps[patch_size] = jax.jit(
          step, in_shardings=(self.state_shardings, self.batch_sharding),
          out_shardings=(self.state_shardings, sharding.replicated(self.mesh)), donate_argnums=0)
    return self._train_steps[patch_size]

  def evaluators(self) -> dict[str, evaluators_lib.Evaluator]:
    """Every eval of config.evals, built once (each compiles its steps on its first call)."""
    checks.check_batch(self.config.eval_batch_size, data_parallel=self.data_parallel,
                       num_processes=jax.process_count(), grad_accum_steps=1,
                       what="config.eval_batch_size")
    return {name: evaluators_lib.build(cfg, model=self.model, params_sharding=self.param_shardings,
                                       batch_sharding=self.batch_sharding,
                                       batch_size=self.config.eval_batch_size, loss_fn=self.loss_fn,
                                       patch_sizes=tuple(self.config.flexi.patch_sizes))
            for name, cfg in config_lib.resolve_evals(self.config).items()}

  # --- Cost ---------------------------------------------------------------------------------------

  @functools.cached_property
  def peak(self) -> hardware.Peak:
    """Peak FLOP/s of one device, for MFU. Found on first use, after the bad-input checks: on a
    CPU that hides its boost clock it times a matmul, and bad input must compile nothing."""
    return hardware.peak_flops_per_device(self.devices[0])

  def train_flops_per_image(self, patch_size: tuple[int, int] | None = None) -> float:
    """Analytic training FLOPs per image at `patch_size`. By default those of a training run: with
    FlexiViT the mean over `flexi.patch_sizes` (each drawn equally often), else the model's own."""
    if patch_size is None and self.config.flexi.patch_sizes:
      return float(np.mean([self.train_flops_per_image((p, p))
                            for p in self.config.flexi.patch_sizes]))
    fields = {**self.model_fields, "patch_size": patch_size or self.model_fields["patch_size"]}
    return float(flops.train_flops_per_image(fields, self.image_shape[:2],
                                             channels=self.image_shape[2],
                                             num_classes=self.config.num_classes))

  def mfu(self, img_per_s: float, patch_size: tuple[int, int] | None = None) -> float | None:
    """Model FLOPs utilisation at `img_per_s` of steps at `patch_size` (default: a training run's
    mix, see `train_flops_per_image`), or None when the devices' peak is unknown.

    CPU "devices" (fake or not) share the cores of one nominal peak; accelerators each have theirs.
    """
    if self.peak.flops is None:
      return None
    chips = 1 if self.devices[0].platform == "cpu" else len(self.devices)
    return img_per_s * self.train_flops_per_image(patch_size) / (self.peak.flops * chips)


def _schedule_steps(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(total, warmup) steps from the config's durations (epochs need the training split's size)."""
  num_examples = lambda: len(sources.open_source(config.input.data).records)
  total = schedules.duration_in_steps(config, "total", batch_size=config.batch_size,
                                      num_train_examples=num_examples)
  warmup = schedules.duration_in_steps(config.optim, "warmup", batch_size=config.batch_size,
                                       num_train_examples=num_examples, default=0)
  checks.check_duration(total, warmup)
  return total, warmup


def _abstract_params(model: nn.Module, image_shape: Sequence[int], mesh: jax.sharding.Mesh,
                     rules: Sequence[Any]) -> tuple[Any, Any]:
  """(abstract unboxed params, their NamedShardings) without computing anything.

  Tracing the init also validates the model against the image shape (e.g. patch size divides it).
  """
  # Traced without a mesh context: flax would constrain DenseGeneral's flattened (D, H*Dh) init
  # value with the 3-axis names of its (D, H, Dh) kernel. Placement comes from the shardings
  # instead.
  boxed = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)},
                                            jnp.zeros((1, *image_shape), jnp.float32),
                                            train=False)["params"])
  return nn.meta.unbox(boxed), sharding.logical_shardings(boxed, mesh, rules)


def _state_shardings(tx: optax.GradientTransformation, abstract: Any, param_shardings: Any,
                     mesh: jax.sharding.Mesh, ema: bool) -> state_lib.TrainState:
  """Optimizer state is sharded like the params it mirrors (moments of an FSDP kernel are FSDP)."""
  replicated = sharding.replicated(mesh)
  init_shapes = lambda params: jax.eval_shape(tx.init, params)  # An eager init would compile.
  # A frozen param (`optim.freeze`) has an empty MaskedNode for its moments: kept as it is, so the
  # shardings have the state's structure.
  masked = lambda x: isinstance(x, optax.MaskedNode)
  opt_shardings = optax.tree_map_params(init_shapes, lambda x, s: x if masked(x) else s,
                                        init_shapes(abstract), param_shardings,
                                        transform_non_params=lambda _: replicated, is_leaf=masked)
  return state_lib.TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings,
                              rng=replicated, ema_params=param_shardings if ema else None)


def _to_host(tree: Any) -> Any:
  """Global arrays -> full NumPy arrays on every process."""
  if all(x.is_fully_addressable for x in jax.tree.leaves(tree)):
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)
