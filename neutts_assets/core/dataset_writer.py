"""Builds one channel of the Hugging Face dataset: segment files in, Parquet shards out, in
bounded memory whatever the number of segments.

Layout in the store (the dataset folder is what `datasets.load_dataset` opens):

    hf_dataset/README.md                          the card: features, figures, one config per channel + "all"
    hf_dataset/data/{channel}/{build}-{i}.parquet the channel's shards (~500 MB each by default)
    hf_dataset_builds/{channel}.json              the channel's published build: its shards and figures
    hf_dataset_progress/{channel}.json            a build in progress: its shards so far, where it is

Segments are read a few at a time in parallel and written in row groups of ROW_GROUP_ROWS, so
memory holds a read-ahead window and one row group, never the channel. A new build's shards get
new names; the card, which lists every shard by name, is the switch: write the new shards, publish
the record and the card, then delete the old shards. A reader never sees half a channel. A build
killed halfway leaves unlisted shards and its progress record (written after each shard): the
next build of the same segments goes on from there, keeping those shards; anything else
unlisted is removed when a build is published.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from neutts_assets.core.dataset_rows import COLUMNS, BadSegment, ChannelStats, Row, RowFilter, dataset_features, read_row
from neutts_assets.core.segment_file import STRING_KEYS, FORMAT_VERSION
from neutts_assets.storage.store import ObjectInfo, ObjectStore, may_pass

DATASET_PREFIX = "hf_dataset/"
BUILDS_PREFIX = "hf_dataset_builds/"
PROGRESS_PREFIX = "hf_dataset_progress/"
STAGE2_PREFIX = "stage2_with_codes/"
CARD_KEY = f"{DATASET_PREFIX}README.md"
ROW_GROUP_ROWS = 100  # what `datasets` uses for audio: a viewer or a streaming reader fetches little at a time
DEFAULT_SHARD_BYTES = 500 * 1000 * 1000
# FLAC is entropy-coded already: compressing it again costs CPU for ~1%. Everything else is zstd.
COMPRESSION = {"audio.bytes": "none", "audio.path": "zstd", "codes.list.element": "zstd", "duration_sec": "zstd",
               **{key: "zstd" for key in STRING_KEYS}}


def data_folder(channel: str) -> str:
    """The channel's shard folder, relative to the dataset folder (as the card and the Hub name it)."""
    return f"data/{channel}/"


def shard_prefix(channel: str) -> str:
    return DATASET_PREFIX + data_folder(channel)


def record_key(channel: str) -> str:
    return f"{BUILDS_PREFIX}{channel}.json"


def progress_key(channel: str) -> str:
    return f"{PROGRESS_PREFIX}{channel}.json"


def stage2_prefix(channel: str) -> str:
    return f"{STAGE2_PREFIX}{channel}/"


def segment_objects(store: ObjectStore, prefix: str) -> dict[str, ObjectInfo]:
    """Segment files directly under a channel prefix (not its _index/ or other sub-folders)."""
    return {o.key: o for o in store.list(prefix) if o.key.endswith(".npz") and "/" not in o.key[len(prefix):]}


def source_fingerprint(objects: Iterable[ObjectInfo], row_filter: RowFilter) -> str:
    """Changes when any segment object or a filter changes: an unchanged channel is not rebuilt."""
    h = hashlib.sha256(json.dumps({"filter": row_filter.fingerprint(), "format": FORMAT_VERSION, "writer": 1}).encode())
    for o in sorted(objects, key=lambda o: o.key):
        h.update(f"\n{o.key}\t{o.version}\t{o.size}".encode())
    return h.hexdigest()


@dataclass
class ChannelBuild:
    record: dict
    local_shards: dict[str, Path] = field(default_factory=dict)  # path in the dataset folder -> local copy
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (segment key, reason)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (object, reason)
    store_failures: list[tuple[str, str]] = field(default_factory=list)  # (object, reason): not to be published
    bytes_read: int = 0
    wall_seconds: float = 0.0
    resumed_shards: int = 0  # shards a killed build of the same segments had finished, kept


def _rows_in_order(store: ObjectStore, keys: list[str], workers: int) -> Iterator[tuple[str, bytes | Exception]]:
    """Each key's bytes (or the error reading it), in key order, with a bounded read-ahead window."""
    window = max(1, workers) * 4
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque = deque()
        it = iter(keys)

        def read(key: str):
            try:
                return store.read_bytes(key)
            except Exception as exc:  # reported per object; the channel goes on
                return exc

        for key in it:
            pending.append((key, pool.submit(read, key)))
            if len(pending) >= window:
                k, fut = pending.popleft()
                yield k, fut.result()
        while pending:
            k, fut = pending.popleft()
            yield k, fut.result()


class ShardWriter:
    """Rows into Parquet files of about `shard_bytes`, each uploaded to the store once closed."""

    def __init__(self, store: ObjectStore, channel: str, build_id: str, workdir: Path, shard_bytes: int,
                 keep_local: bool, on_shard: Callable[[str], None] | None = None):
        self.store, self.channel, self.build_id = store, channel, build_id
        self.workdir, self.shard_bytes, self.keep_local = Path(workdir), shard_bytes, keep_local
        self.features = dataset_features()
        self.schema = self.features.arrow_schema  # carries the features, so Audio survives a bare Parquet read
        self.shards: list[dict] = []
        self.local: dict[str, Path] = {}
        self.buffer: list[Row] = []
        self._writer = self._sink = self._path = None
        self._rows_in_shard = 0
        self.on_shard = on_shard

    def add(self, row: Row) -> None:
        self.buffer.append(row)
        if len(self.buffer) >= ROW_GROUP_ROWS:
            self._flush()

    def _batch(self, rows: list[Row]) -> pa.Table:
        offsets = np.zeros(len(rows) + 1, dtype=np.int32)
        offsets[1:] = np.cumsum([len(r.codes) for r in rows])
        values = np.concatenate([r.codes for r in rows]).astype(np.int32) if offsets[-1] else np.zeros(0, np.int32)
        columns = {
            "audio": pa.StructArray.from_arrays(
                [pa.array([r.audio_flac for r in rows], pa.binary()), pa.array([f"{r.audio_id}.flac" for r in rows], pa.string())],
                names=["bytes", "path"],
            ),
            "codes": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.int32())),
            **{key: pa.array([r.strings[key] for r in rows], pa.string()) for key in STRING_KEYS},
            "duration_sec": pa.array(np.array([r.duration_sec for r in rows], dtype=np.float32)),
        }
        return pa.Table.from_arrays([columns[c] for c in COLUMNS], schema=self.schema)

    def _flush(self) -> None:
        if not self.buffer:
            return
        if self._writer is None:
            name = f"{self.build_id}-{len(self.shards):05d}.parquet"
            self._path = self.workdir / name
            self._sink = pa.OSFile(str(self._path), "wb")
            self._writer = pq.ParquetWriter(self._sink, self.schema, compression=COMPRESSION)
            self._rows_in_shard = 0
        self._writer.write_table(self._batch(self.buffer), row_group_size=len(self.buffer))
        self._rows_in_shard += len(self.buffer)
        self.buffer = []
        if self._sink.tell() >= self.shard_bytes:
            self._close_shard()

    def _close_shard(self) -> None:
        self._writer.close()
        self._sink.close()
        path_in_dataset = data_folder(self.channel) + self._path.name
        size = self.store.upload(self._path, DATASET_PREFIX + path_in_dataset)
        self.shards.append({"path": path_in_dataset, "rows": self._rows_in_shard, "bytes": size})
        if self.keep_local:
            self.local[path_in_dataset] = self._path
        else:
            self._path.unlink()
        self._writer = self._sink = self._path = None
        if self.on_shard:
            self.on_shard(path_in_dataset)

    def close(self) -> list[dict]:
        self._flush()
        if self._writer is not None:
            self._close_shard()
        return self.shards


def build_channel(
    store: ObjectStore,
    channel: str,
    objects: list[ObjectInfo],
    row_filter: RowFilter,
    workdir: Path,
    source: str,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    workers: int = 8,
    keep_local: bool = False,
    progress: Callable[[int, float], None] | None = None,
    guard: Callable[[], None] | None = None,
) -> ChannelBuild:
    """Writes the channel's shards (not yet published) and returns the build record to publish.

    `objects` are the segment files to read, from either stage; `source` says where they came from.
    `guard` is called before each progress record (one per shard; a later run resumes from it) and
    what it raises (the run's lease lost) propagates.
    """
    started = time.perf_counter()
    objects = sorted(objects, key=lambda o: o.key)  # row order is key order: stable across rebuilds
    fingerprint = source_fingerprint(objects, row_filter)
    build = ChannelBuild(record={})
    resume = _resumable(store, channel, fingerprint, shard_bytes)
    if resume:
        build_id, start, stats = resume["build_id"], resume["next"], ChannelStats.from_state(resume["stats"])
        build.skipped, build.failures = [tuple(x) for x in resume["skipped"]], [tuple(x) for x in resume["failures"]]
        build.resumed_shards = len(resume["shards"])
    else:
        build_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
        start, stats = 0, ChannelStats()
    writer = ShardWriter(store, channel, build_id, workdir, shard_bytes, keep_local)
    writer.shards = list(resume["shards"]) if resume else []
    for i, (key, data) in enumerate(_rows_in_order(store, [o.key for o in objects[start:]], workers), start):
        if isinstance(data, Exception):
            (build.store_failures if may_pass(data) else build.failures).append((key, f"cannot read: {data}"))
            continue
        build.bytes_read += len(data)
        try:
            row = read_row(data)
        except BadSegment as exc:
            build.failures.append((key, str(exc)))
            continue
        reason = row_filter.reason_to_skip(row)
        if reason:
            build.skipped.append((key, reason))
            continue
        stats.add(row)
        shards_before = len(writer.shards)
        writer.add(row)
        # A shard is uploaded: every row up to this one is in a shard, unless a read failed in a way
        # that may pass (then this build is discarded, and none may resume from it).
        if len(writer.shards) > shards_before and not build.store_failures:
            if guard:
                guard()
            store.write_bytes(progress_key(channel), json.dumps({
                "channel": channel, "build_id": build_id, "source_fingerprint": fingerprint, "shard_bytes": shard_bytes,
                "next": i + 1, "shards": writer.shards, "stats": stats.to_state(),
                "skipped": build.skipped, "failures": build.failures,
            }, ensure_ascii=False).encode())
        if progress:
            progress(1, row.duration_sec)
    shards = writer.close()
    build.local_shards = writer.local
    build.wall_seconds = time.perf_counter() - started
    build.record = {
        "channel": channel,
        "build_id": build_id,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "source_fingerprint": fingerprint,
        "filter": row_filter.fingerprint(),
        "segments_seen": len(objects),
        "segments_skipped": len(build.skipped),
        "segments_failed": len(build.failures),
        "shards": shards,
        "stats": stats.to_dict(),
    }
    return build


def _resumable(store: ObjectStore, channel: str, fingerprint: str, shard_bytes: int) -> dict | None:
    """The progress of a killed build that wrote the same segments the same way, if its shards are all there."""
    blob = store.read_bytes_or_none(progress_key(channel))
    if blob is None:
        return None
    progress = json.loads(blob)
    if progress["source_fingerprint"] != fingerprint or progress["shard_bytes"] != shard_bytes:
        return None
    published = read_record(store, channel)
    if published is not None and published.get("build_id") == progress.get("build_id"):
        # Left by a run killed between publishing this build and deleting its progress: that build
        # is the published one, and a (forced) rebuild must not adopt, and on failure discard, its shards.
        return None
    present = {o.key: o.size for o in store.list(shard_prefix(channel))}
    if any(present.get(DATASET_PREFIX + s["path"]) != s["bytes"] for s in progress["shards"]):
        return None
    return progress


def read_records(store: ObjectStore) -> dict[str, dict]:
    records = {}
    for o in store.list(BUILDS_PREFIX):
        if o.key.endswith(".json"):
            blob = store.read_bytes_or_none(o.key)
            if blob is not None:
                rec = json.loads(blob)
                records[rec["channel"]] = rec
    return records


def read_record(store: ObjectStore, channel: str) -> dict | None:
    blob = store.read_bytes_or_none(record_key(channel))
    return json.loads(blob) if blob is not None else None


def publish_card(store: ObjectStore, title: str, passes: int = 3, records: dict[str, dict] | None = None) -> dict[str, dict]:
    """Regenerates the card from every channel's record. Two channels published at once could each
    write a card missing the other's new build; re-reading the records after writing, and writing
    again until they are stable, closes that window."""
    from neutts_assets.core.dataset_card import render_card

    records = read_records(store) if records is None else records  # `records`: just read by the caller
    for _ in range(passes):
        store.write_bytes(CARD_KEY, render_card(list(records.values()), title).encode())
        again = read_records(store)
        if {c: r["build_id"] for c, r in again.items()} == {c: r["build_id"] for c, r in records.items()}:
            break
        records = again
    return records


def publish_channel(store: ObjectStore, record: dict, title: str, guard: Callable[[], None] | None = None) -> list[str]:
    """Makes a build the channel's published one, then removes the shards no card names any more
    (the previous build's, and any left by a build killed before it published). Returns those keys.
    `guard` is called before the record, the card and the deletes; what it raises propagates."""
    guard = guard or (lambda: None)
    guard()
    store.write_bytes(record_key(record["channel"]), json.dumps(record, ensure_ascii=False, sort_keys=True).encode())
    # The rest is what a run killed after the record leaves undone (the card cannot list this new build yet).
    return finish_publishing(store, record, title, guard)


def finish_publishing(store: ObjectStore, record: dict, title: str, guard: Callable[[], None] | None = None) -> list[str]:
    """For a channel whose published build is current: the steps of publish_channel after the
    record, done again where a run killed after the record left them undone (no card, or a card
    that does not list this build yet; the old shards still there). Returns the shards removed."""
    guard = guard or (lambda: None)
    guard()
    store.delete(progress_key(record["channel"]))  # a run killed just after the record left it
    card = store.read_bytes_or_none(CARD_KEY)
    records = read_records(store)
    # The card names every channel's build id; one missing means the card predates that build.
    if card is None or any(r["build_id"] not in card.decode() for r in records.values()):
        publish_card(store, title, records=records)
    guard()
    return remove_unlisted_shards(store, record)


def remove_unlisted_shards(store: ObjectStore, record: dict) -> list[str]:
    keep = {DATASET_PREFIX + s["path"] for s in record["shards"]}
    removed = []
    for o in store.list(shard_prefix(record["channel"])):
        if o.key not in keep:
            store.delete(o.key)
            removed.append(o.key)
    return removed


def discard_build(store: ObjectStore, record: dict) -> None:
    """Deletes the shards of a build that will not be published: no card lists them, and a folder read
    without the card must not find them either. Best effort: the next build removes what is left."""
    for shard in record["shards"]:
        try:
            store.delete(DATASET_PREFIX + shard["path"])
        except Exception:
            pass


def fetch_shards(store: ObjectStore, record: dict, workdir: Path, have: dict[str, Path] | None = None,
                 only: Iterable[str] | None = None) -> dict[str, Path]:
    """Local copies of the record's shards (those in `only`, or all), reusing the ones in `have`."""
    have = dict(have or {})
    wanted = set(only) if only is not None else {s["path"] for s in record["shards"]}
    out = {}
    for path in sorted(wanted):
        if path in have and have[path].exists():
            out[path] = have[path]
            continue
        local = Path(workdir) / os.path.basename(path)
        store.download(DATASET_PREFIX + path, local)
        out[path] = local
    return out
