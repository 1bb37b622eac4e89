"""Input throughput: decode + inception crop + flip of real JPEGs at 224 px, ours vs PIL vs tf.data.

The library side of `python -m vit_jax.data_bench`. Offline: the two photos scikit-learn ships are
cut and re-encoded (quality 90) at ImageNet-like sizes (about 500x375, both orientations) into a
temporary `train/<class>/*.jpg` folder, which our pipeline reads as an `imagefolder` source. Each
method runs for the same number of images after a warm-up, in one process, one after the other.
The per-core figure is images per second of process CPU time (all threads), which is what scales
with host cores and is less disturbed by other load on a shared machine than wall time; both are
printed. With --num_images above --files every file is read more than once: the data.cache_decoded
row decodes each once (its first epoch is in the measurement).
"""
from __future__ import annotations

import dataclasses
import pathlib
import tempfile
import time
from typing import Callable, Iterator

from etils import epath
import numpy as np
from PIL import Image

from vit_jax.config import base_config
from vit_jax.data import pipeline, preprocess

_IMAGENET_LIKE_SIZES = ((500, 375), (375, 500), (500, 333), (500, 400), (400, 500), (450, 350))
_BATCH = 32


def make_jpeg_folder(root: pathlib.Path, num_files: int, seed: int = 0) -> list[str]:
  """Writes num_files JPEGs, random crops of sklearn's sample photos at ImageNet-like sizes."""
  from sklearn.datasets import load_sample_images  # Optional (bench / test extra) dependency.
  photos = [Image.fromarray(p) for p in load_sample_images().images]
  rng = np.random.default_rng(seed)
  files = []
  for i in range(num_files):
    photo = photos[i % len(photos)]
    w, h = _IMAGENET_LIKE_SIZES[i % len(_IMAGENET_LIKE_SIZES)]
    scale = max(w / photo.width, h / photo.height) * rng.uniform(1.0, 1.3)
    big = photo.resize((round(photo.width * scale), round(photo.height * scale)),
                       Image.Resampling.BICUBIC)
    left, top = rng.integers(0, big.width - w + 1), rng.integers(0, big.height - h + 1)
    path = root / "train" / f"class{i % len(photos)}" / f"img{i:04d}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    big.crop((left, top, left + w, top + h)).save(path, "JPEG", quality=90)
    files.append(str(path))
  return files


@dataclasses.dataclass
class Measurement:
  method: str
  images: int
  wall_s: float
  cpu_s: float

  @property
  def per_cpu_second(self) -> float:
    return self.images / self.cpu_s

  @property
  def per_wall_second(self) -> float:
    return self.images / self.wall_s


def _measure(method: str, batches: Iterator[int], num_images: int) -> Measurement:
  """Times pulling num_images from `batches` (which yields batch sizes) after one warm-up batch."""
  next(batches)
  wall, cpu, done = time.perf_counter(), time.process_time(), 0
  while done < num_images:
    done += next(batches)
  return Measurement(method, done, time.perf_counter() - wall, time.process_time() - cpu)


def ours(root: str, size: int, threads: int, cache_decoded: bool = False) -> Iterator[int]:
  cfg = base_config().input
  cfg.data.update(name="imagefolder", root=root, split="train", cache_decoded=cache_decoded)
  cfg.update(pp=f"decode|inception_crop({size})|flip_lr", threads=threads)
  for batch in pipeline.train_dataset(cfg, _BATCH, seed=0):
    yield len(batch["image"])


def plain_pil(files: list[str], size: int) -> Iterator[int]:
  """The same work as a plain loop: read, decode, random crop + resize, flip, stack."""
  rng = np.random.default_rng(0)
  crop = preprocess.inception_crop(size)
  while True:
    batch = []
    for path in rng.choice(files, _BATCH):
      with epath.Path(path).open("rb") as f:
        image = Image.open(f).convert("RGB")
      image = crop({"image": image}, rng)["image"]
      if rng.uniform() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
      batch.append(np.asarray(image))
    yield len(np.stack(batch))


def tf_data(files: list[str], size: int, threads: int) -> Iterator[int]:
  """tf.data with the fused decode-and-crop of big_vision's decode_jpeg_and_inception_crop."""
  import tensorflow as tf  # Optional: only this comparison needs it.

  def load(path):
    data = tf.io.read_file(path)
    shape = tf.image.extract_jpeg_shape(data)
    # big_vision's arguments; aspect ratio and attempts at TF's defaults (0.75-1.33, 100).
    begin, crop_size, _ = tf.image.sample_distorted_bounding_box(
        shape, tf.zeros([0, 0, 4]), area_range=(0.05, 1.0), min_object_covered=0,
        use_image_if_no_bounding_boxes=True)
    window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
    image = tf.image.decode_and_crop_jpeg(data, window, channels=3)
    image = tf.image.resize(image, (size, size), antialias=False)
    return tf.cast(tf.image.random_flip_left_right(image), tf.uint8)

  options = tf.data.Options()
  options.threading.private_threadpool_size = threads
  dataset = (tf.data.Dataset.from_tensor_slices(files).repeat().shuffle(len(files), seed=0)
             .map(load, num_parallel_calls=threads).batch(_BATCH).prefetch(1)
             .with_options(options))
  for batch in dataset.as_numpy_iterator():
    yield len(batch)


def format_table(rows: list[Measurement], threads: int) -> str:
  lines = [(f"| method (threads={threads}) | images | wall s | img/s wall | CPU s | "
            "img/s per core |"),
           "|---|---:|---:|---:|---:|---:|"]
  for m in rows:
    lines.append(f"| {m.method} | {m.images} | {m.wall_s:.2f} | {m.per_wall_second:.0f} | "
                 f"{m.cpu_s:.2f} | {m.per_cpu_second:.0f} |")
  return "\n".join(lines)


def run(num_images: int, threads: int, size: int, num_files: int) -> list[Measurement]:
  with tempfile.TemporaryDirectory() as root:
    files = make_jpeg_folder(pathlib.Path(root), num_files)
    methods: list[tuple[str, Callable[[], Iterator[int]]]] = [
        ("vit_jax.data (grain + PIL)", lambda: ours(root, size, threads)),
        # Decodes each file once; the random crop and flip run every time.
        ("vit_jax.data, data.cache_decoded", lambda: ours(root, size, threads, True)),
        ("plain PIL loop", lambda: plain_pil(files, size)),
        ("tf.data (decode_and_crop_jpeg)", lambda: tf_data(files, size, threads)),
    ]
    return [_measure(name, make(), num_images) for name, make in methods]
