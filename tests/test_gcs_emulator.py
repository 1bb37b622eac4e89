"""`gs://` end to end against the offline emulator (tests/gcs_emulator.py): etils.epath, an Orbax
CheckpointManager, TensorBoard event files and array_record's reader all reach the bucket over
HTTP, and nothing lands on the local disk. These pin the library behaviour a
`--workdir=gs://...` training run on `data_dir=gs://...` relies on."""
import os
import shutil
import subprocess
import sys
import textwrap
import time

from array_record.python import array_record_module
from etils import epath
import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer import record_writer
import tensorstore as ts

from conftest import BUCKET


def test_epath_file_operations(gcs):
  root = epath.Path(f"gs://{BUCKET}/epath")
  assert not root.exists()
  # GCS has no directories: mkdir is a no-op, and a "directory" exists once an object is under it.
  (root / "sub").mkdir(parents=True, exist_ok=True)
  assert not (root / "sub").exists()
  (root / "a.txt").write_text("hello")
  (root / "sub" / "empty.bin").write_bytes(b"")
  assert root.exists() and root.is_dir() and (root / "sub").is_dir()
  assert (root / "a.txt").read_text() == "hello"
  assert (root / "sub" / "empty.bin").read_bytes() == b""
  assert sorted(p.name for p in root.iterdir()) == ["a.txt", "sub"]

  start = time.monotonic()
  (root / "a.txt").rename(root / "b.txt")  # gcsfs: objects.move, else ~30 s of retries first.
  assert time.monotonic() - start < 10
  assert not (root / "a.txt").exists()
  assert (root / "b.txt").read_text() == "hello"
  (root / "b.txt").unlink()
  assert not (root / "b.txt").exists()
  assert gcs.list(BUCKET, "epath/") == ["epath/sub/empty.bin"]


def test_tensorstore_semantics(gcs):
  """What the emulator's patches give tensorstore (Orbax's array I/O): empty objects, real
  generations, create-only and if-modified preconditions, suffix ranges, prefix-bounded lists."""
  kv = ts.KvStore.open(f"gs://{BUCKET}/ts/").result()
  kv.write("empty", b"").result()
  assert kv.read("empty").result().value == b""
  stamp = kv.write("a", b"0123456789").result()
  assert kv.read("a").result().stamp.generation == stamp.generation  # From x-goog-generation.
  no_value = kv.read("missing").result().stamp.generation
  assert kv.write("a", b"x", if_equal=no_value).result().generation == b""  # 412: not created.
  assert kv.read("a", if_not_equal=stamp.generation).result().state == "unspecified"  # 304.
  assert kv.read("a", byte_range=slice(-3, None)).result().value == b"789"
  for sibling in ("ts.txt", "ts0/b"):  # Sorted just before and after every "ts/..." name.
    ts.KvStore.open(f"gs://{BUCKET}/{sibling}").result().write("", b"").result()
  assert sorted(kv.list().result()) == [b"a", b"empty"]


def test_apply_after_libraries_were_used(gcs_server, monkeypatch, tmp_path):
  """`apply` works mid-session: etils.epath caches EPATH_USE_TF at its first path operation (a
  local one here, as any earlier test's), and fsspec read FSSPEC_* when Orbax imported it."""
  monkeypatch.delenv("EPATH_USE_TF", raising=False)
  epath.gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access
  assert epath.Path(tmp_path).exists()  # Now epath has decided: TensorFlow, whose gs:// is Google.
  gcs_server.apply(monkeypatch)
  epath.Path(f"gs://{BUCKET}/late/a.txt").write_text("x")
  assert gcs_server.list(BUCKET, "late/") == ["late/a.txt"]


def _array_record(path, records):
  writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
  for record in records:
    writer.write(record)
  writer.close()


def test_array_record_reads_gs_but_cannot_write_it(gcs, tmp_path):
  """grain's ArrayRecord source (tfds.data_source's too) reads shards from the bucket through
  array_record's own C++ GCS client (CLOUD_STORAGE_EMULATOR_ENDPOINT); its writer opens local
  files only, so datasets are prepared locally and copied up."""
  records = [f"record {i}".encode() for i in range(5)]
  _array_record(tmp_path / "local.array_record", records)
  remote = epath.Path(f"gs://{BUCKET}/ar/data.array_record")
  remote.write_bytes((tmp_path / "local.array_record").read_bytes())
  source = grain.sources.ArrayRecordDataSource([str(remote)])
  assert len(source) == 5 and [source[i] for i in (4, 0, 2)] == [records[i] for i in (4, 0, 2)]

  with pytest.raises(RuntimeError, match="open.. failed: No such file .*; opening gs://"):
    _array_record(f"gs://{BUCKET}/ar/written.array_record", records)
  assert gcs.list(BUCKET, "ar/") == ["ar/data.array_record"]


def _tree(mesh, step):
  """A small state: one array sharded over all 8 fake CPU devices, two replicated ones."""
  sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  return {
      "w": jax.device_put(jnp.arange(64, dtype=jnp.float32).reshape(16, 4) + step, sharded),
      "b": jnp.full((3,), step, jnp.int32),
      "opt": {"count": jnp.asarray(step, jnp.int32), "scale": jnp.asarray(step / 2, jnp.bfloat16)},
  }


def test_orbax_checkpoint_manager(gcs):
  assert jax.device_count() == 8, "tests/conftest.py forces 8 CPU devices"
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  directory = f"gs://{BUCKET}/run/checkpoints"
  options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=True)
  with ocp.CheckpointManager(directory, options=options, item_names=("state", "data")) as manager:
    for step in range(3):
      manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(_tree(mesh, step)),
          data=ocp.args.JsonSave({"step": step, "loss": 1 / (step + 1)})))
    manager.wait_until_finished()

  steps = {name.split("/")[2] for name in gcs.list(BUCKET, "run/checkpoints/")}
  assert steps == {"1", "2"}, "max_to_keep=2 deleted step 0 from the bucket"

  expected = _tree(mesh, 2)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          expected)
  with ocp.CheckpointManager(directory, item_names=("state", "data")) as manager:
    assert manager.all_steps() == [1, 2] and manager.latest_step() == 2
    restored = manager.restore(2, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
  assert restored.data == {"step": 2, "loss": 1 / 3}
  for want, got in zip(jax.tree.leaves(expected), jax.tree.leaves(restored.state)):
    assert got.dtype == want.dtype and got.sharding == want.sharding
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def _write_events(path, steps):
  """One TensorBoard event file through etils.epath: a new object, written whole on close."""
  writer = record_writer.RecordWriter(path.open("wb"))
  writer.write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
               .SerializeToString())
  for step in steps:
    value = summary_pb2.Summary.Value(tag="train/loss", simple_value=1 / (step + 1))
    writer.write(event_pb2.Event(wall_time=time.time(), step=step,
                                 summary=summary_pb2.Summary(value=[value])).SerializeToString())
  writer.flush()
  writer.close()


def test_tensorboard_events(gcs, tmp_path):
  logdir = epath.Path(f"gs://{BUCKET}/run/tb/train")
  # GCS objects cannot be appended to (gcsfs turns "ab" into "wb"): a resumed run writes a new file.
  _write_events(logdir / "events.out.tfevents.1.host.1.v2", range(3))
  _write_events(logdir / "events.out.tfevents.2.host.1.v2", range(3, 5))
  assert gcs.list(BUCKET, "run/tb/") == [f"run/tb/train/events.out.tfevents.{i}.host.1.v2"
                                         for i in (1, 2)]

  # TensorBoard reads gs:// only through TensorFlow's own GCS client, so read a local copy.
  local = tmp_path / "tb"
  local.mkdir()
  for path in logdir.iterdir():
    (local / path.name).write_bytes(gcs.read(BUCKET, f"run/tb/train/{path.name}"))
  accumulator = event_accumulator.EventAccumulator(str(local))
  accumulator.Reload()
  scalars = accumulator.Scalars("train/loss")
  assert [s.step for s in scalars] == list(range(5))
  assert [s.value for s in scalars] == pytest.approx([1 / (step + 1) for step in range(5)])


def test_subprocess_gets_env(gcs, tmp_path):
  """A subprocess (how an end-to-end training test runs) needs only the emulator's `env`."""
  script = f"""
      from etils import epath
      import tensorstore as ts
      epath.Path("gs://{BUCKET}/sub/epath.txt").write_text("x")
      ts.KvStore.open("gs://{BUCKET}/sub/").result().write("ts", b"y").result()
  """
  subprocess.run([sys.executable, "-c", textwrap.dedent(script)], check=True, timeout=60,
                 env={**os.environ, **gcs.env})
  assert gcs.list(BUCKET, "sub/") == ["sub/epath.txt", "sub/ts"]


def _netns_works():
  if not shutil.which("unshare") or not shutil.which("ip"):
    return False
  return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _netns_works(), reason="needs `unshare -n` (root or user namespaces)")
def test_works_with_loopback_only_network(tmp_path):
  """Emulator and clients inside a network namespace that has only loopback: any library that
  still needed Google (or DNS) would fail or time out here instead of quietly working online."""
  script = f"""
      import os, sys
      sys.path.insert(0, {os.path.dirname(__file__)!r})
      import gcs_emulator
      with gcs_emulator.running_emulator({str(tmp_path)!r}) as emu:
        os.environ.update(emu.env)
        emu.create_bucket("{BUCKET}")
        from etils import epath
        import jax.numpy as jnp
        import orbax.checkpoint as ocp
        epath.Path("gs://{BUCKET}/netns/a.txt").write_text("x")
        with ocp.CheckpointManager("gs://{BUCKET}/netns/ckpt") as manager:
          manager.save(0, args=ocp.args.StandardSave({{"a": jnp.arange(4)}}))
          manager.wait_until_finished()
          restored = manager.restore(0, args=ocp.args.StandardRestore({{"a": jnp.zeros(4, int)}}))
        assert restored["a"].tolist() == [0, 1, 2, 3]
        assert "netns/ckpt/0/commit_success.txt" in emu.list("{BUCKET}", "netns/")
        from array_record.python import array_record_module
        import grain
        writer = array_record_module.ArrayRecordWriter({str(tmp_path / "a.array_record")!r}, "")
        writer.write(b"record")
        writer.close()
        shard = epath.Path("gs://{BUCKET}/netns/a.array_record")
        shard.write_bytes(epath.Path({str(tmp_path / "a.array_record")!r}).read_bytes())
        assert grain.sources.ArrayRecordDataSource([str(shard)])[0] == b"record"
  """
  command = 'ip link set lo up && exec "$0" -c "$1"'
  subprocess.run(["unshare", "-n", "sh", "-c", command, sys.executable, textwrap.dedent(script)],
                 check=True, timeout=60, cwd=tmp_path)
