"""Bad config values: one clear message naming the fix, raised before anything is compiled; exit
2."""
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from helpers import REPO, abstract_params, tiny_config, xla_flags
from vit_jax import checkpoints, models
from vit_jax.config import BadInputError
from vit_jax.training import loop


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
    (lambda c: c.model.update(patch_size=5), "not divisible by the patch size 5x5"),
    (lambda c: c.flexi.update(patch_sizes=(4, 5)),
     "config.flexi.patch_sizes=(4, 5): patch size 5 does not divide the 16x16 images"),
    (_set(batch_size=30), "config.batch_size=30 (micro-batch 30 with grad_accum_steps=1) is not "
     "divisible by the data-parallel size 8"),
    (_set(mesh=(("data", 3),)), "config.mesh=[('data', 3)] has 3 devices but 8 are available"),
    (lambda c: c.optim.update(name="lamb"), "Unknown optimizer config.optim.name='lamb'"),
    (lambda c: c.input.data.update(name="cifar10", data_dir="/tmp/no-tfds"), "tfds build cifar10"),
    (_set(init="/nonexistent/ViT-B_16.npz"),
     "config.init=/nonexistent/ViT-B_16.npz does not exist"),
    (lambda c: c.model.update(widht=24), "Unknown model option(s) ['widht']"),
    (lambda c: (c.flexi.update(patch_sizes=(4, 8)),
                c.input.update(pp="decode|resize((16, 8))|value_range(-1, 1)|onehot(4)")),
     "a learned position embedding is resized between patch sizes on square images only"),
    (lambda c: (c.optim.update(warmup_step=1), c.update(ema=0.9),
                c.evals.val.data.update(splt="test")),
     "config.ema, config.optim.warmup_step, config.evals.val.data.splt: no such field"),
    (lambda c: (c.update(label_smoothing=0.1),
                c.input.update(pp="decode|value_range(-1, 1)|onehot(4, label_smoothing=0.1)")),
     "both smooth the labels"),
    (lambda c: c.evals.val.update(batch_size=4), "evals have one batch size"),
    (_set(eval_batch_size=12), "config.eval_batch_size=12 (micro-batch 12"),
])
def test_bad_config_names_the_problem_before_compiling(data_root, tmp_path, compilations, change,
                                                       message):
  config = tiny_config(data_root)
  change(config)
  with pytest.raises(BadInputError, match=re.escape(message)):
    loop.train_and_evaluate(config, str(tmp_path))
  assert not compilations


def test_unwritable_workdir(data_root, tmp_path, compilations):
  (tmp_path / "file").write_text("a file, not a directory")
  workdir = str(tmp_path / "file" / "sub")
  with pytest.raises(BadInputError, match=re.escape(f"--workdir={workdir} is not writable")):
    loop.train_and_evaluate(tiny_config(data_root), workdir)
  assert not compilations


def test_bad_init_checkpoint_fails_before_compiling(data_root, tmp_path, compilations):
  garbage = tmp_path / "garbage.npz"
  garbage.write_bytes(np.random.default_rng(0).bytes(1000))
  with pytest.raises(BadInputError, match="is not a readable .npz checkpoint"):
    loop.train_and_evaluate(tiny_config(data_root, init=str(garbage)), str(tmp_path / "a"))
  wider = models.get_model(None, num_classes=4, patch_size=4, width=32, depth=1, num_heads=2,
                           mlp_dim=32)
  other_model = tmp_path / "wider.npz"
  checkpoints.save_npz(jax.tree.map(lambda x: np.zeros(x.shape, x.dtype),
                                    abstract_params(wider, (16, 16, 3))), other_model)
  with pytest.raises(BadInputError, match="shape mismatches"):
    loop.train_and_evaluate(tiny_config(data_root, init=str(other_model)), str(tmp_path / "b"))
  assert not compilations


def test_command_line_exits_2_with_one_message(tmp_path):
  env = dict(os.environ, XLA_FLAGS=xla_flags(2))
  result = subprocess.run(
      [sys.executable, "-m", "vit_jax.train", "--config=configs/quickstart.py",
       f"--workdir={tmp_path}", "--config.mesh=((\"data\", 3),)"],
      capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  assert "error: config.mesh=[('data', 3)] has 3 devices but 2 are available" in result.stderr
