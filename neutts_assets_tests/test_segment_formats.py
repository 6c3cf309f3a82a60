"""Segment files as the users' scripts read them: `np.load(f)["audio"]` is the waveform in every
default file, stage 1's and stage 2's; the FLAC option has no `audio` key, so an old reader fails
loudly; `read_segment` reads every format ever written (old scripts, format 1, format 2)."""

from __future__ import annotations

import io
import math
import zipfile

import numpy as np
import pytest
import soundfile as sf
from datasets import Audio, Dataset, Features

from neutts_assets.pipeline.dataset.rows import read_row
from neutts_assets.pipeline.segments.npz_zip import raw_members
from neutts_assets.pipeline.segments.segment_file import (
    AUDIO_FORMATS,
    STRING_KEYS,
    Segment,
    encode_segment,
    flac_bytes,
    read_audio,
    read_segment,
    same_audio_and_text,
    same_members_but_codes,
    with_codes,
)


def _pcm(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pcm = np.sin(np.arange(int(16000 * seconds)) / 7) * 20000 + rng.normal(0, 500, int(16000 * seconds))
    pcm = pcm.clip(-32768, 32767).astype(np.int16)
    pcm[:2] = (-32768, 32767)  # both ends of the range
    return pcm


def _segment(pcm) -> Segment:
    return Segment(
        audio_id="r_seg_3",
        channel="Atheer_-",
        text="نص عربي",
        speaker_id="S",
        gender="female",
        dialect="gulf",
        tone="neutral",
        pcm16=pcm,
        source_key="Atheer - أثير/audio/r.mp3",
        start_ms=1000,
        end_ms=3000,
    )


def _old_reader(path):
    """The users' pair builder, .npz route: np.load with pickles allowed, `audio` taken as the array."""
    data = np.load(path, allow_pickle=True)
    return {
        "audio": {"array": data["audio"], "sampling_rate": 16000},
        "text": str(data["text"]),
        "codes": data["codes"],
    }


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_old_style_reader_gets_the_exact_samples(tmp_path, stage):
    pcm = _pcm()
    data = encode_segment(_segment(pcm))
    if stage == "stage2":
        data = with_codes(data, np.arange(100, dtype=np.int32), "codec@rev")
    path = tmp_path / "r_seg_3.npz"
    path.write_bytes(data)

    row = _old_reader(path)
    wave = row["audio"]["array"]
    assert wave.dtype == np.float32 and wave.shape == pcm.shape
    assert np.array_equal(wave, pcm.astype(np.float32) / 32768) and wave.min() >= -1 and wave.max() < 1
    assert np.array_equal(read_segment(path).pcm16, pcm)  # read_segment's samples, divided by 32768
    assert row["text"] == "نص عربي" and len(row["codes"]) == (100 if stage == "stage2" else 0)
    # wrapped into a datasets Audio column and decoded back, as their script's output is read
    ds = Dataset.from_dict({"audio": [row["audio"]]}, features=Features({"audio": Audio(sampling_rate=16000)}))
    decoded = ds[0]["audio"].get_all_samples()
    assert decoded.sample_rate == 16000 and np.array_equal(decoded.data.numpy()[0], wave)


def test_default_file_is_a_standard_npz_about_the_old_size(tmp_path):
    pcm = _pcm(5.0)
    data = encode_segment(_segment(pcm))
    assert zipfile.ZipFile(io.BytesIO(data)).testzip() is None  # every member's CRC checks with zipfile's own reader
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        assert math.isclose(float(npz["duration_sec"]), 5.0) and str(npz["audio_id"]) == "r_seg_3"
        assert str(npz["audio_format"]) == "float32" and int(npz["format_version"]) == 2
    old = io.BytesIO()
    np.savez_compressed(old, audio=pcm.astype(np.float32) / 32768, codes=np.array([]), text="نص عربي")
    assert len(data) < 1.25 * len(old.getvalue())
    assert raw_members(data)["audio.npy"].method == zipfile.ZIP_DEFLATED


def test_flac_option_has_no_audio_key_and_old_readers_fail_loudly(tmp_path):
    pcm = _pcm()
    path = tmp_path / "r_seg_3.npz"
    path.write_bytes(encode_segment(_segment(pcm), audio_format="flac"))
    with pytest.raises(KeyError, match="audio"):
        _old_reader(path)
    # what the module docstring documents for reading it
    audio, sr = sf.read(io.BytesIO(np.load(path)["audio_flac"].tobytes()), dtype="float32")
    assert sr == 16000 and np.array_equal(audio, pcm / 32768.0)
    assert np.array_equal(read_segment(path).pcm16, pcm) and np.array_equal(read_audio(path.read_bytes()), pcm)
    old = io.BytesIO()
    np.savez_compressed(old, audio=pcm.astype(np.float32) / 32768)
    assert path.stat().st_size < 0.8 * len(old.getvalue())
    with pytest.raises(KeyError):
        with np.load(path) as npz:
            npz["audio"]
    stage2 = with_codes(path.read_bytes(), np.arange(3), "c")
    with pytest.raises(KeyError):
        np.load(io.BytesIO(stage2))["audio"]


def _format1(pcm) -> bytes:
    """What this project wrote before format 2: FLAC bytes under `audio`, savez (stored), zip64."""
    buf = io.BytesIO()
    np.savez(
        buf,
        audio=np.frombuffer(flac_bytes(pcm), dtype=np.uint8),
        audio_format=np.array("flac"),
        sample_rate=np.array(16000, np.int32),
        num_samples=np.array(len(pcm), np.int64),
        codes=np.zeros(0, np.int32),
        codec=np.array(""),
        format_version=np.array(1, np.int32),
        **{k: np.array(getattr(_segment(pcm), k)) for k in STRING_KEYS},
    )
    return buf.getvalue()


def _seed_file(pcm) -> bytes:
    """The old scripts' file: savez_compressed of librosa's float64-or-32 waveform, no format keys."""
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        audio=pcm.astype(np.float64) / 32768 + 1e-7,
        codes=np.array([]),
        **{k: getattr(_segment(pcm), k) for k in STRING_KEYS},
        duration_sec=len(pcm) / 16000,
    )
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["seed", "format1", *AUDIO_FORMATS])
def test_every_format_ever_written_is_read(kind):
    pcm = _pcm(1.0, seed=3)
    data = {"seed": _seed_file, "format1": _format1}.get(kind, lambda p: encode_segment(_segment(p), kind))(pcm)
    seg = read_segment(data)
    assert np.array_equal(seg.pcm16, pcm) and np.array_equal(read_audio(data), pcm)
    assert seg.text == "نص عربي" and seg.audio_id == "r_seg_3"
    row = read_row(data)
    assert math.isclose(row.duration_sec, 1.0)
    assert np.array_equal(sf.read(io.BytesIO(row.audio_flac), dtype="int16")[0], pcm)
    # stage 2 keeps the samples, whatever the stage-1 format
    stage2 = with_codes(data, np.arange(50), "c")
    assert np.array_equal(read_segment(stage2).pcm16, pcm) and list(read_segment(stage2).codes) == list(range(50))


def test_stage2_copies_the_compressed_audio_and_is_deterministic():
    data = encode_segment(_segment(_pcm()))
    out = with_codes(data, np.arange(100), "codec@rev")
    assert with_codes(data, np.arange(100), "codec@rev") == out  # a rewrite after a kill gives the same bytes
    a, b = raw_members(data), raw_members(out)
    assert a["audio.npy"].payload == b["audio.npy"].payload  # copied compressed, never deflated again
    assert same_members_but_codes(out, data) and same_audio_and_text(out, data)
    flac = encode_segment(_segment(_pcm()), "flac")
    assert same_audio_and_text(flac, data) and not same_members_but_codes(flac, data)  # same samples, other format


@pytest.mark.parametrize("bad", ["nan", "int_audio", "no_audio", "corrupt"])
def test_unusable_audio_is_refused_never_read_as_noise(bad):
    pcm = _pcm(0.5)
    if bad == "corrupt":
        data = bytearray(encode_segment(_segment(pcm)))
        data[200] ^= 0xFF  # inside the deflated waveform
        data = bytes(data)
    else:
        audio = {"nan": np.full(100, np.nan, np.float32), "int_audio": pcm}.get(bad)
        buf = io.BytesIO()
        np.savez(buf, **({"audio": audio} if audio is not None else {}), **{k: np.array("x") for k in STRING_KEYS})
        data = buf.getvalue()
    # any error at all, as long as it is raised: each bad file fails in its own layer (zip, npy, checks)
    with pytest.raises(Exception):  # noqa: B017
        read_audio(data)
    with pytest.raises(Exception):  # noqa: B017
        read_segment(data)
