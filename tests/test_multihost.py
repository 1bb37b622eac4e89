"""A real 2-process x 2-device run (jax.distributed over localhost, gloo collectives) matches
1 process x 4 devices. Each host reads its own half of the data; with the train split equal to one
global batch, both runs see the same examples every step."""
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from helpers import (
  REPO,
  final_params,
  losses,
  make_image_folder,
  tiny_config,
  tiny_config_file,
  xla_flags,
)
from vit_jax.training import loop

pytestmark = pytest.mark.slow  # Two training processes and a reference run.


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
  root = make_image_folder(str(tmp_path / "images"))
  config_file = tiny_config_file(tmp_path / "tiny_config.py", root, mesh=(("data", -1),))
  workdir = str(tmp_path / "two_processes")
  env = dict(os.environ, XLA_FLAGS=xla_flags(2), JAX_PLATFORMS="cpu")
  address = f"localhost:{_free_port()}"
  procs = [subprocess.Popen(
      [sys.executable, "-m", "vit_jax.train", f"--config={config_file}", f"--workdir={workdir}",
       f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  assert "Final:" in outputs[0] and "Final:" not in outputs[1]  # only process 0 reports

  reference = str(tmp_path / "one_process")
  loop.train_and_evaluate(tiny_config(root, mesh=(("data", -1),)), reference,
                           devices=jax.devices()[:4])
  got, expected = losses(workdir), losses(reference)
  assert sorted(got) == sorted(expected)
  np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(got)],
                             rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               final_params(workdir), final_params(reference))
