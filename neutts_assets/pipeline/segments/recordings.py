"""Stage 1 for one recording: download once, decode once to 16 kHz mono as a stream, cut every
transcript segment as the stream passes it and write one segment file each, drop the segments a
new transcript no longer has, and publish the recording's index last.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from neutts_assets.pipeline.inventory.manifest import InventoryEntry
from neutts_assets.pipeline.inventory.source_layout import segment_id
from neutts_assets.pipeline.inventory.transcripts import (
    MAX_TRANSCRIPT_BYTES,
    TranscriptError,
    parse_transcript,
    too_large,
)
from neutts_assets.pipeline.segments.audio import SAMPLE_RATE, AudioDecodeError, PcmStream
from neutts_assets.pipeline.segments.cutting import Cut, CutRules, StreamCutter
from neutts_assets.pipeline.segments.segment_file import FORMAT_VERSION, Segment, encode_segment
from neutts_assets.pipeline.segments.store import (
    NoteEntry,
    RecordingIndex,
    SegmentEntry,
    SkipEntry,
    index_key,
    segment_key,
)
from neutts_assets.storage.store import ObjectStore


def fingerprint(entry: InventoryEntry, rules: CutRules) -> dict:
    """Everything whose change means the recording must be cut again."""
    return {
        "audio_key": entry.audio_key,
        "audio_version": entry.audio_version,
        "audio_size": entry.audio_size,
        "transcript_sha256": entry.transcript_sha256,
        "cut_rules": rules.fingerprint(),
        "format_version": FORMAT_VERSION,
    }


@dataclass
class RecordingResult:
    recording_id: str
    index: RecordingIndex | None  # None when a transient failure left nothing to publish
    error: str = ""
    error_object: str = ""
    downloaded_bytes: int = 0
    written_bytes: int = 0
    removed_keys: list[str] = field(default_factory=list)
    kept_keys: list[str] = field(default_factory=list)  # cut again, found already in the store as they are
    decode_seconds: float = 0.0
    write_seconds: float = 0.0


def cut_recording(
    entry: InventoryEntry,
    channel: str,
    source: ObjectStore,
    store: ObjectStore,
    rules: CutRules,
    previous: RecordingIndex | None,
    workdir: str | None = None,
    stored_keys: set[str] | frozenset[str] = frozenset(),
    guard: Callable[[], None] | None = None,
) -> RecordingResult:
    """`stored_keys` are this recording's segment objects found in the store: with the previous
    index's, any the new cut does not write are removed (a killed cut of another transcript
    version can have left some that no index lists). `guard` is called right before the deletes
    and the index write, which publish the cut; what it raises (the run's lease lost) propagates.

    Errors that may pass (the store, a killed decoder) propagate and publish nothing; the next run
    tries again. Errors of the input itself are recorded as the recording's failure."""
    fp = fingerprint(entry, rules)
    result = RecordingResult(entry.recording_id, None)

    def failed(obj: str, reason: str, written: set[str] = frozenset()) -> RecordingResult:
        """A deterministic failure (bad transcript, undecodable audio). A bad new upload never hides
        the segments already made: the good index stays, and only notes the bad version, so that an
        unchanged bad file is not downloaded again on every run. `written`: segment objects this
        attempt wrote before the audio failed; those no good index lists are removed."""
        result.error, result.error_object = reason, obj
        if guard:
            guard()
        if previous is not None and previous.status == "ok":
            for key in sorted(written - {s.key for s in previous.segments}):
                store.delete(key)
                result.removed_keys.append(key)
            previous.failed_fingerprint, previous.error = fp, reason
            store.write_bytes(index_key(channel, entry.recording_id), previous.to_json())
        else:
            for key in sorted(set(stored_keys) | written):
                store.delete(key)
                result.removed_keys.append(key)
            result.index = RecordingIndex(entry.recording_id, "failed", fp, error=reason)
            store.write_bytes(index_key(channel, entry.recording_id), result.index.to_json())
        return result

    if entry.transcript_size > MAX_TRANSCRIPT_BYTES:
        return failed(entry.transcript_key, too_large(entry.transcript_size))
    try:
        transcript = source.read_bytes(entry.transcript_key)
    except FileNotFoundError:
        result.error, result.error_object = "transcript disappeared from the source", entry.transcript_key
        return result
    try:
        segments, problems = parse_transcript(transcript, entry.transcript_key)
    except TranscriptError as exc:
        return failed(entry.transcript_key, str(exc))
    except Exception as exc:  # parsing is pure: whatever it raises, the transcript will raise again
        return failed(entry.transcript_key, f"unreadable transcript ({type(exc).__name__}: {str(exc)[:200]})")
    del transcript
    try:
        cutter = StreamCutter(segments, SAMPLE_RATE, rules)
    except Exception as exc:  # pure as well: a deterministic property of this transcript
        return failed(entry.transcript_key, f"cannot cut ({type(exc).__name__}: {str(exc)[:200]})")

    index = RecordingIndex(entry.recording_id, "ok", fp)
    with tempfile.TemporaryDirectory(dir=workdir, prefix="neutts-") as tmp:
        local = Path(tmp) / f"audio{entry.audio_ext or '.bin'}"
        try:
            # Pinned to the version the inventory listed, so the segments never carry a fingerprint
            # of other bytes; a replaced object fails this attempt (ObjectChanged, a StoreError: it
            # may pass), and the next inventory sees the new version.
            result.downloaded_bytes = source.download(entry.audio_key, local, version=entry.audio_version)
        except FileNotFoundError:
            result.error, result.error_object = "audio disappeared from the source", entry.audio_key
            return result
        # A good cut must survive its recut failing halfway (undecodable new audio, a decoder
        # killed for want of disk or memory, a store error): the segments its index lists are not
        # touched until the decode has succeeded, so the recut is held on local disk until then.
        # New recordings are written to the store as they are cut.
        replacing = previous is not None and previous.status == "ok"
        sink = _SegmentSink(store, Path(tmp) / "held" if replacing else None, stored_keys)
        notes: list[tuple[int, NoteEntry]] = []
        t0 = time.perf_counter()
        # Any other error (the store, a killed decoder) propagates: what this attempt wrote is in
        # no index, and the next run's `stored_keys` has it cleaned up or overwritten.
        try:
            with PcmStream(local, name=entry.audio_key) as stream:
                for block in stream.blocks():
                    for cut, pcm in cutter.feed(block):
                        _write_cut(cut, pcm, entry, channel, sink, index, notes, rules.audio_format)
                for cut, pcm in cutter.finish():
                    _write_cut(cut, pcm, entry, channel, sink, index, notes, rules.audio_format)
        except AudioDecodeError as exc:
            return failed(entry.audio_key, str(exc), sink.in_store())
        sink.commit()
        result.written_bytes, result.write_seconds, result.kept_keys = sink.bytes, sink.seconds, sink.kept
        result.decode_seconds = time.perf_counter() - t0 - sink.seconds

    index.segments.sort(key=lambda s: s.index)
    index.skipped = [SkipEntry(p.index, p.kind, p.reason) for p in problems] + [
        SkipEntry(s.index, s.reason, s.detail) for s in cutter.skips
    ]
    index.audio_seconds = cutter.pos / SAMPLE_RATE
    mismatch = stream.container_mismatch(entry.audio_ext)
    index.notes = ([NoteEntry(entry.audio_key, mismatch)] if mismatch else []) + [
        n for _, n in sorted(notes, key=lambda n: n[0])
    ]

    # Segments of the previous cut that the new transcript no longer yields (the old tool needed `rm`).
    keep = {s.key for s in index.segments}
    if guard:
        guard()
    stale = set(stored_keys)
    if previous is not None:
        stale |= {old.key for old in previous.segments}
    for key in sorted(stale - keep):
        store.delete(key)
        result.removed_keys.append(key)

    if guard:
        guard()
    store.write_bytes(index_key(channel, entry.recording_id), index.to_json())
    result.index = index
    return result


def _write_cut(
    cut: Cut,
    pcm,
    entry: InventoryEntry,
    channel: str,
    sink: _SegmentSink,
    index: RecordingIndex,
    notes: list[tuple[int, NoteEntry]],
    audio_format: str,
) -> None:
    seg = cut.segment
    sid = segment_id(entry.recording_id, seg.index)
    notes += [(seg.index, NoteEntry(sid, note)) for note in seg.notes]
    if cut.clipped:  # only the stream's end clips, so cut.end is the audio's length
        notes.append(
            (
                seg.index,
                NoteEntry(
                    sid,
                    f"clipped: the transcript runs to {seg.end_ms:.0f} ms, "
                    f"the audio ends at {cut.end * 1000 / SAMPLE_RATE:.0f} ms",
                ),
            )
        )
    data = encode_segment(
        Segment(
            audio_id=sid,
            channel=channel,
            text=seg.text,
            speaker_id=seg.speaker_id,
            gender=seg.gender,
            dialect=seg.dialect,
            tone=seg.tone,
            pcm16=pcm,
            source_key=entry.audio_key,
            start_ms=seg.start_ms,
            end_ms=seg.end_ms,
        ),
        audio_format,
    )
    key = segment_key(channel, sid)
    sink.write(key, data)
    index.segments.append(
        SegmentEntry(key, sid, seg.index, cut.num_samples / SAMPLE_RATE, len(data), seg.speaker_id, cut.clipped)
    )


class _SegmentSink:
    """Where a recording's segment files go while its audio streams past: straight to the store,
    or, with `hold`, to a local folder first and to the store only on commit()."""

    def __init__(self, store: ObjectStore, hold: Path | None, stored_keys=frozenset()):
        self.store, self.hold, self.stored = store, hold, stored_keys
        self.written: list[str] = []  # keys, in the order written
        self.kept: list[str] = []  # keys found in the store already, byte for byte
        self.bytes, self.seconds = 0, 0.0
        if hold is not None:
            hold.mkdir()

    def write(self, key: str, data: bytes) -> None:
        t0 = time.perf_counter()
        if self.hold is not None:
            (self.hold / str(len(self.written))).write_bytes(data)
        else:
            self._put(key, data)
        self.written.append(key)
        self.seconds += time.perf_counter() - t0

    def _put(self, key: str, data: bytes) -> None:
        if key in self.stored and self.store.read_bytes_or_none(key) == data:
            # In the store already, byte for byte (written by a run killed before this recording's
            # index, or unchanged by a new transcript): kept, so its version, which stage 2's
            # markers name, does not change. Segment files are deterministic: equal bytes, same cut.
            self.kept.append(key)
        else:
            self.store.write_bytes(key, data)
            self.bytes += len(data)

    def commit(self) -> None:
        if self.hold is None:
            return
        t0 = time.perf_counter()
        for i, key in enumerate(self.written):
            self._put(key, (self.hold / str(i)).read_bytes())
        self.seconds += time.perf_counter() - t0

    def in_store(self) -> set[str]:
        """The keys this sink has put in the store so far (none while holding)."""
        return set() if self.hold is not None else set(self.written)


@dataclass
class ChannelPlan:
    """What a run must do: only new and changed recordings are downloaded."""

    new: list[InventoryEntry] = field(default_factory=list)
    changed: list[InventoryEntry] = field(default_factory=list)
    unchanged: list[InventoryEntry] = field(default_factory=list)
    failed_unchanged: list[InventoryEntry] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)  # indexed recordings no longer in the source

    @property
    def todo(self) -> list[InventoryEntry]:
        return self.new + self.changed


def plan_channel(
    entries: list[InventoryEntry],
    previous: dict[str, RecordingIndex],
    rules: CutRules,
    existing_keys: set[str] | None = None,
    force: bool = False,
) -> ChannelPlan:
    """`existing_keys`, the segment objects now in the store, lets a recording whose segments were
    lost (deleted by hand, a failed clean-up) be cut again instead of trusted."""
    plan = ChannelPlan()
    for entry in entries:
        old = previous.get(entry.recording_id)
        if old is None:
            plan.new.append(entry)
        elif not force and old.status == "ok" and old.failed_fingerprint == fingerprint(entry, rules):
            plan.failed_unchanged.append(entry)  # the bad replacement is still there; the good cut stands
        elif force or old.fingerprint != fingerprint(entry, rules):
            plan.changed.append(entry)
        elif existing_keys is not None and any(s.key not in existing_keys for s in old.segments):
            plan.changed.append(entry)
        elif old.status == "ok":
            plan.unchanged.append(entry)
        else:
            plan.failed_unchanged.append(entry)
    in_source = {e.recording_id for e in entries}
    plan.gone = sorted(r for r in previous if r not in in_source)
    return plan


def channel_manifest(channel: str, entries: list[InventoryEntry], indexes: dict[str, RecordingIndex]) -> dict:
    """The segments of every recording in the current inventory that has a good cut in the store."""
    recordings = []
    for entry in entries:
        idx = indexes.get(entry.recording_id)
        if idx is None or idx.status != "ok":
            continue
        recordings.append(
            {
                "recording_id": entry.recording_id,
                "audio_key": entry.audio_key,
                "audio_seconds": idx.audio_seconds,
                "segments": [
                    {
                        "key": s.key,
                        "audio_id": s.audio_id,
                        "duration_sec": s.duration_sec,
                        "bytes": s.bytes,
                        "speaker_id": s.speaker_id,
                    }
                    for s in idx.segments
                ],
            }
        )
    return {
        "channel": channel,
        "format_version": FORMAT_VERSION,
        "recordings": recordings,
        "segment_count": sum(len(r["segments"]) for r in recordings),
        "segment_seconds": sum(s["duration_sec"] for r in recordings for s in r["segments"]),
    }


def manifest_version(manifest: dict) -> str:
    """The manifest's content hash: a data version that changes exactly when the channel's segments do."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:24]


@dataclass
class ChannelTally:
    """What a stage-1 run did to a channel, summed over its recordings (for the run's metadata)."""

    failures: list[tuple[str, str]] = field(default_factory=list)  # (object, reason)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (segment id, reason, detail)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (segment id or object, note)
    removed: list[str] = field(default_factory=list)
    segments_written: int = 0
    segments_kept: int = 0  # already in the store, byte for byte, from a killed run
    audio_seconds: float = 0.0
    downloaded_bytes: int = 0
    written_bytes: int = 0
    decode_seconds: float = 0.0
    write_seconds: float = 0.0

    def add(self, r: RecordingResult) -> None:
        if r.error:
            self.failures.append((r.error_object, r.error))
        if r.index is not None and r.index.status == "ok":
            self.segments_written += len(r.index.segments) - len(r.kept_keys)
            self.segments_kept += len(r.kept_keys)
            self.skipped += [(segment_id(r.recording_id, s.index), s.reason, s.detail) for s in r.index.skipped]
            self.notes += [(n.object, n.note) for n in r.index.notes]
            self.audio_seconds += r.index.audio_seconds
        self.removed += r.removed_keys
        self.downloaded_bytes += r.downloaded_bytes
        self.written_bytes += r.written_bytes
        self.decode_seconds += r.decode_seconds
        self.write_seconds += r.write_seconds
