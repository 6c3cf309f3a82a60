"""The codec core: random-weight NeuCodec built offline, batching that gives the single-clip codes
(and proof that naive zero-padded batching does not), the layer trim, and the stream on a real store."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neutts_assets.pipeline.encoding.codec import (
    MIN_SAMPLES,
    CodecSettings,
    CodecUnavailable,
    batch_key,
    build_random_neucodec,
    load_codec,
    n_codes,
    pad_batch,
)
from neutts_assets.pipeline.encoding.store import Stage2Layout, plan_encoding
from neutts_assets.pipeline.encoding.stream import StreamSettings, encode_stream, item_cost
from neutts_assets.pipeline.segments.manifest import SegmentsManifest
from neutts_assets.pipeline.segments.segment_file import Segment, encode_segment, read_segment
from neutts_assets.storage.local import LocalStore
from neutts_assets_tests.codec_corpus import mixed_length_clips, small_random_codec

OVERALL, PER_SEGMENT = 0.999, 0.99


def single_codes(codec, clips):
    """The old method: encode_code on one [1, 1, T] float32 clip at a time."""
    with torch.inference_mode():
        return [codec.model.encode_code(torch.from_numpy(pad_batch([c])))[0, 0].numpy() for c in clips]


def agreement(batched, single):
    per = [float(np.mean(b == s)) for b, s in zip(batched, single)]
    overall = float(np.mean(np.concatenate([b == s for b, s in zip(batched, single)])))
    return overall, min(per)


def code_count_groups(clips) -> list[list[int]]:
    """Clip indices grouped as the stream forms batches: by code count, mixed sample lengths inside."""
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(clips):
        groups.setdefault(batch_key(len(c)), []).append(i)
    return list(groups.values())


def batched_codes(codec, clips, groups):
    """Our method: one encode_batch call per group, codes put back in clip order."""
    batched: list = [None] * len(clips)
    for idx in groups:
        for i, codes in zip(idx, codec.encode_batch([clips[i] for i in idx])):
            batched[i] = codes
    return batched


def naive_batches(codec, clips, size=8):
    """Zero-pad clips of any length into one tensor, encode, cut each row to its own code count."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(clips), size):
            chunk = clips[i : i + size]
            codes = codec.model.encode_code(torch.from_numpy(pad_batch(chunk)))[:, 0].numpy()
            out += [codes[j, : n_codes(len(c))] for j, c in enumerate(chunk)]
    return out


def test_random_codec_gives_varied_valid_codes():
    codec = small_random_codec()
    assert "random-weights" in codec.label and codec.test_only
    clips = mixed_length_clips(groups=3, per_group=1)
    codes = single_codes(codec, clips)
    for clip, c in zip(clips, codes):
        assert c.dtype == np.int32 and len(c) == len(clip) // 320
        assert c.min() >= 0 and c.max() <= 65535
    allc = np.concatenate(codes)
    # default initialisation gives one code for everything; scaled weights must not
    assert len(np.unique(allc)) > 0.3 * len(allc), f"{len(np.unique(allc))} distinct codes in {len(allc)}"
    # and codes follow the audio: a different clip gives different codes
    other = single_codes(codec, [clips[0][::-1].copy()])[0]
    assert np.mean(other == codes[0]) < 0.5


def test_batches_of_one_code_count_agree_with_single_clips_and_naive_padding_does_not():
    codec = small_random_codec()
    clips = mixed_length_clips()
    single = single_codes(codec, clips)

    # Ours, as the stream forms batches: by code count, mixed sample lengths inside each batch.
    groups = code_count_groups(clips)
    assert all(len(g) >= 2 and len({len(clips[i]) for i in g}) == len(g) for g in groups)
    overall, worst = agreement(batched_codes(codec, clips, groups), single)
    assert overall >= OVERALL and worst >= PER_SEGMENT, (overall, worst)

    # Naive: the same clips zero-padded into batches of 8 regardless of length.
    n_overall, n_worst = agreement(naive_batches(codec, clips), single)
    assert not (n_overall >= OVERALL and n_worst >= PER_SEGMENT), (n_overall, n_worst)
    assert n_overall < 0.9, f"naive padding agreed on {n_overall:.3f}: the test would have no teeth"


def test_trimming_unused_w2v_bert_layers_keeps_codes_identical():
    full = build_random_neucodec("random", seed=3)
    layers = len(full.semantic_model.encoder.layers)
    trimmed = load_codec(CodecSettings(weights="random", seed=3))
    assert layers == 17 and trimmed.layers_trimmed == 1 and len(trimmed.model.semantic_model.encoder.layers) == 16
    clips = mixed_length_clips(groups=2, per_group=2, seed=5)
    with torch.inference_mode():
        for c in clips:
            a = full.encode_code(torch.from_numpy(pad_batch([c])))[0, 0].numpy()
            b = trimmed.encode_one(c)
            assert np.array_equal(a, b)


def test_features_computed_beforehand_give_encode_codes_exactly():
    """The stream computes w2v-BERT's features in its download threads and runs the model's steps
    itself: the codes must be encode_code's, bit for bit, on a batch of one code count."""
    codec = small_random_codec()
    clips = mixed_length_clips(groups=2, per_group=3, seed=9)
    for idx in code_count_groups(clips):
        group = [clips[i] for i in idx]
        with torch.inference_mode():
            whole = codec.model.encode_code(torch.from_numpy(pad_batch(group)))[:, 0].numpy()
        split = codec.encode_batch(group, [codec.features(c) for c in group])
        for w, s, c in zip(whole, split, group):
            assert np.array_equal(w[: n_codes(len(c))], s)


def test_encode_batch_refuses_mixed_code_counts_and_too_short_clips():
    codec = small_random_codec()
    with pytest.raises(ValueError, match="one code count"):
        codec.encode_batch([np.zeros(640, np.int16), np.zeros(1000, np.int16)])
    with pytest.raises(ValueError, match="shorter than 320"):
        codec.encode_batch([np.zeros(MIN_SAMPLES - 1, np.int16)])


def test_settings_reject_unknown_model_weights_and_dtype():
    with pytest.raises(ValueError, match="not one of"):
        CodecSettings(model_id="someone/else")
    with pytest.raises(ValueError, match="not one of"):
        CodecSettings(weights="lucky")
    with pytest.raises(ValueError, match="not one of"):
        CodecSettings(dtype="int4")
    with (
        pytest.raises(CodecUnavailable, match="CUDA is not available") if not torch.cuda.is_available() else _nothing()
    ):
        load_codec(CodecSettings(weights="random", device="cuda"))


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _stage1(store: LocalStore, channel: str, clips) -> dict:
    """Stage-1 files and their manifest, as segments_npz leaves them."""
    segments = []
    for i, clip in enumerate(clips):
        audio_id = f"rec_seg_{i}"
        key = f"stage1/{channel}/{audio_id}.npz"
        data = encode_segment(Segment(audio_id, channel, f"text {i}", "S1", "f", "d", "neutral", clip))
        store.write_bytes(key, data)
        segments.append(
            {
                "key": key,
                "audio_id": audio_id,
                "duration_sec": len(clip) / 16000,
                "bytes": len(data),
                "speaker_id": "S1",
            }
        )
    return {"channel": channel, "recordings": [{"recording_id": "rec", "audio_key": "a", "segments": segments}]}


def test_stream_on_a_store_writes_single_clip_codes_within_its_budget(tmp_path):
    codec = small_random_codec()
    store, channel = LocalStore(tmp_path), "ch"
    clips = mixed_length_clips(groups=4, per_group=3, seed=7)
    manifest = SegmentsManifest.from_dict(_stage1(store, channel, clips))
    layout = Stage2Layout(channel)
    sources = {o.key: (o.version, o.size) for o in store.list("stage1/")}
    plan = plan_encoding(manifest, layout, codec.label, sources, set(), MIN_SAMPLES)
    budget = 200_000  # a few segments at a time: forces the stream to wait for uploads
    tally = encode_stream(
        plan.todo, codec, store, StreamSettings(batch_seconds=3.0, budget_bytes=budget, host_workers=2, io_threads=2)
    )
    assert not tally.failed and len(tally.encoded) == len(clips)
    assert tally.peak_inflight_bytes <= budget + max(item_cost(i) for i in plan.todo)
    assert max(tally.batch_seconds) <= 3.0 or max(tally.batch_sizes) == 1
    single = single_codes(codec, clips)
    for i, clip in enumerate(clips):
        seg = read_segment(store.read_bytes(layout.segment_key(f"rec_seg_{i}")))
        assert seg.codec == codec.label and seg.codes.dtype == np.int32
        assert np.array_equal(seg.pcm16, clip) and seg.text == f"text {i}"
        assert np.mean(seg.codes == single[i]) >= PER_SEGMENT
    # A second plan over the same store finds everything done: nothing to encode.
    keys = {o.key for o in store.list(layout.channel_prefix)}
    again = plan_encoding(manifest, layout, codec.label, sources, keys, MIN_SAMPLES)
    assert not again.todo and len(again.done) == len(clips)
