"""Where stage 1 keeps its output in the segment store, and the per-recording index that makes it
resumable.

    stage1/{channel}/{ID}_seg_{i}.npz     one per segment (the old workflow's names)
    stage1/{channel}/_index/{ID}.json     written last, after all of a recording's segments

A recording counts as done only when its index exists and its fingerprint (audio version,
transcript content, cut rules, file format) matches the inventory. A run killed halfway leaves
no index for the recording it was cutting, so the next run cuts it again; segment objects are
each written atomically, so none is ever half-written.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

STAGE1_PREFIX = "stage1/"
INDEX_FOLDER = "_index"


def channel_prefix(channel: str) -> str:
    return f"{STAGE1_PREFIX}{channel}/"


def segment_key(channel: str, segment_id: str) -> str:
    return f"{channel_prefix(channel)}{segment_id}.npz"


def segment_name(key: str) -> str:
    """A segment's identity within its channel: its file name (`{ID}_seg_{i}.npz`), the same in stage 1,
    stage 2, the dataset's build record and the quality documents."""
    return key.rsplit("/", 1)[-1]


_SEGMENT_NAME = re.compile(r"^(?P<recording>.+)_seg_(?P<index>\d+)\.npz$")


def keys_by_recording(channel: str, keys) -> dict[str, set[str]]:
    """Groups a listing's segment keys by recording ID (the greedy match takes the last `_seg_`,
    so an ID that itself contains `_seg_` is not confused with another)."""
    prefix = channel_prefix(channel)
    groups: dict[str, set[str]] = {}
    for key in keys:
        name = key[len(prefix) :] if key.startswith(prefix) else ""
        match = _SEGMENT_NAME.match(name) if "/" not in name else None
        if match:
            groups.setdefault(match["recording"], set()).add(key)
    return groups


def index_prefix(channel: str) -> str:
    return f"{channel_prefix(channel)}{INDEX_FOLDER}/"


def index_key(channel: str, recording_id: str) -> str:
    return f"{index_prefix(channel)}{recording_id}.json"


@dataclass
class SegmentEntry:
    key: str
    audio_id: str
    index: int
    duration_sec: float
    bytes: int
    speaker_id: str
    clipped: bool = False


@dataclass
class SkipEntry:
    index: int
    reason: str
    detail: str = ""


@dataclass
class NoteEntry:
    """Input that was used, but not exactly as given: a segment's text cleaned, audio whose
    extension misnames its content."""

    object: str  # a segment ID or an object key
    note: str


@dataclass
class RecordingIndex:
    recording_id: str
    status: str  # "ok" or "failed"
    fingerprint: dict
    segments: list[SegmentEntry] = field(default_factory=list)
    skipped: list[SkipEntry] = field(default_factory=list)
    error: str = ""
    audio_seconds: float = 0.0
    # On a good cut: the fingerprint of a later upload that could not be cut (with `error`), so an
    # unchanged bad replacement is neither downloaded again nor allowed to hide the good segments.
    failed_fingerprint: dict = field(default_factory=dict)
    notes: list[NoteEntry] = field(default_factory=list)
    # The transcript object the cut read (lineage; not part of the fingerprint, which has its SHA-256).
    transcript_key: str = ""
    # The audio object the cut used and its version: of several, the one audio_choice picked (the
    # fingerprint lists them all). Empty in indexes from before: the fingerprint's audio_key then.
    audio_key: str = ""
    audio_version: str = ""
    # Of several audio objects, the [key, version, size] of those tried, when the last of them covered
    # the transcript: the ones after it could not change the choice (recordings.same_inputs).
    audio_tried: list = field(default_factory=list)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> RecordingIndex:
        d = json.loads(data)
        return cls(
            recording_id=d["recording_id"],
            status=d["status"],
            fingerprint=d["fingerprint"],
            segments=[SegmentEntry(**s) for s in d.get("segments", [])],
            skipped=[SkipEntry(**s) for s in d.get("skipped", [])],
            error=d.get("error", ""),
            audio_seconds=d.get("audio_seconds", 0.0),
            failed_fingerprint=d.get("failed_fingerprint", {}),
            notes=[NoteEntry(**n) for n in d.get("notes", [])],
            transcript_key=d.get("transcript_key", ""),
            audio_key=d.get("audio_key", ""),
            audio_version=d.get("audio_version", ""),
            audio_tried=d.get("audio_tried", []),
        )


def load_indexes(store, channel: str, workers: int = 8) -> dict[str, RecordingIndex]:
    """Every recording index of a channel, read a few at a time in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    keys = [o.key for o in store.list(index_prefix(channel)) if o.key.endswith(".json")]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        blobs = list(pool.map(store.read_bytes_or_none, keys))
    indexes = {}
    for blob in blobs:
        if blob is not None:
            idx = RecordingIndex.from_json(blob)
            indexes[idx.recording_id] = idx
    return indexes
