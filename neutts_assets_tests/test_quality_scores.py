"""The quality scores (pipeline/quality/scores.py) on audio whose properties are known: digital
silence, sines of known level, clipped sines, real speech (LibriVox recordings from
/work/shared/data/speech) with white noise at known SNRs; the batched VAD against silero's own
per-segment loop; DNSMOS against speechmos itself."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neutts_assets.pipeline.quality.scores import (
    ALL_SCORE_NAMES,
    CLIP_LEVEL,
    FRAME_SAMPLES,
    MIN_EXCESS_POWER,
    SAMPLE_RATE,
    SCORER_VERSION,
    SNR_TOLERANCE_DB,
    SPEECH_THRESHOLD,
    Scorer,
    SegmentScores,
    SileroVad,
    chars_per_second,
    clipping_fraction,
    frame_powers,
    snr_db,
)
from neutts_assets.pipeline.segments.audio import decode_pcm16
from neutts_assets_tests.helpers import demo_audio

# The demo channel's copies of the real LibriVox recordings (shipped in the package, so always here).
SONNET = demo_audio("sonnet001")  # 53 s, a line every ~3-4 s
AUSTEN = demo_audio("austen_0870")  # 7.1 s

needs_speech = pytest.mark.skipif(not SONNET.exists(), reason=f"the demo recording {SONNET} is missing")


def read_16k(path: Path) -> np.ndarray:
    """A recording as int16 mono at 16 kHz (stage 1's own decoder)."""
    return decode_pcm16(path)


def stretch(seconds_from: float, seconds_to: float) -> np.ndarray:
    """10 s of the sonnet by default: four lines, with the pauses between them."""
    return read_16k(SONNET)[int(seconds_from * SAMPLE_RATE) : int(seconds_to * SAMPLE_RATE)]


def sine(freq: float, amplitude: float, seconds: float) -> np.ndarray:
    """int16 sine at `amplitude` of full scale (1.0 = 32768), clipped to int16."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return np.clip(np.rint(amplitude * 32768 * np.sin(2 * np.pi * freq * t)), -32768, 32767).astype(np.int16)


def with_noise(pcm: np.ndarray, noise_power: float, seed: int) -> np.ndarray:
    """`pcm` plus white Gaussian noise of `noise_power` (full scale 1.0)."""
    noise = np.random.default_rng(seed).standard_normal(len(pcm)) * math.sqrt(noise_power) * 32768
    return np.clip(np.rint(pcm + noise), -32768, 32767).astype(np.int16)


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer()


@pytest.fixture(scope="module")
def vad(scorer) -> SileroVad:
    return scorer._vad


def test_digital_silence(scorer):
    (s,) = scorer.score_batch([(np.zeros(2 * SAMPLE_RATE, dtype=np.int16), "four")])
    assert s.speech_ratio == 0.0
    assert s.snr_db is None
    assert s.clipping_fraction == 0.0
    assert s.loudness_lufs is None
    assert s.chars_per_second == 2.0
    assert (s.dnsmos_sig, s.dnsmos_bak, s.dnsmos_ovrl) == (None, None, None)  # DNSMOS is off


def test_no_samples_has_no_scores(scorer):
    (s,) = scorer.score_batch([(np.zeros(0, dtype=np.int16), "text")])
    assert s == SegmentScores()


def test_only_int16_samples_are_scored(scorer):
    with pytest.raises(TypeError, match="int16"):
        scorer.score_batch([(np.zeros(100, dtype=np.float32), "")])


@pytest.mark.parametrize("seconds", [3.0, 0.25])  # 0.25 s: shorter than a 400 ms block, ungated
def test_sine_loudness_is_bs1770s(scorer, seconds):
    # BS.1770: a full-scale 997 Hz sine reads -3.01 LUFS (its mean square is 1/2; the K-filter's
    # gain there is what the -0.691 offset removes); at amplitude a, 20*log10(a) less.
    amplitude = 0.25
    expected = -3.01 + 20 * math.log10(amplitude)  # -15.05
    (s,) = scorer.score_batch([(sine(997.0, amplitude, seconds), "")])
    assert s.loudness_lufs == pytest.approx(expected, abs=0.5)
    assert s.clipping_fraction == 0.0
    (quieter,) = scorer.score_batch([(sine(997.0, amplitude / 10, seconds), "")])
    assert quieter.loudness_lufs == pytest.approx(expected - 20, abs=0.5)


def test_clipped_sine(scorer):
    # A sine 4x full scale, clipped to int16: |4 sin| >= CLIP_LEVEL/32767 for a known share of
    # the phases, 1 - (2/pi) asin(CLIP_LEVEL / (4 * 32767)) = 0.841. 997 Hz: phases spread evenly.
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    pcm = np.clip(np.rint(4 * 32767 * np.sin(2 * np.pi * 997.0 * t)), -32768, 32767).astype(np.int16)
    expected = 1 - 2 / math.pi * math.asin(CLIP_LEVEL / (4 * 32767))
    (s,) = scorer.score_batch([(pcm, "")])
    assert s.clipping_fraction == pytest.approx(expected, abs=5e-4)  # at 32767 it would be 0.8391
    assert s.clipping_fraction > 0.8


def test_clipping_threshold_both_signs():
    pcm = np.array([CLIP_LEVEL, -CLIP_LEVEL, CLIP_LEVEL - 1, -(CLIP_LEVEL - 1), -32768, 32767, 0, 5], dtype=np.int16)
    assert clipping_fraction(pcm) == 4 / 8


def test_chars_per_second():
    text = " Hello,\twor ld!\n"  # 12 non-whitespace characters
    assert chars_per_second(text, int(1.5 * SAMPLE_RATE)) == pytest.approx(8.0)
    assert chars_per_second("", SAMPLE_RATE) == 0.0
    assert chars_per_second("abc", 0) is None


def test_scores_keep_the_input_order(scorer):
    # Batched by length inside; every result must still be its own segment's.
    lengths = [5 * SAMPLE_RATE, 300, 2 * SAMPLE_RATE, SAMPLE_RATE]
    items = [(np.zeros(n, dtype=np.int16), "x" * (i + 1)) for i, n in enumerate(lengths)]
    got = [s.chars_per_second for s in scorer.score_batch(items)]
    assert got == pytest.approx([(i + 1) / (n / SAMPLE_RATE) for i, n in enumerate(lengths)])


# --- SNR: the formula on hand-made frames, then the estimate on real speech ----------------------


def tone_bursts(on_frames: int, off_frames: int, bursts: int, amplitude: float) -> tuple[np.ndarray, np.ndarray]:
    """Bursts of a 997 Hz tone on frame boundaries and the frame labels that say where they are."""
    labels = np.tile(np.r_[np.ones(on_frames, bool), np.zeros(off_frames, bool)], bursts)
    pcm = sine(997.0, amplitude, len(labels) * FRAME_SAMPLES / SAMPLE_RATE) * np.repeat(labels, FRAME_SAMPLES)
    return pcm.astype(np.int16), labels


def test_snr_formula_on_tone_bursts():
    # The VAD does not call tones speech, so the labels are given: the formula alone is tested.
    amplitude, noise_power = 0.1, 1e-5  # tone power 5e-3: 27.0 dB
    pcm, labels = tone_bursts(10, 10, 8, amplitude)
    noisy = with_noise(pcm, noise_power, seed=1)
    assert snr_db(frame_powers(noisy), labels) == pytest.approx(
        10 * math.log10(amplitude**2 / 2 / noise_power), abs=0.3
    )


def test_snr_leaves_the_frames_next_to_speech_out_of_the_noise():
    # Each burst has a word tail the VAD missed: the frame after it, labelled non-speech, holds the
    # tone 10 dB down. As noise it would read ~9 dB lower; as a frame next to speech it is left out.
    amplitude, noise_power = 0.1, 1e-5
    pcm, labels = tone_bursts(10, 10, 8, amplitude)
    tail = np.roll(np.repeat(labels, FRAME_SAMPLES), FRAME_SAMPLES) & ~np.repeat(labels, FRAME_SAMPLES)
    pcm = pcm + (tail * sine(997.0, amplitude / math.sqrt(10), len(pcm) / SAMPLE_RATE)).astype(np.int16)
    noisy = with_noise(pcm, noise_power, seed=5)
    assert snr_db(frame_powers(noisy), labels) == pytest.approx(
        10 * math.log10(amplitude**2 / 2 / noise_power), abs=0.3
    )


def test_snr_speech_throughout_uses_the_quietest_tenth():
    # 100 frames all labelled speech; 10 of them hold only the noise: the noise is their power.
    amplitude, noise_power = 0.1, 1e-5
    pcm, labels = tone_bursts(90, 10, 1, amplitude)
    noisy = with_noise(pcm, noise_power, seed=2)
    expected = 10 * math.log10(0.9 * amplitude**2 / 2 / noise_power)  # P_speech - P_noise = 0.9 of the tone
    assert snr_db(frame_powers(noisy), np.ones(100, bool)) == pytest.approx(expected, abs=0.2)


def test_snr_undefined_and_floor():
    powers = np.full(20, 1e-4)
    assert snr_db(powers, np.zeros(20, bool)) is None  # no speech
    silent_pauses = np.r_[np.full(10, 1e-3), np.zeros(10)]
    assert snr_db(silent_pauses, np.arange(20) < 10) is None  # digital silence in the pauses
    # speech frames quieter than the pauses: the excess is floored, the value not clamped
    quiet_speech = np.r_[np.full(10, 1e-6), np.full(10, 1e-4)]
    assert snr_db(quiet_speech, np.arange(20) < 10) == pytest.approx(10 * math.log10(MIN_EXCESS_POWER / 1e-4))


@needs_speech
def test_snr_of_real_speech_with_white_noise(scorer, vad):
    clean = stretch(2.0, 12.0)
    labels = vad.probabilities([clean])[0] >= SPEECH_THRESHOLD
    active = float(frame_powers(clean)[labels].mean())  # the speech's active power
    estimates = {}
    for true_snr in (0, 10, 20, 30):
        (s,) = scorer.score_batch([(with_noise(clean, active / 10 ** (true_snr / 10), seed=true_snr), "")])
        estimates[true_snr] = s.snr_db
    assert list(estimates.values()) == sorted(estimates.values()), estimates  # monotone
    for true_snr in (0, 10, 20):  # above ~20 dB the recording's own background (~22 dB) dominates
        assert abs(estimates[true_snr] - true_snr) <= SNR_TOLERANCE_DB, estimates
    for true_snr in (0, 10):  # where the added noise dominates, close (without "- P_noise", 0 dB reads 3 dB)
        assert abs(estimates[true_snr] - true_snr) <= 2, estimates


# --- speech_ratio and the batched VAD ------------------------------------------------------------


@needs_speech
def test_speech_ratio_of_speech_and_of_noise(scorer):
    speech = stretch(2.0, 12.0)
    quiet_noise = with_noise(np.zeros(10 * SAMPLE_RATE, dtype=np.int16), 1e-5, seed=3)  # -50 dBFS
    s, n = scorer.score_batch([(speech, ""), (quiet_noise, "")])
    assert s.speech_ratio > 0.5
    assert n.speech_ratio < 0.05


def silero_reference(model, pcm: np.ndarray) -> np.ndarray:
    """silero's own per-segment loop, as get_speech_timestamps runs it: reset, then one padded
    512-sample chunk at a time."""
    import torch

    model.reset_states()
    x = torch.from_numpy(pcm.astype(np.float32) / 32768)
    out = []
    with torch.no_grad():
        for start in range(0, len(x), FRAME_SAMPLES):
            chunk = x[start : start + FRAME_SAMPLES]
            chunk = torch.nn.functional.pad(chunk, (0, FRAME_SAMPLES - len(chunk)))
            out.append(model(chunk, SAMPLE_RATE).item())
    return np.array(out)


@needs_speech
def test_batched_vad_equals_one_segment_at_a_time(scorer, vad):
    audio = read_16k(SONNET)
    cuts = [(0.0, 4.3), (5.0, 5.02), (10.0, 21.7), (30.1, 31.0), (40.0, 47.5)]  # 5.0-5.02: under a frame
    segments = [audio[int(a * SAMPLE_RATE) : int(b * SAMPLE_RATE)] for a, b in cuts]
    batched = vad.probabilities(segments)
    for seg, probs in zip(segments, batched):
        ref = silero_reference(vad.model, seg)
        assert len(probs) == len(ref) == max(1, math.ceil(len(seg) / FRAME_SAMPLES))
        np.testing.assert_allclose(probs, ref, atol=1e-5)
    # and through the Scorer, whatever the batch size
    one = scorer.score_batch([(s, "") for s in segments])
    small = Scorer(vad_batch=2).score_batch([(s, "") for s in segments])
    for a, b in zip(one, small):
        assert a.speech_ratio == b.speech_ratio
        assert a.snr_db == pytest.approx(b.snr_db, abs=1e-3) if a.snr_db is not None else b.snr_db is None


def test_torch_threads_are_left_as_the_caller_set_them():
    # Importing silero_vad sets torch's thread count to 1 for the process; the Scorer undoes it,
    # and scoring sets its own count only while it runs. A fresh process, so the import happens.
    code = (
        "import numpy as np, torch; torch.set_num_threads(3)\n"
        "from neutts_assets.pipeline.quality.scores import Scorer\n"
        "s = Scorer(); assert torch.get_num_threads() == 3, torch.get_num_threads()\n"
        "s.score_batch([(np.ones(16000, np.int16), 'a')]); assert torch.get_num_threads() == 3\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --- the stored form ----------------------------------------------------------------------------


def test_scores_round_trip_through_a_dict(scorer):
    s = SegmentScores(0.123456, -3.33339, 0.0, -23.000049, 14.5, None, 2.71828, 3.0)
    d = s.to_dict()
    assert tuple(d) == ALL_SCORE_NAMES
    assert d["speech_ratio"] == 0.1235 and d["snr_db"] == -3.3334 and d["dnsmos_sig"] is None
    assert SegmentScores.from_dict(d) == SegmentScores(0.1235, -3.3334, 0.0, -23.0, 14.5, None, 2.7183, 3.0)
    assert SegmentScores.from_dict(d).to_dict() == d
    assert SegmentScores.from_dict({"snr_db": 5}) == SegmentScores(snr_db=5.0)
    assert scorer.version == SCORER_VERSION


# --- DNSMOS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dnsmos_scorer() -> Scorer:
    pytest.importorskip("onnxruntime", reason="DNSMOS runs on onnxruntime, which is not installed")
    pytest.importorskip("speechmos", reason="DNSMOS' model comes from the speechmos wheel, not installed")
    return Scorer(dnsmos=True)


@needs_speech
def test_dnsmos_matches_speechmos(dnsmos_scorer):
    # 7.1 s: speechmos repeats it to 14.2 s, then averages 5 windows a second apart.
    pytest.importorskip("librosa", reason="speechmos.dnsmos imports librosa")
    import speechmos.dnsmos

    pcm = read_16k(AUSTEN)
    (ours,) = dnsmos_scorer.score_batch([(pcm, "")])
    ref = speechmos.dnsmos.run(pcm.astype(np.float32) / 32768, SAMPLE_RATE)
    assert ours.dnsmos_sig == pytest.approx(ref["sig_mos"], abs=1e-3)
    assert ours.dnsmos_bak == pytest.approx(ref["bak_mos"], abs=1e-3)
    assert ours.dnsmos_ovrl == pytest.approx(ref["ovrl_mos"], abs=1e-3)
    assert dnsmos_scorer.version == f"{SCORER_VERSION}+dnsmos-1"


@needs_speech
def test_dnsmos_prefers_clean_speech(dnsmos_scorer):
    clean = stretch(2.0, 12.0)
    active = float(np.mean((clean / 32768.0) ** 2))
    clean_s, noisy_s = dnsmos_scorer.score_batch([(clean, ""), (with_noise(clean, active, seed=4), "")])  # ~0 dB
    assert clean_s.dnsmos_ovrl > noisy_s.dnsmos_ovrl + 0.5
    assert clean_s.dnsmos_bak > noisy_s.dnsmos_bak + 0.5
    assert all(1.0 <= v <= 5.0 for s in (clean_s, noisy_s) for v in (s.dnsmos_sig, s.dnsmos_bak, s.dnsmos_ovrl))
