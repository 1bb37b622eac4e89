"""Orbax checkpoints of the training state and of the input pipeline's position.

Layout: `WORKDIR/checkpoints/<step>/{state,data}`. `state` is the train-state pytree (params,
optimizer state, step, rng, ...) written by every process in parallel (each its own shards); `data`
is the input iterator's JSON state (`vit_jax.data.pipeline`'s holds every host's position), so a
resumed run continues each host's input stream exactly where it stopped. Restoring takes an abstract
target whose shardings may come from a different mesh or device count than the one that saved. Paths
are etils.epath paths: a local directory (absolute: Orbax rejects relative paths late) or a bucket
(gs://...).
"""
from __future__ import annotations

from typing import Any

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
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

  def is_due(self, step: int, *, force: bool = False) -> bool:
    """Whether `save(step, ..., force=force)` would write a checkpoint."""
    if step in self._manager.all_steps():
      return False  # Orbax would silently skip a second save of the same step.
    return force or self._manager.should_save(step)

  def save(self, step: int, state: Any, data_iterator: Any = None, *, force: bool = False) -> bool:
    """Saves at `step` if it is due (or `force`); all processes must call it. Returns whether it
    saved.

    `data_iterator.get_state()` (JSON-serialisable) is saved alongside; it is only asked when
    saving.
    """
    if not self.is_due(step, force=force):
      return False
    # The data position is global (the same on every process); Orbax writes it once.
    data = {"iterator": None if data_iterator is None else data_iterator.get_state()}
    return self._manager.save(step, force=force, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data)))

  def restore(self, abstract_state: Any) -> tuple[Any, Any, int]:
    """Restores the newest step every process can read onto the shardings in `abstract_state` (a
    tree of jax.ShapeDtypeStruct); returns (state, the data-iterator state or None, step).

    Newer steps that could not be read back while an older one could (a truncated file, missing
    metadata) are damaged: each is moved aside to `<step>.damaged`, out of the rotation's reach and
    kept for inspection, with a warning naming it. When no step can be restored, nothing is moved
    and ValueError names the newest step's error: the same failure on every step says more about
    this run's state (a config change that altered the optimizer's or the EMA's state, storage out
    of reach) than about the files, and moving them all aside would make the next run start over.
    """
    unreadable: list[tuple[int, str]] = []  # Newest first.
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        restored, error = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())), ""
      except Exception as e:  # pylint: disable=broad-except  (damage fails in library ways)
        restored, error = None, f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
      if not _on_every_process(not error):
        unreadable.append((step, error or "another process could not read it"))
        continue
      for damaged, damage in unreadable:
        self._move_aside(damaged, damage)
      return restored.state, (restored.data or {}).get("iterator"), step
    if not unreadable:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    step, error = unreadable[0]
    raise ValueError(
        f"No checkpoint in {self.directory} can be restored onto this run's train state (steps "
        f"{', '.join(str(s) for s, _ in unreadable)}); the newest, step {step}, fails with "
        f"{error}. Nothing was moved or deleted. If the config changed since they were saved "
        "(--accept_config_change) in a way that changes the state (the optimizer, weight decay "
        "or EMA), resume with the recorded config (WORKDIR/config.json) or train in a new "
        "--workdir; otherwise check that the checkpoint files are readable from here.")

  def _move_aside(self, step: int, error: str) -> None:
    aside = self.directory / f"{step}.damaged"
    logging.warning("Checkpoint step %d in %s cannot be restored (%s) while an older one can; "
                    "moving it to %s.", step, self.directory, error, aside)
    if jax.process_index() == 0:
      if aside.exists():
        aside.rmtree()
      (self.directory / str(step)).rename(aside)
    multihost_utils.sync_global_devices(f"checkpoint {step} moved aside")
    self._manager.reload()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _on_every_process(ok: bool) -> bool:
  """Whether `ok` holds on every process (all must call this): they all restore the same step."""
  if jax.process_count() == 1:
    return ok
  return bool(multihost_utils.process_allgather(np.int32(ok)).all())


def saved_steps(directory: epath.Path) -> list[int]:
  """The finalized steps in a checkpoints directory, oldest first; reads only (creates nothing)."""
  if not directory.is_dir():
    return []
  return sorted(ocp.path.step.checkpoint_steps(directory))


def saved_params(directory: epath.Path, step: int) -> Any | None:
  """The metadata (shapes, dtypes) of the params saved at `step`, or None if it is unreadable."""
  try:
    metadata = ocp.PyTreeCheckpointer().metadata(directory / str(step) / "state")
    return metadata.item_metadata.tree["params"]
  except Exception:  # pylint: disable=broad-except  (a damaged step: `restore` deals with it)
    return None


def checkpoint_step_dir(path: str | epath.PathLike) -> epath.Path:
  """Resolves an Orbax path given as a step directory, a checkpoints root or a run's workdir (the
  latter two: their latest finalized step, not one a running or killed save is still writing)."""
  path = workdir.resolve(path)
  if (path / "state").is_dir():
    return path
  if workdir.Workdir(path).checkpoints.is_dir():
    path = workdir.Workdir(path).checkpoints
  steps = saved_steps(path)
  if not steps:
    raise FileNotFoundError(
        f"No Orbax checkpoint at {path}: expected a step directory containing 'state' or a "
        "directory of step directories (e.g. WORKDIR/checkpoints), or a workdir holding them.")
  return path / str(max(steps))


def saved_entries(path: str | epath.PathLike) -> set[str]:
  """The train-state entries an Orbax checkpoint holds (e.g. {'params', 'ema_params', ...}); an
  entry saved empty (no EMA) is not one."""
  tree = ocp.PyTreeCheckpointer().metadata(checkpoint_step_dir(path) / "state").item_metadata.tree
  return {name for name, value in tree.items() if value is not None}


def load_params(path: str | epath.PathLike, entry: str = "params") -> dict[str, Any]:
  """The `params` (or another params-shaped `entry`: 'ema_params') of an Orbax train-state
  checkpoint as host numpy arrays, at their saved shapes.

  Used to initialise a fine-tune from a previous run (the caller adapts head and position
  embedding) and to evaluate a run's checkpoint.
  """
  state_dir = checkpoint_step_dir(path) / "state"
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(state_dir).item_metadata.tree
  if metadata.get(entry) is None:
    raise ValueError(f"Orbax checkpoint {state_dir} has no {entry!r} entry "
                     f"(found {sorted(k for k, v in metadata.items() if v is not None)}).")
  target = {entry: jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), metadata[entry])}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
  restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
      item=target, restore_args=restore_args, partial_restore=True))
  return restored[entry]
