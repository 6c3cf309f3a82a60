"""Distributions of the quality scores, as counts in fixed fine bins, so that a channel's
distribution is the sum of its shards' (a kept shard is never read again for the card) and its
memory does not grow with the rows.

Quantiles are read off the cumulative fine histogram, interpolated within the bin: exact to one
bin width (the `step` below: 0.01 for ratios, 0.5 dB / 0.5 LU, 0.25 chars/s, 0.02 MOS).
Values outside a score's range are counted in its first or last bin; a value that is not finite
is counted as not scored (rows.py).
"""

from __future__ import annotations

import math
from collections import Counter

# score -> (low, high, fine step, coarse step for the card's histogram)
RANGES: dict[str, tuple[float, float, float, float]] = {
    "speech_ratio": (0.0, 1.0, 0.01, 0.1),
    "snr_db": (-10.0, 60.0, 0.5, 10.0),
    "clipping_fraction": (0.0, 0.05, 0.0005, 0.005),
    "loudness_lufs": (-70.0, 0.0, 0.5, 10.0),
    "chars_per_second": (0.0, 40.0, 0.25, 5.0),
    "dnsmos_sig": (1.0, 5.0, 0.02, 0.5),
    "dnsmos_bak": (1.0, 5.0, 0.02, 0.5),
    "dnsmos_ovrl": (1.0, 5.0, 0.02, 0.5),
}
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
QUANTILE_NAMES = tuple(f"p{round(q * 100)}" for q in QUANTILES)  # the keys quantiles() gives
QUANTILE_HEADERS = tuple("median" if name == "p50" else name for name in QUANTILE_NAMES)  # as tables head them


def _bins(name: str) -> int:
    lo, hi, step, _ = RANGES[name]
    return round((hi - lo) / step)


def fine_bin(name: str, value: float) -> int:
    lo, _, step, _ = RANGES[name]
    return min(max(int(math.floor((value - lo) / step + 1e-9)), 0), _bins(name) - 1)


def quantiles(name: str, counts: Counter | dict) -> dict[str, float] | None:
    """p5, p25, p50, p75, p95 of a score from its fine-bin counts (bin index as str or int)."""
    lo, _, step, _ = RANGES[name]
    dense = [0] * _bins(name)
    for b, n in counts.items():
        dense[int(b)] += n
    total = sum(dense)
    if not total:
        return None
    out, seen, i = {}, 0, 0
    for q, key in zip(QUANTILES, QUANTILE_NAMES):
        target = q * total
        while i < len(dense) - 1 and seen + dense[i] < target:
            seen += dense[i]
            i += 1
        within = (target - seen) / dense[i] if dense[i] else 0.0
        out[key] = round(lo + (i + min(max(within, 0.0), 1.0)) * step, 4)
    return out


def coarse_histogram(name: str, counts: Counter | dict) -> dict[str, int]:
    """The card's histogram: the fine counts summed into the score's coarse bins."""
    lo, hi, step, coarse = RANGES[name]
    edges = [lo + k * coarse for k in range(round((hi - lo) / coarse) + 1)]
    labels = [f"{a:g} to {b:g}" for a, b in zip(edges, edges[1:])]
    per = round(coarse / step)
    out = dict.fromkeys(labels, 0)
    for b, n in counts.items():
        out[labels[min(int(b) // per, len(labels) - 1)]] += n
    return out
