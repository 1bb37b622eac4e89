"""Random-access example sources: prepared tfds datasets (ArrayRecord), image folders, bundled
digits.

A source is a sequence of raw examples `{"image": encoded bytes, "label": int, "id": str}` that
grain can index from any worker; the pipeline shards, shuffles and decodes it. `open_source` checks
that the data is there and readable without touching the accelerator, so entry points can fail in
seconds with a command that fixes the problem.

A tfds data_dir may be a bucket (`gs://...`): tfds finds and reads the dataset's metadata through
etils.epath, and array_record's C++ reader fetches the shards itself. Its writer cannot write to a
bucket, so a dataset (bundled_mnist too) is prepared locally and copied up.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import types
from typing import Any, Mapping, Sequence

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from vit_jax.data import bundled_mnist

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
IMAGEFOLDER = "imagefolder"


@dataclasses.dataclass(frozen=True)
class Source:
  """A random-access source of raw examples and what the pipeline needs to know about it."""
  records: Sequence[dict[str, Any]]
  num_classes: int
  description: str  # For logs and errors, e.g. "cifar10:train in /data/tfds".
  # data.cache_decoded: each example's output of a pp chain's deterministic head, by (head, id).
  decoded: dict | None = None
  # Which examples, in which order, where the name and split do not fix them (an image folder's
  # files can change); "" where they do (a tfds version is immutable).
  fingerprint: str = ""


class ImageFolderRecords(Sequence):
  """`root/<split>/<class>/<image>` files as raw examples; labels index the sorted class names."""

  def __init__(self, files: Sequence[str], labels: Sequence[int]):
    self._files = list(files)
    self._labels = list(labels)

  def __len__(self) -> int:
    return len(self._files)

  def __getitem__(self, index: int) -> dict[str, Any]:
    path = self._files[index]
    return {"image": epath.Path(path).read_bytes(), "label": self._labels[index], "id": path}


class TfdsRecords(Sequence):
  """A tfds ArrayRecord data source with undecoded images and an id per example."""

  def __init__(self, data_source: Sequence[Mapping[str, Any]], name: str, split: str):
    self._data_source = data_source
    self._prefix = f"{name}:{split}"

  def __len__(self) -> int:
    return len(self._data_source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = self._data_source[index]
    name = record.get("file_name")
    example_id = name.decode() if isinstance(name, bytes) else f"{self._prefix}[{index}]"
    return {"image": record["image"], "label": int(record["label"]), "id": example_id}


class SelectedRecords(Sequence):
  """The examples of `records` at `indices`, labels renumbered by `relabel` (old -> new)."""

  def __init__(self, records: Sequence[dict[str, Any]], indices: Sequence[int],
               relabel: Mapping[int, int]):
    self._records = records
    self._indices = list(indices)
    self._relabel = dict(relabel)

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = dict(self._records[self._indices[index]])
    record["label"] = self._relabel[record["label"]]
    return record


class CachedRecords(Sequence):
  """`records`, each kept in host memory from its first read on (data.cache_raw, as big_vision's
  cache_raw): later epochs skip the file / ArrayRecord read and parse. For data that fits in RAM."""

  def __init__(self, records: Sequence[dict[str, Any]]):
    self._records = records
    self._cache: list[dict[str, Any] | None] = [None] * len(records)

  def __len__(self) -> int:
    return len(self._cache)

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = self._cache[index]
    if record is None:  # Two threads may both read it: the same record, stored twice.
      record = self._cache[index] = self._records[index]
    return record


def parse_classes(spec: str) -> tuple[int, ...]:
  """A config-file arg naming classes: '' (all), '5-9' (a range) or '0+2+4'."""
  if not spec:
    return ()
  try:
    if "-" in spec:
      first, last = (int(x) for x in spec.split("-"))
      return tuple(range(first, last + 1))
    return tuple(int(x) for x in spec.split("+"))
  except ValueError:
    raise ValueError(f"classes={spec!r}: write a range like 5-9 or labels like 0+2+4.") from None


def _select(source: Source, classes: Sequence[int], per_class: int) -> Source:
  """Only the examples of `classes` (renumbered 0..k-1 in the order given), the first
  `per_class` of each in the source's order; reads every label once."""
  classes = tuple(classes) or tuple(range(source.num_classes))
  bad = [c for c in classes if not 0 <= c < source.num_classes]
  if bad or len(set(classes)) != len(classes):
    raise ValueError(f"data.classes={classes}: each must be a distinct label in "
                     f"[0, {source.num_classes}) of {source.description}.")
  relabel = {c: i for i, c in enumerate(classes)}
  taken = dict.fromkeys(classes, 0)
  indices = []
  for index in range(len(source.records)):
    label = source.records[index]["label"]
    if label in taken and (not per_class or taken[label] < per_class):
      taken[label] += 1
      indices.append(index)
  short = {c: n for c, n in taken.items() if per_class and n < per_class}
  if short:
    raise ValueError(f"data.per_class={per_class}: {source.description} has fewer examples of "
                     f"classes {short} (label: count); lower per_class.")
  what = f"classes {classes}" + (f", {per_class} per class" if per_class else "")
  return Source(SelectedRecords(source.records, indices, relabel), len(classes),
                f"{source.description} ({what})", fingerprint=source.fingerprint)


def _imagefolder_classes(root: epath.Path) -> list[str]:
  # The union over all split folders, so that train and test agree on label ids.
  return sorted({d.name for s in root.iterdir() if s.is_dir()
                 for d in s.iterdir() if d.is_dir() and not d.name.startswith(".")})


def _open_imagefolder(root: str | None, split: str) -> Source:
  """`root/<split>/<class>/<image>`; `split` may carry a tfds slice ('train[:90%]', 'test[:16]'),
  taken from a seeded shuffle of the folder so that a slice holds every class."""
  if not root:
    raise ValueError("data.name='imagefolder' needs data.root=DIR with DIR/<split>/<class>/*.jpg.")
  folder = split.split("[", 1)[0]
  split_dir = epath.Path(root).expanduser() / folder
  if not split_dir.is_dir():
    raise FileNotFoundError(f"Image folder split {str(split_dir)!r} does not exist; expected "
                            f"{root}/{folder}/<class>/<image>.jpg (set data.root / data.split).")
  class_names = _imagefolder_classes(split_dir.parent)
  files, labels = [], []
  for label, name in enumerate(class_names):
    class_dir = split_dir / name
    images = sorted(str(p) for p in class_dir.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) \
        if class_dir.is_dir() else []
    if not images:
      raise ValueError(f"Class folder {str(class_dir)!r} has no images "
                       f"({', '.join(IMAGE_SUFFIXES)}); every class of {root} needs images in "
                       f"split {folder!r}. Add images or remove the class from all splits.")
    files += images
    labels += [label] * len(images)
  if not class_names:
    raise ValueError(f"{str(split_dir)!r} has no class sub-folders; "
                     f"expected {folder}/<class>/*.jpg.")
  if folder != split:
    try:
      spans = tfds.core.ReadInstruction.from_spec(split).to_absolute(
          {folder: types.SimpleNamespace(num_examples=len(files))})
    except (ValueError, AssertionError, KeyError) as e:
      raise ValueError(f"Bad split {split!r} for image folder {root} (data.split): {e}") from e
    order = np.random.default_rng(0).permutation(len(files))
    rows = [i for span in spans for i in order[span.from_ or 0:span.to]]
    files, labels = [files[i] for i in rows], [labels[i] for i in rows]
  listing = hashlib.sha256()
  for file, label in zip(files, labels):  # Relative paths: the data may move (into a bucket).
    listing.update(f"{label}\t{file[len(str(split_dir)):]}\n".encode())
  return Source(ImageFolderRecords(files, labels), len(class_names), f"imagefolder:{split_dir}",
                fingerprint=listing.hexdigest()[:16])


def _is_remote(path: str) -> bool:
  return "://" in path


def _prepare_hint(name: str, data_dir: str) -> str:
  if _is_remote(data_dir):
    # array_record's writer opens local files only (a gs:// path fails after generating a split):
    # a bucket gets a copy of a local preparation.
    local = (_prepare_hint(name, "/tmp/tfds") if name != bundled_mnist.BundledMnist.name else
             "python -c \"from vit_jax.data import bundled_mnist; "
             "bundled_mnist.ensure_prepared('/tmp/tfds')\"")
    return (f"{local}, then copy it up (array_record cannot write to {data_dir} directly): "
            f"gcloud storage cp -r /tmp/tfds/{name} {data_dir}/")
  return (f"tfds build {name} --data_dir={data_dir} --file_format=array_record  (the tfds CLI of "
          "tensorflow-datasets 4.9.10 needs `pip install apache-beam`; without it: python -c "
          f"\"import tensorflow_datasets as tfds; tfds.builder('{name}', data_dir='{data_dir}', "
          "file_format='array_record').download_and_prepare()\")")


def _not_ready_error(builder: tfds.core.DatasetBuilder, root: str) -> Exception:
  """Explains why tfds cannot give random access to the builder's data and how to fix it."""
  if not builder.is_prepared():
    downloads = "" if builder.name == bundled_mnist.BundledMnist.name else " (downloads)"
    return FileNotFoundError(
        f"tfds dataset {builder.name!r} is not prepared in {root} ({builder.data_dir} is missing). "
        f"Prepare it once{downloads}: {_prepare_hint(builder.name, root)}")
  return ValueError(
      f"tfds dataset {builder.name!r} in {builder.data_dir} is prepared as "
      f"{builder.info.file_format.value}; the grain pipeline needs random access (ArrayRecord). "
      f"Convert it once: tfds convert_format --dataset_dir={builder.data_dir} "
      f"--out_file_format=array_record, or rebuild with --overwrite: "
      f"{_prepare_hint(builder.name, root)}")


def _open_tfds(name: str, split: str, data_dir: str | None) -> Source:
  root = data_dir or tfds.core.constants.DATA_DIR
  if name == bundled_mnist.BundledMnist.name and not _is_remote(root):
    builder = bundled_mnist.ensure_prepared(root)  # Builds it on first use; a bucket cannot be.
  else:
    try:
      builder = tfds.builder(name, data_dir=root)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise ValueError(f"Unknown tfds dataset {name!r} (data.name), and {root} holds no "
                       f"prepared {name}/<version>/dataset_info.json; use a tfds name such as "
                       "'cifar10', 'bundled_mnist' or 'imagefolder' (with data.root).") from e
  features = builder.info.features
  if "image" not in features or "label" not in features:
    raise ValueError(f"tfds dataset {name!r} has features {list(features)}; the classification "
                     "pipeline needs 'image' and 'label'.")
  try:
    data_source = builder.as_data_source(split=split,
                                         decoders={"image": tfds.decode.SkipDecoding()})
  except ValueError as e:  # tfds raises it for unknown split names.
    raise ValueError(f"Bad split {split!r} for {name!r} (data.split): {e}") from e
  except (NotImplementedError, AssertionError, FileNotFoundError) as e:
    raise _not_ready_error(builder, root) from e
  return Source(TfdsRecords(data_source, name, split), features["label"].num_classes,
                f"{name}:{split} in {root}")


def num_classes(data_cfg: Mapping[str, Any]) -> int:
  """The class count of `data_cfg`'s dataset from its metadata alone (nothing is read or built):
  a tfds builder's label feature, or the class folders of an image folder."""
  name = data_cfg["name"]
  if data_cfg.get("classes"):
    return len(data_cfg["classes"])
  if name == IMAGEFOLDER:
    root = data_cfg.get("root")
    if not root or not epath.Path(root).expanduser().is_dir():
      raise FileNotFoundError(f"data.name='imagefolder' needs data.root=DIR (an existing folder "
                              f"with DIR/<split>/<class>/*.jpg), got {root!r}.")
    count = len(_imagefolder_classes(epath.Path(root).expanduser()))
    if not count:
      raise ValueError(f"{root} has no DIR/<split>/<class>/ folders.")
    return count
  if name == bundled_mnist.BundledMnist.name:
    return bundled_mnist.NUM_CLASSES
  data_dir = data_cfg.get("data_dir")
  try:
    builder = tfds.builder(name, data_dir=os.path.expanduser(data_dir) if data_dir else None)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"Unknown tfds dataset {name!r}: use a tfds name (e.g. 'cifar100'), "
                     "'bundled_mnist' or 'imagefolder' (with root=DIR).") from e
  label = builder.info.features["label"] if "label" in builder.info.features else None
  if not isinstance(label, tfds.features.ClassLabel):
    raise ValueError(f"tfds dataset {name!r} has no ClassLabel 'label' feature (it has "
                     f"{list(builder.info.features)}); the classification pipeline needs one.")
  return label.num_classes


def open_source(data_cfg: Mapping[str, Any]) -> Source:
  """Opens `data_cfg` = dict(name=<tfds name>|'bundled_mnist'|'imagefolder', split, data_dir, root,
  classes, per_class, cache_raw) (`config.input.data`); data_dir (tfds) and root (image folders)
  say where, if needed; `classes` (labels kept, renumbered 0..k-1) and `per_class` (the first N
  examples of each) select a subset, e.g. for few-shot transfer; `cache_raw` keeps the encoded
  examples in host memory once read, `cache_decoded` the decoded ones (the output of the pp
  chain's deterministic head: `decoded`).

  Raises FileNotFoundError / ValueError naming the command that prepares missing data.
  """
  name, split = data_cfg["name"], data_cfg["split"]
  if not name:
    raise ValueError("data.name is empty; set it to a tfds name, 'bundled_mnist' or 'imagefolder'.")
  if name == IMAGEFOLDER:
    source = _open_imagefolder(data_cfg.get("root"), split)
  else:
    data_dir = data_cfg.get("data_dir")
    source = _open_tfds(name, split, os.path.expanduser(data_dir) if data_dir else None)
  if data_cfg.get("classes") or data_cfg.get("per_class"):
    source = _select(source, data_cfg.get("classes") or (), data_cfg.get("per_class") or 0)
  if not len(source.records):
    raise ValueError(f"{source.description} has no examples.")
  if data_cfg.get("cache_raw"):
    source = dataclasses.replace(source, records=CachedRecords(source.records))
  if data_cfg.get("cache_decoded"):
    source = dataclasses.replace(source, decoded={})
  return source
