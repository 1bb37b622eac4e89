"""FlexiViT: one run trains at a patch size drawn per step and is evaluated at every patch size.

The tiny setup of tests/helpers.py (16 px images, a width-16 ViT with 4x4 patches) on one
device, trained at patch sizes 2, 4 and 8.
"""
import contextlib
import logging
import os
import re
import shutil

import jax
import numpy as np
import pytest

from helpers import TOTAL_STEPS, final_params, metric_rows, tiny_config
from vit_jax.training import evaluation, loop

pytestmark = pytest.mark.slow  # End-to-end training runs.

PATCH_SIZES = (2, 4, 8)  # The model's own patch size (4) is one of them.
SEED = 2  # Draws every size within the first 3 steps (checked below), so each one is compiled.



@contextlib.contextmanager
def compiled_functions():
  """Yields the list of names of the jitted functions XLA compiles inside the block (JAX's log)."""
  names = []

  class Recorder(logging.Handler):
    def emit(self, record):
      match = re.match(r"Finished XLA compilation of jit\((\w+)\)", record.getMessage())
      if match:
        names.append(match[1])

  recorder, logger = Recorder(), logging.getLogger("jax")
  logger.addHandler(recorder)
  try:
    with jax.log_compiles(True):
      yield names
  finally:
    logger.removeHandler(recorder)


def _train(config, workdir):
  return loop.train_and_evaluate(config, workdir, devices=jax.devices()[:1])


def _patch_sizes(workdir):
  """Step -> the patch size it trained at, from metrics.jsonl."""
  return {r["step"]: r["patch_size"] for r in metric_rows(workdir) if "train/loss" in r}


@pytest.fixture(scope="module")
def flexi_run(data_root, tmp_path_factory):
  config = tiny_config(data_root, seed=SEED)
  config.flexi.patch_sizes = PATCH_SIZES
  workdir = str(tmp_path_factory.mktemp("flexi"))
  with compiled_functions() as compiled:
    final = _train(config, workdir)
  return config, workdir, final, compiled


def test_one_train_step_per_size_drawn_from_seed_and_step(flexi_run):
  _, workdir, _, compiled = flexi_run
  expected = {step: loop.sample_patch_size(PATCH_SIZES, SEED, step)
              for step in range(1, TOTAL_STEPS + 1)}
  assert set(list(expected.values())[:3]) == set(PATCH_SIZES)
  assert _patch_sizes(workdir) == expected
  assert compiled.count("train_step") == len(PATCH_SIZES)


def test_eval_reports_every_metric_at_every_patch_size(flexi_run, tmp_path):
  config, workdir, final, compiled = flexi_run
  assert compiled.count("eval_step") == len(PATCH_SIZES)  # The model's own size is one of them.
  for patch in PATCH_SIZES:
    assert {f"val/{m}@p{patch}" for m in ("loss", "prec@1", "prec@5")} <= set(final)
    assert final[f"val/num_examples@p{patch}"] == 16
  assert final["val/loss"] == final["val/loss@p4"]  # Plain keys: the model's own patch size.
  assert len({final[f"val/loss@p{patch}"] for patch in PATCH_SIZES}) == len(PATCH_SIZES)
  # Evaluating the checkpoint alone gives the same curve.
  results = evaluation.evaluate_checkpoint(config, str(tmp_path),
                                           checkpoint=os.path.join(workdir, "checkpoints"),
                                           devices=jax.devices()[:1])
  for patch in PATCH_SIZES:
    np.testing.assert_allclose(results[f"val/loss@p{patch}"], final[f"val/loss@p{patch}"],
                               rtol=1e-5)


def test_resumed_run_repeats_the_patch_sizes(flexi_run, tmp_path):
  config, reference_workdir, _, _ = flexi_run
  workdir = str(tmp_path / "resumed")
  shutil.copytree(reference_workdir, workdir)
  # Back to the step-2 checkpoint, as if the run had been killed after logging step 6.
  os.remove(os.path.join(workdir, "summary.json"))
  for step in (4, 6):
    shutil.rmtree(os.path.join(workdir, "checkpoints", str(step)))
  with compiled_functions() as compiled:
    _train(config, workdir)  # Resumes at step 3.
  # The rows logged after the checkpoint were dropped: one row per step, the resumed run's.
  assert [r["step"] for r in metric_rows(workdir) if "train/loss" in r] == list(
      range(1, TOTAL_STEPS + 1))
  sizes, reference = _patch_sizes(workdir), _patch_sizes(reference_workdir)
  assert sizes == reference
  assert compiled.count("train_step") == len({reference[s] for s in range(3, TOTAL_STEPS + 1)})
  jax.tree.map(np.testing.assert_array_equal, final_params(workdir),
               final_params(reference_workdir))
