"""pipeline/encoding/w2v_features against transformers' SeamlessM4TFeatureExtractor (the numpy extractor NeuCodec
calls) on the shipped demo speech: whole recordings, cuts of many lengths (odd and even frame
counts, the shortest model inputs), silence, a DC offset, and batches of equal-length clips."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch

from neutts_assets.pipeline.encoding.codec import as_float, model_input
from neutts_assets.pipeline.encoding.w2v_features import W2vBertFeatures, num_frames, num_output_frames
from neutts_assets.pipeline.segments.audio import decode_pcm16
from neutts_assets_tests.helpers import DEMO_AUDIO

FLOAT64_BOUND = 1e-4  # measured: 0 (bit-identical) on everything below
FLOAT32_BOUND = 1.5e-3  # measured: up to 8.7e-4 (the batch's quiet sonnet001 rows), 3.2e-4 elsewhere; 0 on silence


@functools.lru_cache(maxsize=1)
def extractor():
    from transformers import SeamlessM4TFeatureExtractor

    return SeamlessM4TFeatureExtractor()  # as the codec builds it: w2v-bert-2.0's defaults


def reference(y: np.ndarray) -> torch.Tensor:
    """What Codec.features computes: the extractor on one [1, T] float32 tensor."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # one-frame inputs: "Degrees of freedom <= 0"
        return extractor()(torch.from_numpy(y)[None], sampling_rate=16000, return_tensors="pt").input_features


@functools.cache
def features(dtype: torch.dtype) -> W2vBertFeatures:
    return W2vBertFeatures(compute_dtype=dtype)


@functools.lru_cache(maxsize=1)
def recordings() -> dict[str, np.ndarray]:
    return {p.stem: decode_pcm16(p) for p in sorted(DEMO_AUDIO.iterdir())}


def speech() -> np.ndarray:
    return recordings()["austen_0870"]


def max_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.equal(got.isnan(), want.isnan())
    both = ~want.isnan()
    return float((got[both] - want[both]).abs().max()) if both.any() else 0.0


def check(clips: list[np.ndarray], label: str, float32: bool = True) -> None:
    """Each clip alone against the extractor, in both compute dtypes."""
    wants = [reference(y) for y in clips]
    for dtype in (torch.float64, torch.float32) if float32 else (torch.float64,):
        worst = 0.0
        for y, want in zip(clips, wants):
            got = features(dtype)(torch.from_numpy(y)[None])
            assert got.shape == (1, num_output_frames(len(y)), 160)
            worst = max(worst, max_diff(got, want))
        print(f"{label} {str(dtype)[6:]}: max abs diff {worst:.3g}")
        assert worst <= (FLOAT64_BOUND if dtype == torch.float64 else FLOAT32_BOUND), (label, dtype, worst)


def test_whole_recordings():
    """The six demo recordings (3 s to 53 s, six codecs' decodes) as the codec feeds them."""
    check([model_input(pcm) for pcm in recordings().values()], "recordings")


@pytest.mark.parametrize("length", [320, 500, 639, 640, 700, 959, 1000, 1234, 4321, 16_000, 16_320, 88_000])
def test_model_inputs_of_clip_lengths(length):
    """model_input pads to a multiple of 320: 640 and 960 samples are the two shortest inputs."""
    y = model_input(speech()[8_000 : 8_000 + length])
    assert len(y) % 320 == 0
    check([y], f"model_input({length}) = {len(y)} samples")


def test_odd_and_even_frame_counts():
    """Any length, not only model inputs (whose frame count, 2 * T/320 - 2, is always even, so the
    codec never sees the extractor's padding frame): odd counts get a zero frame after normalising."""
    lengths = [400 + 160 * k + r for k in (1, 2, 3, 4, 9, 10, 299, 300) for r in (0, 77, 159)]
    assert {num_frames(n) % 2 for n in lengths} == {0, 1}
    clips = [as_float(speech()[20_000 : 20_000 + n]) for n in lengths]
    check(clips, "odd/even frame counts")
    odd = next(y for y in clips if num_frames(len(y)) % 2)
    out = features(torch.float64)(torch.from_numpy(odd)[None])
    assert torch.all(out[0, -1, 80:] == 0.0)  # the padding frame: 0.0, not normalised


def test_silence():
    """All zeros: every bin sits on the mel floor, variance 0, and the output is the float32 rounding
    of numpy's mean over sqrt(1e-7), about 3e-3 for some frame counts and 0 for others; we reproduce it."""
    lengths = [640, 960, 1280, 1600, 3200, 16_000, 16_320, 88_320]
    clips = [np.zeros(n, np.float32) for n in lengths]
    assert max(float(reference(y).abs().max()) for y in clips) > 1e-3  # the rounding noise is there...
    check(clips, "silence")  # ...and matched


def test_dc_offset():
    """remove_dc_offset works per frame: speech on a large DC offset, and a clip that is only DC
    (float64 only: in float32 the frame mean leaves a residue above the mel floor)."""
    y = model_input(speech()[30_000:62_000])
    check([np.clip(y + 0.25, -1, 1).astype(np.float32), (y * 0.5 - 0.3).astype(np.float32)], "speech + DC")
    check([np.full(n, 0.1, np.float32) for n in (960, 1280, 3200, 16_320)], "DC only", float32=False)


def test_shortest_inputs():
    """Fewer than 400 samples: no frames, an empty result; 400..559: one frame, whose ddof=1
    variance is 0/0, so the extractor gives NaN (and the zero padding frame), as do we."""
    for n in (240, 320, 399):
        y = as_float(speech()[5_000 : 5_000 + n])
        assert reference(y).shape == (1, 0, 160)
        assert features(torch.float64)(torch.from_numpy(y)[None]).shape == (1, 0, 160)
    check([as_float(speech()[5_000 : 5_000 + n]) for n in (400, 480, 559)], "one frame")


def test_batches_match_each_clip_alone():
    """A batch of equal-length clips (speech from every recording, silence, DC) in one call: each
    row is the extractor's result for that clip alone."""
    n = 16_000 * 2 - 1  # a model input of 32 000 samples
    clips = [model_input(pcm[i * 3_000 : i * 3_000 + n]) for pcm in recordings().values() for i in range(2)]
    clips += [model_input(np.zeros(n, np.int16)), (model_input(speech()[:n]) * 0.5 + 0.2).astype(np.float32)]
    batch = torch.from_numpy(np.stack(clips))
    want = torch.cat([reference(y) for y in clips])
    for dtype, bound in ((torch.float64, FLOAT64_BOUND), (torch.float32, FLOAT32_BOUND)):
        got = features(dtype)(batch)
        assert got.shape == (len(clips), num_output_frames(batch.shape[1]), 160)
        diff = max_diff(got, want)
        print(f"batch of {len(clips)} {str(dtype)[6:]}: max abs diff {diff:.3g}")
        assert diff <= bound
    # 1-D input is one row; a float64 waveform is first rounded to float32, as the extractor does
    assert torch.equal(features(torch.float64)(batch[0]), features(torch.float64)(batch[:1]))
    assert torch.equal(features(torch.float64)(batch[:1].double()), features(torch.float64)(batch[:1]))


def test_blocks_and_mel_product_paths():
    """The CPU path's frame blocks (any size, rows together) and the whole-batch block a GPU uses
    give the same features (in float32, to a few ULPs: the BLAS kernel depends on the block's shape);
    so does the float64 mel product float32 mode uses off the CPU."""
    clips = [model_input(pcm[4_000:12_000]) for pcm in recordings().values()]  # 50 frames each
    batch = torch.from_numpy(np.stack(clips))
    want = torch.cat([reference(y) for y in clips])
    for dtype, bound in ((torch.float64, FLOAT64_BOUND), (torch.float32, FLOAT32_BOUND)):
        whole = W2vBertFeatures(compute_dtype=dtype, cpu_block_frames=10**9)(batch)
        assert max_diff(whole, want) <= bound
        for block in (1, 50, 100):  # 1, 8 and 16 frames of the 6 rows per step
            got = W2vBertFeatures(compute_dtype=dtype, cpu_block_frames=block)(batch)
            if dtype == torch.float64:
                assert torch.equal(got, whole)
            else:
                # The BLAS picks its kernel by the matrix's shape (and the CPU: AVX-512 here), so a float32
                # sum over a 6-row block may round differently from a 300-row one: a few ULPs, no more.
                ulps = (got - whole).abs().max() / (torch.finfo(torch.float32).eps * whole.abs().max())
                assert ulps <= 8, ulps
    gpu_like = W2vBertFeatures(compute_dtype=torch.float32)
    gpu_like._mel_in_float64 = True
    diff = max_diff(gpu_like(batch), want)
    print(f"float32 with the float64 mel product: max abs diff {diff:.3g}")
    assert diff <= FLOAT32_BOUND
