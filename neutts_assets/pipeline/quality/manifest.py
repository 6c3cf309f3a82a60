"""The segment_quality manifest: the channel's scored segments and where their documents are.

The scores themselves stay in the per-recording documents (pipeline/quality/store.py), which
hf_dataset reads; this is the asset's value, what the UI and the asset check read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from neutts_assets.pipeline.quality.store import RecordingScores, channel_folder


@dataclass(frozen=True)
class QualityManifest:
    channel: str
    scorer: str  # the version every document was made with (Scorer.version)
    folder: str
    recordings: int
    segments: int  # scored, or failed to score
    failed: int
    stale_documents: int = 0  # made by another scorer version (none after a run that completed)

    @classmethod
    def of(cls, channel: str, scorer: str, documents: Mapping[str, RecordingScores]) -> QualityManifest:
        entries = [e for d in documents.values() for e in d.segments.values()]
        return cls(
            channel=channel,
            scorer=scorer,
            folder=channel_folder(channel),
            recordings=len(documents),
            segments=len(entries),
            failed=sum(bool(e.error) for e in entries),
            stale_documents=sum(d.scorer != scorer for d in documents.values()),
        )

    def to_dict(self) -> dict:
        return {
            "channel": self.channel,
            "scorer": self.scorer,
            "folder": self.folder,
            "recordings": self.recordings,
            "segments": self.segments,
            "failed": self.failed,
            "stale_documents": self.stale_documents,
        }

    @classmethod
    def from_dict(cls, d: dict) -> QualityManifest:
        return cls(
            d["channel"],
            d["scorer"],
            d["folder"],
            d["recordings"],
            d["segments"],
            d["failed"],
            d.get("stale_documents", 0),
        )
