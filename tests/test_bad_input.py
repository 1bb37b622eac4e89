"""Every bad input on every entry point: exit code 2, one `error:` line naming the value and the
fix, no traceback, nothing compiled, and the workdir left as it was.

The cases run as real command lines, several at a time (each starts Python, JAX and TensorFlow),
from a module fixture; each test asserts on one of them.
"""
import concurrent.futures
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO, tiny_config_file

pytestmark = pytest.mark.slow  # ~50 processes.


@dataclasses.dataclass(frozen=True)
class Case:
  program: str  # vit_jax.<program>
  args: tuple[str, ...]  # {config}, {workdir}, {tmp}, {garbage}, {data_dir} are filled in
  message: str  # must appear in the error line


TRAIN = ("--config={config}", "--workdir={workdir}")
CASES = {
    # Flags and config files.
    "no config": Case("train", ("--workdir={workdir}",), "--config is required"),
    "no workdir": Case("train", ("--config={config}",), "--workdir is required"),
    "empty workdir": Case("train", ("--config={config}", "--workdir="), "--workdir is required"),
    "unknown flag": Case("train", (*TRAIN, "--bogus=1"), "Unknown command line flag 'bogus'"),
    "positional argument": Case("train", (*TRAIN, "extra"), "unexpected arguments ['extra']"),
    "missing config file": Case("train", ("--config=configs/nope.py", "--workdir={workdir}"),
                                "No such file or directory: 'configs/nope.py'"),
    "bad config-file arg": Case("train", ("--config=configs/quickstart.py:pach=3",
                                          "--workdir={workdir}"), "Unknown config arg 'pach'"),
    "misspelled field": Case("train", (*TRAIN, "--config.optim.lrr=1"),
                             'Did you mean "lr" instead of "lrr"?'),
    "field of the wrong type": Case("train", (*TRAIN, "--config.optim.lr=fast"),
                                    "could not convert string to float: 'fast'"),
    # Values the config may hold but a run cannot use.
    "zero lr": Case("train", (*TRAIN, "--config.optim.lr=0"),
                    "config.optim.lr=0.0 must be positive"),
    "negative lr": Case("train", (*TRAIN, "--config.optim.lr=-0.1"), "must be positive"),
    "zero steps": Case("train", (*TRAIN, "--config.total_steps=0"), "The run is 0 steps long"),
    "negative steps": Case("train", (*TRAIN, "--config.total_steps=-3"), "-3 steps long"),
    "warmup longer than the run": Case("train", (*TRAIN, "--config.optim.warmup_steps=10"),
                                       "The warmup (10 steps) must fit in the run (6 steps)"),
    "two durations": Case("train", (*TRAIN, "--config.total_epochs=2"),
                          "Set only one of total_steps, total_epochs"),
    "depth 0": Case("train", (*TRAIN, "--config.model.depth=0"), "depth=0 must be a positive int"),
    "heads not dividing width": Case("train", (*TRAIN, "--config.model.num_heads=3"),
                                     "width=16 is not divisible by num_heads=3"),
    "patch not dividing the image": Case("train", (*TRAIN, "--config.model.patch_size=5"),
                                         "not divisible by the patch size 5x5"),
    "unknown classifier": Case("train", (*TRAIN, "--config.model.classifier=cls"),
                               "classifier='cls'; choose one of"),
    "cuDNN attention on CPU": Case("train", (*TRAIN, "--config.model.attention_impl=cudnn"),
                                   "model.attention_impl='cudnn' cannot run here: it needs a GPU"),
    "malformed mesh": Case("train", (*TRAIN, "--config.mesh=((\"data\",),)"),
                           "must be (axis name, size) pairs"),
    "mesh of other devices": Case("train", (*TRAIN, "--config.mesh=((\"data\", 3),)"),
                                  "has 3 devices but 8 are available"),
    "batch not splitting": Case("train", (*TRAIN, "--config.batch_size=30"),
                                "not divisible by the data-parallel size 8"),
    "eval batch not splitting": Case("train", (*TRAIN, "--config.eval_batch_size=12"),
                                     "config.eval_batch_size=12"),
    "class count vs onehot": Case("train", (*TRAIN, "--config.num_classes=7"),
                                  "config.num_classes=7 but the pp string has onehot(4)"),
    "unknown optimizer": Case("train", (*TRAIN, "--config.optim.name=lamb"),
                              "Unknown optimizer config.optim.name='lamb'"),
    "unknown schedule": Case("train", (*TRAIN, "--config.optim.schedule=step"),
                             "Unknown config.optim.schedule='step'"),
    "unknown loss": Case("train", (*TRAIN, "--config.loss=l2"), "Unknown config.loss='l2'"),
    "unknown pp op": Case("train", (*TRAIN, "--config.input.pp=decode|bogus"),
                          "Unknown pp op 'bogus'"),
    "labels smoothed twice": Case(
        "train", (*TRAIN, "--config.label_smoothing=0.1",
                  "--config.input.pp=decode|onehot(4, label_smoothing=0.1)"),
        "both smooth the labels"),
    "zero log interval": Case("train", (*TRAIN, "--config.log_every_steps=0"),
                              "config.log_every_steps=0 must be a positive number of steps"),
    "flexi patch not dividing": Case("train", (*TRAIN, "--config.flexi.patch_sizes=(4,5)"),
                                     "patch size 5 does not divide the 16x16 images"),
    "unprepared tfds dataset": Case("train", (*TRAIN, "--config.input.data.name=cifar10",
                                              "--config.input.data.data_dir={tmp}"),
                                    "tfds build cifar10"),
    "image folder without root": Case("train", (*TRAIN, "--config.input.data.root="),
                                      "needs data.root=DIR"),
    "bad on_corrupt": Case("train", (*TRAIN, "--config.input.data.on_corrupt=maybe"),
                           "data.on_corrupt='maybe'"),
    "missing init": Case("train", (*TRAIN, "--config.init={tmp}/nope.npz"),
                         "config.init={tmp}/nope.npz does not exist"),
    "damaged init": Case("train", (*TRAIN, "--config.init={garbage}"),
                         "is not a readable .npz checkpoint"),
    "unwritable workdir": Case("train", ("--config={config}", "--workdir={garbage}/run"),
                               "is not writable"),
    # The other entry points.
    "evaluate an empty workdir": Case("evaluate", TRAIN, "No checkpoint to evaluate"),
    "evaluate a missing checkpoint": Case("evaluate", (*TRAIN, "--checkpoint={tmp}/nope"),
                                          "--checkpoint={tmp}/nope does not exist"),
    "convert without input": Case("convert", ("--output_dir={tmp}/out",), "Missing --input"),
    "convert a damaged file": Case("convert", ("--input={garbage}", "--model=ViT-Ti/16",
                                               "--output_dir={tmp}/out"),
                                   "is not a readable .npz checkpoint"),
    "convert to an unknown format": Case("convert", ("--input={garbage}", "--model=ViT-Ti/16",
                                                     "--output_dir={tmp}/out", "--formats=onnx"),
                                         "--formats=onnx: choose from"),
    "convert with broken overrides": Case("convert", ("--input={garbage}", "--overrides={{bad",
                                                      "--output_dir={tmp}/out"),
                                          "--overrides must be a JSON dict"),
    "convert without a model outside a workdir": Case("convert", ("--input={garbage}",
                                                                  "--output_dir={tmp}/out"),
                                                      "is not in a workdir with a config.json"),
    "bench to an unknown target": Case("bench", ("--config={config}", "--targets=tpu-v9-8"),
                                       "unknown projection target 'tpu-v9-8'"),
    "bench a patch not dividing": Case("bench", ("--config={config}",
                                                 "--config.model.patch_size=5"),
                                       "not divisible by the patch size 5x5"),
    "sweep a missing study": Case("sweep", ("experiments/nope.py",), "does not exist"),
    "sweep without a study": Case("sweep", (), "expected one study file"),
    "sweep an unknown launcher": Case("sweep", ("experiments/patch_size_tradeoff.py",
                                                "--launcher=gke"), "--launcher"),
    "sweep with no trial at a time": Case("sweep", ("experiments/patch_size_tradeoff.py",
                                                    "--parallel=0", "--sweep_dir={tmp}/s"),
                                          "--parallel=0"),
    "sweep to a TPU without a name": Case("sweep", ("experiments/patch_size_tradeoff.py",
                                                    "--launcher=tpu", "--zone=z"),
                                          "--tpu_name is required"),
    "sweep to SLURM from a bucket": Case("sweep", ("experiments/patch_size_tradeoff.py",
                                                   "--launcher=slurm", "--sweep_dir=gs://b/s"),
                                         "--sweep_dir=gs://b/s: SLURM reads each job's script"),
    "sweep to SLURM with no failed attempt": Case(
        "sweep", ("experiments/patch_size_tradeoff.py", "--launcher=slurm", "--failed_attempts=0",
                  "--sweep_dir={tmp}/s"), "--failed_attempts=0: give the number of attempts"),
    "sweep into a damaged manifest": Case("sweep", ("experiments/patch_size_tradeoff.py",
                                                    "--sweep_dir={tmp}/damaged_sweep"),
                                          "sweep.json is not valid JSON"),
    "report a missing sweep dir": Case("report", ("{tmp}/nope",), "does not exist"),
    "report an empty sweep dir": Case("report", ("{workdir}",), "holds no trials"),
    "report a damaged manifest": Case("report", ("{tmp}/damaged_sweep",),
                                      "sweep.json is not valid JSON"),
    "data bench with no images": Case("data_bench", ("--num_images=0",),
                                      "--num_images=0 must be positive"),
}


def _run(case: Case, tmp_path, config_file: str, garbage: str):
  workdir = tmp_path / "workdir"
  workdir.mkdir()
  (workdir / "keep.txt").write_text("the workdir's own file")
  (tmp_path / "damaged_sweep").mkdir()
  (tmp_path / "damaged_sweep" / "sweep.json").write_text("{not json")
  fill = dict(config=config_file, workdir=workdir, tmp=tmp_path, garbage=garbage)
  args = [a.format(**fill) for a in case.args]
  env = {**os.environ, "JAX_LOG_COMPILES": "1"}  # Any compilation would be logged.
  result = subprocess.run([sys.executable, "-m", f"vit_jax.{case.program}", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
  return result, sorted(os.listdir(workdir)), case.message.format(**fill)


@pytest.fixture(scope="module")
def results(data_root, tmp_path_factory):
  config_file = tiny_config_file(tmp_path_factory.mktemp("config") / "tiny.py", data_root)
  garbage = tmp_path_factory.mktemp("garbage") / "weights.npz"
  garbage.write_bytes(np.random.default_rng(0).bytes(2000))
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    futures = {name: pool.submit(_run, case, tmp_path_factory.mktemp("case"), str(config_file),
                                 str(garbage))
               for name, case in CASES.items()}
    return {name: future.result() for name, future in futures.items()}


def test_there_are_enough_cases_on_every_entry_point():
  assert len(CASES) >= 40
  assert {c.program for c in CASES.values()} == {"train", "evaluate", "convert", "bench", "sweep",
                                                 "report", "data_bench"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_exits_2_with_one_message_before_compiling_and_writing(results, name):
  result, workdir_files, message = results[name]
  stderr = result.stderr
  errors = [line for line in stderr.splitlines() if line.startswith("error:")]
  assert result.returncode == 2, stderr[-3000:]
  assert len(errors) == 1 and message in errors[0], stderr[-3000:]
  assert "Traceback" not in stderr and "XLA compilation" not in stderr, stderr[-3000:]
  assert workdir_files == ["keep.txt"]
