"""A complete cloud run against the offline GCS API (tests/gcs_emulator.py): a tfds dataset prepared
under `gs://` and every output in the bucket; train, SIGTERM, resume, evaluate, export, a local
two-trial sweep and its report, with nothing written to the local disk (before the workdir
contract, `os.path.abspath("gs://bucket/run")` made such a run a local `./gs:/bucket/run`).

The dataset is prepared locally and copied up, as users must: array_record's writer cannot write
`gs://`. Reading it back takes two clients: tfds finds the version and reads dataset_info.json /
features.json through etils.epath (gcsfs), and grain's records come through array_record's C++
reader (google-cloud-cpp); tests/gcs_emulator.py points both at the emulator.
"""
import dataclasses
import importlib.util
import io
import json
import os
import pathlib
import subprocess
import sys
from typing import NamedTuple
import urllib.parse

from etils import epath
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import BUCKET
import gcs_emulator
from helpers import NUM_CLASSES, REPO, TESTS, TOTAL_STEPS, TRAIN_PER_CLASS, stop_at_step
from vit_jax.checkpoints import export, manager
from vit_jax.data import pipeline, sources
from vit_jax.training import evaluation, loop

pytestmark = pytest.mark.slow

TEST_PER_CLASS = 4


class TinyCloudImages(tfds.core.GeneratorBasedBuilder):
  """tests/helpers.py's tiny image folder as a tfds dataset: 16x16 RGB images whose class sets the
  mean colour, 32 train (one global batch) / 16 test, 4 classes."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(16, 16, 3)),
        "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES)}))

  def _split_generators(self, dl_manager):
    del dl_manager  # Generated.
    return {"train": self._generate_examples(TRAIN_PER_CLASS, seed=0),
            "test": self._generate_examples(TEST_PER_CLASS, seed=1)}

  def _generate_examples(self, per_class, seed):
    rng = np.random.default_rng(seed)
    for label in range(NUM_CLASSES):
      for i in range(per_class):
        pixels = rng.normal(40 + 50 * label, 30, (16, 16, 3)).clip(0, 255).astype(np.uint8)
        yield f"{label}_{i}", {"image": pixels, "label": label}


NAME = TinyCloudImages.name  # "tiny_cloud_images"

# Trials of a sweep run in other processes, where this module (so the builder class) is never
# imported: there tfds rebuilds the builder from the dataset_info.json / features.json in the
# bucket, as on a cluster that has only the prepared data. `tiny_config` is the helpers' model.
CONFIG_FILE = """\
import sys
sys.path.insert(0, {tests!r})
from helpers import tiny_config


def get_config():
  config = tiny_config(None, mesh=(("data", -1),))
  config.input.data.update(name={name!r}, root=None, data_dir={data_dir!r})
  config.evals.val.data.name = {name!r}  # Inherits data_dir.
  return config
"""

# Two steps per trial (one checkpoint) is enough to show where a sweep's outputs go.
STUDY_FILE = """\
from vit_jax.study import sweep


def get_sweep():
  return sweep.Study("cloud", {config!r}, sweep.trials(sweep.axis("config.seed", [0, 1])),
                     base_overrides={{"total_steps": 2}})
"""


def _tree(root: pathlib.Path) -> dict[str, int]:
  """Every file and folder under `root`, relative to it, with its size (-1: a folder)."""
  return {str(p.relative_to(root)): -1 if p.is_dir() else p.stat().st_size
          for p in root.rglob("*")}


def _load_config(path: pathlib.Path):
  spec = importlib.util.spec_from_file_location("cloud_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@dataclasses.dataclass(frozen=True)
class Cloud:
  """A test's place in the bucket: `root` = gs://bucket/`prefix`, the dataset under root/tfds."""
  gcs: gcs_emulator.Emulator
  root: str
  prefix: str
  config_file: pathlib.Path

  def names(self, folder: str) -> set[str]:
    """The objects under root/folder, relative to it."""
    start = f"{self.prefix}/{folder}/"
    return {name[len(start):] for name in self.gcs.list(BUCKET, start)}

  def read(self, name: str) -> bytes:
    return self.gcs.read(BUCKET, f"{self.prefix}/{name}")


class Prepared(NamedTuple):
  data_dir: pathlib.Path  # The local tfds data_dir.
  version: pathlib.Path  # data_dir/tiny_cloud_images/1.0.0: what is copied up.
  files: dict[str, int]  # What the preparation left under data_dir (`_tree`).


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Prepared:
  """The dataset built locally as ArrayRecord, once for this module's tests."""
  data_dir = tmp_path_factory.mktemp("prepared")
  builder = TinyCloudImages(data_dir=str(data_dir), file_format="array_record")
  builder.download_and_prepare()
  return Prepared(data_dir, pathlib.Path(builder.data_dir), _tree(data_dir))


@pytest.fixture
def cloud(gcs, prepared, tmp_path, tmp_path_factory):
  """The prepared dataset copied up to the bucket (as users must: array_record's writer cannot
  write gs://) and a config file that trains on it there. Afterwards checks that the local disk
  holds nothing new besides the test's own files, and no `gs:` folder anywhere."""
  prefix = f"cloud/{tmp_path.name}"
  data_dir = f"gs://{BUCKET}/{prefix}/tfds"
  remote = epath.Path(data_dir) / NAME / prepared.version.name
  for path in sorted(prepared.version.iterdir()):
    (remote / path.name).write_bytes(path.read_bytes())
  config_file = tmp_path / "cloud_config.py"
  config_file.write_text(CONFIG_FILE.format(tests=TESTS, name=NAME, data_dir=data_dir))
  before = _tree(tmp_path)
  yield Cloud(gcs, f"gs://{BUCKET}/{prefix}", prefix, config_file)
  # The gcs fixture checks the (empty) working directory after this.
  assert _tree(prepared.data_dir) == prepared.files, "the local preparation was written to"
  assert set(_tree(tmp_path)) - set(before) <= {"cwd", "study.py"}, "a local write"
  assert not list(tmp_path_factory.getbasetemp().rglob("gs:*")), "a gs:// path went to disk"
  assert not os.path.exists(os.path.join(REPO, "gs:"))


def test_pipeline_reads_a_dataset_prepared_in_a_bucket(cloud, prepared):
  config = _load_config(cloud.config_file)
  source = sources.open_source(config.input.data)
  assert (len(source.records), source.num_classes) == (NUM_CLASSES * TRAIN_PER_CLASS, NUM_CLASSES)
  assert source.description == f"{NAME}:train in {cloud.root}/tfds"
  local = sources.open_source({**config.input.data, "data_dir": str(prepared.data_dir)})
  everything = range(len(local.records))
  assert [source.records[i] for i in everything] == [local.records[i] for i in everything]
  assert pipeline.example_shape(config.input) == (16, 16, 3)

  iterator = pipeline.make_train_iterator(config.input, config.batch_size, seed=0)
  batch = next(iterator)
  assert batch["image"].shape == (config.batch_size, 16, 16, 3)
  assert sorted(np.asarray(batch["label"]).argmax(1)) == sorted(
      list(range(NUM_CLASSES)) * TRAIN_PER_CLASS)  # The whole split, once.
  evals = {**config.input, "data": {**config.input.data, "split": "test"}}
  batches = list(pipeline.make_eval_iterable(evals, 8))
  assert sum(float(np.asarray(b["mask"]).sum()) for b in batches) == NUM_CLASSES * TEST_PER_CLASS
  # The shards came over HTTP from the bucket (the emulator's log), not from the local copy.
  shard = f"{cloud.prefix}/tfds/{NAME}/1.0.0/{NAME}-train.array_record-00000-of-00001"
  assert f"/o/{urllib.parse.quote(shard, safe='')}?alt=media" in cloud.gcs.log_path.read_text()


def test_train_resume_evaluate_export_with_data_and_workdir_in_a_bucket(cloud, monkeypatch):
  workdir = f"{cloud.root}/run"
  config = _load_config(cloud.config_file)
  config.mesh = (("data", 2),)
  devices = jax.devices()[:2]

  # What the bucket's metrics.jsonl holds as each checkpoint is saved (object stores cannot
  # append, so the file is rewritten at intervals and before every save).
  in_bucket_at_save = {}
  save = manager.TrainStateCheckpointer.save

  def save_and_look(self, step, *args, **kwargs):
    in_bucket = cloud.read("run/metrics.jsonl").decode()
    saved = save(self, step, *args, **kwargs)
    if saved:
      in_bucket_at_save[step] = in_bucket
    return saved
  monkeypatch.setattr(manager.TrainStateCheckpointer, "save", save_and_look)

  with monkeypatch.context() as patch:
    stop_at_step(patch, 3)
    stopped = loop.train_and_evaluate(config, workdir, devices=devices)
  assert stopped["stopped_by"] == "SIGTERM" and stopped["step"] == 3
  final = loop.train_and_evaluate(config, workdir, devices=devices)  # Resumes at step 4.
  assert final["step"] == TOTAL_STEPS and 0 <= final["val/prec@1"] <= 1

  results = evaluation.evaluate_checkpoint(config, workdir, devices=devices)
  assert results["val/prec@1"] == final["val/prec@1"]

  written = export.convert(f"{workdir}/checkpoints", None, f"{cloud.root}/export",
                           formats=["npz"])
  assert [str(p) for p in written] == [f"{cloud.root}/export/ViT-custom.npz"]
  exported = np.load(io.BytesIO(cloud.read("export/ViT-custom.npz")))
  trained = manager.load_params(f"{workdir}/checkpoints")
  np.testing.assert_array_equal(exported["head/kernel"], trained["head"]["kernel"])

  names = cloud.names("run")
  assert {"config.json", "metrics.jsonl", "summary.json", "eval.json"} <= names
  # Saved at 1 (Orbax saves a run's first step), 2, 3 (the stop), 4 and 6; the oldest rotated
  # out (keep_checkpoints=3), in the bucket.
  assert {n for n in names if n.endswith("commit_success.txt") and n.count("/") == 2} == {
      f"checkpoints/{step}/commit_success.txt" for step in (3, 4, 6)}
  assert len([n for n in names if n.startswith("tb/events.out.tfevents.")]) == 2  # One per session.
  rows = [json.loads(line) for line in cloud.read("run/metrics.jsonl").decode().splitlines()]
  assert [r["step"] for r in rows if "train/loss" in r] == list(range(1, TOTAL_STEPS + 1))
  # A run killed right after a save (no time to flush) resumes after that step: the rows up to it
  # were already in the bucket, but for that step's evals, which run (and are flushed) after the
  # save so that an eval that fails costs no training.
  assert sorted(in_bucket_at_save) == [1, 2, 3, 4, 6]
  for step, text in in_bucket_at_save.items():
    assert [json.loads(line) for line in text.splitlines()] == [
        r for r in rows if r["step"] < step or r["step"] == step and "val/loss" not in r], step
  assert [r["step"] for r in rows if "val/loss" in r] == [6]
  assert json.loads(cloud.read("run/summary.json"))["done"]


def test_sweep_and_report_with_data_and_sweep_dir_in_a_bucket(cloud, tmp_path):
  """`python -m vit_jax.sweep` and `python -m vit_jax.report`, run from the empty working
  directory: trials' bench and train read the bucket's dataset without this module's builder."""
  study = tmp_path / "study.py"
  study.write_text(STUDY_FILE.format(config=str(cloud.config_file)))
  env = {**os.environ, **cloud.gcs.env}
  sweep_dir = f"{cloud.root}/sweep"
  sweep_flags = ["--launcher=local", f"--sweep_dir={sweep_dir}", "--parallel=2", "--targets="]
  for command in (["vit_jax.sweep", str(study), *sweep_flags], ["vit_jax.report", sweep_dir]):
    result = subprocess.run([sys.executable, "-m", *command], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

  names = cloud.names("sweep")
  for trial in ("seed=0", "seed=1"):
    assert {f"{trial}/{n}" for n in ("bench.json", "summary.json", "metrics.jsonl",
                                     "checkpoints/2/commit_success.txt")} <= names
    assert json.loads(cloud.read(f"sweep/{trial}/summary.json"))["done"]
  assert {"sweep.json", "results.csv", "results.md", "accuracy_vs_train_gflops.png",
          "accuracy_vs_img_per_s.png"} <= names
  table = cloud.read("sweep/results.md").decode()
  assert "| seed=0 |" in table and "| seed=1 |" in table


@pytest.mark.parametrize("name", ["bundled_mnist", "cifar10"])
def test_data_missing_from_a_bucket_is_an_error_that_says_how_to_put_it_there(gcs, name):
  """bundled_mnist builds itself into a local data_dir on first use, but array_record cannot write
  to a bucket: the error names a local preparation and the copy instead of failing half-way."""
  data_dir = f"gs://{BUCKET}/missing/tfds"
  with pytest.raises(FileNotFoundError, match=(
      f"not prepared in {data_dir}.*then copy it up.*gcloud storage cp -r /tmp/tfds/{name} "
      f"{data_dir}/")):
    sources.open_source({"name": name, "split": "train", "data_dir": data_dir})
  assert gcs.list(BUCKET, "missing/") == []
