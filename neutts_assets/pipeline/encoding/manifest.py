"""The encoded_segments manifest: the channel's stage-2 segment files holding codes from one
codec, shaped like the stage-1 manifest (recordings[].segments[].key), for hf_dataset and the
asset check. `to_dict` gives exactly the JSON document earlier runs stored; `from_dict` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from neutts_assets.pipeline.encoding.store import STAGE2_PREFIX, Stage2Layout
from neutts_assets.pipeline.segments.manifest import RecordingTotals, SegmentsManifest


@dataclass(frozen=True)
class EncodedSegment:
    key: str  # the stage-2 segment file
    audio_id: str
    duration_sec: float
    n_codes: int
    speaker_id: str = ""

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "audio_id": self.audio_id,
            "duration_sec": self.duration_sec,
            "n_codes": self.n_codes,
            "speaker_id": self.speaker_id,
        }

    @classmethod
    def from_dict(cls, d: dict) -> EncodedSegment:
        # hf_dataset's contract is recordings[].segments[].key: the other fields may be absent
        audio_id = d.get("audio_id") or d["key"].rsplit("/", 1)[-1].removesuffix(".npz")
        return cls(d["key"], audio_id, d.get("duration_sec", 0.0), d.get("n_codes", 0), d.get("speaker_id", ""))


@dataclass(frozen=True)
class EncodedRecording:
    recording_id: str
    audio_key: str
    segments: list[EncodedSegment] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "recording_id": self.recording_id,
            "audio_key": self.audio_key,
            "segments": [s.to_dict() for s in self.segments],
        }

    @classmethod
    def from_dict(cls, d: dict) -> EncodedRecording:
        return cls(
            d.get("recording_id", ""),
            d.get("audio_key", ""),
            [EncodedSegment.from_dict(s) for s in d.get("segments", [])],
        )


@dataclass(frozen=True)
class SegmentProblem:
    """A segment the run gave no codes: too short for the codec, or failed."""

    audio_id: str
    reason: str

    def to_dict(self) -> dict:
        return {"audio_id": self.audio_id, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: dict) -> SegmentProblem:
        return cls(d["audio_id"], d["reason"])


@dataclass(frozen=True)
class EncodedManifest(RecordingTotals):
    channel: str
    codec: str  # the codec label: model, revision, dtype (a change encodes again)
    test_only_codes: bool  # random weights: codes for tests only
    prefix: str  # the channel's stage-2 folder
    stage2_prefix: str  # the stage-2 root (old: stage2_with_codes/)
    format_version: int | None
    recordings: list[EncodedRecording] = field(default_factory=list)
    skipped: list[SegmentProblem] = field(default_factory=list)
    failed: list[SegmentProblem] = field(default_factory=list)

    @property
    def layout(self) -> Stage2Layout:
        return Stage2Layout(self.channel, self.stage2_prefix)

    @property
    def code_count(self) -> int:
        return sum(s.n_codes for r in self.recordings for s in r.segments)

    def to_dict(self) -> dict:
        return {
            "channel": self.channel,
            "codec": self.codec,
            "test_only_codes": self.test_only_codes,
            "prefix": self.prefix,
            "stage2_prefix": self.stage2_prefix,
            "format_version": self.format_version,
            "recordings": [r.to_dict() for r in self.recordings],
            "segment_count": self.segment_count,
            "segment_seconds": self.segment_seconds,
            "code_count": self.code_count,
            "skipped": [p.to_dict() for p in self.skipped],
            "failed": [p.to_dict() for p in self.failed],
        }

    @classmethod
    def from_dict(cls, d: dict) -> EncodedManifest:
        return cls(
            channel=d.get("channel", ""),
            codec=d.get("codec", ""),
            test_only_codes=bool(d.get("test_only_codes")),
            prefix=d.get("prefix", ""),
            stage2_prefix=d.get("stage2_prefix") or STAGE2_PREFIX,
            format_version=d.get("format_version"),
            recordings=[EncodedRecording.from_dict(r) for r in d.get("recordings", [])],
            skipped=[SegmentProblem.from_dict(p) for p in d.get("skipped", [])],
            failed=[SegmentProblem.from_dict(p) for p in d.get("failed", [])],
        )


def encoded_manifest(
    stage1: SegmentsManifest,
    layout: Stage2Layout,
    codec_label: str,
    test_only: bool,
    with_codes: set[str],
    too_short: list[tuple[str, str]],
    failed: list[tuple[str, str]],
) -> EncodedManifest:
    """The channel's stage-2 segments holding codes from `codec_label`, in the stage-1 manifest's order."""
    from neutts_assets.pipeline.encoding.codec import n_codes
    from neutts_assets.pipeline.segments.audio import SAMPLE_RATE

    recordings = []
    for rec in stage1.recordings:
        segments = [
            EncodedSegment(
                layout.segment_key(s.audio_id),
                s.audio_id,
                s.duration_sec,
                n_codes(round(s.duration_sec * SAMPLE_RATE)),
                s.speaker_id,
            )
            for s in rec.segments
            if s.audio_id in with_codes
        ]
        if segments:
            recordings.append(EncodedRecording(rec.recording_id, rec.audio_key, segments))
    return EncodedManifest(
        channel=stage1.channel or layout.channel,
        codec=codec_label,
        test_only_codes=test_only,
        prefix=layout.channel_prefix,
        stage2_prefix=layout.prefix,
        format_version=stage1.format_version,
        recordings=recordings,
        skipped=[SegmentProblem(a, r) for a, r in too_short],
        failed=[SegmentProblem(a, r) for a, r in failed],
    )
