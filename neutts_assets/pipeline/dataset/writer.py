"""Builds one channel of the Hugging Face dataset: segment files in, Parquet shards out, in
bounded memory whatever the number of segments, rewriting only the shards that changed.

The keys it writes are made in pipeline/dataset/store.py (the dataset folder is what
`datasets.load_dataset` opens).

Incremental builds. The record names, per shard, the segments it holds (`members`: [file name,
object version, size] in row order) and its figures (`stats_state`, ChannelStats.to_state), and
lists the segments that became no row (`excluded`: [file name, version, size, "skipped" or
"failed", reason]). `plan_build` (pure: no store) compares that with the segment files now:

  * a shard whose members are all there at the same version and size is kept, byte for byte,
    under its name, and not read;
  * a shard holding a changed (other version or size) or removed segment, or whose object is
    missing from the store, is rewritten: its surviving members are read again into new shards;
  * segments not in the record go into new shards; an excluded segment at the same version is
    not read again (its reason is carried over), at a new version it is read like a new one;
  * a change of the row filter or of the row format / writer version (the record's `basis`), a
    record without members (an older writer's), no record, or `force`: everything is rebuilt;
  * `compact` (off unless asked): kept shards under a quarter of the shard size are rewritten
    together into full-size shards (only when at least two would merge, counting the new rows).
    Without it small shards stay: an incremental build never merges them on its own.

Row order: the kept shards in their order, then the new shards; a new shard holds first the
surviving rows of the rewritten (and compacted) shards in their previous order, then the new
segments in file-name order. A full build is in file-name order. The channel's figures are the
merge of its shards' `stats_state`, so kept shards are never read for the card.

Segments are read a few at a time in parallel and written in row groups of ROW_GROUP_ROWS, so
memory holds a read-ahead window and one row group, never the channel. New shards get new
names ({build}-{i}); the card, which lists every shard by name, is the switch: write the new
shards, publish the record and the card, then delete the shards no record names. A reader sees
the old channel or the new one, never a mix. A build killed halfway leaves unlisted shards and
its progress record (written after each shard), keyed by the plan's fingerprint: the next build
with the same plan (same record, same segment files, same shard size) goes on from there,
keeping those shards; anything else unlisted is removed when a build is published.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from neutts_assets.pipeline.dataset.annotations import Annotations
from neutts_assets.pipeline.dataset.rows import (
    COLUMNS,
    BadSegment,
    ChannelStats,
    Row,
    RowFilter,
    dataset_features,
    read_row,
)
from neutts_assets.pipeline.dataset.splits import SPLITS, TRAIN
from neutts_assets.pipeline.dataset.store import (
    BUILDS_PREFIX,
    CARD_KEY,
    DATASET_PREFIX,
    progress_key,
    record_key,
    shard_key,
    shard_prefix,
    split_folder,
)
from neutts_assets.pipeline.quality.scores import ALL_SCORE_NAMES
from neutts_assets.pipeline.read_ahead import in_order
from neutts_assets.pipeline.segments.segment_file import FORMAT_VERSION, STRING_KEYS
from neutts_assets.pipeline.segments.store import segment_name
from neutts_assets.storage.store import ObjectInfo, ObjectStore, may_pass

ROW_GROUP_ROWS = 100  # what `datasets` uses for audio: a viewer or a streaming reader fetches little at a time
DEFAULT_SHARD_BYTES = 500 * 1000 * 1000
# FLAC is entropy-coded already: compressing it again costs CPU for ~1%. Everything else is zstd.
COMPRESSION = {
    "audio.bytes": "none",
    "audio.path": "zstd",
    "codes.list.element": "zstd",
    **{name: "zstd" for name in COLUMNS if name not in ("audio", "codes")},
}


def segment_objects(store: ObjectStore, prefix: str) -> dict[str, ObjectInfo]:
    """Segment files directly under a channel prefix (not its _index/ or other sub-folders)."""
    return {o.key: o for o in store.list(prefix) if o.key.endswith(".npz") and "/" not in o.key[len(prefix) :]}


# 2: per-shard members and stats_state, excluded segments; 3: splits, quality scores, lineage (each
# member and excluded entry carries its annotations' digest). A change rebuilds every channel.
WRITER_VERSION = 3


def build_basis(row_filter: RowFilter) -> dict:
    """What every row depends on besides its segment file: a change rebuilds the channel."""
    return {"filter": row_filter.fingerprint(), "format": FORMAT_VERSION, "writer": WRITER_VERSION}


def source_fingerprint(
    objects: Iterable[ObjectInfo], row_filter: RowFilter, annotations: Annotations | None = None
) -> str:
    """Changes when any segment object, its annotations or a filter changes: an unchanged channel is not rebuilt."""
    h = hashlib.sha256(json.dumps(build_basis(row_filter)).encode())
    for o in sorted(objects, key=lambda o: o.key):
        h.update(f"\n{o.key}\t{o.version}\t{o.size}\t{_digest(annotations, o.key)}".encode())
    return h.hexdigest()


def _member(member: list) -> tuple[str, str, int, str]:
    """A shard member's name, version, size and annotations digest ("" in a record made without one)."""
    name, version, size, *rest = member
    return name, version, size, rest[0] if rest else ""


def _digest(annotations: Annotations | None, key: str) -> str:
    return annotations.digest(segment_name(key)) if annotations is not None else ""


def _split(annotations: Annotations | None, key: str) -> str:
    return annotations.of(segment_name(key)).split if annotations is not None else TRAIN


@dataclass
class BuildPlan:
    """What a build of a channel does, worked out from the published record and a listing alone.

    `keep`: the record's shard entries kept as they are, in order; `read`: the segment objects to
    read, in row order, into new shards (which follow the kept ones). The other fields say why.
    """

    full: bool
    reasons: list[str]
    keep: list[dict] = field(default_factory=list)
    read: list[ObjectInfo] = field(default_factory=list)
    rewritten: list[dict] = field(default_factory=list)  # shards holding a changed or removed segment (or missing)
    compacted: list[dict] = field(default_factory=list)  # small shards merged because `compact` was asked
    carried: list[tuple[str, list]] = field(default_factory=list)  # (key, excluded entry) not read again
    new: list[str] = field(default_factory=list)  # segment names the record does not know
    changed: list[str] = field(default_factory=list)  # in a shard, at another version or size now
    removed: list[str] = field(default_factory=list)  # in a shard, gone now
    retried: list[str] = field(default_factory=list)  # excluded before, at another version now
    basis: dict = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)  # segment key -> its annotations' digest
    fingerprint: str = ""  # of the plan: a killed build resumes only into the same plan
    unchanged: bool = False  # nothing to write: the published build is current

    def summary(self) -> str:
        if self.full:
            return "full rebuild: " + "; ".join(self.reasons)
        return (
            f"incremental: {len(self.keep)} shard(s) kept, {len(self.rewritten)} rewritten, {len(self.compacted)} "
            f"compacted; {len(self.read)} segment(s) to read ({len(self.new)} new, {len(self.changed)} changed, "
            f"{len(self.removed)} removed, {len(self.retried)} excluded before and changed since)"
        )


def _plan_fingerprint(plan: BuildPlan, previous: dict | None, shard_bytes: int) -> str:
    h = hashlib.sha256(
        json.dumps(
            {
                "basis": plan.basis,
                "previous": (previous or {}).get("build_id"),
                "keep": [s["path"] for s in plan.keep],
                "shard_bytes": shard_bytes,
            }
        ).encode()
    )
    for o in plan.read:
        h.update(f"\n{o.key}\t{o.version}\t{o.size}\t{plan.digests.get(o.key, '')}".encode())
    return h.hexdigest()


def plan_build(
    previous: dict | None,
    objects: Iterable[ObjectInfo],
    row_filter: RowFilter,
    shard_bytes: int,
    compact: bool = False,
    force: bool = False,
    present: dict[str, int] | None = None,
    annotations: Annotations | None = None,
) -> BuildPlan:
    """The build plan (see the module docstring for the rules). `present`: the sizes of the shard
    objects in the store by path in the dataset folder (a kept shard must be there, whole); None
    trusts the record. `annotations`: the rows' splits, scores and lineage (none: every row in
    train, unscored, without lineage); a row whose annotations changed is read again."""
    current = _current_segments(objects)
    digests = {o.key: _digest(annotations, o.key) for o in current.values()}
    basis = build_basis(row_filter)
    why = _full_rebuild_reasons(previous, basis, force)
    if why:
        plan = BuildPlan(True, why, read=[current[n] for n in sorted(current)], new=sorted(current), basis=basis)
    else:
        plan = _incremental_plan(
            previous, current, digests, row_filter, shard_bytes, compact, present, basis, annotations
        )
    # New shards are written split by split (a shard holds one split's rows), each in plan order.
    order = {s: i for i, s in enumerate(SPLITS)}
    plan.read.sort(key=lambda o: order.get(_split(annotations, o.key), len(order)))
    plan.digests = {o.key: digests[o.key] for o in plan.read}
    plan.fingerprint = _plan_fingerprint(plan, previous, shard_bytes)
    return plan


def _current_segments(objects: Iterable[ObjectInfo]) -> dict[str, ObjectInfo]:
    """The segment objects by name: one row per segment name, the first of its keys in key order."""
    current: dict[str, ObjectInfo] = {}
    for o in sorted(objects, key=lambda o: o.key):
        current.setdefault(segment_name(o.key), o)
    return current


def _full_rebuild_reasons(previous: dict | None, basis: dict, force: bool) -> list[str]:
    """Why none of the published build's shards can be kept; empty when they may be."""
    if previous is None:
        return ["no published build"]
    if force:
        return ["force"]
    if not previous.get("basis"):
        return ["the published build predates per-shard members (writer 1)"]
    return [f"{k} changed" for k in ("filter", "format", "writer") if previous["basis"].get(k) != basis[k]]


def _incremental_plan(
    previous: dict,
    current: dict[str, ObjectInfo],
    digests: dict[str, str],
    row_filter: RowFilter,
    shard_bytes: int,
    compact: bool,
    present: dict[str, int] | None,
    basis: dict,
    annotations: Annotations | None,
) -> BuildPlan:
    plan = BuildPlan(False, [], basis=basis)
    shards = previous["shards"]
    seen, touched = _compare_shards(plan, shards, current, digests, present)
    seen |= _compare_excluded(plan, previous.get("excluded", []), current, digests)
    plan.new = sorted(n for n in current if n not in seen)
    tail = sorted(plan.retried + plan.new)
    kept = [i for i in range(len(shards)) if i not in touched]
    if compact:
        split_of = lambda name: _split(annotations, current[name].key)  # noqa: E731
        kept, touched = _compact_small_shards(plan, shards, current, kept, touched, tail, shard_bytes, split_of)
    plan.keep = [shards[i] for i in kept]
    plan.rewritten = [shards[i] for i in sorted(touched) if shards[i] not in plan.compacted]
    for i in sorted(touched):  # their surviving rows, in their previous order
        plan.read += [current[m[0]] for m in shards[i]["members"] if m[0] in current]
    plan.read += [current[n] for n in tail]
    plan.unchanged = (
        not plan.read
        and not touched
        and len(plan.carried) == len(previous.get("excluded", []))
        and previous.get("source_fingerprint") == source_fingerprint(current.values(), row_filter, annotations)
    )
    _add_reasons(plan)
    return plan


def _compare_shards(
    plan: BuildPlan,
    shards: list[dict],
    current: dict[str, ObjectInfo],
    digests: dict[str, str],
    present: dict[str, int] | None,
) -> tuple[set[str], set[int]]:
    """Notes the published shards' changed (segment file or annotations) and removed members, and
    the shards missing from the store. Returns the members' names and the indexes of the shards to rewrite."""
    seen: set[str] = set()
    touched: set[int] = set()
    for i, shard in enumerate(shards):
        for member in shard["members"]:
            name, version, size, digest = _member(member)
            seen.add(name)
            o = current.get(name)
            if o is None:
                plan.removed.append(name)
                touched.add(i)
            elif (o.version, o.size, digests[o.key]) != (version, size, digest):
                plan.changed.append(name)
                touched.add(i)
        if present is not None and present.get(shard["path"]) != shard["bytes"]:
            touched.add(i)
            plan.reasons.append(f"shard {shard['path']} is missing or not whole in the store")
    return seen, touched


def _compare_excluded(
    plan: BuildPlan, excluded: list[list], current: dict[str, ObjectInfo], digests: dict[str, str]
) -> set[str]:
    """Notes which of the published build's excluded segments carry over (same version and
    annotations) and which are read again. Returns their names."""
    seen: set[str] = set()
    for entry in excluded:
        name, version, size = entry[:3]
        digest = entry[5] if len(entry) > 5 else ""
        seen.add(name)
        o = current.get(name)
        if o is None:
            continue
        if (o.version, o.size, digests[o.key]) == (version, size, digest):
            plan.carried.append((o.key, list(entry)))
        else:
            plan.retried.append(name)
    return seen


def _compact_small_shards(
    plan: BuildPlan,
    shards: list[dict],
    current: dict[str, ObjectInfo],
    kept: list[int],
    touched: set[int],
    tail: list[str],
    shard_bytes: int,
    split_of: Callable[[str], str],
) -> tuple[list[int], set[int]]:
    """The kept and rewritten shards once the small kept ones are moved to the rewritten, split by
    split (rows of two splits never share a shard): a split's small shards only when at least two
    would merge, its new rows and its rewritten shards' surviving rows counting as one."""
    incoming = {split_of(n) for n in tail}
    incoming |= {split_of(m[0]) for i in touched for m in shards[i]["members"] if m[0] in current}
    small_by_split: dict[str, list[int]] = {}
    for i in kept:
        if shards[i]["bytes"] < shard_bytes / 4:
            small_by_split.setdefault(shards[i].get("split", TRAIN), []).append(i)
    small = sorted(
        i for split, ids in small_by_split.items() if len(ids) + (1 if split in incoming else 0) >= 2 for i in ids
    )
    if not small:
        return kept, touched
    plan.compacted = [shards[i] for i in small]
    return [i for i in kept if i not in small], touched | set(small)


def _add_reasons(plan: BuildPlan) -> None:
    if plan.changed or plan.removed:
        plan.reasons.append(f"{len(plan.changed)} segment(s) changed, {len(plan.removed)} removed")
    if plan.new:
        plan.reasons.append(f"{len(plan.new)} new segment(s)")
    if plan.compacted:
        plan.reasons.append(f"compaction of {len(plan.compacted)} small shard(s)")


@dataclass
class ChannelBuild:
    record: dict
    plan: BuildPlan | None = None
    local_shards: dict[str, Path] = field(default_factory=dict)  # path in the dataset folder -> local copy (new shards)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (segment key, reason), carried ones included
    failures: list[tuple[str, str]] = field(default_factory=list)  # (object, reason), carried ones included
    store_failures: list[tuple[str, str]] = field(default_factory=list)  # (object, reason): not to be published
    bytes_read: int = 0
    segments_read: int = 0  # segment files this run read (a resumed build's earlier reads not counted)
    bytes_written: int = 0  # shard bytes this run uploaded
    shards_written: int = 0  # new shards of this build (a resumed build's earlier ones included)
    wall_seconds: float = 0.0
    resumed_shards: int = 0  # shards a killed build of the same plan had finished, kept


def _rows_in_order(
    store: ObjectStore, keys: list[str], workers: int
) -> Iterator[tuple[str, tuple[int, Row | BadSegment] | Exception]]:
    """Each key's (bytes read, row or why it is no row), or the error reading it, in key order, with
    a bounded read-ahead window. The rows are made in the reading threads: inflating the float32
    waveform (ISA-L) and encoding its FLAC (libsndfile) release the GIL, so they use every core."""

    def read(key: str):
        try:
            data = store.read_bytes(key)
        except Exception as exc:  # reported per object; the channel goes on
            return exc
        try:
            return len(data), read_row(data)
        except BadSegment as exc:
            return len(data), exc

    return in_order(read, keys, workers, window=max(1, workers) * 4)


def _lineage_columns(rows: list[Row], build_id: str) -> dict[str, pa.Array]:
    """The lineage columns of a row group (pipeline/dataset/annotations.py): where each row's audio
    and text came from, and the build that wrote it."""
    return {
        "source_audio": pa.array([r.lineage.audio_key or r.source_key for r in rows], pa.string()),
        "source_audio_version": pa.array([r.lineage.audio_version for r in rows], pa.string()),
        "transcript": pa.array([r.lineage.transcript_key for r in rows], pa.string()),
        "transcript_sha256": pa.array([r.lineage.transcript_sha256 for r in rows], pa.string()),
        "start_ms": pa.array([r.start_ms for r in rows], pa.float64()),
        "end_ms": pa.array([r.end_ms for r in rows], pa.float64()),
        "cut_rules": pa.array([r.lineage.cut_rules for r in rows], pa.string()),
        "codec": pa.array([r.codec for r in rows], pa.string()),
        "build_id": pa.array([build_id] * len(rows), pa.string()),
    }


class ShardWriter:
    """Rows into Parquet files of about `shard_bytes`, each uploaded to the store once closed. Each
    shard's entry names its members (as given by `note_member` before each `add`) and its figures."""

    def __init__(
        self,
        store: ObjectStore,
        channel: str,
        build_id: str,
        workdir: Path,
        shard_bytes: int,
        keep_local: bool,
        on_shard: Callable[[str], None] | None = None,
    ):
        self.store, self.channel, self.build_id = store, channel, build_id
        self.workdir, self.shard_bytes, self.keep_local = Path(workdir), shard_bytes, keep_local
        self.features = dataset_features()
        self.schema = self.features.arrow_schema  # carries the features, so Audio survives a bare Parquet read
        self.shards: list[dict] = []
        self.local: dict[str, Path] = {}
        self.buffer: list[Row] = []
        self._writer = self._sink = self._path = None
        self._rows_in_shard = 0
        self._members: list[list] = []
        self._member: list | None = None
        self._stats = ChannelStats()
        self._split = TRAIN
        self.bytes_uploaded = 0
        self.on_shard = on_shard

    def note_member(self, member: list) -> None:
        """The segment ([name, version, size, annotations digest]) the next `add` comes from."""
        self._member = member

    def begin_split(self, split: str) -> bool:
        """Makes `split` the split of the next rows: a shard holds one split's rows, so the open
        shard is closed first when it holds another's. Returns whether a shard was closed."""
        closed = False
        if split != self._split and (self.buffer or self._writer is not None):
            self._flush()
            if self._writer is not None:
                self._close_shard()
            closed = True
        self._split = split
        return closed

    def add(self, row: Row) -> None:
        self.begin_split(row.split)
        self._members.append(self._member or [row.audio_id + ".npz", "", 0, ""])
        self._member = None
        self._stats.add(row)
        self.buffer.append(row)
        if len(self.buffer) >= ROW_GROUP_ROWS:
            self._flush()

    def _batch(self, rows: list[Row]) -> pa.Table:
        offsets = np.zeros(len(rows) + 1, dtype=np.int32)
        offsets[1:] = np.cumsum([len(r.codes) for r in rows])
        values = np.concatenate([r.codes for r in rows]).astype(np.int32) if offsets[-1] else np.zeros(0, np.int32)
        columns = {
            "audio": pa.StructArray.from_arrays(
                [
                    pa.array([r.audio_flac for r in rows], pa.binary()),
                    pa.array([f"{r.audio_id}.flac" for r in rows], pa.string()),
                ],
                names=["bytes", "path"],
            ),
            "codes": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.int32())),
            **{key: pa.array([r.strings[key] for r in rows], pa.string()) for key in STRING_KEYS},
            "duration_sec": pa.array(np.array([r.duration_sec for r in rows], dtype=np.float32)),
            "split": pa.array([r.split for r in rows], pa.string()),
            **{name: pa.array([r.score(name) for r in rows], pa.float32()) for name in ALL_SCORE_NAMES},
            **_lineage_columns(rows, self.build_id),
        }
        return pa.Table.from_arrays([columns[c] for c in COLUMNS], schema=self.schema)

    def _flush(self) -> None:
        if not self.buffer:
            return
        if self._writer is None:
            name = f"{self.build_id}-{len(self.shards):05d}.parquet"
            self._path = self.workdir / name
            self._path_in_dataset = split_folder(self.channel, self._split) + name
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
        path_in_dataset = self._path_in_dataset
        size = self.store.upload(self._path, shard_key(path_in_dataset))
        self.bytes_uploaded += size
        self.shards.append(
            {
                "path": path_in_dataset,
                "split": self._split,
                "rows": self._rows_in_shard,
                "bytes": size,
                "members": self._members,
                "stats_state": self._stats.to_state(),
            }
        )
        self._members, self._stats = [], ChannelStats()
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
    previous: dict | None = None,
    compact: bool = False,
    force: bool = False,
    plan: BuildPlan | None = None,
    annotations: Annotations | None = None,
) -> ChannelBuild:
    """Writes the channel's new shards (not yet published) and returns the build record to publish.

    `objects` are the segment files, from either stage; `source` says where they came from.
    `previous`: the published record, whose unchanged shards are kept (none: a full build);
    `plan`: plan_build's answer, when the caller has it already. `guard` is called before each
    progress record (one per shard; a later run resumes from it) and what it raises (the run's
    lease lost) propagates. `annotations`: each row's split, scores and lineage (the plan's).
    """
    started = time.perf_counter()
    if plan is None:
        plan = _plan_with_store(store, channel, previous, objects, row_filter, shard_bytes, compact, force, annotations)
    builder = _ChannelBuilder(store, channel, objects, row_filter, plan, shard_bytes, guard, progress, annotations)
    return builder.run(workdir, keep_local, workers, source, started)


def _plan_with_store(
    store: ObjectStore,
    channel: str,
    previous: dict | None,
    objects: list[ObjectInfo],
    row_filter: RowFilter,
    shard_bytes: int,
    compact: bool,
    force: bool,
    annotations: Annotations | None,
) -> BuildPlan:
    """plan_build, told which shard objects are in the store when there is a published build to keep
    shards of."""
    present = (
        {o.key[len(DATASET_PREFIX) :]: o.size for o in store.list(shard_prefix(channel))}
        if previous is not None
        else None
    )
    return plan_build(previous, objects, row_filter, shard_bytes, compact, force, present, annotations)


class _ChannelBuilder:
    """build_channel once its plan is made, in steps: resume a killed build of the same plan or
    start a new one, write the planned rows into new shards (saving the progress after each), then
    make the record."""

    def __init__(
        self,
        store: ObjectStore,
        channel: str,
        objects: list[ObjectInfo],
        row_filter: RowFilter,
        plan: BuildPlan,
        shard_bytes: int,
        guard: Callable[[], None] | None,
        progress: Callable[[int, float], None] | None,
        annotations: Annotations | None = None,
    ):
        self.store, self.channel, self.objects, self.row_filter = store, channel, objects, row_filter
        self.plan, self.shard_bytes, self.guard, self.progress = plan, shard_bytes, guard, progress
        self.annotations = annotations
        self.build = ChannelBuild(record={}, plan=plan)
        self.build_id = ""
        self.excluded: list[list] = []  # this build's segments that became no row: [name, version, size, kind, reason]

    def run(self, workdir: Path, keep_local: bool, workers: int, source: str, started: float) -> ChannelBuild:
        start, shards_done = self._resume_or_start()
        writer = ShardWriter(self.store, self.channel, self.build_id, workdir, self.shard_bytes, keep_local)
        writer.shards = shards_done
        self._write_rows(writer, start, workers)
        new_shards = writer.close()
        build = self.build
        build.local_shards, build.bytes_written = writer.local, writer.bytes_uploaded
        build.shards_written = len(new_shards)
        build.wall_seconds = time.perf_counter() - started
        all_excluded = [entry for _, entry in self.plan.carried] + self.excluded
        self._tally_excluded(all_excluded)
        build.record = self._record(self.plan.keep + new_shards, all_excluded, source)
        return build

    def _resume_or_start(self) -> tuple[int, list[dict]]:
        """The build id, and where in the plan's reads to start with which shards already written:
        those of a killed build of the same plan, or none under a new id."""
        resume = _resumable(self.store, self.channel, self.plan.fingerprint, self.shard_bytes)
        if not resume:
            self.build_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
            return 0, []
        self.build_id = resume["build_id"]
        self.excluded = [list(x) for x in resume["excluded"]]
        self.build.resumed_shards = len(resume["shards"])
        return resume["next"], list(resume["shards"])

    def _write_rows(self, writer: ShardWriter, start: int, workers: int) -> None:
        todo = self.plan.read[start:]
        rows = _rows_in_order(self.store, [o.key for o in todo], workers)
        for i, (o, (key, data)) in enumerate(zip(todo, rows), start):
            row = self._row_or_none(o, key, data)
            if row is None:
                continue
            # A shard closed by a change of split holds every row before this one: progress up to here
            # (not past this row, which is not in a shard yet).
            if writer.begin_split(row.split) and not self.build.store_failures:
                self._save_progress(i, writer.shards)
            shards_before = len(writer.shards)
            writer.note_member([segment_name(key), o.version, o.size, self.plan.digests.get(o.key, "")])
            writer.add(row)
            # A shard is uploaded: every row up to this one is in a shard, unless a read failed in a way
            # that may pass (then this build is discarded, and none may resume from it).
            if len(writer.shards) > shards_before and not self.build.store_failures:
                self._save_progress(i + 1, writer.shards)
            if self.progress:
                self.progress(1, row.duration_sec)

    def _row_or_none(self, o: ObjectInfo, key: str, data: tuple[int, Row | BadSegment] | Exception) -> Row | None:
        """The segment's row; or None, with the reason it is none noted: excluded (unreadable, bad,
        or skipped by the filter), or a store failure (a read error that may pass)."""
        digest = self.plan.digests.get(o.key, "")
        if isinstance(data, Exception):
            if may_pass(data):
                self.build.store_failures.append((key, f"cannot read: {data}"))
            else:
                self.excluded.append([segment_name(key), o.version, o.size, "failed", f"cannot read: {data}", digest])
            return None
        nbytes, row = data
        self.build.bytes_read += nbytes
        self.build.segments_read += 1
        if isinstance(row, BadSegment):
            self.excluded.append([segment_name(key), o.version, o.size, "failed", str(row), digest])
            return None
        self._annotate(row, segment_name(key))
        reason = self.row_filter.reason_to_skip(row)
        if reason:
            self.excluded.append([segment_name(key), o.version, o.size, "skipped", reason, digest])
            return None
        return row

    def _annotate(self, row: Row, name: str) -> None:
        """The row's split, its scores when they are of its audio, its lineage."""
        if self.annotations is None:
            return
        extras = self.annotations.of(name)
        # The planned split (by the speaker stage 1's index lists): the one the member's digest and the
        # plan's shard order say, so a rule change is always seen as a change of this row.
        row.split = extras.split
        row.scores = extras.scores_for(row.audio_digest)
        row.lineage = extras.lineage

    def _save_progress(self, next_read: int, shards: list[dict]) -> None:
        if self.guard:
            self.guard()
        self.store.write_bytes(
            progress_key(self.channel),
            json.dumps(
                {
                    "channel": self.channel,
                    "build_id": self.build_id,
                    "plan_fingerprint": self.plan.fingerprint,
                    "shard_bytes": self.shard_bytes,
                    "next": next_read,
                    "shards": shards,
                    "excluded": self.excluded,
                },
                ensure_ascii=False,
            ).encode(),
        )

    def _tally_excluded(self, all_excluded: list[list]) -> None:
        keys = {segment_name(o.key): o.key for o in self.objects}
        for name, _, _, kind, reason, *_ in all_excluded:
            (self.build.skipped if kind == "skipped" else self.build.failures).append((keys.get(name, name), reason))

    def _record(self, shards: list[dict], all_excluded: list[list], source: str) -> dict:
        stats = ChannelStats.merged(s["stats_state"] for s in shards)
        splits = sorted({s.get("split", TRAIN) for s in shards}, key=SPLITS.index)
        return {
            "channel": self.channel,
            "build_id": self.build_id,
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": source,
            "source_fingerprint": source_fingerprint(self.objects, self.row_filter, self.annotations),
            "filter": self.row_filter.fingerprint(),
            "basis": self.plan.basis,
            "segments_seen": len({segment_name(o.key) for o in self.objects}),
            "segments_skipped": len(self.build.skipped),
            "segments_failed": len(self.build.failures),
            "shards": shards,  # kept shards in their order, then this build's
            "excluded": all_excluded,
            "stats": stats.to_dict(),
            "split_rule": self.annotations.rule.fingerprint() if self.annotations else None,
            "split_stats": {
                split: ChannelStats.merged(s["stats_state"] for s in shards if s.get("split", TRAIN) == split).to_dict()
                for split in splits
            },
        }


def _resumable(store: ObjectStore, channel: str, fingerprint: str, shard_bytes: int) -> dict | None:
    """The progress of a killed build of the same plan (BuildPlan.fingerprint), if its shards are all there."""
    blob = store.read_bytes_or_none(progress_key(channel))
    if blob is None:
        return None
    progress = json.loads(blob)
    if progress.get("plan_fingerprint") != fingerprint or progress.get("shard_bytes") != shard_bytes:
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


def read_records(store: ObjectStore, prefix: str = BUILDS_PREFIX) -> dict[str, dict]:
    """Every channel's published record under `prefix` (the dataset's; training_pairs' has its own)."""
    records = {}
    for o in store.list(prefix):
        if o.key.endswith(".json"):
            blob = store.read_bytes_or_none(o.key)
            if blob is not None:
                rec = json.loads(blob)
                records[rec["channel"]] = rec
    return records


def read_record(store: ObjectStore, channel: str) -> dict | None:
    blob = store.read_bytes_or_none(record_key(channel))
    return json.loads(blob) if blob is not None else None


def publish_card(
    store: ObjectStore, title: str, passes: int = 3, records: dict[str, dict] | None = None
) -> dict[str, dict]:
    """Regenerates the card from every channel's record and every channel's training-pairs record.
    Two channels published at once could each write a card missing the other's new build;
    re-reading the records after writing, and writing again until they are stable, closes that window."""
    from neutts_assets.pipeline.dataset.card import render_card
    from neutts_assets.pipeline.pairs.training_pairs import read_pair_records  # here: training_pairs reads this module

    def ids(records: dict, pairs: dict) -> tuple:
        return {c: r["build_id"] for c, r in records.items()}, {c: r["build_id"] for c, r in pairs.items()}

    records = read_records(store) if records is None else records  # `records`: just read by the caller
    pairs = read_pair_records(store)
    for _ in range(passes):
        store.write_bytes(CARD_KEY, render_card(list(records.values()), title, pairs=list(pairs.values())).encode())
        again, again_pairs = read_records(store), read_pair_records(store)
        if ids(again, again_pairs) == ids(records, pairs):
            break
        records, pairs = again, again_pairs
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


def finish_publishing(
    store: ObjectStore, record: dict, title: str, guard: Callable[[], None] | None = None
) -> list[str]:
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


def written_by(record: dict) -> list[dict]:
    """The record's shards that its own build wrote (named {build}-{i}); the others were kept."""
    return [s for s in record["shards"] if os.path.basename(s["path"]).startswith(record["build_id"] + "-")]


def discard_build(store: ObjectStore, record: dict) -> None:
    """Deletes the shards a build that will not be published wrote (never those it kept from the
    published build): no card lists them, and a folder read without the card must not find them
    either. Best effort: the next build removes what is left."""
    for shard in written_by(record):
        try:
            store.delete(DATASET_PREFIX + shard["path"])
        except Exception:
            pass


def fetch_shards(
    store: ObjectStore,
    record: dict,
    workdir: Path,
    have: dict[str, Path] | None = None,
    only: Iterable[str] | None = None,
) -> dict[str, Path]:
    """Local copies of the record's shards (those in `only`, or all), reusing the ones in `have`."""
    have = dict(have or {})
    wanted = set(only) if only is not None else {s["path"] for s in record["shards"]}
    out = {}
    for path in sorted(wanted):
        if path in have and have[path].exists():
            out[path] = have[path]
            continue
        local = Path(workdir) / os.path.basename(path)
        store.download(shard_key(path), local)
        out[path] = local
    return out
