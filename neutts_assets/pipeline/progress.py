"""Progress lines for long runs (files done / total, segments, rate, ETA), so a run's log moves."""

from __future__ import annotations

import time
from collections.abc import Callable


class Progress:
    def __init__(self, log: Callable[[str], None], total: int, label: str, every_s: float = 10.0, unit: str = "files"):
        self.log, self.total, self.label, self.every_s, self.unit = log, total, label, every_s, unit
        self.done = self.segments = 0
        self.audio_seconds = 0.0
        self.start = self._last = time.monotonic()

    def update(self, segments: int, audio_seconds: float, done: int = 1) -> None:
        self.done += done
        self.segments += segments
        self.audio_seconds += audio_seconds
        now = time.monotonic()
        if now - self._last >= self.every_s or self.done >= self.total:
            self._last = now
            self.log(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        return (
            f"{self.label}: {self.unit} {self.done}/{self.total}, segments {self.segments}, "
            f"{self.audio_seconds / elapsed:.1f} audio-s/s, {rate * 60:.1f} {self.unit}/min, "
            f"ETA {_duration(eta)}"
        )


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "unknown"
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )
