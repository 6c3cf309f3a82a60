"""The segments_npz manifest: every recording of the current inventory with a good cut in the
store, and its segments. Stage 2 plans from it; hf_dataset reads it with the no-codes option.

Stored as JSON by the manifest IO manager; `to_dict` gives exactly the document earlier runs
stored (its content hash is the asset's data version), and `from_dict` reads those documents,
including the older ones without `bytes`, `speaker_id` or `audio_seconds`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ManifestSegment:
    key: str  # the stage-1 segment file
    audio_id: str
    duration_sec: float
    bytes: int = 0
    speaker_id: str = ""

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "audio_id": self.audio_id,
            "duration_sec": self.duration_sec,
            "bytes": self.bytes,
            "speaker_id": self.speaker_id,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ManifestSegment:
        # hf_dataset's contract is recordings[].segments[].key: the other fields may be absent
        audio_id = d.get("audio_id") or d["key"].rsplit("/", 1)[-1].removesuffix(".npz")
        return cls(d["key"], audio_id, d.get("duration_sec", 0.0), d.get("bytes", 0), d.get("speaker_id", ""))


@dataclass(frozen=True)
class ManifestRecording:
    recording_id: str
    audio_key: str
    audio_seconds: float
    segments: list[ManifestSegment] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "recording_id": self.recording_id,
            "audio_key": self.audio_key,
            "audio_seconds": self.audio_seconds,
            "segments": [s.to_dict() for s in self.segments],
        }

    @classmethod
    def from_dict(cls, d: dict) -> ManifestRecording:
        return cls(
            d.get("recording_id", ""),
            d.get("audio_key", ""),
            d.get("audio_seconds", 0.0),
            [ManifestSegment.from_dict(s) for s in d.get("segments", [])],
        )


class RecordingTotals:
    """The figures of a manifest of recordings[].segments[]: what both stages' manifests state."""

    recordings: list

    @property
    def segments(self) -> list:
        return [s for r in self.recordings for s in r.segments]

    @property
    def segment_count(self) -> int:
        return sum(len(r.segments) for r in self.recordings)

    @property
    def segment_seconds(self) -> float:
        return sum(s.duration_sec for r in self.recordings for s in r.segments)


@dataclass(frozen=True)
class SegmentsManifest(RecordingTotals):
    channel: str
    format_version: int | None
    recordings: list[ManifestRecording] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "channel": self.channel,
            "format_version": self.format_version,
            "recordings": [r.to_dict() for r in self.recordings],
            "segment_count": self.segment_count,
            "segment_seconds": self.segment_seconds,
        }

    @classmethod
    def from_dict(cls, d: dict) -> SegmentsManifest:
        return cls(
            d.get("channel", ""),
            d.get("format_version"),
            [ManifestRecording.from_dict(r) for r in d.get("recordings", [])],
        )

    def version(self) -> str:
        """The content hash: a data version that changes exactly when the channel's segments do."""
        blob = json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()[:24]
