"""The input pipeline: per-host grain datasets -> global sharded batches on device, resumable.

Per host (grain, on numpy):
  source (random access) -> this host's contiguous shard -> shuffle (full permutation, reseeded
  every epoch) -> repeat -> preprocess (pp string; per-example rng from (seed, host, position))
  -> reader threads -> batch -> optional worker processes.
Every step is a pure function of (seed, position), so the position (grain's iterator state) is all
a checkpoint needs for a resumed run to see exactly the batches it would have seen.

On device: each host's numpy batch becomes its rows of a global `jax.Array` via
`jax.make_array_from_process_local_data`; `prefetch` batches are put on device ahead of use.

Config keys (`config.input`, or an eval resolved by vit_jax.config.resolve_evals; their defaults
are in vit_jax.config.base_config):
  data: dict(name=<tfds name>|'bundled_mnist'|'imagefolder', split, data_dir, root,
             on_corrupt='skip'|'error')
  pp: pp string (see vit_jax.data.preprocess); threads (reader threads per host); workers (grain
  worker processes per host, train only); prefetch (device batches ahead).
"""
from __future__ import annotations

import collections
import copy
import itertools
import json
import logging
import math
from typing import Any, Iterator, Mapping

import grain
import jax
from jax.experimental import multihost_utils
import numpy as np
from PIL import Image

from vit_jax.data import preprocess, sources

STATE_FORMAT = "vit_jax.data.pipeline/1"
# Errors that mean "this file is not a readable image" (PIL raises OSError for truncated or
# unidentified files and SyntaxError for some broken PNGs).
_CORRUPT_IMAGE_ERRORS = (OSError, SyntaxError, Image.DecompressionBombError)


class Preprocess:
  """The pp chain as a picklable grain random-map: skips (or fails on) corrupt images."""

  def __init__(self, pp: str, on_corrupt: str = "skip"):
    if on_corrupt not in ("skip", "error"):
      raise ValueError(f"data.on_corrupt={on_corrupt!r}; use 'skip' or 'error'.")
    self._pp, self._on_corrupt = pp, on_corrupt
    self._op = preprocess.parse(pp)
    self._skipped = itertools.count(1)

  def __getstate__(self) -> dict[str, str]:  # Worker processes rebuild the chain from the string.
    return {"pp": self._pp, "on_corrupt": self._on_corrupt}

  def __setstate__(self, state: dict[str, str]) -> None:
    self.__init__(state["pp"], state["on_corrupt"])

  def __call__(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any] | None:
    try:
      out = self._op(example, rng)
    except _CORRUPT_IMAGE_ERRORS as e:
      if self._on_corrupt == "error":
        raise ValueError(f"Corrupt image {example['id']}: {e}. Set data.on_corrupt='skip' to skip "
                         "such files.") from e
      logging.warning("Skipping corrupt image %s (%s); %d skipped so far in this process.",
                      example["id"], e, next(self._skipped))
      return None  # grain drops None elements.
    return {"image": preprocess.to_array(out["image"]), "label": np.asarray(out["label"])}


def _example_range(num_examples: int, shard_index: int, shard_count: int) -> slice:
  """Contiguous, disjoint, near-equal shards that cover every example once."""
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"Data shard {shard_index} is outside shard count {shard_count}.")
  return slice(num_examples * shard_index // shard_count,
               num_examples * (shard_index + 1) // shard_count)


def _read_options(cfg: Mapping[str, Any]) -> grain.ReadOptions:
  threads = int(cfg["threads"])  # PIL releases the GIL: threads scale.
  return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=4 * threads)


def _open_checked(cfg: Mapping[str, Any]) -> sources.Source:
  """Opens cfg.data and checks the pp string against it (parse errors, onehot depth)."""
  if "data" not in cfg or "pp" not in cfg:
    raise ValueError(f"Input config needs 'data' and 'pp'; got keys {sorted(cfg)}.")
  source = sources.open_source(cfg["data"])
  preprocess.parse(cfg["pp"])
  onehot = preprocess.op_arguments(cfg["pp"], "onehot")
  if onehot is not None and onehot["depth"] < source.num_classes:
    raise ValueError(f"{source.description} has {source.num_classes} classes but the pp string "
                     f"has onehot({onehot['depth']}); use onehot({source.num_classes}).")
  return source


def check_ready(cfg: Mapping[str, Any]) -> sources.Source:
  """Fails fast (no compilation, no accelerator) if the data or pp cannot work.

  `cfg` is either a data dict (name, split, ...) or an input / eval config with `data` and `pp`;
  the latter also checks the pp string and its onehot depth. Builds bundled_mnist if needed.
  """
  return _open_checked(cfg) if "data" in cfg else sources.open_source(cfg)


def example_shape(cfg: Mapping[str, Any]) -> tuple[int, ...]:
  """The (H, W, C) shape of one preprocessed example of an input or eval config (opens the data)."""
  source = _open_checked(cfg)
  example = Preprocess(cfg["pp"], cfg["data"]["on_corrupt"])(source.records[0],
                                                             np.random.default_rng(0))
  if example is None:
    raise ValueError(f"The first example of {source.description} is corrupt; its image shape "
                     "(needed to build the model) cannot be read.")
  return tuple(example["image"].shape)


def _shard_seed(seed: int, shard_index: int) -> int:
  # Shards get different augmentation streams; the shuffle seed is shared (shards are disjoint).
  return int(np.random.SeedSequence([seed, shard_index]).generate_state(1)[0])


def train_dataset(cfg: Mapping[str, Any], local_batch_size: int, seed: int, shard_index: int = 0,
                  shard_count: int = 1) -> grain.IterDataset:
  """Infinite stream of numpy batches {"image": (b,H,W,C), "label": (b,...)} of one data shard
  (a host's share of the split; `data_shard` says which one a process feeds)."""
  source = _open_checked(cfg)
  shard = _example_range(len(source.records), shard_index, shard_count)
  if shard.stop - shard.start < local_batch_size:
    raise ValueError(f"{source.description} gives shard {shard_index} of {shard_count} only "
                     f"{shard.stop - shard.start} examples, fewer than its batch of "
                     f"{local_batch_size}; use a smaller batch or a bigger split.")
  on_corrupt = cfg["data"]["on_corrupt"]
  dataset = (grain.MapDataset.source(source.records)[shard]
             .shuffle(seed=seed)
             .repeat()
             .random_map(Preprocess(cfg["pp"], on_corrupt), seed=_shard_seed(seed, shard_index))
             .to_iter_dataset(_read_options(cfg))
             .batch(local_batch_size, drop_remainder=True))
  workers = int(cfg["workers"])
  if workers > 0:
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return dataset


def eval_batches(cfg: Mapping[str, Any], local_batch_size: int, shard_index: int = 0,
                 shard_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """One deterministic pass over a data shard as numpy batches with a 0/1 "mask".

  Every shard yields the same number of batches (ceil(ceil(N / shards) / batch)); the last ones
  are padded with zero images and mask 0, so collective eval steps never wait on a host.
  """
  source = _open_checked(cfg)
  num_examples = len(source.records)
  if num_examples < shard_count:
    raise ValueError(f"{source.description} has {num_examples} examples, fewer than the "
                     f"{shard_count} hosts that evaluate it.")
  num_batches = math.ceil(math.ceil(num_examples / shard_count) / local_batch_size)
  on_corrupt = cfg["data"]["on_corrupt"]
  dataset = (grain.MapDataset.source(source.records)[_example_range(num_examples, shard_index,
                                                                     shard_count)]
             .random_map(Preprocess(cfg["pp"], on_corrupt), seed=0)
             .to_iter_dataset(_read_options(cfg))
             .batch(local_batch_size, drop_remainder=False))
  template = None
  for template in dataset:
    yield _pad_batch(template, local_batch_size, len(template["image"]))
    num_batches -= 1
  if template is None:
    raise ValueError(f"Every example of {source.description} in shard {shard_index} is corrupt.")
  for _ in range(num_batches):
    yield _pad_batch(template, local_batch_size, 0)


def _pad_batch(batch: dict[str, np.ndarray], size: int, num_real: int) -> dict[str, np.ndarray]:
  """The first num_real rows of batch, zero-padded to `size` rows, plus the 0/1 mask."""
  padded = {}
  for key, value in batch.items():
    padded[key] = np.zeros((size,) + value.shape[1:], value.dtype)
    padded[key][:num_real] = value[:num_real]
  padded["mask"] = (np.arange(size) < num_real).astype(np.float32)
  return padded


def data_shard(sharding: jax.sharding.Sharding, global_batch_size: int) -> tuple[int, int, int]:
  """(shard index, shard count, local batch size) for the batch rows this process's devices hold.

  Rows are read from the shard of the split with the same position as the rows in the batch, so
  processes holding the same rows (a batch replicated across hosts) read the same data.
  """
  try:
    indices = sharding.addressable_devices_indices_map((global_batch_size,))
  except ValueError as e:
    raise ValueError(f"Global batch size {global_batch_size} cannot be split by the batch "
                     f"sharding {sharding}: {e}. Use a multiple of the data-parallel size.") from e
  rows = sorted({row for index in indices.values()
                 for row in range(*index[0].indices(global_batch_size))})
  local = len(rows)
  if rows != list(range(rows[0], rows[0] + local)):
    raise ValueError(f"Process {jax.process_index()} holds non-contiguous rows of the batch under "
                     f"{sharding}; order the mesh devices by process (jax.make_mesh does).")
  return rows[0] // local, global_batch_size // local, local


def _default_sharding() -> jax.sharding.NamedSharding:
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


class _DevicePrefetch:
  """Turns host batches into global arrays, keeping `depth` batches in flight to the devices."""

  def __init__(self, host_batches: Iterator[dict[str, np.ndarray]],
               sharding: jax.sharding.Sharding, depth: int):
    self._host_batches = host_batches
    self._sharding = sharding
    self._depth = max(depth, 0)
    self._queue: collections.deque[tuple[Any, dict[str, jax.Array]]] = collections.deque()

  def _position(self) -> Any:
    """Host-side position of the next batch, for subclasses that can resume (None: untracked)."""
    return None

  def _fetch(self) -> tuple[Any, dict[str, jax.Array]]:
    position = self._position()
    batch = next(self._host_batches)
    return position, {k: jax.make_array_from_process_local_data(self._sharding, v)
                      for k, v in batch.items()}

  def __iter__(self) -> "_DevicePrefetch":
    return self

  def __next__(self) -> dict[str, jax.Array]:
    try:
      while len(self._queue) <= self._depth:
        self._queue.append(self._fetch())
    except StopIteration:  # A finite stream: hand out what is still in flight.
      if not self._queue:
        raise
    return self._queue.popleft()[1]


class TrainIterator(_DevicePrefetch):
  """Infinite iterator of global training batches whose position is saved with checkpoints."""

  def __init__(self, dataset: grain.IterDataset, sharding: jax.sharding.Sharding, depth: int,
               identity: dict[str, Any], process_index: int):
    self._grain_iter = iter(dataset)
    super().__init__(self._grain_iter, sharding, depth)
    self._identity = identity  # What a saved state must match to be replayable.
    self._process_index = process_index

  def _position(self) -> Any:
    return copy.deepcopy(self._grain_iter.get_state())

  def get_state(self) -> dict[str, Any]:
    """JSON-serialisable position of the next batch `next()` returns (prefetched ones excluded).

    With several processes this is a collective: every process must call it, and the result holds
    every host's position, so saving it from process 0 alone is enough.
    """
    local = self._queue[0][0] if self._queue else self._grain_iter.get_state()
    hosts = {str(self._process_index): local}
    if jax.process_count() > 1:
      hosts = _allgather_json(local)
    return {"format": STATE_FORMAT, **self._identity, "hosts": hosts}

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Continues from a `get_state()` result; refuses states this pipeline cannot replay."""
    if state.get("format") != STATE_FORMAT:
      raise ValueError(f"Not a data-iterator state of format {STATE_FORMAT}: {dict(state)!r:.200}")
    for key, value in self._identity.items():
      if state.get(key) != value:
        raise ValueError(f"Data-iterator state has {key}={state.get(key)!r} but this run has "
                         f"{value!r}; an exact resume needs the same {key} (or start the data "
                         "from scratch).")
    if str(self._process_index) not in state["hosts"]:
      raise ValueError(f"Data-iterator state has no position for process {self._process_index}.")
    self._queue.clear()
    self._grain_iter.set_state(state["hosts"][str(self._process_index)])


def _allgather_json(local: Any) -> dict[str, Any]:
  """{process index: state} of every process (a collective)."""
  data = np.frombuffer(json.dumps(local).encode(), np.uint8)
  lengths = multihost_utils.process_allgather(np.array([data.size]))
  padded = np.zeros(int(lengths.max()), np.uint8)
  padded[:data.size] = data
  gathered = multihost_utils.process_allgather(padded)
  return {str(i): json.loads(bytes(row[:int(n)]).decode())
          for i, (row, n) in enumerate(zip(gathered, lengths.reshape(-1)))}


def make_train_iterator(cfg: Mapping[str, Any], global_batch_size: int, seed: int,
                        sharding: jax.sharding.Sharding | None = None) -> TrainIterator:
  """Infinite iterator of {"image", "label"} global batches sharded with `sharding` (batch axis).

  Use `get_state()` / `set_state()` to save / resume.
  """
  sharding = sharding or _default_sharding()
  shard_index, shard_count, batch = data_shard(sharding, global_batch_size)
  dataset = train_dataset(cfg, batch, seed, shard_index, shard_count)
  # Grain workers each batch their own slice of the stream, so the worker count is part of it.
  identity = {"seed": seed, "process_count": jax.process_count(),
              "global_batch_size": global_batch_size,
              "workers": int(cfg["workers"])}
  return TrainIterator(dataset, sharding, int(cfg["prefetch"]), identity,
                       jax.process_index())


class EvalIterable:
  """Re-iterable full pass over an eval split: global batches with image, label and mask."""

  def __init__(self, cfg: Mapping[str, Any], global_batch_size: int,
               sharding: jax.sharding.Sharding):
    self._cfg = cfg
    self._sharding = sharding
    self._shard_index, self._shard_count, self._local_batch_size = data_shard(
        sharding, global_batch_size)
    self._depth = int(cfg["prefetch"])
    check_ready(cfg)

  def __iter__(self) -> Iterator[dict[str, jax.Array]]:
    host_batches = eval_batches(self._cfg, self._local_batch_size, self._shard_index,
                                self._shard_count)
    return _DevicePrefetch(host_batches, self._sharding, self._depth)


def make_eval_iterable(cfg: Mapping[str, Any], global_batch_size: int,
                       sharding: jax.sharding.Sharding | None = None) -> EvalIterable:
  """Deterministic full pass(es) over cfg.data; padded rows have batch["mask"] == 0."""
  return EvalIterable(cfg, global_batch_size, sharding or _default_sharding())
