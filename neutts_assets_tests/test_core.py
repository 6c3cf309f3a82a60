"""The pure core, without Dagster or servers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neutts_assets import read_segment
from neutts_assets.pipeline.inventory.manifest import build_inventory
from neutts_assets.pipeline.inventory.source_layout import ChannelLayout, UnsafeNameError, check_name
from neutts_assets.pipeline.inventory.transcripts import (
    SegmentProblem,
    TranscriptError,
    TranscriptSegment,
    parse_transcript,
)
from neutts_assets.pipeline.segments.audio import AudioDecodeError, decode_pcm16
from neutts_assets.pipeline.segments.cutting import CutRules, plan_cuts
from neutts_assets.storage.store import ObjectInfo
from neutts_assets_tests.helpers import DEMO_IDS, convert, demo_audio

# transcripts ---------------------------------------------------------------------------------


def test_both_transcript_shapes_and_the_old_defaults():
    seg = {"start_ms": 10, "end_ms": 900.5, "text": " hi ", "speaker_id": "SPEAKER_01", "gender": "male"}
    for doc in ([seg], {"segments": [seg]}):
        (s,), problems = parse_transcript(json.dumps(doc).encode(), "t.json")
        assert problems == []
        assert (s.start_ms, s.end_ms, s.text, s.speaker_id, s.gender, s.dialect, s.tone) == (
            10,
            900.5,
            "hi",
            "SPEAKER_01",
            "male",
            "unknown",
            "neutral",
        )
    (s,), _ = parse_transcript(b'[{"start_ms": 0, "end_ms": 5, "text": "x", "speaker_id": null, "tone": ""}]', "t")
    assert (s.speaker_id, s.tone) == ("UNKNOWN", "neutral")


@pytest.mark.parametrize(
    "data, words",
    [
        (b"{", "malformed JSON"),
        (b"3.5", "got float"),
        (b'"text"', "got str"),
        (b'{"segs": []}', "no 'segments' list"),
        (b"\xff\xfe[]", "not UTF-8"),
    ],
)
def test_unusable_transcripts_raise_naming_the_object(data, words):
    with pytest.raises(TranscriptError) as err:
        parse_transcript(data, "processed_runs/x/audio_1.json")
    assert "processed_runs/x/audio_1.json" in str(err.value) and words in str(err.value)


def test_bad_segments_are_problems_not_failures():
    doc = [
        {"start_ms": "1", "end_ms": 2, "text": "a"},
        {"start_ms": 1, "text": "b"},
        [],
        {"start_ms": 0, "end_ms": 1e3, "text": 7},
        {"start_ms": 0, "end_ms": 1000, "text": "ok\u0000 مرحبا"},
    ]
    segs, problems = parse_transcript(json.dumps(doc).encode(), "t")
    assert [p.index for p in problems] == [0, 1, 2, 3]
    assert segs[0].index == 4 and segs[0].text == "ok مرحبا"  # NUL removed, Arabic kept
    assert "not a number" in problems[0].reason and "missing end_ms" in problems[1].reason


# cutting -------------------------------------------------------------------------------------


def _seg(i, a, b, text="x"):
    return TranscriptSegment(i, a, b, text)


def test_cut_rules():
    segs = [
        _seg(0, 0, 1000),
        _seg(1, 500, 400),
        _seg(2, 100, 350),
        _seg(3, 100, 900, ""),
        _seg(4, 9_000, 12_000),
        _seg(5, 20_000, 21_000),
        _seg(6, 700, 700),
        _seg(7, -5, 500),
    ]
    cuts, skips = plan_cuts(segs, num_samples=10 * 16000, sample_rate=16000, rules=CutRules())
    assert [(c.segment.index, c.start, c.end, c.clipped) for c in cuts] == [
        (0, 0, 16000, False),
        (4, 144000, 160000, True),
    ]
    assert {s.index: s.reason for s in skips} == {
        1: "reversed times",
        2: "shorter than 0.3 s",
        3: "empty text",
        5: "outside the audio",
        6: "zero length",
        7: "negative start",
    }
    # the rules are configuration
    cuts, _ = plan_cuts(
        segs, 10 * 16000, 16000, CutRules(min_duration_s=0.1, skip_empty_text=False, max_duration_s=0.9)
    )
    assert sorted(c.segment.index for c in cuts) == [2, 3]
    assert CutRules().fingerprint() != CutRules(min_duration_s=0.5).fingerprint()


def test_clipping_re_checks_the_minimum_duration():
    cuts, skips = plan_cuts([_seg(0, 9_900, 12_000)], 10 * 16000, 16000, CutRules())
    assert cuts == [] and skips[0].reason == "shorter than 0.3 s" and "after clipping" in skips[0].detail


# decoding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("rec_id", DEMO_IDS)
def test_every_demo_container_decodes_like_librosa(rec_id):
    """Our ffmpeg path against the old librosa path: same length and the same waveform."""
    import librosa

    path = demo_audio(rec_id)
    ours = decode_pcm16(path).astype(np.float32) / 32768
    old, _ = librosa.load(path, sr=16000, mono=True)
    assert abs(len(ours) - len(old)) <= 0.01 * len(old) + 400  # codec priming differs by a few ms at most
    n = min(len(ours), len(old))
    corr = np.corrcoef(ours[:n], old[:n])[0, 1]
    assert corr > 0.98, f"{path.name}: correlation {corr:.4f}"


@pytest.mark.parametrize(
    "args, ext",
    [(["-ar", "8000"], "wav"), (["-ar", "96000", "-ac", "2"], "flac"), (["-ar", "44100", "-ac", "6"], "wav")],
)
def test_sample_rates_and_channel_counts(tmp_path, args, ext):
    src = demo_audio("austen_0870")
    out = convert(src, tmp_path / f"x.{ext}", *args)
    pcm = decode_pcm16(out)
    assert abs(len(pcm) / 16000 - 7.1) < 0.02


def test_partial_download_decodes_what_is_there(tmp_path):
    data = demo_audio("sonnet001").read_bytes()
    part = tmp_path / "sonnet001.mp3.part"
    part.write_bytes(data[: len(data) // 2])
    assert 20 < len(decode_pcm16(part)) / 16000 < 33


@pytest.mark.parametrize("content, words", [(b"", "cannot decode"), (b"garbage" * 100, "cannot decode")])
def test_undecodable_audio(tmp_path, content, words):
    p = tmp_path / "x.wav"
    p.write_bytes(content)
    with pytest.raises(AudioDecodeError) as err:
        decode_pcm16(p, name="Chan/audio/x.wav")
    assert "Chan/audio/x.wav" in str(err.value) and words in str(err.value)


def test_video_without_audio_stream(tmp_path):
    import subprocess

    out = tmp_path / "v.webm"
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "color=c=black:s=32x32:d=1",
            "-c:v",
            "libvpx",
            str(out),
        ],
        check=True,
    )
    with pytest.raises(AudioDecodeError, match="no audio stream"):
        decode_pcm16(out)


# segment file --------------------------------------------------------------------------------


def test_reads_the_old_float_segment_files(tmp_path):
    wave = np.arange(1600, dtype=np.float32) / 1600 - 0.5
    path = tmp_path / "old.npz"
    np.savez_compressed(
        path,
        audio=wave,
        codes=np.array([]),
        text="t",
        speaker_id="S",
        channel="c",
        gender="g",
        dialect="d",
        tone="n",
        duration_sec=0.1,
        audio_id="x_seg_0",
    )
    seg = read_segment(path)
    assert np.allclose(seg.audio, wave, atol=1 / 32768) and seg.audio_id == "x_seg_0"


# layout and inventory ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", ".", "a/b", "/etc", "a\\b", "x\ny", "", " ", "..hidden", "a" * 201])
def test_unsafe_names(name):
    with pytest.raises(UnsafeNameError):
        check_name(name, "recording ID")


@pytest.mark.parametrize("name", ["Atheer - أثير", "ZadTVchannel", "قناة الجزيرة", "a.b", "x" * 200])
def test_names_with_spaces_and_arabic_are_fine(name):
    assert check_name(name, "channel") == name


def _obj(key):
    return ObjectInfo(key=key, size=10, version="1")


def test_inventory_pairs_and_explains_the_rest():
    layout = ChannelLayout.for_channel("Atheer_-", {"Atheer_-": "Atheer - أثير"})
    t = "processed_runs/processed_Atheer_-/transcripts/"
    a = "Atheer - أثير/audio/"
    transcripts = [
        _obj(t + n)
        for n in ["audio_v1.json", "audio_v2.json", "audio_v3.json", "audio_v4.json", "notes.json", "audio_../x.json"]
    ]
    audio = [_obj(a + n) for n in ["v1.webm", "v1.webm.part", "v2.m4a.part", "v3.mp3", "v3.wav", "v5.ogg", "v6.txt"]]
    inv = build_inventory(layout, transcripts, audio, read=lambda key: key.encode())
    assert {e.recording_id: (e.audio_key.rsplit("/", 1)[1], e.audio_partial) for e in inv.entries} == {
        "v1": ("v1.webm", False),
        "v2": ("v2.m4a.part", True),
        "v3": ("v3.wav", False),
    }
    kinds = {u.key.rsplit("/", 1)[-1]: u.kind for u in inv.unpaired}
    assert kinds == {
        "audio_v4.json": "transcript_without_audio",
        "notes.json": "bad_name",
        "x.json": "bad_name",
        "v5.ogg": "audio_without_transcript",
        "v6.txt": "bad_name",
    }
    # a recording's other audio objects are its fallbacks, in the order stage 1 tries them
    alternates = {e.recording_id: [a.key.rsplit("/", 1)[1] for a in e.alternates] for e in inv.entries}
    assert alternates == {"v1": ["v1.webm.part"], "v2": [], "v3": ["v3.mp3"]}
    # content, not listing order or unrelated objects, decides the fingerprint
    again = build_inventory(
        layout, list(reversed(transcripts)), audio + [_obj(a + "v7.wav")], read=lambda key: key.encode()
    )
    assert again.fingerprint() == inv.fingerprint()
    changed = build_inventory(layout, transcripts, audio, read=lambda key: key.encode() + b" edited")
    assert changed.fingerprint() != inv.fingerprint()


def test_channel_names_are_checked():
    with pytest.raises(UnsafeNameError):
        ChannelLayout.for_channel("../other")
    with pytest.raises(UnsafeNameError):
        ChannelLayout.for_channel("ok", {"ok": "../../etc"})


# streamed cutting ----------------------------------------------------------------------------


def test_the_streamed_cut_equals_cutting_the_whole_audio():
    """Random transcripts (overlaps, reversed, empty, past the end, too long for max_duration)
    against random audio arriving in random block sizes: the same decisions as plan_cuts, and
    samples equal to the slice of the whole, with only a bounded window held."""
    from neutts_assets.pipeline.segments.cutting import StreamCutter

    rng = np.random.default_rng(1)
    audio = rng.integers(-32768, 32767, size=16000 * 20, dtype=np.int16)
    for trial in range(60):
        segs = []
        for i in range(30):
            a = float(rng.uniform(-500, 22_000))
            segs.append(
                _seg(i, round(a, 1), round(a + float(rng.uniform(-200, 8000)), 1), "x" if rng.random() > 0.1 else "")
            )
        rules = CutRules(max_duration_s=(None, 3.0)[trial % 2])
        cuts, skips = plan_cuts(segs, len(audio), 16000, rules)
        cutter, got, pos, held = StreamCutter(segs, 16000, rules), [], 0, 0
        while pos < len(audio):
            n = int(rng.integers(1, 40_000))
            got += cutter.feed(audio[pos : pos + n])
            pos += n
            held = max(held, cutter.held_samples)
        got += cutter.finish()
        assert sorted((c.segment.index, c.start, c.end, c.clipped) for c, _ in got) == [
            (c.segment.index, c.start, c.end, c.clipped) for c in cuts
        ]
        assert cutter.skips == skips
        for c, pcm in got:
            assert np.array_equal(pcm, audio[c.start : c.end])
        if rules.max_duration_s:  # the window: the longest segment plus the last block
            assert held <= 3.0 * 16000 + 40_000


def test_segments_over_the_ceiling_are_skipped_without_holding_audio():
    from neutts_assets.pipeline.segments.cutting import MAX_SEGMENT_S, StreamCutter

    cutter = StreamCutter([_seg(0, 0, (MAX_SEGMENT_S + 1) * 1000), _seg(1, 1000, 2000)], 16000, CutRules())
    for _ in range(10):
        cutter.feed(np.zeros(160_000, np.int16))
        assert cutter.held_samples <= 160_000
    assert [c.segment.index for c, _ in cutter.finish()] == [] and cutter.skips[
        0
    ].reason == f"longer than {MAX_SEGMENT_S:g} s"


def test_times_in_seconds_are_refused_but_one_short_segment_is_not():
    with pytest.raises(TranscriptError, match="times look like seconds"):
        parse_transcript(
            json.dumps(
                [{"start_ms": 0.5, "end_ms": 3.2, "text": "a"}, {"start_ms": 3.4, "end_ms": 9.9, "text": "b"}]
            ).encode(),
            "t",
        )
    segs, _ = parse_transcript(
        json.dumps(
            [{"start_ms": 0, "end_ms": 50, "text": "a"}, {"start_ms": 100, "end_ms": 2000, "text": "b"}]
        ).encode(),
        "t",
    )
    assert len(segs) == 2


def test_duplicates_are_problems_naming_the_first():
    doc = [
        {"start_ms": 0, "end_ms": 900, "text": "a"},
        {"start_ms": 0, "end_ms": 900, "text": "b"},
        {"start_ms": 0, "end_ms": 900, "text": " a "},
    ]
    segs, problems = parse_transcript(json.dumps(doc).encode(), "t")
    assert [s.index for s in segs] == [0, 1]
    assert problems == [SegmentProblem(2, "same times and text as segment 0", "duplicate segment")]
