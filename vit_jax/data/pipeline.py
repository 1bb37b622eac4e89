"""The input pipeline: one global example order -> each host's rows -> global sharded batches.

The training stream is defined globally, by (seed, dataset size) alone:
  global position p (0, 1, 2, ...) -> epoch p // N, example perm_epoch(p % N) (a full permutation
  of the N examples, reseeded every epoch); global batch k = positions [k*B, (k+1)*B) (a batch may
  span two epochs; no example is dropped).
Each process reads only the rows of each global batch its devices hold (`data_shard`): positions
k*B + row_start ... k*B + row_start + b - 1, preprocessed (pp string) with an rng derived from
(seed, global position), then batched; optional reader threads and grain worker processes.
The examples, their order, each batch's row order and every augmentation are therefore the same
whatever the number of hosts, devices, threads or workers, and the only position a checkpoint needs
is the index of the next global batch: a run saved on 2 hosts resumes exactly on 1 or 4. A corrupt
image (data.on_corrupt='skip') lends its slot to the next readable example of the order, so it
changes that one row, identically on any number of hosts, and nothing after it.

On device: each host's numpy rows become its part of a global `jax.Array` via
`jax.make_array_from_process_local_data`; `prefetch` batches are put on device ahead of use.

Config keys (`config.input`, or an eval resolved by vit_jax.config.resolve_evals; their defaults
are in vit_jax.config.base_config):
  data: dict(name=<tfds name>|'bundled_mnist'|'imagefolder', split, data_dir, root,
             on_corrupt='skip'|'error')
  pp: pp string (see vit_jax.data.preprocess); threads (reader threads per host); workers (grain
  worker processes per host, train only; they need absl flags parsed, as in the entry points);
  prefetch (device batches ahead).
"""
from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import itertools
import json
import logging
import math
import os
import sys
import threading
from typing import Any, Callable, Iterator, Mapping

import grain
import jax
from jax.experimental import multihost_utils
import numpy as np
from PIL import Image

from vit_jax.data import preprocess, sources

# /1 (before elastic resume) held every host's grain iterator position; /2 one global position.
STATE_FORMAT = "vit_jax.data.pipeline/2"
# Errors that mean "this file is not a readable image" (PIL raises OSError for truncated or
# unidentified files and SyntaxError for some broken PNGs).
_CORRUPT_IMAGE_ERRORS = (OSError, SyntaxError, Image.DecompressionBombError)


class Preprocess:
  """The pp chain as a picklable (example, rng) function: skips (or fails on) corrupt images.

  A skipped image gives None: eval drops it (grain drops None elements); training fills its slot
  with the next example of the order (`_TrainExamples`).

  With a `cache` dict (data.cache_decoded: a source's `decoded`), the chain's deterministic head
  (decode, resize, ...) runs once per example id and its output is kept there; the random tail runs
  on it every time with the same rng as before, so the stream is the same, without the repeated
  decodes and resizes that dominate small models' input time.
  """

  def __init__(self, pp: str, on_corrupt: str = "skip", cache: dict | None = None):
    if on_corrupt not in ("skip", "error"):
      raise ValueError(f"data.on_corrupt={on_corrupt!r}; use 'skip' or 'error'.")
    self._pp, self._on_corrupt, self._cache = pp, on_corrupt, cache
    preprocess.parse(pp)  # Checks the whole chain (an empty one included).
    self._head_pp, tail = preprocess.split_deterministic_head(pp)
    self._head = preprocess.parse(self._head_pp) if self._head_pp else None
    self._tail = preprocess.parse(tail) if tail else None
    self._skipped = itertools.count(1)

  def __getstate__(self) -> dict[str, Any]:
    # Worker processes rebuild the chain from the string, each with a cache of its own.
    return {"pp": self._pp, "on_corrupt": self._on_corrupt, "cached": self._cache is not None}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__init__(state["pp"], state["on_corrupt"], {} if state["cached"] else None)

  def _apply(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    head = example
    if self._head is not None and self._cache is None:
      head = self._head(example, rng)  # Head ops draw nothing from rng.
    elif self._head is not None:
      key = (self._head_pp, example["id"])
      head = self._cache.get(key)
      if head is None:  # Two threads may both compute it: the same output, stored twice.
        head = _read_only_image(self._head(example, rng))
        if DECODED_CACHE_BUDGET.take(head["image"].nbytes):
          self._cache[key] = head
    return self._tail(head, rng) if self._tail else head

  def __call__(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any] | None:
    try:
      out = self._apply(example, rng)
    except _CORRUPT_IMAGE_ERRORS as e:
      if self._on_corrupt == "error":
        raise ValueError(f"Corrupt image {example['id']}: {e}. Set data.on_corrupt='skip' to skip "
                         "such files.") from e
      logging.warning("Skipping corrupt image %s (%s); %d skipped so far in this process.",
                      example["id"], e, next(self._skipped))
      return None  # grain drops None elements.
    return {"image": preprocess.to_array(out["image"]), "label": np.asarray(out["label"])}


class CacheBudget:
  """Bytes the decoded caches (data.cache_decoded) of this process may hold in all. Evals inherit
  the setting, and an eval's deterministic head may enlarge its images (resize(384) of 32-px
  ones, then floats): past the budget, examples are decoded each time, with one warning, instead
  of the host running out of memory."""

  def __init__(self, limit_bytes: int):
    self.limit_bytes, self._used, self._full = limit_bytes, 0, False
    self._lock = threading.Lock()

  def take(self, nbytes: int) -> bool:
    """Reserves `nbytes` if they fit and the budget was never exceeded; warns the first time they
    do not."""
    with self._lock:
      fits = not self._full and self._used + nbytes <= self.limit_bytes
      if fits:
        self._used += nbytes
      elif not self._full:
        self._full = True
        logging.warning("data.cache_decoded: the decoded caches reached %.1f GB, a quarter of "
                        "this host's memory; further examples are decoded each time they are "
                        "read.", self.limit_bytes / 1e9)
      return fits


DECODED_CACHE_BUDGET = CacheBudget(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4)


def _read_only_image(example: dict[str, Any]) -> dict[str, Any]:
  """A head output as the decoded cache keeps it: the image as a read-only HWC array, so that a
  tail op that wrote into its input (and so into every later epoch's) fails at once, and so that
  array ops (random_shift, value_range) skip the PIL conversion."""
  image = preprocess.to_array(example["image"])
  image.setflags(write=False)
  return {**example, "image": image}


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
  example = Preprocess(cfg["pp"], cfg["data"]["on_corrupt"], source.decoded)(
      source.records[0], np.random.default_rng(0))
  if example is None:
    raise ValueError(f"The first example of {source.description} is corrupt; its image shape "
                     "(needed to build the model) cannot be read.")
  return tuple(example["image"].shape)


def _derived_seed(seed: int, purpose: int, words: int = 1) -> int:
  """A seed of 32 * `words` bits for one use of the run's seed (the shuffle, the augmentations).

  Hashing keeps the uses independent, and keeps run seeds s and s + 1 from sharing permutations
  (grain reseeds its shuffle with seed + epoch).
  """
  state = np.random.SeedSequence([seed, purpose]).generate_state(words)
  return sum(int(w) << (32 * i) for i, w in enumerate(state))


class _TrainExamples:
  """Local index -> preprocessed example of this host's rows of the global train order.

  Local index j is row j % b of this host's share of global batch j // b, i.e. global position
  p = (j // b) * B + row_start + j % b. Position p holds example perm_{p // N}(p % N) (grain's
  per-epoch-reseeded index shuffle over the whole split), preprocessed with an rng keyed by
  (seed, p), so any host that reads position p produces the same row.

  A corrupt image (with on_corrupt='skip') gives its slot to the next readable example of the
  order, p + 1, p + 2, ... (preprocessed with slot p's rng), so batches keep their size and every
  later position is unchanged: a skip never shifts the stream, on any number of hosts.
  """

  def __init__(self, records: Any, seed: int, preprocess_example: Preprocess,
               global_batch_size: int, row_start: int, local_batch_size: int):
    if seed < 0:
      raise ValueError(f"The data seed is {seed}; use a seed >= 0.")
    self._records = records
    self._seed = seed
    self._preprocess = preprocess_example
    self._global_batch_size = global_batch_size
    self._row_start, self._local_batch_size = row_start, local_batch_size
    self._build()

  def _build(self) -> None:
    self._shuffle_seed = _derived_seed(self._seed, 0)
    self._augment_key = _derived_seed(self._seed, 1, words=2)  # 128-bit Philox key, high half.
    self._rngs = threading.local()

  def __getstate__(self) -> dict[str, Any]:  # Worker processes make their own thread rngs.
    return {k: v for k, v in self.__dict__.items() if k != "_rngs"}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self._rngs = threading.local()

  def position(self, local_index: int) -> int:
    batch, row = divmod(local_index, self._local_batch_size)
    return batch * self._global_batch_size + self._row_start + row

  def _record(self, position: int) -> Any:
    """The record at `position`: grain's `MapDataset.shuffle(seed).repeat()` order, computed
    directly (grain's per-element stats and monitoring cost 3x the shuffle itself)."""
    epoch, index = divmod(position, len(self._records))
    return self._records[grain.experimental.index_shuffle(
        index, max_index=len(self._records) - 1, seed=(self._shuffle_seed + epoch) % 2**32,
        rounds=4)]

  def _rng(self, position: int) -> np.random.Generator:
    """Position p's augmentation rng: Philox with the 128-bit key (seed's 64 bits, p), counter 0.
    Each thread resets one generator to that state: a new Philox draws OS entropy first (5x)."""
    rng = getattr(self._rngs, "generator", None)
    if rng is None:
      rng = self._rngs.generator = np.random.Generator(np.random.Philox())
    rng.bit_generator.state = {
        "bit_generator": "Philox",
        "state": {"counter": np.zeros(4, np.uint64),
                  "key": np.array([position, self._augment_key], np.uint64)},
        "buffer": np.zeros(4, np.uint64), "buffer_pos": 4, "has_uint32": 0, "uinteger": 0}
    return rng

  def __call__(self, local_index: int) -> dict[str, np.ndarray]:
    position = self.position(local_index)
    for substitute in range(position, position + len(self._records)):
      example = self._preprocess(self._record(substitute), self._rng(position))
      if example is not None:
        return example
    raise ValueError(f"Every example of the split is corrupt (tried {len(self._records)} from "
                     f"train position {position}).")


class _HostBatches:
  """Global batch index -> this host's rows of it, read by a pool of `threads` threads: the
  elements grain worker processes share out, so each batch comes whole from one worker."""

  def __init__(self, read: _TrainExamples, local_batch_size: int, threads: int):
    self._read, self._local_batch_size, self._threads = read, local_batch_size, threads
    self._pool: concurrent.futures.ThreadPoolExecutor | None = None  # Made in the worker.

  def __getstate__(self) -> dict[str, Any]:
    return {**self.__dict__, "_pool": None}

  def __call__(self, batch_index: int) -> dict[str, np.ndarray]:
    rows = range(batch_index * self._local_batch_size, (batch_index + 1) * self._local_batch_size)
    if self._threads:  # grain calls this from one thread per worker (num_threads=0 below).
      self._pool = self._pool or concurrent.futures.ThreadPoolExecutor(self._threads)
      examples = list(self._pool.map(self._read, rows))
    else:
      examples = [self._read(row) for row in rows]
    return {key: np.stack([e[key] for e in examples]) for key in examples[0]}


def _host_train_stream(source: sources.Source, cfg: Mapping[str, Any], global_batch_size: int,
                       row_start: int, local_batch_size: int, seed: int,
                       start_batch: int) -> grain.IterDataset:
  """This host's rows of global batches start_batch, start_batch + 1, ... as numpy batches."""
  read = _TrainExamples(source.records, seed,
                        Preprocess(cfg["pp"], cfg["data"]["on_corrupt"], source.decoded),
                        global_batch_size, row_start, local_batch_size)
  workers = int(cfg["workers"])
  if workers == 0:  # Reader threads work on examples: a batch is ready soonest.
    return (grain.MapDataset.range(start_batch * local_batch_size, sys.maxsize).map(read)
            .to_iter_dataset(_read_options(cfg))
            .batch(local_batch_size, drop_remainder=True))
  # Workers take every workers-th element and grain interleaves their outputs back in order.
  # Whole batches as elements keep each batch's rows together, so the stream does not depend on
  # the worker count (examples as elements, batched per worker, would); each worker holds ~2.
  return (grain.MapDataset.range(start_batch, sys.maxsize)
          .map(_HostBatches(read, local_batch_size, int(cfg["threads"])))
          .to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
          .mp_prefetch(grain.MultiprocessingOptions(num_workers=workers)))


def _check_train_size(source: sources.Source, global_batch_size: int) -> None:
  if len(source.records) < global_batch_size:
    raise ValueError(f"{source.description} has only {len(source.records)} examples, fewer than "
                     f"one global batch of {global_batch_size}; use a smaller batch or a bigger "
                     "split.")


def train_dataset(cfg: Mapping[str, Any], local_batch_size: int, seed: int, shard_index: int = 0,
                  shard_count: int = 1, start_batch: int = 0) -> grain.IterDataset:
  """Infinite stream of numpy batches {"image": (b,H,W,C), "label": (b,...)}: rows
  [shard_index * b, (shard_index + 1) * b) of the global batches (of b * shard_count rows)
  start_batch, start_batch + 1, ... (`data_shard` says which rows a process holds)."""
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"Data shard {shard_index} is outside shard count {shard_count}.")
  source = _open_checked(cfg)
  global_batch_size = local_batch_size * shard_count
  _check_train_size(source, global_batch_size)
  return _host_train_stream(source, cfg, global_batch_size, shard_index * local_batch_size,
                            local_batch_size, seed, start_batch)


def eval_batches(cfg: Mapping[str, Any], local_batch_size: int, shard_index: int = 0,
                 shard_count: int = 1, source: sources.Source | None = None
                 ) -> Iterator[dict[str, np.ndarray]]:
  """One deterministic pass over a data shard as numpy batches with a 0/1 "mask".

  Every shard yields the same number of batches (ceil(ceil(N / shards) / batch)); the last ones
  are padded with zero images and mask 0, so collective eval steps never wait on a host.
  `source` is cfg's data as `check_ready` opened it (opened here if None); passing the same one
  to every pass lets data.cache_raw / cache_decoded serve later passes from memory.
  """
  if source is None:
    source = _open_checked(cfg)
  num_examples = len(source.records)
  if num_examples < shard_count:
    raise ValueError(f"{source.description} has {num_examples} examples, fewer than the "
                     f"{shard_count} hosts that evaluate it.")
  num_batches = math.ceil(math.ceil(num_examples / shard_count) / local_batch_size)
  on_corrupt = cfg["data"]["on_corrupt"]
  dataset = (grain.MapDataset.source(source.records)[_example_range(num_examples, shard_index,
                                                                     shard_count)]
             .random_map(Preprocess(cfg["pp"], on_corrupt, source.decoded), seed=0)
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

  def _next_host_batch(self) -> tuple[Any, dict[str, np.ndarray]]:
    """(position, next host batch); the position is for subclasses that resume (None here)."""
    return None, next(self._host_batches)

  def _fetch(self) -> tuple[Any, dict[str, jax.Array]]:
    position, batch = self._next_host_batch()
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
  """Infinite iterator of global training batches whose position is saved with checkpoints.

  The position is the index of the next global batch, the same on every process; a state saved
  with any number of processes (and devices, threads, workers) resumes exactly with any other.
  """

  def __init__(self, host_stream: Callable[[int], grain.IterDataset],
               sharding: jax.sharding.Sharding, depth: int, identity: dict[str, Any]):
    super().__init__(iter(()), sharding, depth)
    self._host_stream = host_stream  # start batch -> this host's rows from that batch on.
    self._host_iter: Iterator[dict[str, np.ndarray]] | None = None  # Made on first use.
    self._next_batch = 0  # Global index of the next batch read from the host stream.
    self._identity = identity  # What a saved state must match to be replayable.

  def _next_host_batch(self) -> tuple[int, dict[str, np.ndarray]]:
    if self._host_iter is None:  # Lazily: set_state would discard it (and its workers).
      self._host_iter = iter(self._host_stream(self._next_batch))
    index = self._next_batch
    batch = next(self._host_iter)
    self._next_batch += 1
    return index, batch

  def get_state(self) -> dict[str, Any]:
    """JSON-serialisable position of the next batch `next()` returns (prefetched ones excluded).

    Every process returns the same state (no collective), so saving it from any one is enough.
    "next_batch" is the position; "examples_consumed" and "epoch" (the epoch the next example is
    in) are derived from it for people reading checkpoints.
    """
    next_batch = self._queue[0][0] if self._queue else self._next_batch
    consumed = next_batch * self._identity["global_batch_size"]
    return {"format": STATE_FORMAT, **self._identity, "next_batch": next_batch,
            "examples_consumed": consumed, "epoch": consumed // self._identity["num_examples"]}

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Continues from a `get_state()` result; refuses states this pipeline cannot replay."""
    saved_format = state.get("format") if isinstance(state, Mapping) else None
    if saved_format != STATE_FORMAT:
      why = (" It holds per-host positions in per-host shuffles (the order before the global "
             "example order) and cannot be replayed: resume with the vit_jax version that wrote "
             "it, or start a new run." if saved_format == "vit_jax.data.pipeline/1" else "")
      raise ValueError(f"Data-iterator state has format {saved_format!r}, not {STATE_FORMAT}: "
                       f"{state!r:.200}.{why}")
    # A state saved before fingerprints were recorded has none: nothing to compare.
    saved, now = state.get("examples"), self._identity.get("examples")
    if saved and now and saved != now:
      raise ValueError(
          f"The files of {self._identity['dataset']} changed since this run started (added, "
          f"removed or renamed: the examples' fingerprint was {saved}, now {now}), so its "
          "slices and example order changed too, and images of a held-out slice could reach "
          "training: restore the folder as it was, or start a new run.")
    for key, value in self._identity.items():
      if key != "examples" and state.get(key) != value:
        raise ValueError(f"Data-iterator state has {key}={state.get(key)!r} but this run has "
                         f"{value!r}; an exact resume needs the same {key} (seed, "
                         "global_batch_size, dataset and num_examples define the example order): "
                         "resume with the saved value, or start a new run.")
    next_batch = state.get("next_batch")
    if not isinstance(next_batch, int) or next_batch < 0:
      raise ValueError(f"Data-iterator state has next_batch={next_batch!r}; expected a batch "
                       "index >= 0.")
    self.close()
    self._next_batch = next_batch

  def close(self) -> None:
    """Drops prefetched batches and stops grain worker processes now rather than at garbage
    collection; a later `next()` restarts the stream at the same position."""
    self._next_batch = self._queue[0][0] if self._queue else self._next_batch
    self._queue.clear()
    if self._host_iter is not None and hasattr(self._host_iter, "close"):
      self._host_iter.close()
    self._host_iter = None


def make_train_iterator(cfg: Mapping[str, Any], global_batch_size: int, seed: int,
                        sharding: jax.sharding.Sharding | None = None) -> TrainIterator:
  """Infinite iterator of {"image", "label"} global batches sharded with `sharding` (batch axis).

  Use `get_state()` / `set_state()` to save / resume, on any number of processes.
  """
  sharding = sharding or _default_sharding()
  shard_index, _, batch = data_shard(sharding, global_batch_size)
  source = _open_checked(cfg)
  _check_train_size(source, global_batch_size)
  host_stream = lambda start: _host_train_stream(source, cfg, global_batch_size,
                                                 shard_index * batch, batch, seed, start)
  host_stream(0)  # Builds (not starts) the stream now, so config errors surface here.
  identity = {"seed": seed, "global_batch_size": global_batch_size,
              "dataset": f"{cfg['data']['name']}:{cfg['data']['split']}",
              "num_examples": len(source.records)}
  if source.fingerprint:
    identity["examples"] = source.fingerprint
  _check_every_host_sees(identity)
  return TrainIterator(host_stream, sharding, int(cfg["prefetch"]), identity)


def _check_every_host_sees(identity: dict[str, Any]) -> None:
  """Raises ValueError on every process if the hosts see different training data (a mount serving
  a stale listing): each would shuffle other examples, and rows would repeat or go missing. A
  collective: every process calls it."""
  if jax.process_count() == 1:
    return
  digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).digest()
  seen = multihost_utils.process_allgather(np.array(
      [identity["num_examples"], int.from_bytes(digest[:7], "big")], np.int64))
  if not (seen == seen[0]).all():
    counts = ", ".join(f"process {p}: {int(n)} examples" for p, (n, _) in enumerate(seen))
    raise ValueError(
        f"The hosts of this run see different training data in {identity['dataset']} ({counts}; "
        "the same count with other files where they match): a network filesystem or bucket "
        "mount serving a stale listing? Make every host see the same files, then rerun.")


class EvalIterable:
  """Re-iterable full pass over an eval split: global batches with image, label and mask."""

  def __init__(self, cfg: Mapping[str, Any], global_batch_size: int,
               sharding: jax.sharding.Sharding):
    self._cfg = cfg
    self._sharding = sharding
    self._shard_index, self._shard_count, self._local_batch_size = data_shard(
        sharding, global_batch_size)
    self._depth = int(cfg["prefetch"])
    self._source = check_ready(cfg)  # Opened once: data.cache_raw / cache_decoded last.

  def __iter__(self) -> Iterator[dict[str, jax.Array]]:
    host_batches = eval_batches(self._cfg, self._local_batch_size, self._shard_index,
                                self._shard_count, self._source)
    return _DevicePrefetch(host_batches, self._sharding, self._depth)


def make_eval_iterable(cfg: Mapping[str, Any], global_batch_size: int,
                       sharding: jax.sharding.Sharding | None = None) -> EvalIterable:
  """Deterministic full pass(es) over cfg.data; padded rows have batch["mask"] == 0."""
  return EvalIterable(cfg, global_batch_size, sharding or _default_sharding())
