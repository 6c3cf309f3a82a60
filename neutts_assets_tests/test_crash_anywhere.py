"""Crash-anywhere resume: a channel goes through raw_audio -> segments_npz -> encoded_segments ->
hf_dataset (random-weight NeuCodec, source on fake-gcs-server, store on moto S3 and on a local
folder) while the run process is SIGKILLed at points spread over the four stages, each restart
taking up where the last left off. The store and dataset left at the end must equal an
uninterrupted run's, with no temporary debris, and no finished work done again.

Kill points: neutts_assets_tests/crash_child.py (the test-only launcher) kills the run at the
n-th store operation of a class (stage + what is written), before it, during it (temporary file
written but not renamed; S3 request that publishes the object, or a multipart upload's
completion, about to go out) or after it, inside a codec call, or before a row reaches the
Parquet writer; some kills are purely time-based, from this process. Which n, and the
before/during/after and time choices the slots leave open, come from one seed:

    CRASH_SEED=1234 pytest neutts_assets_tests/test_crash_anywhere.py -s     # replays a run

Compared with the uninterrupted run (on S3): segment keys; every stage-1 and stage-2 file byte
for byte and decoded (samples, FLAC bytes, text, provenance, codes, codec); recording indexes;
the raw_audio, segments_npz and encoded_segments manifests; the dataset's rows shard by shard
(decoded from the Parquet), rows and bytes per shard, the build figures and the card's text.
What may legitimately differ, and is normalised or checked another way: the dataset's build id,
its shard file names and build time (build record, card, hf_dataset's manifest), the card's
generation time, the store named in the record's and the card's "source"; and on a local
folder, whose object versions are mtimes where S3's are content MD5s, the stage-2 marker names
(they carry a hash of the stage-1 object's version: each is checked against the current
version instead) and the record's source fingerprint (a hash over those versions).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from neutts_assets.pipeline.dataset.store import (
    BUILDS_PREFIX,
    CARD_KEY,
    DATASET_PREFIX,
    progress_key,
    record_key,
    shard_prefix,
)
from neutts_assets.pipeline.encoding.store import Stage2Layout
from neutts_assets.pipeline.segments.segment_file import read_segment
from neutts_assets.pipeline.segments.store import index_prefix
from neutts_assets.storage.local import LocalStore
from neutts_assets.storage.s3 import S3Store
from neutts_assets.storage.store import TEMP_MARK
from neutts_assets_tests.helpers import S3_ACCESS, S3_SECRET, clean_env, populate_source

BIN = Path(sys.executable).parent
CHANNEL = "crash_ch"
IDS = ["austen_0870", "austen_0880", "austen_0890"]  # 7 segments, 3 encode batches, 4 shards of 2 rows

# Each sequence runs on a fresh store: kill, restart, kill, ... then one run to the end. The slots
# are in pipeline order so each can be reached from where the previous kill left the channel;
# "*" leaves before/during/after to the seed, and which operation of the class (n) is the seed's
# unless the slot names it. Together they cover what the issue names: mid-write
# (local temporary file, S3 PUT and multipart completion), segment written / index not published,
# stage-2 file written / marker not, mid-encode, mid-shard-writing, and each gap between shard
# uploads, build record, card and old-shard deletion.
SEQUENCES = [
    (
        "s3",
        [
            ("raw_audio.manifest", "during"),
            ("segments_npz.segment", "during"),
            ("segments_npz.index", "before"),
            ("segments_npz.manifest", "*"),
            ("time", None),
            ("encoded_segments.encode", "during"),
            ("encoded_segments.file", "after"),
            ("encoded_segments.marker", "during"),
            ("segment_quality.document", "during"),
            ("hf_dataset.row", "before"),
            ("hf_dataset.shard", "during"),
            ("hf_dataset.record", "after"),
        ],
    ),
    (
        "s3",
        [
            ("source.transcript_read", "before"),
            ("segments_npz.segment", "after"),
            ("time", None),
            ("encoded_segments.file", "during"),
            ("encoded_segments.marker", "after"),
            ("encoded_segments.manifest", "*"),
            ("hf_dataset.progress", "before"),
            ("hf_dataset.shard", "after"),
            ("hf_dataset.card", "after"),
            ("hf_dataset.manifest", "*"),
        ],
    ),
    (
        "local",
        [
            ("source.transcript_read", "after"),
            ("segments_npz.segment", "during"),
            ("segments_npz.index", "during"),
            ("time", None),
            ("encoded_segments.file", "during"),
            ("encoded_segments.encode", "before"),
            ("segment_quality.document", "after"),
            ("hf_dataset.shard", "during", 1),
            # the first shard of a build, uploaded before the build's first progress record: the next
            # build starts afresh, and deletes that shard when it publishes
            ("hf_dataset.shard", "after", 1),
            ("hf_dataset.record", "before"),
            ("hf_dataset.shard.delete", "after"),
        ],
    ),
]
STAGES = ("raw_audio", "segments_npz", "encoded_segments", "hf_dataset")


@pytest.fixture
def small_multipart_parts(monkeypatch):
    """moto, like S3, refuses multipart parts under 5 MiB; the child uploads this channel's small
    shards in 64 KiB parts, so they go through the same multipart path as 500 MB shards."""
    import moto.s3.models

    monkeypatch.setattr(moto.s3.models, "S3_UPLOAD_PART_MIN_SIZE", 1024)


class Harness:
    def __init__(self, tmp_path: Path, gcs_endpoint: str, gcs_bucket: str, s3_endpoint: str, s3_client):
        self.tmp, self.s3_endpoint, self.s3_client = tmp_path, s3_endpoint, s3_client
        self.home = tmp_path / "home"
        self.home.mkdir()
        self.base_env = clean_env(
            DAGSTER_HOME=str(self.home),
            NEUTTS_SOURCE=f"gs://{gcs_bucket}",
            STORAGE_EMULATOR_HOST=gcs_endpoint,
            S3_ENDPOINT_URL=s3_endpoint,
            S3_ACCESS_KEY=S3_ACCESS,
            S3_SECRET_KEY=S3_SECRET,
            S3_REGION="us-east-1",
            NEUTTS_CODEC="random",
            NEUTTS_CODEC_DEVICE="cpu",
            NEUTTS_CODEC_BATCH_SECONDS="6",
            HF_HUB_OFFLINE="1",
            HF_HOME=str(tmp_path / "hf"),
            PYTHONUNBUFFERED="1",
        )
        subprocess.run(
            [str(BIN / "neutts-assets"), "add-channel", CHANNEL], env=self.base_env, check=True, capture_output=True
        )
        self.runs, self.logs = 0, []
        # Runs are forked from one process that has imported the libraries already (crash_child.zygote).
        self.zygote = subprocess.Popen(
            [sys.executable, "-m", "neutts_assets_tests.crash_child", "--zygote"],
            env=self.base_env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(tmp_path / "zygote.log", "wb"),
            text=True,
            bufsize=1,
        )
        self._pending = b""
        assert self._line(120) == "ready", (tmp_path / "zygote.log").read_text()[-3000:]

    def _line(self, timeout: float) -> str | None:
        """The zygote's next line, or None when none comes within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        fd = self.zygote.stdout.fileno()
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 4096)
            assert chunk, f"the zygote exited: {(self.tmp / 'zygote.log').read_text()[-3000:]}"
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return line.decode().strip()

    def close(self) -> None:
        if self.zygote.poll() is None:
            self.zygote.stdin.close()  # it exits at the end of its input
            self.zygote.wait(30)

    def new_store(self, backend: str):
        if backend == "s3":
            bucket = f"crash-{uuid.uuid4().hex[:10]}"
            self.s3_client.create_bucket(Bucket=bucket)
            return f"s3://{bucket}/segs", S3Store(self.s3_client, bucket, "segs")
        root = self.tmp / f"store-{uuid.uuid4().hex[:6]}"
        return str(root), LocalStore(root)

    def run(self, store_url: str, trace: Path, kill: dict | None = None, kill_after_s: float | None = None) -> dict:
        """One run process; returns its exit code (negative: the signal that ended it), wall time and log."""
        self.runs += 1
        log = self.tmp / f"run-{self.runs:03d}.log"
        self.logs.append(log)
        env = {**self.base_env, "NEUTTS_STORE": store_url, "CRASH_TRACE": str(trace)}
        if kill:
            env["CRASH_KILL"] = json.dumps(kill)
        t0 = time.monotonic()
        self.zygote.stdin.write(json.dumps({"env": env, "log": str(log), "channel": CHANNEL}) + "\n")
        pid = int(self._line(60))
        line = self._line(kill_after_s if kill_after_s is not None else 240)
        if line is None:
            os.killpg(pid, signal.SIGKILL)  # this run's own process group (it called setsid)
            assert kill_after_s is not None, f"run {self.runs} hung; log {log}"
            line = self._line(60)
        ended_pid, status = map(int, line.split())
        assert ended_pid == pid
        rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        return {"rc": rc, "wall": time.monotonic() - t0, "log": log, "pid": pid}


def trace_events(trace: Path) -> list[dict]:
    return [json.loads(line) for line in trace.read_text().splitlines()] if trace.exists() else []


class StoreView:
    """What the parent reads in a store between runs, to aim the next kill where work remains."""

    def __init__(self, store, reference: dict):
        self.store, self.ref = store, reference

    def pending(self, cls: str) -> int:
        s, ref = self.store, self.ref
        if cls.endswith(".manifest"):
            return 1  # every run writes every manifest
        if cls == "source.transcript_read":
            return len(IDS)  # raw_audio reads every transcript on every run (the first len(IDS) reads)
        indexed = {o.key.rsplit("/", 1)[1][:-5] for o in s.list(index_prefix(CHANNEL))}
        if cls == "segments_npz.segment":
            return sum(n for rec, n in ref["segments_per_recording"].items() if rec not in indexed)
        if cls == "segments_npz.index":
            return len(set(IDS) - indexed)
        layout = Stage2Layout(CHANNEL)
        stage2 = [o.key for o in s.list(layout.channel_prefix)]
        files = [k for k in stage2 if k.endswith(".npz") and "/_encoded/" not in k]
        markers = [k for k in stage2 if "/_encoded/" in k]
        if cls == "encoded_segments.file":
            return ref["segments"] - len(files)
        if cls == "encoded_segments.marker":
            return ref["segments"] - len(markers)
        if cls == "encoded_segments.encode":
            return 1 if len(files) < ref["segments"] else 0
        if cls == "segment_quality.document":  # one per recording, written once its segments are scored
            return len(IDS) - sum(1 for o in s.list(f"segment_quality/{CHANNEL}/") if o.key.endswith(".json"))
        blob = s.read_bytes_or_none(record_key(CHANNEL))
        record = json.loads(blob) if blob else None
        rebuild = record is None
        # A killed build's progress record: the next build goes on from it when its shards are there.
        blob = s.read_bytes_or_none(progress_key(CHANNEL))
        progress = json.loads(blob) if blob else None
        present = {o.key: o.size for o in s.list(shard_prefix(CHANNEL))}
        if progress and any(present.get(DATASET_PREFIX + x["path"]) != x["bytes"] for x in progress["shards"]):
            progress = None
        kept_shards = len(progress["shards"]) if progress else 0
        if cls == "hf_dataset.row":
            return ref["segments"] - (progress["next"] if progress else 0) if rebuild else 0
        if cls == "hf_dataset.shard":
            return ref["shards"] - kept_shards if rebuild else 0
        if cls == "hf_dataset.progress":  # written after each shard but the last, which the record follows
            return max(0, ref["shards"] - 1 - kept_shards) if rebuild else 0
        if cls == "hf_dataset.record":
            return 1 if rebuild else 0
        card = s.read_bytes_or_none(CARD_KEY)
        if cls == "hf_dataset.card":
            return 1 if rebuild or card is None or record["build_id"] not in card.decode() else 0
        if cls == "hf_dataset.shard.delete":
            if not rebuild:
                keep = {DATASET_PREFIX + x["path"] for x in record["shards"]}
            elif progress:  # the resumed build's shards, in whichever split folder
                names = {f"{progress['build_id']}-{i:05d}.parquet" for i in range(ref["shards"])}
                keep = {key for key in present if key.rsplit("/", 1)[-1] in names}
            else:
                keep = set()
            return sum(key not in keep for key in present)
        raise ValueError(cls)


def snapshot(store) -> dict:
    """Everything a reader of the store and the dataset sees, decoded; what may differ between two
    correct runs is normalised (see the module docstring) and checked where it can be."""
    layout = Stage2Layout(CHANNEL)
    keys = sorted(o.key for o in store.list(""))
    versions = {o.key: o.version for o in store.list(f"stage1/{CHANNEL}/")}
    snap: dict = {
        "stage1": {},
        "stage2": {},
        "file_sha256": {},
        "indexes": {},
        "markers": [],
        "marker_keys_s3": [],
        "manifests": {},
    }
    for key in keys:
        if key.startswith(f"stage1/{CHANNEL}/_index/"):
            snap["indexes"][key] = json.loads(store.read_bytes(key))
        elif key.startswith(f"stage1/{CHANNEL}/") or key.startswith(layout.channel_prefix) and key.endswith(".npz"):
            data = store.read_bytes(key)
            seg = read_segment(data)
            snap["file_sha256"][key] = hashlib.sha256(data).hexdigest()
            with np.load(io.BytesIO(data)) as npz:
                flac = hashlib.sha256(npz["audio"].tobytes()).hexdigest()
            snap["stage1" if key.startswith("stage1/") else "stage2"][key] = (
                hashlib.sha256(seg.pcm16.tobytes()).hexdigest(),
                flac,
                seg.codes.tolist(),
                seg.codec,
                seg.text,
                seg.speaker_id,
                seg.gender,
                seg.dialect,
                seg.tone,
                seg.channel,
                seg.audio_id,
                seg.source_key,
                seg.start_ms,
                seg.end_ms,
            )
        elif key.startswith(layout.marker_prefix):
            audio_id, _ = layout.parse_marker(key)
            # A marker vouches for codes made from one stage-1 version: it must name the current one.
            version = versions[f"stage1/{CHANNEL}/{audio_id}.npz"]
            assert key.endswith("@" + hashlib.sha256(version.encode()).hexdigest()[:12]), f"stale marker {key}"
            snap["markers"].append(key.split("/")[-2] + "/" + audio_id)
            if isinstance(store, S3Store):
                snap["marker_keys_s3"].append(key)
        elif key.startswith("manifests/"):
            snap["manifests"][key] = json.loads(store.read_bytes(key))
    record = json.loads(store.read_bytes(record_key(CHANNEL)))
    build_id, built_at = record["build_id"], record["built_at"]
    rows = []
    for i, shard in enumerate(record["shards"]):
        local = Path(os.environ.get("TMPDIR", "/tmp")) / f"crash-shard-{uuid.uuid4().hex}.parquet"
        store.download(DATASET_PREFIX + shard["path"], local)
        table = pq.read_table(local)
        local.unlink()
        table_rows = table.to_pylist()
        # Every row names the build that wrote it: this one (a resumed build keeps the killed run's id).
        assert {r["build_id"] for r in table_rows} == {build_id}
        rows.append(
            [
                {
                    **r,
                    "audio": (r["audio"]["path"], hashlib.sha256(r["audio"]["bytes"]).hexdigest()),
                    "build_id": "BUILD",
                }
                for r in table_rows
            ]
        )
        assert shard["path"] == f"data/{CHANNEL}/{shard['split']}/{build_id}-{i:05d}.parquet"
    snap["rows"] = rows
    snap["record"] = {
        k: v for k, v in record.items() if k not in ("build_id", "built_at", "shards", "source", "source_fingerprint")
    }
    snap["source_fingerprint_s3"] = record["source_fingerprint"] if isinstance(store, S3Store) else None
    snap["record"]["shards"] = [(s["rows"], s["bytes"]) for s in record["shards"]]
    card = (
        store.read_bytes(CARD_KEY)
        .decode()
        .replace(build_id, "BUILD")
        .replace(built_at, "BUILT_AT")
        .replace(record["source"], "SOURCE")
    )
    snap["card"] = re.sub(r"Card generated \S+;", "Card generated TIME;", card)
    hf = snap["manifests"].pop(f"manifests/hf_dataset/{CHANNEL}.json")
    snap["hf_manifest_rows"] = hf["rows"]
    assert hf["build_id"] == build_id and [s["path"] for s in hf["shards"]] == [s["path"] for s in record["shards"]]
    # Nothing but the published build's shards in the dataset folder.
    snap["shard_objects_unlisted"] = sorted(
        k
        for k in keys
        if k.startswith(shard_prefix(CHANNEL)) and k[len(DATASET_PREFIX) :] not in {s["path"] for s in record["shards"]}
    )
    snap["other_keys"] = sorted(
        k
        for k in keys
        if not k.startswith(
            (f"stage1/{CHANNEL}/", layout.channel_prefix, "manifests/", shard_prefix(CHANNEL), CARD_KEY, BUILDS_PREFIX)
        )
    )
    return snap


def orphans(store, s3_client) -> list[str]:
    if isinstance(store, LocalStore):
        return [str(p) for p in store.root.rglob(f"*{TEMP_MARK}*")]
    uploads = s3_client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    return [f"incomplete multipart upload {u['Key']}" for u in uploads]


def redo_figures(events: list[dict], ref: dict, final_shards: set[str]) -> dict:
    """From the trace of a whole sequence: how much was done more than once, and how much of that
    had been finished (published) before the kill that made it be done again."""
    done_at: dict[str, int] = {}  # key -> pid that finished writing it
    indexed_recordings: set[str] = set()
    fig = Counter()
    for e in events:
        cls, ph = e.get("c"), e.get("ph")
        if cls is None:
            continue
        key = e.get("k", "")
        if ph == "s" and cls == "encoded_segments.encode":
            fig["segments_sent_to_codec"] += e["clips"]
        if ph == "s" and key in done_at and done_at[key] != e["pid"]:
            fig[f"{cls}:finished_redone"] += 1
        if ph == "s" and cls == "segments_npz.segment":
            recording = key.rsplit("/", 1)[1].rsplit("_seg_", 1)[0]
            if recording in indexed_recordings:
                fig["segments_npz.segment:of_finished_recording"] += 1
        if ph == "d":
            fig[f"{cls}:done"] += 1
            done_at[key] = e["pid"]
            if cls == "segments_npz.index":
                indexed_recordings.add(key.rsplit("/", 1)[1][:-5])
    return {
        "recordings_downloaded_again": fig["source.audio_download:done"] - len(IDS),
        "segments_written_again": fig["segments_npz.segment:done"] - ref["segments"],
        "segments_recut_after_their_recording_was_indexed": fig["segments_npz.segment:of_finished_recording"],
        "segment_files_rewritten_after_finished": fig["segments_npz.segment:finished_redone"],
        "recordings_reindexed_after_finished": fig["segments_npz.index:finished_redone"],
        "segments_reencoded": fig["segments_sent_to_codec"] - ref["segments"],
        "stage2_files_rewritten_after_finished": fig["encoded_segments.file:finished_redone"],
        "markers_rewritten_after_finished": fig["encoded_segments.marker:finished_redone"],
        "shards_rewritten": fig["hf_dataset.shard:done"] - ref["shards"],
        "shards_rewritten_same_name": fig["hf_dataset.shard:finished_redone"],
        "shards_of_killed_builds_discarded": len(
            {e["k"] for e in events if e.get("c") == "hf_dataset.shard" and e.get("ph") == "d"} - final_shards
        ),
        "build_records_rewritten": fig["hf_dataset.record:done"] - 1,
    }


def test_sigkill_anywhere_then_resume_equals_uninterrupted_run(
    tmp_path, gcs_endpoint, gcs_store, gcs_bucket, s3_endpoint, s3_client, small_multipart_parts, request
):
    seed = int(os.environ.get("CRASH_SEED") or random.SystemRandom().randrange(10**6))
    print(f"\nCRASH_SEED={seed}  (replay: CRASH_SEED={seed} pytest {__file__} -s)")
    rng = random.Random(seed)
    started = time.monotonic()
    populate_source(gcs_store, CHANNEL, ids=IDS)
    h = Harness(tmp_path, gcs_endpoint, gcs_bucket, s3_endpoint, s3_client)
    request.addfinalizer(h.close)

    # The uninterrupted run: what every crashed sequence must end up equal to, and how many
    # operations of each kind a run from nothing does.
    ref_url, ref_store = h.new_store("s3")
    ref_trace = tmp_path / "trace-reference.jsonl"
    ref_run = h.run(ref_url, ref_trace)
    assert ref_run["rc"] == 0, ref_run["log"].read_text()[-4000:]
    ref_ops = Counter(e["c"] for e in trace_events(ref_trace) if e.get("ph") == "d")
    ref_index = {o.key: json.loads(ref_store.read_bytes(o.key)) for o in ref_store.list(index_prefix(CHANNEL))}
    ref = {
        "segments": ref_ops["segments_npz.segment"],
        "shards": ref_ops["hf_dataset.shard"],
        "segments_per_recording": {v["recording_id"]: len(v["segments"]) for v in ref_index.values()},
        "wall": ref_run["wall"],
    }
    assert ref["segments"] == 7 and ref["shards"] == 4 and ref_ops["encoded_segments.encode"] >= 2, ref_ops
    expected = snapshot(ref_store)
    assert not orphans(ref_store, s3_client)
    print(f"reference run: {ref_run['wall']:.1f} s, operations {dict(ref_ops)}")

    fired, report = [], []
    for number, (backend, slots) in enumerate(SEQUENCES):
        url, store = h.new_store(backend)
        view = StoreView(store, ref)
        trace = tmp_path / f"trace-{number}.jsonl"
        kills, first_log = [], len(h.logs)
        for cls, when, *fixed_nth in slots:
            if cls == "time":
                # After stage 1's slots, when encoding, most of a run's time, is still to do: a
                # seeded fraction of the uninterrupted run's time (the fraction replays; where it
                # lands depends on the machine's speed, as with any kill on a clock).
                fraction = rng.uniform(0.15, 0.6)
                delay = round(fraction * ref["wall"], 2)
                before = len(trace_events(trace))
                r = h.run(url, trace, {"cls": "time", "nth": 0, "when": "time"}, kill_after_s=delay)
                if r["rc"] == 0:
                    # Done before the clock ran out: go on from an empty store, so that the kills
                    # after this one still have work to land in.
                    kills.append((f"time {delay}s", "finished first: the sequence goes on from an empty store"))
                    url, store = h.new_store(backend)
                    view, trace = StoreView(store, ref), tmp_path / f"trace-{number}b.jsonl"
                    continue
                assert r["rc"] == -signal.SIGKILL, r["log"].read_text()[-4000:]
                ops = [e for e in trace_events(trace)[before:] if e.get("c")]
                # Attributed to the stage of the last operation the run began (start-up: none yet).
                stage = (
                    ("raw_audio" if ops[-1]["c"].startswith("source.") else ops[-1]["c"].split(".")[0])
                    if ops
                    else "start-up"
                )
                kills.append(
                    (
                        f"time {delay}s",
                        f"after {ops[-1]['c']} #{ops[-1]['n']} ({ops[-1]['ph']})" if ops else "during start-up",
                    )
                )
                fired.append(stage)
                continue
            when = (
                rng.choice(["before", "during", "after"] if not cls.endswith(".delete") else ["before", "after"])
                if when == "*"
                else when
            )
            pending = view.pending(cls)
            if pending < (fixed_nth[0] if fixed_nth else 1):
                kills.append((f"{cls} {when}", "nothing of it left to do: skipped"))
                continue
            kill = {"cls": cls, "nth": fixed_nth[0] if fixed_nth else rng.randint(1, pending), "when": when}
            r = h.run(url, trace, kill)
            log = r["log"].read_text()
            assert r["rc"] == -signal.SIGKILL, f"planned kill {kill} not reached (rc {r['rc']}): {log[-4000:]}"
            assert any(e.get("kill") for e in trace_events(trace) if e["pid"] == r["pid"]), kill
            kills.append((f"{cls} #{kill['nth']} {when}", f"{r['wall']:.1f} s"))
            fired.append("raw_audio" if cls.startswith("source.") else cls.split(".")[0])
        final = h.run(url, trace)
        assert final["rc"] == 0, f"the run after the kills failed: {final['log'].read_text()[-6000:]}"
        # A killed run's store lease (defs/leases.py) never holds up the restart: it is taken over
        # at once, its process being gone.
        takeovers = sum(log.read_text().count("took over the lease of run") for log in h.logs[first_log:])
        assert takeovers >= 1

        # The same store and dataset as the uninterrupted run's, and no debris.
        got = snapshot(store)
        for part in expected:
            if part in ("marker_keys_s3", "source_fingerprint_s3") and backend != "s3":
                continue
            assert got[part] == expected[part], (
                f"sequence {number} ({backend}): {part} differs from the uninterrupted run"
            )
        assert got["shard_objects_unlisted"] == [], got["shard_objects_unlisted"]
        assert orphans(store, s3_client) == []
        final_record = json.loads(store.read_bytes(record_key(CHANNEL)))
        figures = redo_figures(trace_events(trace), ref, {DATASET_PREFIX + x["path"] for x in final_record["shards"]})
        report.append((number, backend, kills, {"lease_takeovers": takeovers, **figures}))
        # Finished work is not done again: a published segment file, index, stage-2 file, marker or
        # build record is never rewritten.
        # Stage 1's unit of finished work is the recording (its index is published last): a
        # recording killed before its index is downloaded and cut again, but the segment files it
        # had written are kept as they are.
        for name in (
            "segments_recut_after_their_recording_was_indexed",
            "segment_files_rewritten_after_finished",
            "recordings_reindexed_after_finished",
            "stage2_files_rewritten_after_finished",
            "markers_rewritten_after_finished",
            "build_records_rewritten",
        ):
            assert figures[name] == 0, (name, figures, kills)

    print(
        f"\nCRASH_SEED={seed}: {len(fired)} kills ({dict(Counter(fired))}), {h.runs} runs, {time.monotonic() - started:.0f} s"
    )
    for number, backend, kills, figures in report:
        print(f"sequence {number} ({backend}):")
        for what, how in kills:
            print(f"    kill {what}: {how}")
        print("    redone: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    assert len(fired) >= 20 and set(STAGES) <= set(fired), (len(fired), Counter(fired))


def test_s3_unfinished_multipart_uploads_are_aborted_under_a_prefix_only(s3_client, s3_store):
    """What a shard upload killed before its completion leaves on S3 (parts, no object) is removed
    under the channel's prefix; elsewhere a recent upload may be another run's, and stays."""
    mine = s3_client.create_multipart_upload(
        Bucket=s3_store.bucket, Key=s3_store.prefix + "hf_dataset/data/a/x.parquet"
    )
    s3_client.upload_part(
        Bucket=s3_store.bucket, Key=mine["Key"], UploadId=mine["UploadId"], PartNumber=1, Body=b"x" * 100
    )
    other = s3_client.create_multipart_upload(
        Bucket=s3_store.bucket, Key=s3_store.prefix + "hf_dataset/data/b/y.parquet"
    )
    assert s3_store.remove_orphan_temporaries() == 0  # store-wide: any of them may be in progress
    assert s3_store.remove_orphan_temporaries("hf_dataset/data/a/") == 1
    left = s3_client.list_multipart_uploads(Bucket=s3_store.bucket).get("Uploads", [])
    assert [u["UploadId"] for u in left] == [other["UploadId"]]
    assert not list(s3_store.list("hf_dataset/"))
