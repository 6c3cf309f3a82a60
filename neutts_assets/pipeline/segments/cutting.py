"""Turning transcript segments into sample ranges of the decoded audio, with the skip rules.

A segment's samples are exactly audio[round(start_ms * 16): round(end_ms * 16)] at 16 kHz.
"""

from __future__ import annotations

import collections
import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np

from neutts_assets.pipeline.inventory.transcripts import TranscriptSegment, invisible_codes, is_visibly_empty
from neutts_assets.pipeline.segments.segment_file import DEFAULT_AUDIO_FORMAT, check_audio_format


@dataclass(frozen=True)
class CutRules:
    """The old tool's defaults: skip empty text and segments under 0.3 s; and the segment files'
    audio format. Part of every recording's fingerprint, so changing a rule re-cuts the channel."""

    min_duration_s: float = 0.3
    max_duration_s: float | None = None
    skip_empty_text: bool = True
    # How each cut is written (segment_file.AUDIO_FORMATS): a change re-cuts, like a rule's.
    audio_format: str = DEFAULT_AUDIO_FORMAT

    def __post_init__(self):
        check_audio_format(self.audio_format)

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


# The longest segment stage 1 cuts, whatever the rules say: the streamed cutter holds the samples
# from the earliest unfinished segment's start, so this bounds its memory (600 s: 19 MB of int16).
# Not part of CutRules' fingerprint, so cuts made before it existed are not redone for it.
MAX_SEGMENT_S = 600.0


def _limit(rules: CutRules) -> float:
    return MAX_SEGMENT_S if rules.max_duration_s is None else min(rules.max_duration_s, MAX_SEGMENT_S)


@dataclass
class _Open:
    segment: TranscriptSegment
    start: int
    end: int
    holds: bool  # its samples may be needed: not skipped whatever the audio's length turns out to be
    done: bool = False


class StreamCutter:
    """Cuts segments out of audio that arrives block by block, keeping only the samples from the
    earliest start of a segment not yet cut (overlapping segments are fine; each is bounded by
    MAX_SEGMENT_S). A segment is decided once the stream has passed its end; at the end of the
    audio, those still open are clipped to it or are outside it. Decisions and samples are exactly
    those of cutting the whole decoded audio at once: audio[start:end].

        cutter = StreamCutter(segments, 16000, rules)
        for block in blocks:
            for cut, pcm in cutter.feed(block): ...
        for cut, pcm in cutter.finish(): ...
        cutter.skips  # in transcript order, once finished
    """

    def __init__(self, segments: list[TranscriptSegment], sample_rate: int, rules: CutRules):
        self.sample_rate, self.rules = sample_rate, rules
        self.skips: list[Skip] = []
        self.pos = 0  # samples seen
        self._blocks: collections.deque[tuple[int, np.ndarray]] = (
            collections.deque()
        )  # (first sample, samples), contiguous up to pos
        limit = _limit(rules)
        pending: list[_Open] = []
        for seg in segments:
            if seg.end_ms < seg.start_ms:
                self.skips.append(
                    Skip(seg.index, "reversed times", f"start_ms {seg.start_ms:g} > end_ms {seg.end_ms:g}")
                )
            elif seg.start_ms < 0:
                self.skips.append(Skip(seg.index, "negative start", f"start_ms {seg.start_ms:g}"))
            elif rules.skip_empty_text and is_visibly_empty(seg.text):
                # Only invisible characters (zero-width, direction marks...) is empty text too.
                self.skips.append(
                    Skip(
                        seg.index,
                        "empty text",
                        f"only invisible characters: {invisible_codes(seg.text)}" if seg.text else "",
                    )
                )
            else:
                start, end = ms_to_sample(seg.start_ms, sample_rate), ms_to_sample(seg.end_ms, sample_rate)
                length = (end - start) / sample_rate
                pending.append(
                    _Open(seg, start, end, holds=end > start and length >= rules.min_duration_s and length <= limit)
                )
        self._by_start = sorted(pending, key=lambda o: (o.start, o.segment.index))
        self._first = 0  # index in _by_start of the earliest segment not done
        # decided once pos reaches max(end, start + 1): the stream then shows the segment lies in the audio
        self._by_due = sorted(pending, key=lambda o: (max(o.end, o.start + 1), o.segment.index))
        self._due = 0

    def feed(self, block: np.ndarray) -> list[tuple[Cut, np.ndarray]]:
        if len(block):
            self._blocks.append((self.pos, block))
            self.pos += len(block)
        out = []
        while (
            self._due < len(self._by_due)
            and max(self._by_due[self._due].end, self._by_due[self._due].start + 1) <= self.pos
        ):
            cut = self._decide(self._by_due[self._due])
            if cut is not None:
                out.append((cut, self._samples(cut.start, cut.end)))
            self._due += 1
        self._trim()
        return out

    def finish(self) -> list[tuple[Cut, np.ndarray]]:
        """The audio ended at `pos`: the segments still open are clipped to it or lie outside it."""
        out = []
        for o in self._by_due[self._due :]:
            cut = self._decide(o)
            if cut is not None:
                out.append((cut, self._samples(cut.start, cut.end)))
        self._due = len(self._by_due)
        self._blocks.clear()
        self.skips.sort(key=lambda s: s.index)
        return out

    def _decide(self, o: _Open) -> Cut | None:
        """Records a skip, or returns the cut; `pos` is the audio's length, or a point past the segment."""
        o.done = True
        seg, rate, num = o.segment, self.sample_rate, self.pos
        if o.start >= num:
            self.skips.append(
                Skip(
                    seg.index,
                    "outside the audio",
                    f"starts at {seg.start_ms:g} ms, audio ends at {num * 1000.0 / rate:.0f} ms",
                )
            )
            return None
        clipped = o.end > num
        end = min(o.end, num)
        if end <= o.start:
            self.skips.append(Skip(seg.index, "zero length", f"{seg.start_ms:g}-{seg.end_ms:g} ms"))
            return None
        duration = (end - o.start) / rate
        if duration < self.rules.min_duration_s:
            self.skips.append(
                Skip(
                    seg.index,
                    f"shorter than {self.rules.min_duration_s:g} s",
                    f"{duration:.3f} s" + (" after clipping" if clipped else ""),
                )
            )
            return None
        # The transcript's own length: a segment claiming more than the limit is not cut, even
        # where the audio ends sooner (its text would not match what is left of it).
        limit, claimed = _limit(self.rules), (o.end - o.start) / rate
        if claimed > limit:
            detail = f"{claimed:.3f} s" + (
                ""
                if self.rules.max_duration_s is not None and limit == self.rules.max_duration_s
                else " (the most stage 1 cuts)"
            )
            self.skips.append(Skip(seg.index, f"longer than {limit:g} s", detail))
            return None
        return Cut(seg, o.start, end, clipped)

    def _samples(self, start: int, end: int) -> np.ndarray:
        parts = [b[max(start - at, 0) : end - at] for at, b in self._blocks if at < end and at + len(b) > start]
        return parts[0].copy() if len(parts) == 1 else np.concatenate(parts)

    def _trim(self) -> None:
        while self._first < len(self._by_start) and (
            self._by_start[self._first].done or not self._by_start[self._first].holds
        ):
            self._first += 1
        keep_from = self.pos if self._first == len(self._by_start) else min(self._by_start[self._first].start, self.pos)
        while self._blocks and self._blocks[0][0] + len(self._blocks[0][1]) <= keep_from:
            self._blocks.popleft()

    @property
    def needed_samples(self) -> int:
        """Where the last segment it would cut, given audio long enough, ends: how much audio the
        transcript needs (0 when it would cut nothing)."""
        return max((o.end for o in self._by_start if o.holds), default=0)

    @property
    def held_samples(self) -> int:
        return sum(len(b) for _, b in self._blocks)


def plan_cuts(
    segments: list[TranscriptSegment], num_samples: int, sample_rate: int, rules: CutRules
) -> tuple[list[Cut], list[Skip]]:
    """The decisions of StreamCutter for audio of `num_samples`, without the audio."""
    cutter = StreamCutter(segments, sample_rate, rules)
    cutter.pos = num_samples
    cuts = [cut for o in cutter._by_due if (cut := cutter._decide(o)) is not None]
    cutter.skips.sort(key=lambda s: s.index)
    return sorted(cuts, key=lambda c: c.segment.index), cutter.skips
