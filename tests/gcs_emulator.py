"""An offline Google Cloud Storage endpoint on localhost, for tests that use `gs://` paths.

Why: training writes checkpoints (Orbax: tensorstore for arrays, etils.epath for the rest),
TensorBoard events and reports to `--workdir=gs://...`, and reads tfds datasets prepared under
`data_dir=gs://...` (tfds itself through etils.epath, the ArrayRecord shards through
array_record's C++ reader), and CI reaches no Google endpoint. This module runs the
`gcp-storage-emulator` package's real GCS JSON/XML API in a subprocess and hands out the
environment that points every library at it, so tests exercise the real client code over
real HTTP with nothing mocked.

The stock emulator has gaps that break Orbax and tensorstore, fixed here by wrapping its handlers
in the subprocess before it serves (site-packages is never edited):

  * zero-byte uploads crash it (its request body parser turns b"" into None, and would parse a
    body sent as application/json);
  * downloads lack the `x-goog-generation` headers tensorstore reads generations from;
  * `ifGenerationMatch` / `ifGenerationNotMatch` preconditions are ignored, so tensorstore's
    conditional writes and cache revalidation silently misbehave;
  * listings ignore `startOffset` / `endOffset` (tensorstore strips its prefix from every name the
    server returns, so extra names become garbage keys) and `maxResults` / `pageToken`;
  * `GET b/<bucket>/storageLayout` and `POST b/<bucket>/o/<name>/moveTo/o/<new name>` (the atomic
    rename gcsfs tries first, retrying for ~30 s before it falls back to copy and delete) are
    missing;
  * suffix ranges (`Range: bytes=-N`) are not understood;
  * one request at a time with a listen backlog of 5 (tensorstore opens ~32 connections at once,
    and overflowing SYNs are retried only after 1 s), and `Expect: 100-continue` unanswered
    (curl then stalls 1 s per upload). It now serves each connection on a thread, one handler at
    a time under a lock, with HTTP/1.1 framing and `Connection: close`.

Usage:

  with gcs_emulator.running_emulator(tmp_path) as emu:
    emu.apply(monkeypatch)               # this process; or env={**os.environ, **emu.env}
    emu.create_bucket("bucket")
    ...                                  # write to gs://bucket/... with any library
    assert "run/config.json" in emu.list("bucket", "run/")
"""

import contextlib
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time
from typing import Iterator, Mapping
import urllib.parse
import urllib.request

# This module patches the internals of gcp-storage-emulator and resets caches inside etils.epath.
# pylint: disable=protected-access

# Nothing listens on port 1 and only root could ever bind it: connections are refused at once.
_CLOSED = "127.0.0.1:1"

# fsspec reads FSSPEC_* variables once, when it is imported; `Emulator.apply` mirrors these there.
_FSSPEC_GCS_CONF = {"token": "anon", "use_listings_cache": False}


def emulator_env(url: str) -> dict[str, str]:
  """The environment that points every GCS client at `url` and none of them at Google.

  Args:
    url: the emulator's base URL, e.g. "http://127.0.0.1:4443".

  Returns:
    Variables to set in this process (see `Emulator.apply`) or in a subprocess's environment.
  """
  return {
      # gcsfs (etils.epath's gs:// backend below) and google-cloud-storage (Orbax's bucket lookup).
      "STORAGE_EMULATOR_HOST": url,
      # tensorstore's `gcs` kvstore (Orbax's array data), read when a kvstore is opened.
      "TENSORSTORE_GCS_HTTP_URL": url,
      # array_record's C++ reader (google-cloud-cpp's storage client inside array_record_module),
      # through which tfds.data_source and grain read ArrayRecord shards from gs://: read when a
      # reader is created; with it set the client looks for no credentials. Without it a reader
      # keeps retrying storage.googleapis.com (a first read hung for 40 s until killed). Its
      # writer cannot write gs:// at all: datasets are prepared locally and copied up.
      "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,
      # tensorstore: a fixed bearer token, so it neither reads local gcloud credentials (whose
      # refresh would call Google's OAuth endpoint) nor probes the GCE metadata server.
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
      # etils.epath: gcsfs instead of tf.io.gfile, which has no endpoint setting. Read once, at
      # epath's first path operation (`Emulator.apply` resets that). With TF it would also ask
      # Google's Storage Control API (gRPC) whether each bucket is zonal. tfds 4.9.10 finds and
      # reads a prepared dataset (versions, dataset_info.json, features.json) through etils.epath,
      # so this also keeps tfds off tf.io.gfile.
      "EPATH_USE_TF": "false",
      # gcsfs: anonymous, no credential discovery; and no directory-listing cache, which never
      # sees objects that tensorstore or another process wrote after a listing (`exists()` then
      # says False), where tf.io.gfile, Orbax's usual gs:// backend, always asks the server.
      # Read by fsspec at import time only.
      "FSSPEC_GCS_TOKEN": _FSSPEC_GCS_CONF["token"],
      "FSSPEC_GCS_USE_LISTINGS_CACHE": "false",
      # gcsfs: the plain HTTP filesystem; the default "extended" one asks Storage Control over gRPC
      # for the bucket layout, which the emulator cannot answer (60 s timeouts). Read at import.
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
      # google-auth / gcsfs: never probe for the GCE metadata server, and if anything still looks
      # for it, find nothing there.
      "NO_GCE_CHECK": "true",
      "GCE_METADATA_HOST": _CLOSED,
      "GCE_METADATA_IP": _CLOSED,
      "GCE_METADATA_ROOT": _CLOSED,  # tensorstore's name for the same thing.
      # curl (tensorstore) and requests (google-cloud-storage) honour proxy variables.
      "NO_PROXY": "127.0.0.1,localhost",
      "no_proxy": "127.0.0.1,localhost",
  }


@dataclasses.dataclass(frozen=True)
class Emulator:
  """A running emulator: its URL, the environment for clients, and a few direct calls.

  Attributes:
    url: base URL, "http://127.0.0.1:<port>".
    env: variables from `emulator_env(url)`.
    log_path: the emulator's own log (requests, handler errors), for debugging a failure.
  """
  url: str
  env: Mapping[str, str]
  log_path: pathlib.Path

  def _call(self, method: str, path: str, body: dict | None = None) -> dict:
    """One JSON API request, bypassing any proxy (urllib honours http_proxy)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
      return json.loads(response.read() or b"{}")

  def create_bucket(self, name: str) -> None:
    """Creates bucket `name` (GCS buckets are never created implicitly by writes)."""
    self._call("POST", "/storage/v1/b", {"name": name})

  def list(self, bucket: str, prefix: str = "") -> list[str]:
    """Names of all objects in `bucket` under `prefix`, sorted (no delimiter, no "dirs")."""
    names, query = [], {"prefix": prefix}
    while True:
      listing = self._call("GET", f"/storage/v1/b/{bucket}/o?{urllib.parse.urlencode(query)}")
      names += [item["name"] for item in listing.get("items", [])]
      if "nextPageToken" not in listing:  # Pages hold 1000 names at most.
        return names
      query["pageToken"] = listing["nextPageToken"]

  def read(self, bucket: str, name: str) -> bytes:
    """The content of object `bucket/name`."""
    url = f"{self.url}/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}?alt=media"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as response:
      return response.read()

  def apply(self, monkeypatch) -> None:
    """Points this process's libraries at the emulator (undone by `monkeypatch` after the test).

    Beyond setting `env`, this reaches the settings some libraries read only once: fsspec's
    config (filled from FSSPEC_* when fsspec is imported, which importing Orbax does), the
    filesystem class gcsfs picked when it was imported, google-auth's metadata-server settings,
    and the gcsfs instances that fsspec and etils.epath cache, whose credentials were fixed when
    they were made.

    Args:
      monkeypatch: pytest's fixture.
    """
    for key, value in self.env.items():
      monkeypatch.setenv(key, value)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    import fsspec  # pylint: disable=g-import-not-at-top
    monkeypatch.setitem(fsspec.config.conf, "gcs",
                        {**fsspec.config.conf.get("gcs", {}), **_FSSPEC_GCS_CONF})
    gcsfs = sys.modules.get("gcsfs")
    if gcsfs is not None and gcsfs.GCSFileSystem is not gcsfs.core.GCSFileSystem:
      # Imported while GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT was unset: undo its gRPC-probing choice.
      monkeypatch.setattr(gcsfs, "GCSFileSystem", gcsfs.core.GCSFileSystem)
      registry = sys.modules["fsspec.registry"]._registry
      for protocol in ("gs", "gcs"):
        if protocol in registry:
          monkeypatch.setitem(registry, protocol, gcsfs.core.GCSFileSystem)
    metadata = sys.modules.get("google.auth.compute_engine._metadata")
    if metadata is not None:  # google-auth read these when it was imported.
      monkeypatch.setattr(metadata, "_NO_GCE_CHECK", True)
      monkeypatch.setattr(metadata, "_GCE_METADATA_HOST", _CLOSED)
    _clear_filesystem_caches()
    monkeypatch.undo = _chain(monkeypatch.undo, _clear_filesystem_caches)


def _chain(first, second):
  def both():
    first()
    second()
  return both


def _clear_filesystem_caches() -> None:
  """Drops what etils.epath and gcsfs cached from the environment, so the next use rereads it.

  etils.epath decides "use TensorFlow" (EPATH_USE_TF) once, at its first path operation of any
  kind, local paths included; gcsfs instances keep the credentials they were made with.
  """
  if "gcsfs" in sys.modules:
    sys.modules["gcsfs"].GCSFileSystem.clear_instance_cache()
  if "etils.epath.gpath" in sys.modules:
    sys.modules["etils.epath.gpath"]._is_tf_installed.cache_clear()
    sys.modules["etils.epath.backend"].fsspec_backend._get_filesystem.cache_clear()


@contextlib.contextmanager
def running_emulator(tmp_dir: str | os.PathLike, timeout_s: float = 30) -> Iterator[Emulator]:
  """Runs the patched emulator in a subprocess on a free localhost port until the block exits.

  Objects live in the subprocess's memory; its working directory, port file and log are in
  `tmp_dir`, so nothing lands in the test's own working directory.

  Args:
    tmp_dir: an existing scratch directory.
    timeout_s: how long to wait for the server to answer before giving up.

  Yields:
    The running `Emulator`.
  """
  tmp_dir = pathlib.Path(tmp_dir)
  port_file, log_path = tmp_dir / "gcs_emulator.port", tmp_dir / "gcs_emulator.log"
  with open(log_path, "wb") as log:
    # stdin is a pipe only so that the server sees EOF, and exits, if this process dies first.
    process = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(port_file)],
                               cwd=tmp_dir, stdin=subprocess.PIPE, stdout=log,
                               stderr=subprocess.STDOUT)
  try:
    deadline = time.monotonic() + timeout_s
    while not port_file.exists():
      if process.poll() is not None or time.monotonic() > deadline:
        raise RuntimeError(f"GCS emulator did not start; see {log_path}:\n{log_path.read_text()}")
      time.sleep(0.02)
    url = f"http://127.0.0.1:{port_file.read_text().strip()}"
    emulator = Emulator(url=url, env=emulator_env(url), log_path=log_path)
    emulator._call("GET", "/storage/v1/b")  # Fails unless it answers.
    yield emulator
  finally:
    process.stdin.close()
    process.terminate()
    try:
      process.wait(timeout=10)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()


# ------------------------------------------------------------------------------------------------
# The subprocess: patch the emulator's handlers, then serve.


def _serve(port_file: str) -> None:
  """Patches `gcp_storage_emulator` in this process and serves it on 127.0.0.1.

  Runs until terminated, or until its stdin closes (the parent died without cleaning up).

  Args:
    port_file: where to write the port, once the socket listens.
  """
  # pylint: disable=g-import-not-at-top  (only the subprocess needs these)
  import http
  import http.server
  import re
  import threading
  import traceback

  from gcp_storage_emulator import server
  from gcp_storage_emulator import storage as storage_lib
  from gcp_storage_emulator.exceptions import NotFound
  from gcp_storage_emulator.handlers import buckets, objects
  # pylint: enable=g-import-not-at-top

  def current(storage, bucket, name):
    try:
      return storage.get_file_obj(bucket, name)
    except NotFound:
      return None

  def failed_precondition(request, obj, read):
    """The status a failed `if(Meta)Generation(Not)Match` maps to, or None when all hold.

    A missing object has generation 0, as in GCS: `ifGenerationMatch=0` means "create only".
    """
    generation = int(obj["generation"]) if obj else 0
    metageneration = int(obj["metageneration"]) if obj else None

    def arg(name, header):
      value = request.query.get(name, [request.get_header(header)])[0]
      return None if value is None else int(value)

    if_match = arg("ifGenerationMatch", "x-goog-if-generation-match")
    if_not_match = arg("ifGenerationNotMatch", "x-goog-if-generation-not-match")
    if_meta_match = arg("ifMetagenerationMatch", "x-goog-if-metageneration-match")
    if_meta_not_match = arg("ifMetagenerationNotMatch", "x-goog-if-metageneration-not-match")
    not_modified = http.HTTPStatus.NOT_MODIFIED if read else http.HTTPStatus.PRECONDITION_FAILED
    if if_match is not None and if_match != generation:
      return http.HTTPStatus.PRECONDITION_FAILED
    if if_meta_match is not None and if_meta_match != metageneration:
      return http.HTTPStatus.PRECONDITION_FAILED
    if if_not_match is not None and if_not_match == generation:
      return not_modified
    if if_meta_not_match is not None and if_meta_not_match == metageneration:
      return not_modified
    return None

  def guarded(handler, read=False, target=lambda request, storage: (
      request.params["bucket_name"], request.params.get("object_id"))):
    """Wraps `handler` to enforce preconditions against the object `target` names."""

    def wrapped(request, response, storage, *args, **kwargs):
      bucket, name = target(request, storage)
      obj = current(storage, bucket, name) if name else None
      if read:
        requested = request.query.get("generation", [None])[0]
        if obj is None or (requested is not None and requested != obj["generation"]):
          response.status = http.HTTPStatus.NOT_FOUND
          return None
      status = failed_precondition(request, obj, read)
      if status is not None:
        response.status = status
        return None
      return handler(request, response, storage, *args, **kwargs)

    return wrapped

  def raw_body(request):
    """The body as bytes: the stock parser turns b"" into None and a JSON-typed body into a dict."""
    if request._data is server._UNSET:
      handler = request._request_handler
      request._data = server._decode_raw_data(server._read_raw_data(handler), handler) or b""
    return request._data

  def upload_target(request, storage):
    """The object an upload names: in the query, JSON metadata, or the resumable session."""
    if "upload_id" in request.query:
      try:
        obj = storage.get_resumable_file_obj(request.query["upload_id"][0])
      except NotFound:
        return request.params["bucket_name"], None  # The stock handler answers 404.
      return obj["bucket"], obj["name"]
    if request.query.get("uploadType") == ["media"]:
      raw_body(request)
    name = request.query.get("name", [None])[0]
    if name is None and isinstance(request.data, dict):
      name = (request.data.get("meta") or request.data).get("name")
    return request.params["bucket_name"], name

  def xml_target(request, storage):
    raw_body(request)
    return request.params["bucket_name"], request.params["object_id"]

  def copy_target(request, storage):
    return request.params.get("dest_bucket_name", request.params["bucket_name"]), (
        request.params.get("dest_object_id", request.params["object_id"]))

  original_download = objects.download

  def download(request, response, storage, *args, **kwargs):
    """Adds suffix ranges and the `x-goog-*` generation headers to the stock download."""
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    headers = request._request_handler.headers
    suffix = re.fullmatch(r"\s*bytes=-(\d+)\s*", headers.get("range", ""))
    if suffix:
      headers.replace_header("range", f"bytes={max(0, int(obj['size']) - int(suffix[1]))}-")
    original_download(request, response, storage, *args, **kwargs)
    response["x-goog-generation"] = obj["generation"]
    response["x-goog-metageneration"] = obj["metageneration"]
    response["x-goog-stored-content-length"] = obj["size"]
    response["x-goog-stored-content-encoding"] = "identity"

  def ls(request, response, storage, *args, **kwargs):
    """The stock listing plus `startOffset`, `endOffset`, `maxResults` and `pageToken`."""
    query = {k: v[0] for k, v in request.query.items()}
    try:
      items, prefixes = storage.get_file_list(request.params["bucket_name"], query.get("prefix"),
                                              query.get("delimiter"), query.get("matchGlob"))
    except NotFound:
      response.status = http.HTTPStatus.NOT_FOUND
      return
    start, end, token = query.get("startOffset", ""), query.get("endOffset"), query.get("pageToken")
    entries = sorted([(item["name"], item) for item in items] + [(p, None) for p in prefixes],
                     key=lambda entry: entry[0])
    entries = [(name, item) for name, item in entries if name >= start and (
        end is None or name < end) and (token is None or name > token)]
    page = entries[:int(query.get("maxResults", 1000))]
    result = {"kind": "storage#objects", "prefixes": [n for n, item in page if item is None],
              "items": [item for _, item in page if item is not None]}
    if len(page) < len(entries):
      result["nextPageToken"] = page[-1][0]
    response.json(result)

  def move(request, response, storage, *args, **kwargs):
    """`objects.move` (gcsfs renames with it): copy then delete, atomic under the server's lock."""
    bucket, source = request.params["bucket_name"], request.params["object_id"]
    obj = current(storage, bucket, source)
    wanted = request.query.get("ifSourceGenerationMatch", [None])[0]
    if obj is None:
      response.status = http.HTTPStatus.NOT_FOUND
    elif wanted is not None and wanted != obj["generation"]:
      response.status = http.HTTPStatus.PRECONDITION_FAILED
    else:
      moved = objects._copy(request.base_url, storage, bucket, source, bucket,
                            request.params["dest_object_id"])
      storage.delete_file(bucket, source)
      response.json(moved)

  def storage_layout(request, response, storage, *args, **kwargs):
    name = request.params["bucket_name"]
    if name not in storage.buckets:
      response.status = http.HTTPStatus.NOT_FOUND
      return
    response.json({"kind": "storage#storageLayout", "bucket": name, "location": "US",
                   "locationType": "multi-region", "hierarchicalNamespace": {"enabled": False}})

  objects.download = guarded(download, read=True)
  objects.get = guarded(objects.get, read=True)
  objects.insert = guarded(objects.insert, target=upload_target)
  objects.upload_partial = guarded(objects.upload_partial, target=upload_target)
  objects.xml_upload = guarded(objects.xml_upload, target=xml_target)
  objects.delete = guarded(objects.delete)
  objects.patch = guarded(objects.patch)
  for name in ("copy", "rewrite", "compose"):
    setattr(objects, name, guarded(getattr(objects, name), target=copy_target))
  objects.ls = ls

  # HANDLERS captured the original functions at import: rebuild it from the patched module.
  def rebind(handlers):
    return {method: getattr(objects, fn.__name__) if fn.__module__ == objects.__name__ else fn
            for method, fn in handlers.items()}

  server.HANDLERS = (
      (r"^/storage/v1/b/(?P<bucket_name>[-.\w]+)/storageLayout$", {"GET": storage_layout}),
      (r"^/storage/v1/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)/moveTo/o/"
       r"(?P<dest_object_id>.*[^/]+)$", {"POST": guarded(move, target=copy_target)}),
      *((regex, rebind(handlers)) for regex, handlers in server.HANDLERS))

  # Deleted objects need no soft-delete copies, and in memory there is no metadata file to keep.
  make_bucket = buckets._make_bucket_resource
  buckets._make_bucket_resource = lambda *a, **k: {
      **make_bucket(*a, **k), "softDeletePolicy": {"retentionDurationSeconds": "0"}}
  storage_lib.Storage._write_config_to_file = lambda self: None

  lock = threading.Lock()
  original_handle = server.Router.handle

  def handle(router, method):
    """One handler at a time (the storage is not thread-safe); a handler's crash answers 500."""
    with lock:
      try:
        original_handle(router, method)
      except ConnectionError:
        pass  # The client left: gcsfs races an object GET and a listing, and drops the loser.
      except Exception:  # pylint: disable=broad-except
        traceback.print_exc()
        router._request_handler.send_error(500)

  server.Router.handle = handle

  class Handler(server.RequestHandler):
    """HTTP/1.1 framing, so `Expect: 100-continue` is answered; one request per connection."""
    protocol_version = "HTTP/1.1"

    def end_headers(self):
      self.send_header("Connection", "close")
      super().end_headers()

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
      sys.stderr.write(f"{self.command} {self.path} -> {args[1] if len(args) > 1 else args}\n")

  class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 256
    daemon_threads = True

  store = storage_lib.Storage(use_memory_fs=True, data_dir=os.getcwd())
  httpd = Server(("127.0.0.1", 0), lambda *a: Handler(store, *a))
  tmp = port_file + ".tmp"
  with open(tmp, "w") as f:
    f.write(str(httpd.server_address[1]))
  os.replace(tmp, port_file)  # Atomic: the parent never reads a half-written port.
  threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
  httpd.serve_forever()


if __name__ == "__main__":
  _serve(sys.argv[1])
