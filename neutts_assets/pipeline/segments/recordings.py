"""Stage 1 for one recording: download once, decode once to 16 kHz mono as a stream, cut every
transcript segment as the stream passes it and write one segment file each, drop the segments a
new transcript no longer has, and publish the recording's index last.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from neutts_assets.pipeline.inventory.manifest import AudioObject, Inventory, InventoryEntry
from neutts_assets.pipeline.inventory.source_layout import segment_id
from neutts_assets.pipeline.inventory.transcripts import (
    MAX_TRANSCRIPT_BYTES,
    SegmentProblem,
    TranscriptError,
    TranscriptSegment,
    parse_transcript,
    too_large,
)
from neutts_assets.pipeline.segments.audio import SAMPLE_RATE, AudioDecodeError, PcmStream
from neutts_assets.pipeline.segments.audio_choice import Tried, choose, done_trying
from neutts_assets.pipeline.segments.cutting import Cut, CutRules, StreamCutter
from neutts_assets.pipeline.segments.manifest import ManifestRecording, ManifestSegment, SegmentsManifest
from neutts_assets.pipeline.segments.segment_file import FORMAT_VERSION, Segment, encode_segment
from neutts_assets.pipeline.segments.store import (
    NoteEntry,
    RecordingIndex,
    SegmentEntry,
    SkipEntry,
    index_key,
    segment_key,
)
from neutts_assets.storage.store import ObjectStore, StoreError, is_permanent


def fingerprint(entry: InventoryEntry, rules: CutRules) -> dict:
    """Everything whose change means the recording must be cut again."""
    fp = {
        "audio_key": entry.audio_key,
        "audio_version": entry.audio_version,
        "audio_size": entry.audio_size,
        "transcript_sha256": entry.transcript_sha256,
        "cut_rules": rules.fingerprint(),
        "format_version": FORMAT_VERSION,
    }
    if entry.alternates:  # only then: the fingerprints of recordings with one audio object stay as they were
        fp["other_audio"] = [[a.key, a.version, a.size] for a in entry.alternates]
    return fp


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
    audio_choice: tuple[str, str] | None = None  # (the audio object used, why) when it had several


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
    return _RecordingCut(entry, channel, source, store, rules, previous, workdir, stored_keys, guard).run()


class _BadInput(Exception):
    """A deterministic failure of the recording's own input (a bad transcript, undecodable audio),
    recorded as the recording's failure. `written`: segment objects the attempt had already put in
    the store when it failed."""

    def __init__(self, obj: str, reason: str, written: set[str] | frozenset[str] = frozenset()):
        super().__init__(reason)
        self.obj, self.reason, self.written = obj, reason, written


class _InputGone(Exception):
    """An object the inventory listed is no longer in the source: reported, and nothing is
    published; the next inventory no longer lists it."""

    def __init__(self, obj: str, reason: str):
        super().__init__(reason)
        self.obj, self.reason = obj, reason


class _RecordingCut:
    """One attempt at cut_recording, in its steps: parse the transcript, cut the audio, publish the
    cut; or, when a step finds the input itself bad, publish the failure instead. `result` is filled
    in as the steps go."""

    def __init__(
        self,
        entry: InventoryEntry,
        channel: str,
        source: ObjectStore,
        store: ObjectStore,
        rules: CutRules,
        previous: RecordingIndex | None,
        workdir: str | None,
        stored_keys: set[str] | frozenset[str],
        guard: Callable[[], None] | None,
    ):
        self.entry, self.channel, self.source, self.store, self.rules = entry, channel, source, store, rules
        self.previous, self.workdir, self.stored_keys, self.guard = previous, workdir, stored_keys, guard
        self.fp = fingerprint(entry, rules)
        self.index_key = index_key(channel, entry.recording_id)
        self.result = RecordingResult(entry.recording_id, None)

    @property
    def replacing_good_cut(self) -> bool:
        return self.previous is not None and self.previous.status == "ok"

    def run(self) -> RecordingResult:
        try:
            problems, segments = self._parse_transcript_step()
            index = self._cut_step(segments, problems)
        except _InputGone as gone:
            self.result.error, self.result.error_object = gone.reason, gone.obj
        except _BadInput as bad:
            self._publish_failure_step(bad)
        else:
            self._publish_step(index)
        return self.result

    def _parse_transcript_step(self) -> tuple[list[SegmentProblem], list[TranscriptSegment]]:
        """The transcript's segments. Parsing and planning the cut (_cutter) are pure: whatever they
        raise, this transcript will raise again, so every error of theirs is the input's."""
        key = self.entry.transcript_key
        if self.entry.transcript_size > MAX_TRANSCRIPT_BYTES:
            raise _BadInput(key, too_large(self.entry.transcript_size))
        try:
            transcript = self.source.read_bytes(key)
        except FileNotFoundError as exc:
            raise _InputGone(key, "transcript disappeared from the source") from exc
        except Exception as exc:
            if _object_fault(exc):  # permission denied, not a regular file: the object's own fault
                raise _BadInput(key, str(exc)) from exc
            raise
        try:
            segments, problems = parse_transcript(transcript, key)
        except TranscriptError as exc:
            raise _BadInput(key, str(exc)) from exc
        except Exception as exc:
            raise _BadInput(key, f"unreadable transcript ({type(exc).__name__}: {str(exc)[:200]})") from exc
        del transcript
        return problems, segments

    def _cutter(self, segments: list[TranscriptSegment]) -> StreamCutter:
        try:
            return StreamCutter(segments, SAMPLE_RATE, self.rules)
        except Exception as exc:
            raise _BadInput(self.entry.transcript_key, f"cannot cut ({type(exc).__name__}: {str(exc)[:200]})") from exc

    def _cut_step(self, segments: list[TranscriptSegment], problems: list[SegmentProblem]) -> RecordingIndex:
        """Downloads the audio and writes its segments as it decodes; returns the cut's index, not
        yet published. A recording with several audio objects tries them in order, each cut held on
        local disk, and commits the one audio_choice picks."""
        candidates = self.entry.candidates
        needed_s = self._cutter(segments).needed_samples / SAMPLE_RATE  # the first to raise, before any download
        with tempfile.TemporaryDirectory(dir=self.workdir, prefix="neutts-") as tmp:
            # A good cut must survive its recut failing halfway (undecodable new audio, a decoder
            # killed for want of disk or memory, a store error): the segments its index lists are not
            # touched until the decode has succeeded, so the recut is held on local disk until then.
            # So is every copy's cut while it is not yet known which copy is used. New recordings
            # with one audio object are written to the store as they are cut.
            hold = len(candidates) > 1 or self.replacing_good_cut
            attempts: list[_Attempt] = []
            covered = False
            for i, audio in enumerate(candidates):
                attempts.append(self._attempt(audio, segments, Path(tmp) / str(i), hold))
                if attempts[-1].tried.seconds is None:
                    shutil.rmtree(Path(tmp) / str(i), ignore_errors=True)  # a failed copy's held cut: no use
                covered = done_trying(attempts[-1].tried, needed_s)
                if len(candidates) == 1 or covered:
                    break
            pick, why = choose([a.tried for a in attempts], needed_s, len(candidates))
            if pick is None:
                self._fail_all(attempts, why)
            chosen = attempts[pick]
            chosen.sink.commit()
        self.result.written_bytes, self.result.write_seconds = chosen.sink.bytes, chosen.sink.seconds
        self.result.kept_keys = chosen.sink.kept
        notes = chosen.notes
        if len(candidates) > 1:
            self.result.audio_choice = (chosen.audio.key, why)
            notes = [(-1, NoteEntry(chosen.audio.key, why)), *notes]
        index = chosen.index
        if len(candidates) > 1 and covered:
            # The copies after the last one tried could not have changed the choice: a change to them
            # (a .part still growing beside a complete .wav) is no reason to cut again (plan_channel).
            index.audio_tried = [[a.audio.key, a.audio.version, a.audio.size] for a in attempts]
        self._complete_index(index, problems, chosen.cutter, notes, chosen.mismatch)
        return index

    def _attempt(self, audio: AudioObject, segments: list[TranscriptSegment], folder: Path, hold: bool) -> _Attempt:
        """One audio object downloaded, decoded and cut into a sink. With one object its errors are
        raised as the recording's (_InputGone, _BadInput); with several, recorded on the attempt
        so the next copy can be tried. Errors that may pass always propagate."""
        single = len(self.entry.candidates) == 1
        folder.mkdir()
        index = RecordingIndex(
            self.entry.recording_id,
            "ok",
            self.fp,
            transcript_key=self.entry.transcript_key,
            audio_key=audio.key,
            audio_version=audio.version,
        )
        attempt = _Attempt(
            audio,
            self._cutter(segments),
            index,
            _SegmentSink(self.store, folder / "held" if hold else None, self.stored_keys),
        )
        local = folder / f"audio{audio.ext or '.bin'}"
        try:
            self._download(audio, local)
            t0 = time.perf_counter()
            stream = self._decode_and_write(audio, local, attempt)
            self.result.decode_seconds += time.perf_counter() - t0 - attempt.sink.seconds
            attempt.mismatch = stream.container_mismatch(audio.ext)
            attempt.tried = Tried(audio.key, attempt.cutter.pos / SAMPLE_RATE)
        except (_InputGone, _BadInput) as exc:
            if single:
                raise
            # The short reason: the choice's note names each object itself.
            why = getattr(exc.__cause__, "reason", None) or exc.reason.removeprefix(f"{audio.key}: ")
            attempt.tried = Tried(audio.key, None, why)
        finally:
            local.unlink(missing_ok=True)  # a ten-hour copy need not sit beside the next one
        return attempt

    def _fail_all(self, attempts: list[_Attempt], why: str) -> None:
        """None of the recording's audio objects can be used: gone from the source when every one is."""
        if all(a.tried.error == _GONE for a in attempts):
            raise _InputGone(self.entry.audio_key, _GONE)
        raise _BadInput(self.entry.audio_key, why)

    def _download(self, audio: AudioObject, local: Path) -> None:
        try:
            # Pinned to the version the inventory listed, so the segments never carry a fingerprint
            # of other bytes; a replaced object fails this attempt (ObjectChanged, a StoreError: it
            # may pass), and the next inventory sees the new version.
            self.result.downloaded_bytes += self.source.download(audio.key, local, version=audio.version)
        except FileNotFoundError as exc:
            raise _InputGone(audio.key, _GONE) from exc
        except Exception as exc:
            if _object_fault(exc):  # a dangling link, a FIFO, permission denied: until the object changes
                raise _BadInput(audio.key, str(exc)) from exc
            raise

    def _decode_and_write(self, audio: AudioObject, local: Path, attempt: _Attempt) -> PcmStream:
        """Decodes the audio once, as a stream, and writes each segment as the stream passes it.
        Undecodable audio is the input's failure. Any other error (the store, a killed decoder)
        propagates: what this attempt wrote is in no index, and the next run's `stored_keys` has it
        cleaned up or overwritten."""
        try:
            with PcmStream(local, name=audio.key) as stream:
                for cut, pcm in _cuts(stream, attempt.cutter):
                    _write_cut(cut, pcm, self.entry, audio.key, self.channel, attempt, self.rules.audio_format)
        except AudioDecodeError as exc:
            raise _BadInput(audio.key, str(exc), attempt.sink.in_store()) from exc
        return stream

    def _complete_index(
        self,
        index: RecordingIndex,
        problems: list[SegmentProblem],
        cutter: StreamCutter,
        notes: list[tuple[int, NoteEntry]],
        mismatch: str,
    ) -> None:
        """What the cut found besides its segments: the skipped segments, the audio's length and
        the notes, each in segment order."""
        index.segments.sort(key=lambda s: s.index)
        index.skipped = [SkipEntry(p.index, p.kind, p.reason) for p in problems] + [
            SkipEntry(s.index, s.reason, s.detail) for s in cutter.skips
        ]
        index.audio_seconds = cutter.pos / SAMPLE_RATE
        index.notes = ([NoteEntry(index.audio_key or self.entry.audio_key, mismatch)] if mismatch else []) + [
            n for _, n in sorted(notes, key=lambda n: n[0])
        ]

    def _publish_step(self, index: RecordingIndex) -> None:
        """Removes the segments the new cut no longer has, then writes its index, which publishes it."""
        # Segments of the previous cut that the new transcript no longer yields (the old tool needed `rm`).
        keep = {s.key for s in index.segments}
        self._check_guard()
        stale = set(self.stored_keys)
        if self.previous is not None:
            stale |= {old.key for old in self.previous.segments}
        self._delete(sorted(stale - keep))
        self._check_guard()
        self.store.write_bytes(self.index_key, index.to_json())
        self.result.index = index

    def _publish_failure_step(self, bad: _BadInput) -> None:
        """A bad new upload never hides the segments already made: the good index stays, and only
        notes the bad version, so that an unchanged bad file is not downloaded again on every run.
        Of the segment objects this attempt wrote, those no good index lists are removed."""
        self.result.error, self.result.error_object = bad.reason, bad.obj
        self._check_guard()
        if self.replacing_good_cut:
            previous = self.previous
            self._delete(sorted(bad.written - {s.key for s in previous.segments}))
            # Noted on the caller's own index, so that what the caller holds is what the store now has.
            previous.failed_fingerprint, previous.error = self.fp, bad.reason
            self.store.write_bytes(self.index_key, previous.to_json())
        else:
            self._delete(sorted(set(self.stored_keys) | bad.written))
            self.result.index = RecordingIndex(self.entry.recording_id, "failed", self.fp, error=bad.reason)
            self.store.write_bytes(self.index_key, self.result.index.to_json())

    def _check_guard(self) -> None:
        if self.guard:
            self.guard()

    def _delete(self, keys: list[str]) -> None:
        for key in keys:
            self.store.delete(key)
            self.result.removed_keys.append(key)


def _cuts(stream: PcmStream, cutter: StreamCutter) -> Iterator[tuple[Cut, object]]:
    """Every cut of the stream, in the order the cutter yields them: fed block by block, then the
    ones the stream's end closes."""
    for block in stream.blocks():
        yield from cutter.feed(block)
    yield from cutter.finish()


def _write_cut(
    cut: Cut,
    pcm,
    entry: InventoryEntry,
    audio_key: str,
    channel: str,
    attempt: _Attempt,
    audio_format: str,
) -> None:
    seg = cut.segment
    sid = segment_id(entry.recording_id, seg.index)
    attempt.notes += [(seg.index, NoteEntry(sid, note)) for note in seg.notes]
    if cut.clipped:  # only the stream's end clips, so cut.end is the audio's length
        attempt.notes.append(
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
            source_key=audio_key,
            start_ms=seg.start_ms,
            end_ms=seg.end_ms,
        ),
        audio_format,
    )
    key = segment_key(channel, sid)
    attempt.sink.write(key, data)
    attempt.index.segments.append(
        SegmentEntry(key, sid, seg.index, cut.num_samples / SAMPLE_RATE, len(data), seg.speaker_id, cut.clipped)
    )


_GONE = "audio disappeared from the source"


def _object_fault(exc: BaseException) -> bool:
    """A permanent error the store reports of the source object itself. A PermissionError or ENOSPC
    from writing this machine's own temporary copy is not the object's: it may pass."""
    return isinstance(exc, StoreError) and is_permanent(exc)


@dataclass
class _Attempt:
    """One audio object's cut: its segments in `sink` (held, or in the store), and what it found."""

    audio: AudioObject
    cutter: StreamCutter
    index: RecordingIndex
    sink: _SegmentSink
    notes: list[tuple[int, NoteEntry]] = field(default_factory=list)
    mismatch: str = ""
    tried: Tried | None = None


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


def same_inputs(old: RecordingIndex, entry: InventoryEntry, rules: CutRules) -> bool:
    """Whether a recording cut under `old` would be cut from the same inputs now. Beyond an equal
    fingerprint: audio objects after the ones the cut tried (its first copy covered the transcript)
    do not count; and a local version of the form before file identity (`mtime-size`, written
    before sources were listed with inodes and ctimes) matches today's that starts with it, so
    upgrading does not re-cut every local recording (those keep the old trust until they change)."""
    new, before = fingerprint(entry, rules), old.fingerprint
    if old.audio_tried:
        tried = [[a.key, a.version, a.size] for a in entry.candidates][: len(old.audio_tried)]
        if _as_old(tried, old.audio_tried) != old.audio_tried:
            return False
        new = {k: v for k, v in new.items() if k != "other_audio"}
        before = {k: v for k, v in before.items() if k != "other_audio"}
    return _as_old(new, before) == before


def _as_old(new, old):
    """`new` (a fingerprint or a part of one) with each version written the way its counterpart in
    `old` was (_legacy); everything else as it is."""
    if isinstance(new, dict) and isinstance(old, dict):
        return {k: _as_old(v, old[k]) if k in old else v for k, v in new.items()}
    if isinstance(new, list) and isinstance(old, list) and len(new) == len(old):
        return [_as_old(n, o) for n, o in zip(new, old)]
    if isinstance(new, str) and isinstance(old, str):
        return _legacy(new, old)
    return new


def _legacy(version: str, old: str) -> str:
    """`version` as the old form `old` was written in: a local `mtime-size-inode-ctime` read as
    `mtime-size` when `old` has that form; any other version as it is."""
    parts, old_parts = version.split("-"), old.split("-")
    if len(parts) == 4 and len(old_parts) == 2 and all(p.isdigit() for p in parts + old_parts):
        return "-".join(parts[:2])
    return version


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
        elif (
            not force
            and old.status == "ok"
            and old.failed_fingerprint
            and _as_old(fingerprint(entry, rules), old.failed_fingerprint) == old.failed_fingerprint
        ):
            plan.failed_unchanged.append(entry)  # the bad replacement is still there; the good cut stands
        elif force or not same_inputs(old, entry, rules):
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


def gone_keys(
    channel: str,
    gone: list[str],
    indexes: dict[str, RecordingIndex],
    stored: dict[str, set[str]],
    in_source: set[str],
) -> dict[str, list[str]]:
    """Per recording no longer in the source (deleted, or out of the channel's audio folder since
    NEUTTS_CHANNEL_MAPPING changed), the stage-1 objects to remove, in the order they are deleted:
    its segment files, then its index (an index left by a killed clean-up lists files already gone,
    and the next run removes it again). A recording with segment files but no index (a cut killed
    before its index, then removed from the source) loses its files too."""
    out: dict[str, list[str]] = {}
    # Compared in one normal form: a segment store on a file system that rewrites names (HFS+, ZFS
    # formD) lists NFD names for IDs the inventory has as NFC, and those files are not orphans.
    known = {unicodedata.normalize("NFC", r) for r in (*in_source, *indexes)}
    for rid in sorted(set(gone) | {r for r in stored if unicodedata.normalize("NFC", r) not in known}):
        idx = indexes.get(rid)
        keys = sorted(stored.get(rid, set()) | ({s.key for s in idx.segments} if idx else set()))
        out[rid] = keys + ([index_key(channel, rid)] if idx else [])
    return out


@dataclass
class Removal:
    """What a stage-1 run removes of the recordings no longer in the source (plan_removal)."""

    keys: dict[str, list[str]] = field(default_factory=dict)  # per recording, in the order deleted
    held_back: str = ""  # why nothing is removed, when nothing is

    @property
    def segment_files(self) -> list[tuple[str, int]]:
        return [(rid, sum(k.endswith(".npz") for k in keys)) for rid, keys in self.keys.items()]


def plan_removal(
    channel: str, gone: list[str], indexes: dict[str, RecordingIndex], stored: dict[str, set[str]], inventory: Inventory
) -> Removal:
    """The stage-1 objects of the recordings no longer in the source (gone_keys), but:
    - an object still listed under the ID (a transcript that vanished mid-listing, audio whose
      transcript is being rewritten) is no proof that the recording is gone: it is kept until a run
      finds neither;
    - when every good recording would go, none does: a wrong mapping or source far more often than
      a channel emptied on purpose (clean_up_segments does that), and said so."""
    listed = {u.recording_id for u in inventory.unpaired if u.kind in ("vanished", "audio_without_transcript")}
    in_source = {e.recording_id for e in inventory.entries} | listed
    keys = gone_keys(channel, [r for r in gone if r not in listed], indexes, stored, in_source)
    good = [r for r, idx in indexes.items() if idx.status == "ok"]
    if good and all(r in keys for r in good):
        return Removal(
            held_back=f"all {len(good)} recordings of the channel are no longer in the source: nothing was removed. "
            "Check NEUTTS_CHANNEL_MAPPING and the source; to empty the channel on purpose, run clean_up_segments"
        )
    return Removal(keys)


def channel_manifest(
    channel: str, entries: list[InventoryEntry], indexes: dict[str, RecordingIndex]
) -> SegmentsManifest:
    """The segments of every recording in the current inventory that has a good cut in the store."""
    recordings = []
    for entry in entries:
        idx = indexes.get(entry.recording_id)
        if idx is None or idx.status != "ok":
            continue
        segments = [ManifestSegment(s.key, s.audio_id, s.duration_sec, s.bytes, s.speaker_id) for s in idx.segments]
        used = idx.audio_key or entry.audio_key
        recordings.append(ManifestRecording(entry.recording_id, used, idx.audio_seconds, segments))
    return SegmentsManifest(channel, FORMAT_VERSION, recordings)


@dataclass
class ChannelTally:
    """What a stage-1 run did to a channel, summed over its recordings (for the run's metadata)."""

    failures: list[tuple[str, str]] = field(default_factory=list)  # (object, reason)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (segment id, reason, detail)
    notes: list[tuple[str, str, str]] = field(default_factory=list)  # (segment id or object, note, recording)
    removed: list[str] = field(default_factory=list)
    audio_choices: list[tuple[str, str, str]] = field(default_factory=list)  # (recording, audio used, why)
    segments_written: int = 0
    segments_kept: int = 0  # already in the store, byte for byte, from a killed run
    audio_seconds: float = 0.0
    downloaded_bytes: int = 0
    written_bytes: int = 0
    decode_seconds: float = 0.0
    write_seconds: float = 0.0

    def add(self, r: RecordingResult) -> None:
        if r.audio_choice:
            self.audio_choices.append((r.recording_id, *r.audio_choice))
        if r.error:
            self.failures.append((r.error_object, r.error))
        if r.index is not None and r.index.status == "ok":
            self.segments_written += len(r.index.segments) - len(r.kept_keys)
            self.segments_kept += len(r.kept_keys)
            self.skipped += [(segment_id(r.recording_id, s.index), s.reason, s.detail) for s in r.index.skipped]
            self.notes += [(n.object, n.note, r.recording_id) for n in r.index.notes]
            self.audio_seconds += r.index.audio_seconds
        self.removed += r.removed_keys
        self.downloaded_bytes += r.downloaded_bytes
        self.written_bytes += r.written_bytes
        self.decode_seconds += r.decode_seconds
        self.write_seconds += r.write_seconds
