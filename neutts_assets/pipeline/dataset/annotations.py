"""What a dataset row carries beyond its segment file: its split, its quality scores and its
lineage (where its audio and text came from). Gathered once per build from documents the
earlier stages wrote, never from the segment files themselves:

- lineage, per recording, from stage 1's recording index (the fingerprint it was cut under:
  audio object, its version, transcript SHA-256, cut rules) and the transcript's key (the
  index's, or the inventory's for an index written before it kept one);
- quality scores, per segment, from segment_quality's documents;
- the split, from SplitRule (pipeline/dataset/splits.py), by the speaker ids stage 1's index lists.

Each row's annotations have a digest, kept beside the segment's version in the build record, so
that a row whose split, scores or lineage changed is written again even when its segment file did
not (pipeline/dataset/writer.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from neutts_assets.pipeline.dataset.splits import SplitRule, recording_of
from neutts_assets.pipeline.quality.store import RecordingScores
from neutts_assets.pipeline.segments.store import segment_name

LINEAGE_COLUMNS = (
    "source_audio",
    "source_audio_version",
    "transcript",
    "transcript_sha256",
    "start_ms",
    "end_ms",
    "cut_rules",
    "codec",
    "build_id",
)


@dataclass(frozen=True)
class RecordingLineage:
    """Where a recording's segments were cut from, as stage 1 recorded it."""

    audio_key: str = ""
    audio_version: str = ""  # GCS generation, S3 ETag, or a local file's fingerprint
    transcript_key: str = ""
    transcript_sha256: str = ""
    cut_rules: str = ""  # CutRules.fingerprint(), with the segment file format: "{rules}/format-{n}"

    def to_dict(self) -> dict:
        return {
            "audio_key": self.audio_key,
            "audio_version": self.audio_version,
            "transcript_key": self.transcript_key,
            "transcript_sha256": self.transcript_sha256,
            "cut_rules": self.cut_rules,
        }

    @classmethod
    def of_index(cls, index, transcript_key: str = "") -> RecordingLineage:
        """From a stage-1 RecordingIndex (pipeline/segments/store.py)."""
        fp = index.fingerprint or {}
        rules = fp.get("cut_rules", "")
        return cls(
            audio_key=index.audio_key or fp.get("audio_key", ""),
            audio_version=index.audio_version or str(fp.get("audio_version", "")),
            transcript_key=index.transcript_key or transcript_key,
            transcript_sha256=fp.get("transcript_sha256", ""),
            cut_rules=f"{rules}/format-{fp['format_version']}" if rules and "format_version" in fp else rules,
        )


@dataclass(frozen=True)
class RowExtras:
    split: str
    scores: dict = field(default_factory=dict)  # name -> value or None; empty: not scored
    scores_audio: str = ""  # the audio digest the scores were made from
    lineage: RecordingLineage = field(default_factory=RecordingLineage)

    def scores_for(self, audio_digest: str) -> dict:
        """The scores, when they are of this audio (the row's own audio member); else none."""
        return self.scores if self.scores and self.scores_audio == audio_digest else {}

    def digest(self) -> str:
        blob = json.dumps(
            [self.split, self.scores, self.scores_audio, self.lineage.to_dict()], sort_keys=True, ensure_ascii=False
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Annotations:
    """A channel's rows' extras by segment file name."""

    def __init__(
        self,
        channel: str,
        rule: SplitRule,
        indexes: dict | None = None,  # recording ID -> stage-1 RecordingIndex
        scores: dict[str, RecordingScores] | None = None,  # recording ID -> its scores document
        transcripts: dict[str, str] | None = None,  # recording ID -> transcript key (the inventory's)
    ):
        self.channel, self.rule = channel, rule
        self.speakers: dict[str, str] = {}
        self.lineage: dict[str, RecordingLineage] = {}
        for recording_id, index in (indexes or {}).items():
            self.lineage[recording_id] = RecordingLineage.of_index(index, (transcripts or {}).get(recording_id, ""))
            for s in index.segments:
                self.speakers[segment_name(s.key)] = s.speaker_id
        self.scores = {name: e for doc in (scores or {}).values() for name, e in doc.segments.items() if not e.error}
        self._cache: dict[str, RowExtras] = {}

    def split(self, name: str) -> str:
        """The segment's split, by the speaker stage 1's index lists for it (none: its recording)."""
        return self.rule.split(self.channel, name.removesuffix(".npz"), self.speakers.get(name, ""))

    def of(self, name: str) -> RowExtras:
        """The planned extras of a segment (its split by the speaker stage 1 listed for it)."""
        extras = self._cache.get(name)
        if extras is None:
            entry = self.scores.get(name)
            extras = RowExtras(
                split=self.split(name),
                scores=dict(entry.scores) if entry else {},
                scores_audio=entry.audio if entry else "",
                lineage=self.lineage.get(recording_of(name.removesuffix(".npz")), RecordingLineage()),
            )
            self._cache[name] = extras
        return extras

    def digest(self, name: str) -> str:
        return self.of(name).digest()
