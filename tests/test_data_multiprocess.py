"""Two real JAX processes (2 CPU devices each, gloo): each host reads its own rows, exact resume,
and hosts that see different files refuse to start.

(tests/test_elastic_data.py resumes such a run on other process counts.)

The test launches this file twice as `python test_data_multiprocess.py <process_id> <port> <root>`.
"""
import json
import os
import pathlib
import shutil
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
  local_ids = []  # This host's rows of each global batch, as it read them.
  epoch = []
  for _ in range(NUM_IMAGES // 8):
    batch = next(it)["image"]
    local_ids.append(sorted(int(i) for s in batch.addressable_shards
                            for i in np.asarray(s.data)[:, 0, 0, 0]))
    epoch.append(np.asarray(multihost_utils.process_allgather(batch, tiled=True))[:, 0, 0, 0])
  epoch = np.concatenate(epoch)
  next(it)
  state = json.loads(json.dumps(it.get_state()))  # Not a collective: one global position.
  expected = [global_ids(it) for _ in range(3)]
  resumed = pipeline.make_train_iterator(cfg, global_batch_size=8, seed=1)
  resumed.set_state(state)
  got = [global_ids(resumed) for _ in range(3)]
  print("RESULT " + json.dumps({
      "epoch": [int(i) for i in epoch], "local": local_ids, "state": state,
      "resumed_equal": all(np.array_equal(a, b) for a, b in zip(expected, got))}), flush=True)
  # Process 1 sees the folder with one file renamed (a stale listing): both refuse.
  cfg.data.root = root if process_id == 0 else f"{root}_renamed"
  try:
    pipeline.make_train_iterator(cfg, global_batch_size=8, seed=1)
    print("DIFFERENT DATA ACCEPTED", flush=True)
  except ValueError as e:
    print(f"REFUSED {e}", flush=True)


def test_two_processes_read_their_rows_and_resume(tmp_path):
  root = tmp_path / "data"
  for i in range(NUM_IMAGES):
    path = root / "train" / f"class{i % 2}" / f"{i:03d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(path)
  shutil.copytree(root, tmp_path / "data_renamed")
  (tmp_path / "data_renamed" / "train" / "class0" / "000.png").rename(
      tmp_path / "data_renamed" / "train" / "class0" / "100.png")
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = str(s.getsockname()[1])
  # The repository root, not helpers.REPO: importing helpers would start jax before the worker
  # sets its device count.
  env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parents[1])}
  procs = [subprocess.Popen([sys.executable, __file__, str(i), port, str(root)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outputs = [p.communicate(timeout=240)[0] for p in procs]
  results = []
  for proc, out in zip(procs, outputs):
    assert proc.returncode == 0, out[-3000:]
    results.append(json.loads(next(line for line in out.splitlines()
                                   if line.startswith("RESULT "))[7:]))
  for host, result in enumerate(results):
    # One epoch of global batches: every image exactly once; each host held rows 4h..4h+3.
    assert sorted(result["epoch"]) == list(range(NUM_IMAGES)) and result["resumed_equal"]
    rows = np.reshape(result["epoch"], (-1, 8))[:, 4 * host:4 * host + 4]
    assert result["local"] == [sorted(r) for r in rows.tolist()]
  assert results[0]["state"] == results[1]["state"]
  assert results[0]["state"]["next_batch"] == NUM_IMAGES // 8 + 1
  for out in outputs:
    assert ("REFUSED The hosts of this run see different training data in imagefolder:train "
            "(process 0: 40 examples, process 1: 40 examples;") in out, out[-3000:]


if __name__ == "__main__":
  _worker(int(sys.argv[1]), sys.argv[2], sys.argv[3])
