"""Quality scores of one segment: what each one measures, exactly, and how it is computed.

Every score is a float, or None where it is undefined for the segment (said below, per score).
The input is what stage 1 cuts: int16 mono samples at 16 kHz and the segment's transcript text.
A segment with no samples has every score None. `SCORER_VERSION` is stored with every score and
changes whenever any computation here does, so that every segment is scored again.

Frames. The VAD-based scores share one framing: the segment is cut into consecutive 512-sample
frames (32 ms) from its first sample, the last one zero-padded to 512 samples (a segment shorter
than one frame is one zero-padded frame), exactly as silero-vad's `get_speech_timestamps` frames it.

`speech_ratio`: the fraction of the segment's frames that silero-vad (the JIT model shipped in
the `silero-vad` wheel, v6) gives a speech probability of at least 0.5 (`SPEECH_THRESHOLD`,
silero's default threshold), with no smoothing, padding or minimum durations: the frame labels
themselves. The model is stateful (an LSTM state and the 64 samples of context before each
frame); every segment is run from the reset state, as if it were the only audio, so its score
does not depend on which segments it is scored with. For speed, segments are run together: the
model takes `[batch, 512]` chunks with one state per row; a batch's segments are padded with
zeros at the end to the longest one's frame count, run chunk by chunk, and each row's padded
chunks are ignored (they come after its last real frame, so they cannot change its earlier
probabilities). The batched probabilities equal the one-segment ones to ~1e-6
(test_quality_scores.py). Segments are batched by length (sorted) so that little is padding.

`snr_db`: the segment's signal-to-noise ratio in dB, from the same frame labels. Each frame's
power is the mean of its squared samples (full scale 1.0; the padded last frame over its real
samples only). P_speech is the mean power of the speech frames; P_noise the mean power of the
pause frames: the non-speech frames that are not next to a speech frame (`SNR_GUARD_FRAMES`, 1
on each side). The frames just before and after speech hold the onsets and tails of words
that silero scores below 0.5; counted as noise they dominate the mean of a clean recording's
pauses. Measured on a 5.3 s LibriVox clip (Sense and Sensibility, segment 0890): taking them
out moves its estimate from 13.6 to 26.4 dB (the median pause power gives 25.8), and with white
noise added at a true 20 dB from 12.0 to 19.2 dB. Then

    snr_db = 10 * log10(max(P_speech - P_noise, 2**-30) / P_noise)

P_speech - P_noise estimates the power of the speech alone, since noise is present in speech
frames too; 2**-30 (one int16 step squared) is the smallest excess counted, so that a segment
whose speech frames are no louder than its pauses gets a large negative value rather than a
log of a negative number. When fewer than 2 frames are pause frames (speech throughout), there is
no pause to measure the noise in, and P_noise is instead the mean power of the quietest 10% of
all frames (at least one frame; `NOISE_QUANTILE`). None when no frame is speech (nothing to
measure), or when P_noise is 0 (the pauses are digital silence: the ratio is infinite). The value
is not clamped. Accuracy on real speech (10 s of LibriVox) with white noise added at a true
SNR (the mean power of the clean clip's speech frames over the noise's power): within
`SNR_TOLERANCE_DB` (6 dB) of it from 0 to 20 dB (within 2 dB at 0 and 10 dB), and monotone in
it up to 30 dB. The recording's own background, ~22 dB below its speech, adds to the noise, so
near and above 20 dB the estimate falls short of the added noise's SNR (16.0 at 20 dB, 18.1 at
30 dB): it measures the segment's SNR, whatever the noise.

`clipping_fraction`: the share of the segment's samples whose magnitude is at least
`CLIP_LEVEL` = 32440 (0.99 of int16 full scale, 32767): a waveform clipped before us is flat at
full scale, but the lossy codecs and resampling it went through since spread its flat tops to
just below it, so exact full scale would miss them.

`loudness_lufs`: the integrated loudness of ITU-R BS.1770-4 (K-weighting, 400 ms blocks with
75% overlap, the -70 LUFS absolute and -10 LU relative gates), computed by pyloudnorm's
`Meter(16000).integrated_loudness` on the samples divided by 32768. A clip shorter than one
400 ms block, which pyloudnorm refuses, gets the ungated K-weighted loudness of the whole clip:
-0.691 + 10 * log10(mean square of the K-weighted samples), with the same meter's two filters.
None for digital silence, or when no block is above the absolute gate (the meter's -inf).

`chars_per_second`: the number of non-whitespace characters of the transcript text divided by
the segment's duration in seconds (its sample count / 16000). None when the duration is 0.

DNSMOS (`dnsmos_sig`, `dnsmos_bak`, `dnsmos_ovrl`), only with `Scorer(dnsmos=True)`: ITU-T
P.835 speech quality (signal), background noise and overall ratings, 1-5, predicted by
Microsoft's DNSMOS model; the method is in pipeline/quality/dnsmos.py. None without it.

Threads. The VAD runs torch at one intra-op thread (`VAD_THREADS`: a second one doubles the
CPU time of its 512-sample steps for ~5% less wall time), set for the call and restored after
(`torch_threads`; the count is process-wide while it is set). Importing silero_vad sets torch's
count to 1 for the whole process; `SileroVad` puts the caller's count back.

Cost: bench/quality.py measures the CPU time of each score per audio hour, ours against the
per-segment calls of peer pipelines.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields

import numpy as np

from neutts_assets.pipeline.segments.audio import SAMPLE_RATE

SCORE_NAMES = ("speech_ratio", "snr_db", "clipping_fraction", "loudness_lufs", "chars_per_second")
DNSMOS_NAMES = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl")
ALL_SCORE_NAMES = SCORE_NAMES + DNSMOS_NAMES
SCORER_VERSION = "1"  # bump whenever any score's computation changes: every segment is rescored

FRAME_SAMPLES = 512  # silero-vad's frame at 16 kHz: 32 ms
SPEECH_THRESHOLD = 0.5  # silero-vad's default: a frame with probability >= it is speech
SNR_GUARD_FRAMES = 1  # non-speech frames this near a speech frame are not pauses: they hold word edges
NOISE_QUANTILE = 0.10  # speech throughout: the noise is the mean power of the quietest 10% of frames
MIN_EXCESS_POWER = 2.0**-30  # one int16 step squared: the least speech power over the noise counted
SNR_TOLERANCE_DB = 6.0  # the accuracy the tests hold snr_db to on real speech with white noise
CLIP_LEVEL = 32440  # ~0.99 of int16 full scale: codecs and resampling spread flat tops to just below it
ROUND_DIGITS = 4  # SegmentScores.to_dict


@dataclass(frozen=True)
class SegmentScores:
    speech_ratio: float | None = None
    snr_db: float | None = None
    clipping_fraction: float | None = None
    loudness_lufs: float | None = None
    chars_per_second: float | None = None
    dnsmos_sig: float | None = None
    dnsmos_bak: float | None = None
    dnsmos_ovrl: float | None = None

    def to_dict(self) -> dict:
        """Every score name -> its value rounded to 4 decimals, or None."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = None if v is None else round(float(v), ROUND_DIGITS)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> SegmentScores:
        """The scores of `to_dict`'s dict; a missing name (or None) is None, unknown names are ignored."""
        return cls(**{n: None if d.get(n) is None else float(d[n]) for n in ALL_SCORE_NAMES})


# ---------------------------------------------------------------------------------------------
# The scores, each a pure function of the samples (and the VAD's frame labels).


def frame_count(n_samples: int) -> int:
    """Frames of a segment of `n_samples` (> 0): the last one zero-padded, at least one."""
    return max(1, -(-n_samples // FRAME_SAMPLES))


def frame_powers(pcm16: np.ndarray) -> np.ndarray:
    """The mean power of each 512-sample frame at full scale 1.0; the last, partial frame's over
    its real samples only."""
    n = len(pcm16)
    k = frame_count(n)
    x = np.zeros(k * FRAME_SAMPLES, dtype=np.float64)
    x[:n] = pcm16
    sums = np.einsum("ij,ij->i", x.reshape(k, FRAME_SAMPLES), x.reshape(k, FRAME_SAMPLES))
    counts = np.full(k, FRAME_SAMPLES, dtype=np.float64)
    counts[-1] = n - (k - 1) * FRAME_SAMPLES
    return sums / counts / 32768.0**2


def speech_ratio(probabilities: np.ndarray) -> float | None:
    """The fraction of frames whose speech probability is >= SPEECH_THRESHOLD."""
    if len(probabilities) == 0:
        return None
    return float(np.count_nonzero(probabilities >= SPEECH_THRESHOLD) / len(probabilities))


def snr_db(powers: np.ndarray, speech: np.ndarray) -> float | None:
    """SNR in dB from frame powers and their speech labels (module docstring)."""
    speech = np.asarray(speech, dtype=bool)
    if not speech.any():
        return None
    p_speech = float(powers[speech].mean())
    near = speech.copy()
    for k in range(1, SNR_GUARD_FRAMES + 1):  # speech frames and their neighbours
        near[k:] |= speech[:-k]
        near[:-k] |= speech[k:]
    if np.count_nonzero(~near) >= 2:
        p_noise = float(powers[~near].mean())
    else:  # speech throughout: the quietest frames are the nearest to the noise floor
        quiet = max(1, int(len(powers) * NOISE_QUANTILE))
        p_noise = float(np.partition(powers, quiet - 1)[:quiet].mean())
    if p_noise <= 0.0:
        return None
    return 10.0 * math.log10(max(p_speech - p_noise, MIN_EXCESS_POWER) / p_noise)


def clipping_fraction(pcm16: np.ndarray) -> float | None:
    """The share of samples with |x| >= CLIP_LEVEL."""
    if len(pcm16) == 0:
        return None
    # -32768 has no int16 magnitude: compare both signs instead of taking abs.
    clipped = np.count_nonzero(pcm16 >= CLIP_LEVEL) + np.count_nonzero(pcm16 <= -CLIP_LEVEL)
    return float(clipped / len(pcm16))


def chars_per_second(text: str, n_samples: int) -> float | None:
    """Non-whitespace characters of `text` per second of audio."""
    if n_samples <= 0:
        return None
    return sum(not c.isspace() for c in text) / (n_samples / SAMPLE_RATE)


class Loudness:
    """BS.1770-4 integrated loudness with pyloudnorm's meter (module docstring)."""

    def __init__(self):
        import pyloudnorm
        import scipy.signal

        self._meter = pyloudnorm.Meter(SAMPLE_RATE)  # K-weighting, 400 ms blocks
        self._lfilter = scipy.signal.lfilter
        self._min_samples = self._meter.block_size * SAMPLE_RATE  # what pyloudnorm accepts

    def __call__(self, pcm16: np.ndarray) -> float | None:
        if len(pcm16) == 0 or not pcm16.any():
            return None
        x = pcm16.astype(np.float64) / 32768.0
        if len(x) >= self._min_samples:
            lufs = float(self._meter.integrated_loudness(x))
        else:  # shorter than one gating block: the ungated K-weighted loudness of the whole clip
            for stage in self._meter._filters.values():  # the meter's own K-weighting, in its order
                x = stage.passband_gain * self._lfilter(stage.b, stage.a, x)
            mean_square = float(np.mean(np.square(x)))
            lufs = -0.691 + 10.0 * math.log10(mean_square) if mean_square > 0 else -math.inf
        return lufs if math.isfinite(lufs) else None


# ---------------------------------------------------------------------------------------------
# silero-vad, batched.


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to `n` for the block and restored after. The count is
    process-wide: torch work in other threads meanwhile runs with it too."""
    import torch

    before = torch.get_num_threads()
    if before == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


VAD_THREADS = 1  # measured: a second thread doubles the CPU time of the 512-sample steps for ~5% less wall


class SileroVad:
    """Per-frame speech probabilities of many segments, batched (module docstring). Not safe to
    call from two threads at once (the model holds the state); Scorer serialises its calls."""

    def __init__(self, device: str = "cpu"):
        import importlib.resources

        import torch

        threads = torch.get_num_threads()
        # Importing silero_vad calls torch.set_num_threads(1) for the whole process: undone here.
        from silero_vad.utils_vad import init_jit_model

        torch.set_num_threads(threads)
        path = importlib.resources.files("silero_vad.data").joinpath("silero_vad.jit")
        self._torch = torch
        # CUDA when asked for and torch has it (a CPU build of torch has not): else the CPU, as DNSMOS does
        self.device = torch.device(device if device.startswith("cuda") and torch.cuda.is_available() else "cpu")
        with warnings.catch_warnings():  # torch 2.13 deprecates torch.jit.load; silero ships a JIT model
            warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", DeprecationWarning)
            self.model = init_jit_model(str(path), device=self.device)

    def probabilities(self, segments: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One float32 array of frame probabilities per int16 segment (each > 0 samples), the
        segments run as one batch from the reset state."""
        if not segments:
            return []
        torch = self._torch
        counts = [frame_count(len(s)) for s in segments]
        width = max(counts) * FRAME_SAMPLES
        padded = np.zeros((len(segments), width), dtype=np.int16)
        for row, s in zip(padded, segments):
            row[: len(s)] = s
        x = torch.from_numpy(padded).to(self.device)
        out = torch.empty((len(segments), max(counts)), dtype=torch.float32, device=self.device)
        with torch_threads(VAD_THREADS), torch.inference_mode():
            self.model.reset_states()  # otherwise a batch of the last one's size goes on from its state
            for k in range(max(counts)):
                # /32768 as the float waveform stage 1 writes: exact (a power of two)
                chunk = x[:, k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES].to(torch.float32) * (1 / 32768)
                out[:, k] = self.model(chunk, SAMPLE_RATE)[:, 0]
        probs = out.cpu().numpy()
        return [probs[i, :n] for i, n in enumerate(counts)]


# ---------------------------------------------------------------------------------------------


class Scorer:
    """Scores batches of segments. One instance is reused (model sessions loaded once).

    `dnsmos`: also the DNSMOS scores (pipeline/quality/dnsmos.py, onnxruntime; slow on a CPU).
    `device`: "cpu", or "cuda..." to run the VAD (torch) and DNSMOS (onnxruntime's CUDA provider)
    on the GPU, each where it can (else on the CPU; neither measured on a GPU yet).
    `vad_batch`: segments per VAD batch. Calls are serialised by a lock (the VAD is stateful).
    `cpu_seconds`: process CPU seconds spent in each part since creation (bench/quality.py).
    """

    def __init__(self, dnsmos: bool = False, device: str = "cpu", vad_batch: int = 32):
        if vad_batch < 1:
            raise ValueError(f"vad_batch must be >= 1, not {vad_batch}")
        self.vad_batch = vad_batch
        self._vad = SileroVad(device)
        self._loudness = Loudness()
        self._dnsmos = None
        if dnsmos:
            from neutts_assets.pipeline.quality.dnsmos import Dnsmos

            self._dnsmos = Dnsmos(device)
        self._lock = threading.Lock()
        self.cpu_seconds = {"vad_snr": 0.0, "clipping": 0.0, "loudness": 0.0, "chars_per_second": 0.0, "dnsmos": 0.0}

    @property
    def version(self) -> str:
        """SCORER_VERSION, plus "+dnsmos-<its version>" with DNSMOS: stored with each score."""
        if self._dnsmos is None:
            return SCORER_VERSION
        return f"{SCORER_VERSION}+dnsmos-{self._dnsmos.version}"

    def score_batch(self, items: Sequence[tuple[np.ndarray, str]]) -> list[SegmentScores]:
        """items: (int16 mono samples at 16 kHz, transcript text) per segment."""
        with self._lock:
            return self._score(items)

    def _timed(self, part: str, started: float) -> float:
        now = time.process_time()
        self.cpu_seconds[part] += now - started
        return now

    def _score(self, items: Sequence[tuple[np.ndarray, str]]) -> list[SegmentScores]:
        pcms = [np.asarray(pcm).reshape(-1) for pcm, _ in items]
        for p in pcms:
            if p.dtype != np.int16:  # a float waveform cast to int16 would score as silence
                raise TypeError(f"score_batch takes int16 samples, not {p.dtype}")
        rows: list[dict] = [{} for _ in items]
        live = [i for i, p in enumerate(pcms) if len(p)]  # a segment with no samples: all None

        t = time.process_time()
        order = sorted(live, key=lambda i: len(pcms[i]))  # batches of like lengths: little padding
        for start in range(0, len(order), self.vad_batch):
            part = order[start : start + self.vad_batch]
            for i, probs in zip(part, self._vad.probabilities([pcms[i] for i in part])):
                rows[i]["speech_ratio"] = speech_ratio(probs)
                rows[i]["snr_db"] = snr_db(frame_powers(pcms[i]), probs >= SPEECH_THRESHOLD)
        t = self._timed("vad_snr", t)
        for i in live:
            rows[i]["clipping_fraction"] = clipping_fraction(pcms[i])
        t = self._timed("clipping", t)
        for i in live:
            rows[i]["loudness_lufs"] = self._loudness(pcms[i])
        t = self._timed("loudness", t)
        for i, (_, text) in enumerate(items):
            rows[i]["chars_per_second"] = chars_per_second(text, len(pcms[i]))
        t = self._timed("chars_per_second", t)
        if self._dnsmos is not None:
            for i, mos in zip(live, self._dnsmos.score([pcms[i] for i in live])):
                if mos is not None:
                    rows[i].update(zip(DNSMOS_NAMES, mos))
            self._timed("dnsmos", t)
        return [SegmentScores(**r) for r in rows]
