"""End-to-end training on fake CPU devices: sharding equivalence, exact resume, restore on other
meshes.

The setup (tests/helpers.py) gives every step the same examples however they are split over
devices or hosts; a tiny ViT keeps compiles short.
"""
import json
import logging
import os
import shutil

import jax
import numpy as np
import pytest

from helpers import TOTAL_STEPS, final_params, losses, metric_rows, stop_at_step, tiny_config
from vit_jax.checkpoints import manager
from vit_jax.runtime import hardware
from vit_jax.training import evaluation, loop
from vit_jax.training import program as program_lib

pytestmark = pytest.mark.slow  # End-to-end training runs.


@pytest.fixture(scope="module")
def fsdp_run(data_root, tmp_path_factory):
  """An uninterrupted run on 8 devices with a 2 (data) x 4 (fsdp) mesh."""
  workdir = str(tmp_path_factory.mktemp("fsdp"))
  config = tiny_config(data_root, mesh=(("data", 2), ("fsdp", 4)))
  final = loop.train_and_evaluate(config, workdir)
  return config, workdir, final


def test_run_writes_metrics_summary_and_checkpoints(fsdp_run):
  _, workdir, final = fsdp_run
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  assert summary["done"] and summary["mesh"] == {"data": 2, "fsdp": 4}
  assert 0.0 <= final["val/prec@1"] <= 1.0 and final["val/num_examples"] == 16
  assert sorted(losses(workdir)) == list(range(1, TOTAL_STEPS + 1))
  assert losses(workdir)[TOTAL_STEPS] < losses(workdir)[1]  # it learns
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(f"{workdir}/tb"))
  assert os.path.isdir(os.path.join(workdir, "checkpoints", str(TOTAL_STEPS)))


def test_data_fsdp_mesh_tracks_one_device(fsdp_run, data_root, tmp_path):
  config, fsdp_workdir, _ = fsdp_run
  one = tiny_config(data_root, mesh=(("data", -1),))
  loop.train_and_evaluate(one, str(tmp_path), devices=jax.devices()[:1])
  expected, got = losses(str(tmp_path)), losses(fsdp_workdir)
  np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(got)],
                             rtol=1e-4)


def test_resume_after_sigterm_is_bitwise_identical_and_restores_on_other_meshes(
    fsdp_run, data_root, tmp_path, monkeypatch):
  config, reference_workdir, _ = fsdp_run
  interrupted = str(tmp_path / "interrupted")
  with monkeypatch.context() as patch:
    stop_at_step(patch, 3)
    stopped = loop.train_and_evaluate(config, interrupted)
  assert stopped["stopped_by"] == "SIGTERM" and stopped["step"] == 3
  assert not os.path.exists(os.path.join(interrupted, "summary.json"))
  assert manager.TrainStateCheckpointer(os.path.join(interrupted, "checkpoints"),
                                        save_every_steps=1).latest_step() == 3
  # Restore the 8-device (data x fsdp) checkpoint onto 4 and onto 1 device before resuming here.
  for count, mesh in ((4, (("fsdp", -1),)), (1, (("data", -1),))):
    workdir = str(tmp_path / f"on_{count}")
    shutil.copytree(interrupted, workdir)
    loop.train_and_evaluate(tiny_config(data_root, mesh=mesh), workdir,
                             devices=jax.devices()[:count])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 final_params(workdir), final_params(reference_workdir))

  loop.train_and_evaluate(config, interrupted)  # Same command again: resumes at step 4.
  assert sorted(losses(interrupted)) == list(range(1, TOTAL_STEPS + 1))
  jax.tree.map(np.testing.assert_array_equal, final_params(interrupted),
               final_params(reference_workdir))


def test_a_finished_constant_lr_run_copied_and_extended_equals_the_longer_run(data_root,
                                                                             tmp_path):
  """How a finished run is trained longer without rewriting it (experiments/flexivit_local): copy
  its workdir less summary.json, resume with the longer duration and --accept_config_change. At a
  constant lr the duration changes nothing before the end, so that is the longer run, EMA too."""
  def config(steps):
    c = tiny_config(data_root, total_steps=steps, ema_decay=0.9)
    c.optim.schedule = "constant"
    return c
  one_device = jax.devices()[:1]
  short, extended, longer = (str(tmp_path / name) for name in ("short", "extended", "longer"))
  loop.train_and_evaluate(config(TOTAL_STEPS), short, devices=one_device)
  shutil.copytree(short, extended, ignore=shutil.ignore_patterns("summary.json"))
  final = loop.train_and_evaluate(config(2 * TOTAL_STEPS), extended, devices=one_device,
                                  accept_config_change=True)
  reference = loop.train_and_evaluate(config(2 * TOTAL_STEPS), longer, devices=one_device)
  results = lambda metrics: {k: v for k, v in metrics.items() if "/" in k or k == "step"}
  assert results(final) == results(reference) and final["step"] == 2 * TOTAL_STEPS
  assert "val_ema/prec@1" in results(final)
  assert losses(extended) == losses(longer)
  for entry in ("params", "ema_params"):
    jax.tree.map(np.testing.assert_array_equal, final_params(extended, entry),
                 final_params(longer, entry))
  with open(os.path.join(short, "summary.json")) as f:
    assert json.load(f)["final"]["step"] == TOTAL_STEPS  # The copied run is left as it was.


def test_frozen_params_keep_their_init_through_a_resume(data_root, tmp_path, monkeypatch):
  """`optim.freeze` on an FSDP mesh: the frozen params have no optimizer moments (MaskedNode),
  which the state's shardings, the checkpoint and the restore must all carry."""
  config = tiny_config(data_root, mesh=(("fsdp", -1),))
  config.optim.freeze = ("embedding/.*",)
  with monkeypatch.context() as patch:
    stop_at_step(patch, 3)
    assert loop.train_and_evaluate(config, str(tmp_path))["stopped_by"] == "SIGTERM"
  loop.train_and_evaluate(config, str(tmp_path))
  assert sorted(losses(str(tmp_path))) == list(range(1, TOTAL_STEPS + 1))
  init = jax.device_get(program_lib.TrainProgram.from_config(config).init().params)
  final = final_params(str(tmp_path))
  np.testing.assert_array_equal(final["embedding"]["kernel"], init["embedding"]["kernel"])
  assert not np.array_equal(final["Transformer"]["encoder_norm"]["scale"],
                            init["Transformer"]["encoder_norm"]["scale"])


def test_an_eval_reports_progress_at_every_batch(data_root):
  """The stall watchdog's clock restarts at each eval batch: a long eval pass is not a stall, a
  read that hangs is."""
  config = tiny_config(data_root)
  program = program_lib.TrainProgram.from_config(config)
  params = program.init().params
  seen = []
  with program.mesh_context():
    results = evaluation.evaluate_all(program.evaluators(), params, params, progress_to=seen.append)
  batches = -(-results["val/num_examples"] // config.eval_batch_size)
  assert batches > 1
  for name in ("val", "val with the EMA params"):
    assert [f"evaluating {name} (reading batch {i})" for i in range(1, batches + 2)] + [
        f"evaluating {name} (waiting for its steps to finish)"] == seen[:batches + 2]
    del seen[:batches + 2]
  assert not seen and results["val_ema/prec@1"] == results["val/prec@1"]


def test_evaluate_only_reproduces_the_final_eval(fsdp_run, tmp_path):
  config, workdir, final = fsdp_run
  results = evaluation.evaluate_checkpoint(config, str(tmp_path),
                                           checkpoint=os.path.join(workdir, "checkpoints"))
  assert results["val/prec@1"] == final["val/prec@1"]
  np.testing.assert_allclose(results["val/loss"], final["val/loss"], rtol=1e-5)
  assert not any("_ema/" in key for key in results)  # Trained without EMA.


def test_evaluate_reproduces_the_final_eval_of_the_ema_params_too(data_root, tmp_path):
  config = tiny_config(data_root, mesh=(("data", -1),))
  config.ema_decay = 0.5
  final = loop.train_and_evaluate(config, str(tmp_path / "run"), devices=jax.devices()[:1])
  config.model.scan = True  # Evaluated in the other layer layout: both entries are converted.
  results = evaluation.evaluate_checkpoint(config, str(tmp_path / "eval"),
                                           checkpoint=str(tmp_path / "run"),
                                           devices=jax.devices()[:1])
  assert results["val_ema/loss"] != results["val/loss"]
  for key in ("val/loss", "val_ema/loss"):
    np.testing.assert_allclose(results[key], final[key], rtol=1e-5)


def test_evaluate_refuses_a_config_whose_model_computes_otherwise(data_root, tmp_path):
  """Without a position embedding and with a 2-D sin-cos one, the model has the same params: only
  the run's recorded config tells them apart."""
  config = tiny_config(data_root, total_steps=2, mesh=(("data", -1),))
  config.model.posemb = "none"
  loop.train_and_evaluate(config, str(tmp_path / "run"), devices=jax.devices()[:1])
  config.model.posemb = "sincos2d"
  with pytest.raises(ValueError, match=r"posemb='none' \(the config has 'sincos2d'\)"):
    evaluation.evaluate_checkpoint(config, str(tmp_path / "eval"),
                                   checkpoint=str(tmp_path / "run" / "checkpoints"),
                                   devices=jax.devices()[:1])
  config.model.update(posemb="none", dropout=0.5)  # Training-only fields may differ.
  evaluation.evaluate_checkpoint(config, str(tmp_path / "eval"),
                                 checkpoint=str(tmp_path / "run" / "checkpoints"),
                                 devices=jax.devices()[:1])


def test_unknown_device_peak_trains_with_mfu_reported_unknown(data_root, tmp_path, monkeypatch,
                                                              caplog):
  """An accelerator missing from the peak table (L4, B200, a new TPU) must not stop training."""
  monkeypatch.setattr(hardware, "peak_flops_per_device",
                      lambda device: hardware.Peak(None, "no peak known for 'NVIDIA L4'"))
  caplog.set_level(logging.WARNING)
  loop.train_and_evaluate(tiny_config(data_root, total_steps=3), str(tmp_path),
                          devices=jax.devices()[:1])
  logged = [r for r in metric_rows(str(tmp_path)) if "img_per_s" in r]
  assert logged and all(r["mfu"] is None for r in logged)
  warnings = [r.getMessage() for r in caplog.records
              if "MFU is reported as unknown" in r.getMessage()]
  assert len(warnings) == 1 and "NVIDIA L4" in warnings[0]
