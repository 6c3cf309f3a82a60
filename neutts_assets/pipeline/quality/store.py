"""Where the quality stage keeps its scores in the segment store: one JSON document per recording,
written whole (atomically) once every segment of the recording has been scored.

    segment_quality/{channel}/{ID}.json    {"recording_id", "scorer", "segments": {name: entry}}

An entry names the stage-1 segment file it scored (its object version and size: an unchanged
file is never read again), the digest of its audio member (pipeline/segments/segment_file.py
audio_digest: the stage-2 copy holds the very same member, so the dataset can check that the
scores are of the audio its row holds), and the scores, or the reason the file could not be scored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

QUALITY_PREFIX = "segment_quality/"


def channel_folder(channel: str) -> str:
    return f"{QUALITY_PREFIX}{channel}/"


def scores_key(channel: str, recording_id: str) -> str:
    return f"{channel_folder(channel)}{recording_id}.json"


def recording_of_key(channel: str, key: str) -> str | None:
    """The recording ID of one of the channel's score documents (None for anything else)."""
    name = key[len(channel_folder(channel)) :] if key.startswith(channel_folder(channel)) else ""
    return name[:-5] if name.endswith(".json") and "/" not in name else None


@dataclass(frozen=True)
class ScoreEntry:
    version: str  # of the stage-1 segment file scored
    size: int
    audio: str = ""  # the audio member's digest; empty when the file could not be read
    scores: dict = field(default_factory=dict)  # SegmentScores.to_dict()
    error: str = ""  # why the file could not be scored

    def to_dict(self) -> dict:
        out = {"version": self.version, "size": self.size, "audio": self.audio}
        if self.error:
            out["error"] = self.error
        else:
            out["scores"] = self.scores
        return out

    @classmethod
    def from_dict(cls, d: dict) -> ScoreEntry:
        return cls(d["version"], d["size"], d.get("audio", ""), d.get("scores", {}), d.get("error", ""))


@dataclass
class RecordingScores:
    recording_id: str
    scorer: str  # Scorer.version: a new one rescores every segment
    segments: dict[str, ScoreEntry] = field(default_factory=dict)  # segment file name -> entry

    def to_json(self) -> bytes:
        doc = {
            "recording_id": self.recording_id,
            "scorer": self.scorer,
            "segments": {name: self.segments[name].to_dict() for name in sorted(self.segments)},
        }
        return json.dumps(doc, ensure_ascii=False, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> RecordingScores:
        d = json.loads(data)
        return cls(
            d["recording_id"], d["scorer"], {n: ScoreEntry.from_dict(e) for n, e in d.get("segments", {}).items()}
        )
