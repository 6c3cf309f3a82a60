"""Speech clips for codec tests: cut from the shipped demo recordings at lengths chosen so that
several clips share a code count (and so a batch) while differing in sample length."""

from __future__ import annotations

import functools

import numpy as np

from neutts_assets.pipeline.encoding.codec import HOP, CodecSettings, load_codec
from neutts_assets.pipeline.segments.audio import decode_pcm16
from neutts_assets_tests.helpers import demo_audio


@functools.lru_cache(maxsize=1)
def demo_speech() -> np.ndarray:
    return decode_pcm16(demo_audio("austen_0870"))


def mixed_length_clips(groups: int = 8, per_group: int = 3, seed: int = 0) -> list[np.ndarray]:
    """`groups` code counts between 0.3 s and 4 s, `per_group` clips each at different sample
    lengths within the count (remainders 0..319), from different places in the recording."""
    rng = np.random.default_rng(seed)
    speech = demo_speech()
    counts = rng.choice(np.arange(15, 200), size=groups, replace=False)
    clips = []
    for n in counts:
        for r in rng.choice(HOP, size=per_group, replace=False):
            length = int(n) * HOP + int(r)
            start = int(rng.integers(0, len(speech) - length))
            clips.append(speech[start : start + length])
    order = rng.permutation(len(clips))  # arrival order must not matter
    return [clips[i] for i in order]


@functools.lru_cache(maxsize=1)
def small_random_codec():
    """The real NeuCodec classes, narrow, random weights (seed 0): shared by the codec tests."""
    return load_codec(CodecSettings(weights="random", device="cpu"))
