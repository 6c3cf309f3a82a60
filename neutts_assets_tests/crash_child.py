"""Test-only launcher for the crash-anywhere harness (test_crash_anywhere.py): runs the documented
`dagster asset materialize` command in this process, after wrapping the object stores, the codec
and the shard writer so that the run can SIGKILL itself at an exact point. Production code has no
kill hooks; everything here is installed by this module alone.

    CRASH_KILL   JSON {"cls": ..., "nth": N, "when": "before"|"during"|"after"}, or unset: no kill
    CRASH_TRACE  file that gets one JSON line per counted operation (start "s", done "d")

An operation's class comes from its key, so it names the stage that does it:
    raw_audio.manifest, segments_npz.segment / .index / .manifest,
    encoded_segments.file / .marker / .manifest (deletes: the class plus ".delete"),
    segment_quality.document (and segment_quality.manifest),
    hf_dataset.shard / .progress / .record / .card / .manifest, hf_dataset.shard.delete;
and four that are not store writes: source.transcript_read (a read of the source bucket;
raw_audio's come first), source.audio_download (segments_npz fetching a recording), encoded_segments.encode (one codec call) and hf_dataset.row (one row
given to the Parquet writer).

"during" means: on a local folder, after the temporary file is written and before it is renamed
into place; on S3, when the request that publishes the object is about to go out (the
PutObject, or the CompleteMultipartUpload of a shard, whose parts are then already uploaded);
for a codec call, while the model runs.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import threading
from urllib.parse import unquote, urlparse

KILL: dict | None = None
_trace_fd: int | None = None
_armed: dict[str, str] = {}  # "during" kill armed for this key

# A run's operations are counted across its processes: stage 2's host workers are forked from the
# run, and its files and markers are written there. The counts live in shared memory made before
# any fork, one slot per class, under a lock that forked children share.
CLASSES = (
    "raw_audio.manifest",
    "segments_npz.segment",
    "segments_npz.index",
    "segments_npz.manifest",
    "encoded_segments.file",
    "encoded_segments.marker",
    "encoded_segments.manifest",
    "encoded_segments.encode",
    "segment_quality.document",
    "segment_quality.manifest",
    "hf_dataset.shard",
    "hf_dataset.progress",
    "hf_dataset.record",
    "hf_dataset.card",
    "hf_dataset.manifest",
    "hf_dataset.row",
    "source.transcript_read",
    "source.audio_download",
)
CLASSES = CLASSES + tuple(c + ".delete" for c in CLASSES)
_counts = None  # made per run by configure(): a run killed while holding the lock must not block the next
_lock = None


def configure() -> None:
    """This run's kill and trace file, from its environment."""
    global KILL, _trace_fd, _counts, _lock
    _counts, _lock = multiprocessing.RawArray("q", len(CLASSES)), multiprocessing.Lock()
    KILL = json.loads(os.environ["CRASH_KILL"]) if os.environ.get("CRASH_KILL") else None
    _trace_fd = (
        os.open(os.environ["CRASH_TRACE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if os.environ.get("CRASH_TRACE")
        else None
    )


def trace(**event) -> None:
    if _trace_fd is not None:
        # One write(2) per line on an O_APPEND descriptor: the line is in the kernel before any kill.
        # "pid" is the run's: its process group (the run called setsid; its workers share the group).
        os.write(_trace_fd, (json.dumps({"pid": os.getpgrp(), "proc": os.getpid(), **event}) + "\n").encode())


def die(why: str) -> None:
    """SIGKILLs the whole run: its process group, stage 2's host workers included."""
    trace(kill=why)
    os.killpg(os.getpgrp(), signal.SIGKILL)


def classify(key: str, deleting: bool) -> str | None:
    parts = key.split("/")
    if parts[0] == "manifests" and len(parts) == 3:
        cls = f"{parts[1]}.manifest"
    elif parts[0] == "stage1":
        cls = "segments_npz.index" if "_index" in parts else "segments_npz.segment"
    elif parts[0] == "stage2_with_codes":
        cls = "encoded_segments.marker" if "_encoded" in parts else "encoded_segments.file"
    elif parts[0] == "segment_quality":
        cls = "segment_quality.document"
    elif key.startswith("hf_dataset/data/"):
        cls = "hf_dataset.shard"
    elif key == "hf_dataset/README.md":
        cls = "hf_dataset.card"
    elif parts[0] == "hf_dataset_builds":
        cls = "hf_dataset.record"
    elif parts[0] == "hf_dataset_progress":
        cls = "hf_dataset.progress"
    else:
        return None
    return cls + ".delete" if deleting else cls


def _count(cls: str) -> tuple[int, str | None]:
    """This operation's number within its class in this process, and the kill planned for it."""
    with _lock:
        i = CLASSES.index(cls)
        _counts[i] += 1
        n = _counts[i]
    if KILL and KILL["cls"] == cls and KILL["nth"] == n:
        return n, KILL["when"]
    return n, None


def counted(cls_of, key_of):
    def wrap(fn):
        def wrapper(*args, **kwargs):
            key = key_of(*args, **kwargs)
            cls = cls_of(key)
            if cls is None:
                return fn(*args, **kwargs)
            n, when = _count(cls)
            trace(c=cls, k=key, n=n, ph="s")
            if when == "before":
                die(f"{cls} #{n} before")
            if when == "during":
                _armed[key] = f"{cls} #{n} during"
            result = fn(*args, **kwargs)
            if when == "during":
                raise AssertionError(f"the 'during' kill of {cls} #{n} ({key}) never found its moment")
            trace(c=cls, k=key, n=n, ph="d")
            if when == "after":
                die(f"{cls} #{n} after")
            return result

        return wrapper

    return wrap


def install() -> None:
    from neutts_assets.pipeline.dataset import writer as dataset_writer
    from neutts_assets.pipeline.encoding import codec as codec_mod
    from neutts_assets.storage.gcs import GCSStore
    from neutts_assets.storage.local import LocalStore
    from neutts_assets.storage.s3 import S3Store

    for store_cls in (LocalStore, S3Store):
        store_cls.write_bytes = counted(lambda k: classify(k, False), lambda self, key, *_, **__: key)(
            store_cls.write_bytes
        )
        store_cls.upload = counted(lambda k: classify(k, False), lambda self, path, key, *_, **__: key)(
            store_cls.upload
        )
        store_cls.delete = counted(lambda k: classify(k, True), lambda self, key, *_, **__: key)(store_cls.delete)

    # The source's transcripts: raw_audio reads each one (its content hash) before segments_npz
    # reads them again, so reads 1..N of a run are raw_audio's.
    GCSStore.read_bytes = counted(
        lambda k: "source.transcript_read" if "/transcripts/" in k else None, lambda self, key, *_, **__: key
    )(GCSStore.read_bytes)
    GCSStore.download = counted(
        lambda k: "source.audio_download" if "/audio/" in k else None, lambda self, key, *_, **__: key
    )(GCSStore.download)

    # Local folder: the moment between the temporary file and its rename.
    real_replace = os.replace

    def replace(src, dst, *a, **kw):
        for key, why in list(_armed.items()):
            if str(dst).endswith("/" + key):
                die(why)
        return real_replace(src, dst, *a, **kw)

    os.replace = replace

    # S3: the request that publishes the object (single PUT, or the multipart's completion).
    real_init = S3Store.__init__

    def init(self, client, *args, **kwargs):
        real_init(self, client, *args, **kwargs)

        def before_send(request, **_):
            path = unquote(urlparse(request.url).path)
            for key, why in list(_armed.items()):
                if path.endswith("/" + self.prefix + key):
                    query = urlparse(request.url).query
                    if "uploads" in query.split("&") or (request.method == "PUT" and "uploadId=" in query):
                        continue  # a multipart upload's start or one of its parts: the completion publishes it
                    if request.method in ("PUT", "POST"):
                        die(f"{why} ({request.method} {'complete multipart' if 'uploadId=' in query else 'object'})")

        client.meta.events.register("before-send.s3", before_send)

    S3Store.__init__ = init

    # Shards small enough for this channel still go up as multipart uploads, as 500 MB shards do.
    from boto3.s3.transfer import TransferConfig

    real_tc = TransferConfig.__init__

    def tc(self, multipart_threshold=64 * 1024, multipart_chunksize=64 * 1024, **kw):
        real_tc(self, multipart_threshold=multipart_threshold, multipart_chunksize=multipart_chunksize, **kw)

    TransferConfig.__init__ = tc

    # Several shards per build from a handful of rows: row groups of 2, a shard per row group
    # (with shard_size_mb tiny in the run config).
    dataset_writer.ROW_GROUP_ROWS = 2

    real_encode = codec_mod.Codec.encode_batch

    def encode_batch(self, clips, features=None):
        n, when = _count("encoded_segments.encode")
        trace(c="encoded_segments.encode", n=n, clips=len(clips), ph="s")
        if when == "before":
            die(f"encode #{n} before")
        if when == "during":
            # The model is running on this thread when the timer fires (a small batch can finish
            # first; then the kill lands just after it, before any upload).
            threading.Timer(0.02, die, (f"encode #{n} during",)).start()
        result = real_encode(self, clips, features)
        if when == "during":
            threading.Event().wait(5)
        trace(c="encoded_segments.encode", n=n, clips=len(clips), ph="d")
        if when == "after":
            die(f"encode #{n} after")
        return result

    codec_mod.Codec.encode_batch = encode_batch

    real_add = dataset_writer.ShardWriter.add

    def add(self, row):
        n, when = _count("hf_dataset.row")
        trace(c="hf_dataset.row", n=n, ph="s")
        if when:
            die(f"hf_dataset.row #{n} {when}")
        return real_add(self, row)

    dataset_writer.ShardWriter.add = add


def run(channel: str) -> int:
    configure()
    from dagster._cli import main as dagster_main

    config = {
        # One process for the whole run, so a kill ends the run (the default executor would run
        # each step in a child process of its own, out of reach of these wrappers).
        "execution": {"config": {"in_process": {}}},
        "ops": {
            "segments_npz": {"config": {"workers": 1}},
            "hf_dataset": {"config": {"shard_size_mb": 1e-6, "workers": 2}},
        },
    }
    sys.argv = [
        "dagster",
        "asset",
        "materialize",
        "-m",
        "neutts_assets.definitions",
        "--select",
        "raw_audio,segments_npz,encoded_segments,segment_quality,hf_dataset",
        "--partition",
        channel,
        "--config-json",
        json.dumps(config),
    ]
    try:
        dagster_main()
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    else:
        rc = 0
    trace(exit=rc)
    if KILL and KILL["cls"] != "time":
        print(f"CRASH: planned kill {KILL} was never reached", file=sys.stderr)
    return rc


def zygote() -> None:
    """Imports the heavy libraries once, then forks one run per request: a run then starts in a
    fraction of the time a fresh interpreter takes, which is most of what a kill costs.

    stdin: one JSON line per run, {"env": {...}, "log": path, "channel": name}; stdout: the run's
    pid when it starts, then "pid status" when it ends (status as os.waitpid gives it).
    neutts_assets.definitions is not imported here: it reads the environment, which each run sets."""
    import dagster._cli  # noqa: F401
    import datasets  # noqa: F401
    import neucodec  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import torch  # noqa: F401

    import neutts_assets.defs.dataset.checks  # noqa: F401
    import neutts_assets.defs.dataset.cleanup  # noqa: F401
    import neutts_assets.defs.dataset.hf_dataset  # noqa: F401
    import neutts_assets.defs.encoding.checks  # noqa: F401
    import neutts_assets.defs.encoding.encoded_segments  # noqa: F401
    import neutts_assets.defs.inventory.checks  # noqa: F401
    import neutts_assets.defs.inventory.raw_audio  # noqa: F401
    import neutts_assets.defs.inventory.sensors  # noqa: F401
    import neutts_assets.defs.orchestration.backfills  # noqa: F401
    import neutts_assets.defs.resources  # noqa: F401
    import neutts_assets.defs.segments.checks  # noqa: F401
    import neutts_assets.defs.segments.segments_npz  # noqa: F401

    install()
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            os.setsid()
            os.environ.clear()
            os.environ.update(request["env"])
            fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdin.close()
            code = 1
            try:
                code = run(request["channel"])
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print(pid, status, flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "--zygote":
        zygote()
    else:
        install()
        sys.exit(run(sys.argv[1]))
