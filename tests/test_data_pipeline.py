"""Sources and pipeline: real tfds builders built locally, tfds mock_data, real image folders."""
import hashlib
import io
import json
import logging
import subprocess
import sys

from absl import flags
import jax
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from helpers import input_config
from vit_jax.data import bundled_mnist, pipeline, sources

tfds.disable_progress_bar()


class TinyDigits(tfds.core.GeneratorBasedBuilder):
  """A real, tiny tfds builder: 12 train / 6 test 8x8 images of 3 classes."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(8, 8, 3)),
        "label": tfds.features.ClassLabel(num_classes=3)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(12), "test": self._generate_examples(6)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {"image": np.full((8, 8, 3), i, np.uint8), "label": i % 3}


def _write_folder(root, split, counts, start=0):
  """PNG files root/split/<class>/*.png; every pixel holds the image's index (its identity)."""
  index = start
  for name, count in counts.items():
    (root / split / name).mkdir(parents=True, exist_ok=True)
    for _ in range(count):
      pixels = np.zeros((8, 8, 3), np.uint8)
      pixels[..., :2] = index % 256, index // 256
      Image.fromarray(pixels).save(root / split / name / f"{index:04d}.png")
      index += 1
  return index


def _ids(images):
  """Image indices, read at the centre (a random_shift may pad the corners)."""
  images = np.asarray(images)
  center = images[:, images.shape[1] // 2, images.shape[2] // 2].astype(int)
  return [int(v) for v in center[:, 0] + 256 * center[:, 1]]


@pytest.fixture
def folder(tmp_path):
  _write_folder(tmp_path, "train", {"cat": 20, "dog": 20})
  _write_folder(tmp_path, "test", {"cat": 20, "dog": 21}, start=1000)
  return tmp_path


def _cfg(root, split="train", pp="decode", **kw):
  return input_config(data=dict(name="imagefolder", root=str(root), split=split), pp=pp, **kw)


def _take(dataset, n):
  it = iter(dataset)
  return [next(it) for _ in range(n)]


def test_imagefolder_labels_and_errors(folder):
  source = sources.open_source(_cfg(folder)["data"])
  assert source.num_classes == 2 and len(source.records) == 40
  assert source.records[0]["label"] == 0 and source.records[39]["label"] == 1
  assert source.records[39]["id"].endswith("dog/0039.png")
  (folder / "train" / "emu").mkdir()
  with pytest.raises(ValueError, match="emu' has no images"):
    sources.open_source(_cfg(folder)["data"])
  with pytest.raises(FileNotFoundError, match="val"):
    sources.open_source(_cfg(folder, split="val")["data"])
  with pytest.raises(ValueError, match="data.root"):
    sources.open_source({"name": "imagefolder", "split": "train"})


def test_imagefolder_splits_slice_like_tfds(folder):
  def ids(split):
    return [r["id"] for r in sources.open_source(_cfg(folder, split=split)["data"]).records]
  head, tail = ids("train[:90%]"), ids("train[90%:]")
  assert (len(head), len(tail), len(ids("test[:16]"))) == (36, 4, 16)
  assert sorted(head + tail) == sorted(ids("train"))  # A partition of the folder.
  # Taken from a seeded shuffle, so that a small slice still holds both classes.
  assert {"cat", "dog"} == {i.split("/")[-2] for i in ids("test[:8]")}
  with pytest.raises(ValueError, match=r"Bad split 'train\[:5\]\+val\[:3\]'"):
    ids("train[:5]+val[:3]")


def test_a_resume_refuses_an_image_folder_whose_files_changed(folder):
  """Files added, removed or renamed reshuffle the folder's slices: a held-out `train[90%:]` image
  could then be trained on, so a saved position in `train[:90%]` is refused, naming why."""
  cfg = _cfg(folder, split="train[:90%]", pp="decode|onehot(2)", threads=0)
  it = pipeline.make_train_iterator(cfg, global_batch_size=8, seed=0)
  next(it)
  state = it.get_state()
  pipeline.make_train_iterator(cfg, global_batch_size=8, seed=0).set_state(state)
  (folder / "data_moved").mkdir()  # The same files elsewhere (e.g. copied to a bucket): resumes.
  moved = folder / "data_moved"
  (folder / "train").rename(moved / "train")
  pipeline.make_train_iterator(_cfg(moved, split="train[:90%]", pp="decode|onehot(2)", threads=0),
                               global_batch_size=8, seed=0).set_state(state)
  # One file out, another in: the slice still holds 36 of the 40, other ones.
  (moved / "train" / "cat" / "0000.png").rename(moved / "train" / "cat" / "new.png")
  assert len(sources.open_source(_cfg(moved, split="train[:90%]")["data"]).records) == 36
  with pytest.raises(ValueError, match=r"files of imagefolder:train\[:90%\] changed since this "
                                       r"run started .* restore the folder"):
    pipeline.make_train_iterator(_cfg(moved, split="train[:90%]", pp="decode|onehot(2)",
                                      threads=0), global_batch_size=8, seed=0).set_state(state)


def test_corrupt_images_are_skipped_or_fatal(folder, caplog):
  # The order depends on the seed and the split size only: read it before breaking two files.
  order = _ids(np.concatenate([b["image"] for b in _take(
      pipeline.train_dataset(_cfg(folder, threads=0), 40, 0, 0, 1), 2)]))
  bad = folder / "train" / "cat" / "0003.png"
  bad.write_bytes(b"not an image")
  truncated = folder / "train" / "dog" / "0030.png"
  truncated.write_bytes(truncated.read_bytes()[:-30])  # Cut inside the pixel data.
  caplog.set_level(logging.WARNING)
  batches = _take(pipeline.train_dataset(_cfg(folder, threads=0), 40, 0, 0, 1), 1)
  got = _ids(batches[0]["image"])
  # A corrupt image's slot takes the next readable example of the order; nothing else moves.
  assert got == [next(i for i in order[p:] if i not in (3, 30)) for p in range(40)]
  assert set(got) == set(range(40)) - {3, 30}
  warnings = [r.getMessage() for r in caplog.records if "corrupt" in r.getMessage()]
  assert any(str(bad) in w for w in warnings) and any(str(truncated) in w for w in warnings)
  assert any("2 skipped so far" in w for w in warnings)
  halves = [_take(pipeline.train_dataset(_cfg(folder, threads=2), 20, 0, host, 2), 1)[0]
            for host in (0, 1)]  # Two hosts fill the same slots with the same examples.
  assert _ids(np.concatenate([h["image"] for h in halves])) == got
  cfg = _cfg(folder, threads=0)
  cfg["data"]["on_corrupt"] = "error"
  with pytest.raises(ValueError, match="Corrupt image .*(0003|0030).png"):
    _take(pipeline.train_dataset(cfg, 40, 0, 0, 1), 1)


def test_train_stream_is_deterministic_given_seed(folder):
  cfg = _cfg(folder, pp="decode|flip_lr")
  a, b = (_take(pipeline.train_dataset(cfg, 8, seed=3), 6) for _ in range(2))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])
  other = _take(pipeline.train_dataset(cfg, 8, seed=4), 6)
  assert _ids(np.concatenate([x["image"] for x in a])) != _ids(
      np.concatenate([x["image"] for x in other]))
  epoch1, epoch2 = (sorted(_ids(np.concatenate([x["image"] for x in part])))
                    for part in (a[:5], a[5:] + _take(pipeline.train_dataset(cfg, 8, 3), 10)[6:10]))
  assert epoch1 == epoch2 == list(range(40))  # Each epoch is a permutation of the split.


@pytest.mark.parametrize("threads,cached", [(0, False), (3, True)])
def test_train_stream_is_pinned(folder, threads, cached):
  # Seed 3's order and augmentations over two epochs: were they to change, every run's data, and
  # the stream a saved run resumes into, would change with them.
  cfg = _cfg(folder, pp="decode|random_shift(2)|flip_lr", threads=threads)
  cfg.data.cache_decoded = cached
  images = np.concatenate([b["image"] for b in _take(pipeline.train_dataset(cfg, 8, 3), 10)])
  assert _ids(images)[:16] == [19, 3, 14, 35, 31, 5, 32, 30, 21, 23, 6, 1, 11, 38, 12, 18]
  assert hashlib.sha256(images.tobytes()).hexdigest()[:16] == "9a0c2b958e294c7d"


def test_decoded_cache_holds_read_only_images(folder):
  cache = {}
  read = pipeline.Preprocess("decode|random_shift(1)|value_range(0, 1)", cache=cache)
  example = sources.open_source(_cfg(folder)["data"]).records[0]
  first, again = (read(example, np.random.default_rng(0)) for _ in range(2))
  np.testing.assert_array_equal(first["image"], again["image"])
  (head,) = cache.values()  # An op that wrote into it would change every later epoch's input.
  assert isinstance(head["image"], np.ndarray) and not head["image"].flags.writeable


def test_decoded_caches_stop_at_their_memory_budget(folder, monkeypatch, caplog):
  """An eval head that enlarges (resize(64) of 16-px images, as 32 px -> 384) must not fill the
  host's memory: past the budget, examples are decoded each time, with the same output."""
  budget = pipeline.CacheBudget(limit_bytes=3 * 64 * 64 * 3)
  monkeypatch.setattr(pipeline, "DECODED_CACHE_BUDGET", budget)
  cache = {}
  read = pipeline.Preprocess("decode|resize(64)", cache=cache)
  uncached = pipeline.Preprocess("decode|resize(64)")
  records = sources.open_source(_cfg(folder)["data"]).records
  for example in (records[i] for i in range(5)):
    np.testing.assert_array_equal(read(example, np.random.default_rng(0))["image"],
                                  uncached(example, np.random.default_rng(0))["image"])
  assert len(cache) == 3
  assert sum("decoded caches reached" in r.getMessage() for r in caplog.records) == 1


def _delete_images(root):
  for path in root.rglob("*.png"):
    path.unlink()  # With cache_raw, later passes must read nothing.


def _break_images(root):
  for path in root.rglob("*.png"):
    path.write_bytes(b"not an image")  # With cache_decoded, later passes must decode nothing.


# Each cache, and what it must make harmless after the first pass.
_CACHES = [("cache_raw", _delete_images), ("cache_decoded", _break_images)]


@pytest.mark.parametrize("cache,disturb", _CACHES)
def test_caches_keep_the_train_stream_after_the_first_epoch(folder, cache, disturb):
  pp = "decode|resize(12)|random_shift(2)|flip_lr|value_range(0, 255)"
  cfg = _cfg(folder, pp=pp, threads=2)
  cfg.data[cache] = True
  cached = iter(pipeline.train_dataset(cfg, 8, 3))
  first_epoch = [next(cached) for _ in range(5)]
  expected = _take(pipeline.train_dataset(_cfg(folder, pp=pp), 8, 3), 15)
  disturb(folder / "train")
  later_epochs = [next(cached) for _ in range(10)]
  for x, y in zip(first_epoch + later_epochs, expected):  # Augmentation redrawn as uncached.
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])


@pytest.mark.parametrize("cache,disturb", _CACHES)
def test_caches_serve_later_evals_from_memory(folder, cache, disturb):
  cfg = _cfg(folder, split="test", pp="decode|resize(12)|value_range(0, 1)|onehot(2)")
  cfg.data[cache] = True
  evals = pipeline.make_eval_iterable(cfg, 16)
  first = list(evals)
  disturb(folder / "test")
  second = list(evals)
  assert len(first) == len(second) == 3
  for x, y in zip(first, second):
    for key in ("image", "label", "mask"):
      np.testing.assert_array_equal(x[key], y[key])


@pytest.mark.parametrize("threads,prefetch", [(0, 0), (4, 2)])
def test_exact_mid_epoch_resume(folder, threads, prefetch):
  cfg = _cfg(folder, pp="decode|random_shift(1)|value_range(0, 255)|onehot(2)", threads=threads,
             prefetch=prefetch)
  it = pipeline.make_train_iterator(cfg, global_batch_size=8, seed=7)
  for _ in range(7):  # 5 batches per epoch: stop inside the second epoch.
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  expected = [next(it) for _ in range(4)]
  resumed = pipeline.make_train_iterator(cfg, global_batch_size=8, seed=7)
  resumed.set_state(state)
  for want, got in zip(expected, (next(resumed) for _ in range(4))):
    assert got["image"].sharding == want["image"].sharding
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["label"], want["label"])
  # One global position (prefetched batches excluded), not per-host ones.
  fingerprint = state.pop("examples")  # Which files, in which order (below).
  assert state == {"format": "vit_jax.data.pipeline/2", "seed": 7, "global_batch_size": 8,
                   "dataset": "imagefolder:train", "num_examples": 40, "next_batch": 7,
                   "examples_consumed": 56, "epoch": 1}
  resumed.set_state(state)  # Saved before fingerprints were recorded: resumes.
  state["examples"] = fingerprint
  with pytest.raises(ValueError, match="seed=7 but this run has 8"):
    pipeline.make_train_iterator(cfg, global_batch_size=8, seed=8).set_state(state)
  with pytest.raises(ValueError, match="global_batch_size=8 but this run has 16"):
    pipeline.make_train_iterator(cfg, global_batch_size=16, seed=7).set_state(state)
  with pytest.raises(ValueError, match="num_examples=39 but this run has 40"):
    resumed.set_state({**state, "num_examples": 39})
  old = {"format": "vit_jax.data.pipeline/1", "seed": 7, "hosts": {"0": {}}}
  with pytest.raises(ValueError, match="format 'vit_jax.data.pipeline/1'.*cannot be replayed"):
    resumed.set_state(old)


def test_global_batches_are_sharded_over_devices(folder):
  mesh = jax.make_mesh((4, 2), ("data", "fsdp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
  batch = next(pipeline.make_train_iterator(_cfg(folder, pp="decode|onehot(2)"), 16, 0, sharding))
  assert batch["image"].shape == (16, 8, 8, 3) and batch["label"].shape == (16, 2)
  assert batch["image"].sharding == sharding and len(batch["image"].addressable_shards) == 8
  with pytest.raises(ValueError, match="Global batch size 12 cannot be split"):
    pipeline.make_train_iterator(_cfg(folder), 12, 0, sharding)


def test_hosts_read_their_rows_of_one_global_order(folder):
  # Global batch k is the same 8 rows, augmented the same, whichever hosts read its parts.
  cfg = _cfg(folder, pp="decode|random_shift(1)|flip_lr", threads=2)
  one = _take(pipeline.train_dataset(cfg, 8, 5), 10)
  for count in (2, 4):
    hosts = [_take(pipeline.train_dataset(cfg, 8 // count, 5, host, count), 10)
             for host in range(count)]
    for k, want in enumerate(one):
      for key in ("image", "label"):
        np.testing.assert_array_equal(np.concatenate([h[k][key] for h in hosts]), want[key])
  first, second = (_ids(np.concatenate([b["image"] for b in half])) for half in (one[:5], one[5:]))
  assert sorted(first) == sorted(second) == list(range(40)) and first != second  # Reshuffled.
  later = _take(pipeline.train_dataset(cfg, 4, 5, 1, 2, start_batch=6), 2)
  np.testing.assert_array_equal(np.concatenate([b["image"] for b in later]),
                                np.concatenate([b["image"][4:] for b in one[6:8]]))


@pytest.mark.slow  # Starts grain worker processes twice (~5 s each here).
def test_worker_processes_give_the_same_stream_and_resume_across_counts(folder):
  parsed = flags.FLAGS.is_parsed()  # grain workers read absl flags; the entry points parse them.
  flags.FLAGS.mark_as_parsed()
  try:
    cfg = _cfg(folder, pp="decode|random_shift(1)", threads=2, prefetch=1)
    plain = pipeline.make_train_iterator(cfg, 8, 3)
    want = [np.asarray(next(plain)["image"]) for _ in range(8)]
    cached_cfg = _cfg(folder, pp="decode|random_shift(1)", threads=2, prefetch=1, workers=2)
    cached_cfg.data.cache_decoded = True  # Each worker keeps a cache of its own.
    with_workers = pipeline.make_train_iterator(cached_cfg, 8, 3)
    got = [np.asarray(next(with_workers)["image"]) for _ in range(3)]
    state = with_workers.get_state()
    plain.set_state(state)  # A state saved with workers resumes without them, and vice versa.
    got += [np.asarray(next(plain)["image"]) for _ in range(4)]
    with_workers.set_state(plain.get_state())
    got.append(np.asarray(next(with_workers)["image"]))  # Restarted workers, at batch 7.
    with_workers.close()
  finally:
    if not parsed:
      flags.FLAGS.unparse_flags()
  assert len(got) == len(want)
  for a, b in zip(got, want):
    np.testing.assert_array_equal(a, b)


def test_eval_covers_every_example_once_with_padding(folder):
  cfg = _cfg(folder, split="test", pp="decode|onehot(2)")
  per_host = [list(pipeline.eval_batches(cfg, 8, host, 2)) for host in (0, 1)]
  assert [len(b) for b in per_host] == [3, 3]  # ceil(ceil(41 / 2) / 8): equal on every host.
  ids = []
  for batch in (b for host in per_host for b in host):
    real = batch["mask"] == 1
    ids += _ids(batch["image"][real])
    assert not batch["image"][~real].any() and not batch["label"][~real].any()
  assert sorted(ids) == list(range(1000, 1041))
  batches = list(pipeline.make_eval_iterable(cfg, 16))
  assert len(batches) == 3 and sum(float(b["mask"].sum()) for b in batches) == 41
  assert batches[0]["image"].shape == (16, 8, 8, 3)


def test_tfds_not_prepared_names_the_build_command(tmp_path):
  with pytest.raises(FileNotFoundError,
                     match=f"tfds build cifar10 --data_dir={tmp_path} --file_format=array_record"):
    pipeline.check_ready({"name": "cifar10", "split": "train", "data_dir": str(tmp_path)})
  with pytest.raises(ValueError, match="Unknown tfds dataset 'cifar1000'"):
    pipeline.check_ready({"name": "cifar1000", "split": "train", "data_dir": str(tmp_path)})


def test_tfrecord_dataset_names_the_conversion(tmp_path):
  TinyDigits(data_dir=str(tmp_path), file_format="tfrecord").download_and_prepare()
  with pytest.raises(ValueError, match="prepared as tfrecord.*convert_format --dataset_dir="):
    pipeline.check_ready({"name": "tiny_digits", "split": "train", "data_dir": str(tmp_path)})


def test_locally_built_tfds_dataset(tmp_path):
  TinyDigits(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  data = {"name": "tiny_digits", "split": "train", "data_dir": str(tmp_path)}
  source = pipeline.check_ready(input_config(data=data, pp="decode|onehot(3)"))
  assert source.num_classes == 3 and len(source.records) == 12
  batch = _take(pipeline.train_dataset(input_config(data=data, pp="decode|onehot(3)"), 12, 0),
                1)[0]
  assert sorted(batch["image"][:, 0, 0, 0]) == list(range(12))
  np.testing.assert_array_equal(batch["label"].argmax(1), batch["image"][:, 0, 0, 0] % 3)
  with pytest.raises(ValueError, match="has 3 classes but the pp string has onehot\\(2\\)"):
    pipeline.check_ready(input_config(data=data, pp="decode|onehot(2)"))
  with pytest.raises(ValueError, match="Bad split 'validation'"):
    pipeline.check_ready({**data, "split": "validation"})


def test_any_tfds_dataset_with_mock_data():
  cfg = input_config(data=dict(name="cifar10", split="train", data_dir="/nonexistent"),
                     pp="decode|flip_lr|value_range(-1, 1)|onehot(10)")
  with tfds.testing.mock_data(num_examples=16):
    a, b = (_take(pipeline.train_dataset(cfg, 4, 0), 3) for _ in range(2))
  assert a[0]["image"].shape == (4, 32, 32, 3) and a[0]["label"].shape == (4, 10)
  assert a[0]["image"].min() >= -1 and a[0]["image"].max() <= 1
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])


def test_bundled_mnist(tmp_path):
  labels = bundled_mnist._load_digits()[1]
  split = bundled_mnist.split_indices(labels)
  assert not set(split["train"]) & set(split["test"])
  np.testing.assert_array_equal(np.bincount(labels[split["test"]]), [50] * 10)
  for name, size in (("train", 4500), ("test", 500)):
    data = {"name": "bundled_mnist", "split": name, "data_dir": str(tmp_path)}
    assert len(pipeline.check_ready(data).records) == size  # Built offline on first use.
  cfg = input_config(data={**data, "split": "train"},
                     pp="decode(1)|random_shift(2)|value_range(0, 1)|onehot(10)")
  batch = _take(pipeline.train_dataset(cfg, 16, 0), 1)[0]
  assert batch["image"].shape == (16, 28, 28, 1) and batch["label"].shape == (16, 10)
  with pytest.raises(ValueError, match="10 classes but the pp string has onehot\\(5\\)"):
    pipeline.check_ready(input_config(data=data, pp="decode|onehot(5)"))


_BUILD_AFTER_BARRIER = """
import pathlib, sys, time
from vit_jax.data import bundled_mnist
barrier, data_dir, index, count = sys.argv[1:]
(pathlib.Path(barrier) / index).touch()
# All imports done before any build starts, so every process finds the data dir empty.
while len(list(pathlib.Path(barrier).iterdir())) < int(count):
  time.sleep(0.05)
print(bundled_mnist.ensure_prepared(data_dir).info.splits["train"].num_examples)
"""


def test_bundled_mnist_first_use_by_several_processes_at_once(tmp_path):
  """A local sweep's trials start together on a fresh data dir: every one builds, one rename
  wins, the others use its copy instead of failing."""
  barrier = tmp_path / "barrier"
  barrier.mkdir()
  count = 3
  processes = [subprocess.Popen(
      [sys.executable, "-c", _BUILD_AFTER_BARRIER, str(barrier), str(tmp_path / "tfds"), str(i),
       str(count)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(count)]
  for process in processes:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-2000:]
    assert out.splitlines()[-1] == "4500"  # After tfds' own progress lines.


def test_class_subsets_renumber_labels_and_take_the_first_per_class(tmp_path):
  """data.classes keeps those labels (renumbered in the order given), data.per_class the first N
  of each; a too-small class or a bad label is one message."""
  builder = TinyDigits(data_dir=str(tmp_path))
  builder.download_and_prepare(file_format="array_record")
  data = {"name": "tiny_digits", "split": "train", "data_dir": str(tmp_path)}
  full = sources.open_source(data).records
  source = sources.open_source({**data, "classes": (2, 0), "per_class": 3})
  assert source.num_classes == 2 and len(source.records) == 6
  pixel = lambda record: int(np.asarray(Image.open(io.BytesIO(record["image"])))[0, 0, 0])
  first = {c: [i for i in range(len(full)) if full[i]["label"] == c][:3] for c in (0, 2)}
  # The first 3 of each class, in the source's order, labels renumbered 2 -> 0 and 0 -> 1.
  assert [(pixel(r), r["label"]) for r in source.records] == [
      (pixel(full[i]), {2: 0, 0: 1}[full[i]["label"]]) for i in sorted(first[0] + first[2])]
  assert sources.num_classes({**data, "classes": (2, 0)}) == 2
  assert "classes (2, 0), 3 per class" in source.description
  with pytest.raises(ValueError, match="per_class=5: .* fewer examples of classes"):
    sources.open_source({**data, "classes": (1,), "per_class": 5})
  with pytest.raises(ValueError, match=r"data.classes=\(0, 3\)"):
    sources.open_source({**data, "classes": (0, 3)})
  assert sources.parse_classes("5-9") == (5, 6, 7, 8, 9)
  assert sources.parse_classes("0+2") == (0, 2) and sources.parse_classes("") == ()
  with pytest.raises(ValueError, match="classes='a-b'"):
    sources.parse_classes("a-b")
