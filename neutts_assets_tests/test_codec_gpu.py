"""On a CUDA machine (the `device` machine): the full-size random-weight NeuCodec on the GPU gives
the single-clip float32 codes in batches of one code count, and naive padding does not.
Skipped, and reported as skipped (pytest -ra), where CUDA is absent."""

from __future__ import annotations

import pytest
import torch

from neutts_assets.pipeline.encoding.codec import CodecSettings, load_codec
from neutts_assets_tests.codec_corpus import mixed_length_clips
from neutts_assets_tests.test_codec import (
    OVERALL,
    PER_SEGMENT,
    agreement,
    batched_codes,
    code_count_groups,
    naive_batches,
    single_codes,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the device machine)")


def test_full_size_codec_on_gpu_batches_agree_with_single_clips():
    codec = load_codec(CodecSettings(weights="random-full", device="cuda"))
    assert codec.device.type == "cuda" and codec.layers_trimmed == 8
    clips = mixed_length_clips(groups=6, per_group=4, seed=11)
    single = single_codes(codec, clips)
    overall, worst = agreement(batched_codes(codec, clips, code_count_groups(clips)), single)
    assert overall >= OVERALL and worst >= PER_SEGMENT, (overall, worst)
    n_overall, n_worst = agreement(naive_batches(codec, clips), single)
    assert not (n_overall >= OVERALL and n_worst >= PER_SEGMENT), (n_overall, n_worst)


def test_features_on_the_gpu_equal_the_extractor():
    """w2v-BERT's input features computed on CUDA (float64, as the codec does) against the numpy extractor."""
    import numpy as np

    from neutts_assets.pipeline.encoding.codec import model_input
    from neutts_assets.pipeline.encoding.w2v_features import W2vBertFeatures
    from neutts_assets_tests.test_w2v_features import reference

    features = W2vBertFeatures(device="cuda")
    worst = 0.0
    for clip in mixed_length_clips(groups=6, per_group=2, seed=13):
        y = model_input(clip)
        got = features(torch.from_numpy(y)[None].cuda()).cpu()
        worst = max(worst, float((got - reference(y)).abs().max()))
    print(f"features on CUDA: max abs diff {worst:.3g}")
    assert worst <= 1e-4 and np.isfinite(worst)
