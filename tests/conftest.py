"""Test-wide setup: CPU only, 8 fake devices for sharding tests, one compilation cache, quiet
TensorFlow."""
import atexit
import os
import shutil
import tempfile

# Must happen before jax is imported anywhere in the test session.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# LLVM's optimisation passes are half of every compilation on CI's 2 CPUs, and the suite compiles
# hundreds of tiny programs that run in milliseconds either way. Processes the tests start take
# these flags too (helpers.xla_flags), so what they compute matches this process.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8"
                           " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TFDS_DATA_DIR", "/nonexistent-tfds-dir-tests-must-pass-data_dir")
# One persistent XLA cache for the session and every process it starts: the tests compile the same
# tiny steps again and again, in this process and in each `python -m vit_jax.train`, and on CI's 2
# CPUs compiling them is much of the suite's time. A cache hit still counts as a compilation for
# JAX's compile log and its backend-compile event, which the "nothing compiled" tests watch.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="vit_jax_tests_xla_cache_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")


import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position  (after the env set-up)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
  """A tiny image-folder dataset (tests/helpers.py) shared by the training tests; read-only."""
  from helpers import make_image_folder  # pylint: disable=g-import-not-at-top
  return make_image_folder(str(tmp_path_factory.mktemp("images")))


BUCKET = "bucket"  # Created in the emulator; each test writes under its own prefix.


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
  """An offline GCS API on localhost (tests/gcs_emulator.py), one subprocess for the session."""
  import gcs_emulator  # pylint: disable=g-import-not-at-top
  with gcs_emulator.running_emulator(tmp_path_factory.mktemp("gcs")) as emu:
    emu.create_bucket(BUCKET)
    yield emu


@pytest.fixture
def gcs(gcs_server, monkeypatch, tmp_path):
  """The emulator, with this process pointed at it and run from an empty directory.

  A `gs://` path that some library mistook for a local one would land under the working directory
  (as `./gs:/...`), so the test fails if that directory is not empty afterwards.
  """
  gcs_server.apply(monkeypatch)
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  yield gcs_server
  assert not os.path.exists(cwd / "gs:")
  assert not list(cwd.iterdir()), "a gs:// write went to the local disk"
