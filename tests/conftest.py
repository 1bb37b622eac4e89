"""Test-wide setup: CPU only, 8 fake devices for sharding tests, quiet TensorFlow."""
import os

# Must happen before jax is imported anywhere in the test session.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TFDS_DATA_DIR", "/nonexistent-tfds-dir-tests-must-pass-data_dir")


import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position  (after the env set-up)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
  """A tiny image-folder dataset (tests/helpers.py) shared by the training tests; read-only."""
  from helpers import make_image_folder  # pylint: disable=g-import-not-at-top
  return make_image_folder(str(tmp_path_factory.mktemp("images")))
