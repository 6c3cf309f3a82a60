"""Turning transcript segments into sample ranges of the decoded audio, with the skip rules.

A segment's samples are exactly audio[round(start_ms * 16): round(end_ms * 16)] at 16 kHz.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from neutts_assets.core.transcripts import TranscriptSegment


@dataclass(frozen=True)
class CutRules:
    """The old tool's defaults: skip empty text and segments under 0.3 s. Part of every
    recording's fingerprint, so changing a rule re-cuts the channel."""

    min_duration_s: float = 0.3
    max_duration_s: float | None = None
    skip_empty_text: bool = True

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Cut:
    segment: TranscriptSegment
    start: int  # first sample
    end: int  # one past the last sample
    clipped: bool = False  # the transcript ran past the end of the audio

    @property
    def num_samples(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Skip:
    index: int
    reason: str  # a short stable phrase, so reasons can be counted across a channel
    detail: str = ""


def ms_to_sample(ms: float, sample_rate: int) -> int:
    return int(round(ms * sample_rate / 1000.0))


def plan_cuts(segments: list[TranscriptSegment], num_samples: int, sample_rate: int, rules: CutRules) -> tuple[list[Cut], list[Skip]]:
    cuts: list[Cut] = []
    skips: list[Skip] = []
    audio_ms = num_samples * 1000.0 / sample_rate
    for seg in segments:
        if seg.end_ms < seg.start_ms:
            skips.append(Skip(seg.index, "reversed times", f"start_ms {seg.start_ms:g} > end_ms {seg.end_ms:g}"))
            continue
        if seg.start_ms < 0:
            skips.append(Skip(seg.index, "negative start", f"start_ms {seg.start_ms:g}"))
            continue
        if rules.skip_empty_text and not seg.text:
            skips.append(Skip(seg.index, "empty text"))
            continue
        start = ms_to_sample(seg.start_ms, sample_rate)
        end = ms_to_sample(seg.end_ms, sample_rate)
        if start >= num_samples:
            skips.append(Skip(seg.index, "outside the audio", f"starts at {seg.start_ms:g} ms, audio ends at {audio_ms:.0f} ms"))
            continue
        clipped = end > num_samples
        end = min(end, num_samples)
        if end <= start:
            skips.append(Skip(seg.index, "zero length", f"{seg.start_ms:g}-{seg.end_ms:g} ms"))
            continue
        duration = (end - start) / sample_rate
        if duration < rules.min_duration_s:
            skips.append(Skip(seg.index, f"shorter than {rules.min_duration_s:g} s", f"{duration:.3f} s" + (" after clipping" if clipped else "")))
            continue
        if rules.max_duration_s is not None and duration > rules.max_duration_s:
            skips.append(Skip(seg.index, f"longer than {rules.max_duration_s:g} s", f"{duration:.3f} s"))
            continue
        cuts.append(Cut(seg, start, end, clipped))
    return cuts, skips
