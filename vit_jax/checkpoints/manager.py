"""Orbax checkpoints of the training state and of the input pipeline's position.

Layout: `WORKDIR/checkpoints/<step>/{state,data}`. `state` is the train-state pytree (params, optimizer
state, step, rng, ...) written by every process in parallel (each its own shards); `data` is the input
iterator's JSON state (`vit_jax.data.pipeline`'s holds every host's position), so a resumed run continues
each host's input stream exactly where it stopped. Restoring takes an abstract target whose shardings may
come from a different mesh or device count than the one that saved. Paths are etils.epath paths:
a local directory (absolute: Orbax rejects relative paths late) or a bucket (gs://...).
"""
from __future__ import annotations

from typing import Any

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from vit_jax.checkpoints import workdir


class TrainStateCheckpointer:
  """Saves and restores (train state, data-iterator state) with an Orbax CheckpointManager.

  Args:
    directory: where the step directories go (`Workdir.checkpoints`).
    save_every_steps: regular saves happen at multiples of this; `save(force=True)` saves any step.
    keep: how many of the most recent checkpoints to keep (None keeps all).
    async_save: write in a background thread while training continues.
  """

  def __init__(self, directory: epath.Path, *, save_every_steps: int, keep: int | None = 3,
               async_save: bool = True):
    self.directory = directory
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(int(save_every_steps), 1), max_to_keep=keep,
        enable_async_checkpointing=async_save, create=True)
    self._manager = ocp.CheckpointManager(directory, options=options,
                                          item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_iterator: Any = None, *, force: bool = False) -> bool:
    """Saves at `step` if it is due (or `force`); all processes must call it. Returns whether it saved.

    `data_iterator.get_state()` (JSON-serialisable) is saved alongside; it is only asked when saving.
    """
    if step in self._manager.all_steps():
      return False  # Orbax would silently skip a second save of the same step.
    if not force and not self._manager.should_save(step):
      return False
    # Every process calls get_state(): for multi-host iterators it is a collective.
    data = {"iterator": None if data_iterator is None else data_iterator.get_state()}
    return self._manager.save(step, force=force, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data)))

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, Any, int]:
    """Restores onto the shardings in `abstract_state` (a tree of jax.ShapeDtypeStruct).

    Returns (state, the data-iterator state or None, step).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored.state, (restored.data or {}).get("iterator"), step

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def checkpoint_step_dir(path: str | epath.PathLike) -> epath.Path:
  """Resolves an Orbax path given as a step directory or as a checkpoints root (-> latest step)."""
  path = workdir.resolve(path)
  if (path / "state").is_dir():
    return path
  steps = [int(d.name) for d in path.iterdir() if d.name.isdigit()] if path.is_dir() else []
  if not steps:
    raise FileNotFoundError(
        f"No Orbax checkpoint at {path}: expected a step directory containing 'state' or a "
        "directory of step directories (e.g. WORKDIR/checkpoints).")
  return path / str(max(steps))


def load_params(path: str | epath.PathLike) -> dict[str, Any]:
  """The `params` of an Orbax train-state checkpoint as host numpy arrays, at their saved shapes.

  Used to initialise a fine-tune from a previous run (the caller adapts head and position embedding).
  """
  state_dir = checkpoint_step_dir(path) / "state"
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(state_dir).item_metadata.tree
  if "params" not in metadata:
    raise ValueError(f"Orbax checkpoint {state_dir} has no 'params' entry (found {sorted(metadata)}).")
  target = {"params": jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), metadata["params"])}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
  restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
      item=target, restore_args=restore_args, partial_restore=True))
  return restored["params"]
