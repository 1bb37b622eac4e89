"""Bad config values: one clear message naming the fix, raised before anything is compiled; exit 2."""
import os
import re
import subprocess
import sys

import jax
import pytest

from tiny_training import tiny_config
from vit_jax import config_checks
from vit_jax import train



@pytest.fixture
def compilations():
  """Counts XLA compilations while a test runs."""
  events = []
  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      events.append(event)
  jax.monitoring.register_event_duration_secs_listener(listener)
  yield events
  jax.monitoring.unregister_event_duration_listener(listener)


def _set(**fields):
  return lambda config: config.update(fields)


@pytest.mark.parametrize("change, message", [
    (lambda c: c.model.update(patch_size=(5, 5)), "not divisible by the patch size 5x5"),
    (lambda c: c.flexi.update(patch_sizes=(4, 5)),
     "config.flexi.patch_sizes=(4, 5): patch size 5 does not divide the 16x16 images"),
    (_set(batch_size=30), "config.batch_size=30 (micro-batch 30 with grad_accum_steps=1) is not "
     "divisible by the data-parallel size 8"),
    (_set(mesh=(("data", 3),)), "config.mesh=[('data', 3)] has 3 devices but 8 are available"),
    (lambda c: c.optim.update(name="lamb"), "Unknown optimizer config.optim.name='lamb'"),
    (lambda c: c.input.update(data=dict(name="cifar10", split="train", data_dir="/tmp/no-tfds")),
     "tfds build cifar10"),
    (_set(init="/nonexistent/ViT-B_16.npz"), "config.init=/nonexistent/ViT-B_16.npz does not exist"),
])
def test_bad_config_names_the_problem_before_compiling(data_root, tmp_path, compilations, change,
                                                       message):
  config = tiny_config(data_root)
  change(config)
  with pytest.raises(config_checks.ConfigError, match=re.escape(message)):
    train.train_and_evaluate(config, str(tmp_path))
  assert not compilations


def test_unwritable_workdir(data_root, tmp_path, compilations):
  (tmp_path / "file").write_text("a file, not a directory")
  workdir = str(tmp_path / "file" / "sub")
  with pytest.raises(config_checks.ConfigError, match=re.escape(f"--workdir={workdir} is not "
                                                                "writable")):
    train.train_and_evaluate(tiny_config(data_root), workdir)
  assert not compilations


def test_command_line_exits_2_with_one_message(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  result = subprocess.run(
      [sys.executable, "-m", "vit_jax.train", "--config=configs/quickstart.py",
       f"--workdir={tmp_path}", "--config.mesh=((\"data\", 3),)"],
      capture_output=True, text=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)),
      timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  assert "error: config.mesh=[('data', 3)] has 3 devices but 2 are available" in result.stderr
