"""Elastic data position: a run saved on 2 processes resumes exactly on 1 and on 4.

Real JAX processes (2 CPU devices each, gloo) run this file as
`python test_elastic_data.py <mode> <process_id> <num_processes> <port> <root> <out>`; the
1-process runs happen in the test process itself (8 devices). Every comparison is of whole global
batches (gathered from all hosts): the same examples in the same order, row for row, with the same
augmentation.
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

pytestmark = pytest.mark.slow  # Several processes.

NUM_IMAGES = 36  # Not a multiple of the batch: global batch 4 straddles the first epoch boundary.
BATCH = 8
SEED = 11
SAVE_AT = (3, 6)  # Mid-epoch 0; mid-epoch 1, after the boundary.
SAVED_RUN = 10  # Batches the 2-process run takes.
RESUMED = 6  # Batches each resumed run takes.


def _config(root: str):
  from vit_jax.config import base_config  # pylint: disable=g-import-not-at-top  (after XLA_FLAGS)
  cfg = base_config().input
  cfg.data.update(name="imagefolder", root=root, split="train")
  # Random shift and flip show up in the patterned images: augmentation must match per example.
  cfg.update(pp="decode|random_shift(1)|flip_lr|value_range(0, 255)", threads=2, prefetch=2)
  return cfg


def _take(it, n: int, gather=np.asarray) -> dict[str, np.ndarray]:
  batches = [next(it) for _ in range(n)]
  return {key: np.stack([gather(b[key]) for b in batches]) for key in ("image", "label")}


def _worker(mode: str, process_id: int, num_processes: int, port: str, root: str,
            out: str) -> None:
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  from vit_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  jax.distributed.initialize(f"localhost:{port}", num_processes=num_processes,
                             process_id=process_id)
  cfg = _config(root)
  gather = lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True))
  it = pipeline.make_train_iterator(cfg, BATCH, SEED)
  if mode == "save":  # The uninterrupted run, saving its position on the way.
    parts, states = [], {}
    for k in range(SAVED_RUN):
      if k in SAVE_AT:
        states[k] = json.loads(json.dumps(it.get_state()))  # As a checkpoint stores it.
      parts.append(_take(it, 1, gather))
    result = {key: np.concatenate([p[key] for p in parts]) for key in ("image", "label")}
    with open(f"{out}.states.{process_id}.json", "w") as f:
      json.dump(states, f)
  else:  # Resume from each saved state on this process count.
    with open(f"{out}.states.0.json") as f:
      states = json.load(f)
    result = {}
    for k in SAVE_AT:
      it.set_state(states[str(k)])
      for key, value in _take(it, RESUMED, gather).items():
        result[f"{key}_{k}"] = value
  if process_id == 0:
    np.savez(f"{out}.{mode}.npz", **result)
  multihost_utils.sync_global_devices("done")


def _write_images(root: pathlib.Path) -> None:
  """Image i: red = i, green / blue = column / row ramps (a flip or a shift changes them)."""
  ramp = np.arange(8, dtype=np.uint8) * 30
  for i in range(NUM_IMAGES):
    pixels = np.stack([np.full((8, 8), i, np.uint8), np.tile(ramp, (8, 1)),
                       np.tile(ramp[:, None], (1, 8))], axis=-1)
    path = root / "train" / f"class{i % 3}" / f"{i:03d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _start(mode: str, num_processes: int, root: pathlib.Path, out: str) -> list[subprocess.Popen]:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = str(s.getsockname()[1])
  # The repository root, not helpers.REPO: importing helpers would start jax before the worker
  # sets its device count.
  env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parents[1])}
  return [subprocess.Popen([sys.executable, __file__, mode, str(i), str(num_processes), port,
                            str(root), out], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
          for i in range(num_processes)]


def _wait(procs: list[subprocess.Popen]) -> None:
  outputs = [p.communicate(timeout=240)[0] for p in procs]
  for proc, output in zip(procs, outputs):
    assert proc.returncode == 0, output[-3000:]


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray], suffix: str = ""):
  for key in ("image", "label"):
    np.testing.assert_array_equal(got[key + suffix], want[key])


def test_saved_on_two_processes_resumes_exactly_on_one_and_four(tmp_path):
  from vit_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  _write_images(tmp_path)
  out = str(tmp_path / "run")
  saving = _start("save", 2, tmp_path, out)
  # Meanwhile the reference: a straight run in this one process on 8 devices.
  want = _take(pipeline.make_train_iterator(_config(str(tmp_path)), BATCH, SEED),
               SAVED_RUN + RESUMED)
  ids = want["image"][:, :, 4, 4, 0].reshape(-1).astype(int)  # Red at the centre: image index.
  epochs = [ids[e * NUM_IMAGES:(e + 1) * NUM_IMAGES] for e in range(3)]
  assert all(sorted(e) == list(range(NUM_IMAGES)) for e in epochs)  # Each epoch: a permutation,
  assert not np.array_equal(epochs[0], epochs[1])  # reshuffled.
  _wait(saving)

  # The 2-process run saw exactly the 1-process batches, and both hosts saved the same position.
  _assert_same(np.load(f"{out}.save.npz"), {k: v[:SAVED_RUN] for k, v in want.items()})
  states = [json.loads(pathlib.Path(f"{out}.states.{i}.json").read_text()) for i in range(2)]
  assert states[0] == states[1]
  assert {k: s["next_batch"] for k, s in states[0].items()} == {str(k): k for k in SAVE_AT}
  assert states[0]["6"]["epoch"] == 1 and states[0]["6"]["examples_consumed"] == 48

  resuming = _start("resume", 4, tmp_path, out)
  for k in SAVE_AT:  # 1 process (this one, 8 devices), while the 4-process job starts.
    it = pipeline.make_train_iterator(_config(str(tmp_path)), BATCH, SEED)
    it.set_state(states[0][str(k)])
    _assert_same(_take(it, RESUMED), {key: v[k:k + RESUMED] for key, v in want.items()})
  _wait(resuming)
  resumed = np.load(f"{out}.resume.npz")
  for k in SAVE_AT:  # 4 processes.
    _assert_same(resumed, {key: v[k:k + RESUMED] for key, v in want.items()}, f"_{k}")


if __name__ == "__main__":
  _worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6])
