"""Two real JAX processes (2 CPU devices each, gloo): disjoint host shards and exact resume.

The test launches this file twice as `python test_data_multiprocess.py <process_id> <port> <root>`.
"""
import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

pytestmark = pytest.mark.slow  # Two processes.

NUM_IMAGES = 40


def _worker(process_id: int, port: str, root: str) -> None:
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax
  from jax.experimental import multihost_utils

  from vit_jax.config import base_config
  from vit_jax.data import pipeline

  jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
  cfg = base_config().input
  cfg.data.update(name="imagefolder", root=root, split="train")
  cfg.update(pp="decode|flip_lr|value_range(0, 255)", threads=1)

  def global_ids(it):  # Pixel value = image index; gather every host's rows.
    return np.asarray(multihost_utils.process_allgather(next(it)["image"], tiled=True))[:, 0, 0, 0]

  it = pipeline.make_train_iterator(cfg, global_batch_size=8, seed=1)
  epoch = np.concatenate([global_ids(it) for _ in range(NUM_IMAGES // 8)])
  next(it)
  state = json.loads(json.dumps(it.get_state()))  # A collective: both hosts' positions.
  expected = [global_ids(it) for _ in range(3)]
  resumed = pipeline.make_train_iterator(cfg, global_batch_size=8, seed=1)
  resumed.set_state(state)
  got = [global_ids(resumed) for _ in range(3)]
  print("RESULT " + json.dumps({
      "epoch": sorted(int(i) for i in epoch), "hosts": sorted(state["hosts"]),
      "resumed_equal": all(np.array_equal(a, b) for a, b in zip(expected, got))}), flush=True)


def test_two_processes_disjoint_shards_and_resume(tmp_path):
  for i in range(NUM_IMAGES):
    path = tmp_path / "train" / f"class{i % 2}" / f"{i:03d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(path)
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = str(s.getsockname()[1])
  # The repository root, not helpers.REPO: importing helpers would start jax before the worker
  # sets its device count.
  env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parents[1])}
  procs = [subprocess.Popen([sys.executable, __file__, str(i), port, str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outputs = [p.communicate(timeout=240)[0] for p in procs]
  for proc, out in zip(procs, outputs):
    assert proc.returncode == 0, out[-3000:]
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    # One epoch of global batches: every image exactly once, half from each host's shard.
    assert result["epoch"] == list(range(NUM_IMAGES))
    assert result["hosts"] == ["0", "1"] and result["resumed_equal"]


if __name__ == "__main__":
  _worker(int(sys.argv[1]), sys.argv[2], sys.argv[3])
