"""Scores a channel's stage-1 segments, incrementally: a pure plan from two listings and the
recordings' score documents, then the reads and the scoring of what changed.

Why a stage of its own, and not in stage 1 as the audio passes (bench/quality.py measures both):
the scores then cost the critical path nothing (segment_quality runs on the T4 while the H200
encodes the same segments), a new scorer version rescores without re-cutting any recording,
and DNSMOS can run on the T4's GPU. Reading a segment file back costs a few percent of scoring it.

Incremental. A segment is scored again only when its stage-1 file changed (another version or
size) or the scorer's version did; a recording whose segments are all scored as they are is not
written; the document of a recording with no segment file any more is removed. Each recording's
document is written once all its segments are scored, so a run killed halfway loses at most the
recording it was on, and the next run goes on from there.

A file that cannot be read as a segment (corrupt, not an npz) is that segment's failure, kept in
the document with its reason (and not read again until it changes); a read the store may pass
(a timeout) leaves the recording unwritten, for the next run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from neutts_assets.pipeline.quality.store import (
    RecordingScores,
    ScoreEntry,
    channel_folder,
    recording_of_key,
    scores_key,
)
from neutts_assets.pipeline.read_ahead import in_order
from neutts_assets.pipeline.segments.audio import SAMPLE_RATE
from neutts_assets.pipeline.segments.npz_zip import raw_members, read_npy
from neutts_assets.pipeline.segments.segment_file import audio_digest, audio_of_members
from neutts_assets.pipeline.segments.store import keys_by_recording, segment_name
from neutts_assets.storage.store import ObjectInfo, ObjectStore, may_pass

SCORE_BATCH = 128  # segments scored at once: the VAD runs them as one batch (bench/quality.py: 0.69x the CPU of 32)
READ_AHEAD = 16


@dataclass
class RecordingWork:
    recording_id: str
    keep: dict[str, ScoreEntry]  # segment name -> entry still current
    score: list[ObjectInfo]  # segment files to read and score, in key order


@dataclass
class ScoringPlan:
    scorer: str
    work: list[RecordingWork] = field(default_factory=list)  # recordings with something to write
    unchanged: int = 0  # recordings whose document is current
    remove: list[str] = field(default_factory=list)  # documents of recordings with no segment file now
    segments: int = 0  # stage-1 segments in all

    @property
    def to_score(self) -> int:
        return sum(len(w.score) for w in self.work)

    @property
    def kept(self) -> int:
        return self.segments - self.to_score

    def summary(self) -> str:
        return (
            f"{self.to_score} of {self.segments} segment(s) to score (scorer {self.scorer}) in {len(self.work)} "
            f"recording(s); {self.unchanged} recording(s) unchanged, {len(self.remove)} document(s) to remove"
        )


def plan_scoring(
    channel: str,
    segments: Iterable[ObjectInfo],
    documents: dict[str, RecordingScores],
    scorer: str,
    force: bool = False,
) -> ScoringPlan:
    """Which segments to score (pure: a stage-1 listing and the recordings' current documents)."""
    objects = {o.key: o for o in segments}
    plan = ScoringPlan(scorer, segments=len(objects))
    groups = keys_by_recording(channel, objects)
    for recording_id in sorted(groups):
        doc = documents.get(recording_id)
        current = doc.segments if doc is not None and doc.scorer == scorer and not force else {}
        keep, score = {}, []
        for key in sorted(groups[recording_id]):
            o, entry = objects[key], current.get(segment_name(key))
            if entry is not None and (entry.version, entry.size) == (o.version, o.size):
                keep[segment_name(key)] = entry
            else:
                score.append(o)
        # Written again when a segment is to be scored, or an entry is of a segment gone from stage 1.
        dropped = doc is not None and len(doc.segments) != len(keep)
        if score or dropped or doc is None or doc.scorer != scorer:
            plan.work.append(RecordingWork(recording_id, keep, score))
        else:
            plan.unchanged += 1
    plan.remove = [scores_key(channel, r) for r in sorted(documents) if r not in groups]
    return plan


def read_documents(store: ObjectStore, channel: str, workers: int = 8) -> dict[str, RecordingScores]:
    """The channel's score documents by recording ID (unreadable ones are left out: rescored)."""
    keys = [o.key for o in store.list(channel_folder(channel)) if recording_of_key(channel, o.key)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        blobs = list(pool.map(store.read_bytes_or_none, keys))
    docs = {}
    for blob in blobs:
        if blob is None:
            continue
        try:
            doc = RecordingScores.from_json(blob)
        except (ValueError, KeyError, TypeError):
            continue
        docs[doc.recording_id] = doc
    return docs


@dataclass
class _Read:
    """One segment file read back: its samples and text, or why it could not be."""

    obj: ObjectInfo
    pcm16: np.ndarray | None = None
    text: str = ""
    audio: str = ""
    error: str = ""
    transient: Exception | None = None  # a store error that may pass


def _read_segment(store: ObjectStore, o: ObjectInfo) -> _Read:
    try:
        data = store.read_bytes(o.key)
    except Exception as exc:  # a store error: per object, never the channel
        return _Read(o, transient=exc) if may_pass(exc) else _Read(o, error=f"cannot read: {exc}")
    try:
        members = raw_members(data)
        pcm16 = audio_of_members(members)
        text = str(read_npy(members["text.npy"])[()]) if "text.npy" in members else ""
        return _Read(o, pcm16, text, audio_digest(members))
    except Exception as exc:  # zip, numpy and decoding errors: this file is unusable
        return _Read(o, error=f"unreadable segment file: {type(exc).__name__}: {exc}")


@dataclass
class ScoringResult:
    scored: int = 0
    audio_seconds: float = 0.0
    retryable: list[tuple[str, str]] = field(default_factory=list)  # store errors that may pass: rerun
    removed: list[str] = field(default_factory=list)
    written: dict[str, RecordingScores] = field(default_factory=dict)  # recording ID -> the document written
    scoring_seconds: float = 0.0

    @property
    def recordings_written(self) -> int:
        return len(self.written)


def score_channel(
    store: ObjectStore,
    plan: ScoringPlan,
    score_batch: Callable[[list[tuple[np.ndarray, str]]], list],
    channel: str,
    workers: int = 4,
    guard: Callable[[], None] | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> ScoringResult:
    """Reads and scores the plan's segments; writes each recording's document when it is whole;
    removes the documents of recordings gone. `score_batch`: Scorer.score_batch. `guard` runs
    before each write (the run's lease); what it raises propagates."""
    guard = guard or (lambda: None)
    result = ScoringResult()
    for work in plan.work:
        entries, transient = dict(work.keep), None
        batch: list[_Read] = []
        for _, read in in_order(lambda o: _read_segment(store, o), work.score, workers, READ_AHEAD):
            if read.transient is not None:
                transient = transient or read
                result.retryable.append((read.obj.key, f"cannot read: {read.transient}"))
            elif read.error:
                entries[segment_name(read.obj.key)] = ScoreEntry(read.obj.version, read.obj.size, error=read.error)
            else:
                batch.append(read)
            if len(batch) >= SCORE_BATCH:
                result.scoring_seconds += _score_into(entries, batch, score_batch, result, progress)
                batch = []
        if batch:
            result.scoring_seconds += _score_into(entries, batch, score_batch, result, progress)
        if transient is not None:
            continue  # the store may let us read it next time: the recording stays as it was
        guard()
        doc = RecordingScores(work.recording_id, plan.scorer, entries)
        store.write_bytes(scores_key(channel, work.recording_id), doc.to_json())
        result.written[work.recording_id] = doc
    for key in plan.remove:
        guard()
        store.delete(key)
        result.removed.append(key)
    return result


def _score_into(entries: dict, batch: list[_Read], score_batch, result: ScoringResult, progress) -> float:
    started = time.perf_counter()
    scores = score_batch([(r.pcm16, r.text) for r in batch])
    for read, s in zip(batch, scores):
        entries[segment_name(read.obj.key)] = ScoreEntry(read.obj.version, read.obj.size, read.audio, s.to_dict())
        seconds = len(read.pcm16) / SAMPLE_RATE
        result.scored += 1
        result.audio_seconds += seconds
        if progress:
            progress(1, seconds)
    return time.perf_counter() - started


def documents_after(
    channel: str, documents: dict[str, RecordingScores], result: ScoringResult
) -> dict[str, RecordingScores]:
    """The channel's documents once a run is done, from those it planned with and what it wrote
    and removed (under the run's lease nothing else writes them): no second read of every one."""
    removed = set(result.removed)
    kept = {r: d for r, d in documents.items() if scores_key(channel, r) not in removed}
    return {**kept, **result.written}


def failures_of(store_docs: Iterable[RecordingScores]) -> list[tuple[str, str]]:
    """Every segment the channel's documents hold as not scorable: (segment name, reason)."""
    return sorted((name, e.error) for doc in store_docs for name, e in doc.segments.items() if e.error)
