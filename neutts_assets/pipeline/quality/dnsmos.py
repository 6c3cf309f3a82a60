"""DNSMOS P.835 (optional): the speech (SIG), background (BAK) and overall (OVRL) quality of a
segment, 1-5, as Microsoft's DNSMOS predicts ITU-T P.835 listener ratings.

The model is `sig_bak_ovr.onnx` as the `speechmos` wheel ships it (speechmos/dnsmos_models/, the
non-personalised DNSMOS of the DNS Challenge), run with onnxruntime directly. speechmos itself is
never imported (its `dnsmos.run` imports librosa and requests, also computes the P.808 rating,
and runs one window at a time); only its model file is read. The method is speechmos' `DNSMOS`
class, number for number (test_quality_scores.py compares with `speechmos.dnsmos.run` to 1e-3):

- the samples, int16 / 32768 as float32 in [-1, 1);
- a segment shorter than 9.01 s is repeated whole (appended to itself, doubling) until it is
  at least 9.01 s long (144,160 samples);
- windows of 9.01 s start every second: `int(floor(len / 16000) - 9.01) + 1` of them, window k
  the samples `[int(k * 16000), int((k + 9.01) * 16000))`, any shorter than 144,160 skipped;
- each window's three raw outputs go through DNSMOS' non-personalised polynomials (`POLY_SIG`,
  `POLY_BAK`, `POLY_OVRL`), and each score is the mean over the segment's windows.

Batching. The model's input is `[N, 144160]`: the batch dimension is dynamic, so windows of many
segments can go through one `session.run`. On a CPU that is slower per window than one at a time
(measured on the 2-core development machine: ~260 CPU-ms per window alone, ~290-340 in batches of
4-16; onnxruntime's intra-op threads already use both cores on one window, ~135 ms wall), so the
CPU runs windows one at a time and a GPU (onnxruntime's CUDA provider, `device` "cuda...", when
onnxruntime-gpu is installed; not measured here) in batches of `GPU_WINDOWS`. The session's
threads do not spin between runs (no CPU burnt while the VAD or the host work).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from neutts_assets.pipeline.segments.audio import SAMPLE_RATE

DNSMOS_VERSION = "1"  # change with any change to the method below: every segment is rescored
INPUT_LENGTH = 9.01  # seconds per window
WINDOW_SAMPLES = int(INPUT_LENGTH * SAMPLE_RATE)  # 144,160
HOP_SAMPLES = SAMPLE_RATE  # one second
GPU_WINDOWS = 64  # windows per session.run on a GPU (~37 MB of input)
CPU_WINDOWS = 1  # on a CPU: one at a time is faster (module docstring)
# DNSMOS' non-personalised P.835 polynomials (speechmos.dnsmos.DNSMOS.get_polyfit_val), highest power first.
POLY_SIG = np.poly1d([-0.08397278, 1.22083953, 0.0052439])
POLY_BAK = np.poly1d([-0.13166888, 1.60915514, -0.39604546])
POLY_OVRL = np.poly1d([-0.06766283, 1.11546468, 0.04602535])


def model_path() -> Path:
    """speechmos' sig_bak_ovr.onnx, found without importing speechmos."""
    spec = importlib.util.find_spec("speechmos")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("DNSMOS needs the speechmos wheel's model: pip install speechmos")
    return Path(next(iter(spec.submodule_search_locations))) / "dnsmos_models" / "sig_bak_ovr.onnx"


def windows(pcm16: np.ndarray) -> list[np.ndarray]:
    """The segment's 9.01 s float32 windows, as speechmos' DNSMOS cuts them (module docstring)."""
    if len(pcm16) == 0:
        return []
    audio = pcm16.astype(np.float32) / np.float32(32768.0)
    while len(audio) < WINDOW_SAMPLES:
        audio = np.append(audio, audio)
    num_hops = int(np.floor(len(audio) / SAMPLE_RATE) - INPUT_LENGTH) + 1
    out = []
    for idx in range(num_hops):  # the same float expressions as speechmos, so the same bounds
        w = audio[int(idx * HOP_SAMPLES) : int((idx + INPUT_LENGTH) * HOP_SAMPLES)]
        if len(w) >= WINDOW_SAMPLES:
            out.append(w)
    return out


class Dnsmos:
    """One onnxruntime session of the P.835 model, reused for every call."""

    version = DNSMOS_VERSION

    def __init__(self, device: str = "cpu"):
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        options = ort.SessionOptions()
        # No spinning: idle pool threads would otherwise burn CPU after each run (the VAD's, the host's).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(model_path()), sess_options=options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.on_gpu = self.session.get_providers()[0] == "CUDAExecutionProvider"
        self.max_windows = GPU_WINDOWS if self.on_gpu else CPU_WINDOWS

    def raw(self, batch: np.ndarray) -> np.ndarray:
        """The model's raw [N, 3] (sig, bak, ovrl) outputs for [N, 144160] windows."""
        return self.session.run(None, {self.input_name: batch})[0]

    def score(self, segments: Sequence[np.ndarray]) -> list[tuple[float, float, float] | None]:
        """(sig, bak, ovrl) per int16 segment; None for an empty one. Windows of all the segments
        go through the session together, `max_windows` per call."""
        owners, wins = [], []
        for i, s in enumerate(segments):
            w = windows(s)
            owners += [i] * len(w)
            wins += w
        raw = np.zeros((len(wins), 3), dtype=np.float64)
        for start in range(0, len(wins), self.max_windows):
            raw[start : start + self.max_windows] = self.raw(np.stack(wins[start : start + self.max_windows]))
        mos = np.stack([POLY_SIG(raw[:, 0]), POLY_BAK(raw[:, 1]), POLY_OVRL(raw[:, 2])], axis=1)
        owners_a = np.asarray(owners, dtype=np.int64)
        out: list[tuple[float, float, float] | None] = []
        for i in range(len(segments)):
            rows = mos[owners_a == i]
            out.append(tuple(float(v) for v in rows.mean(axis=0)) if len(rows) else None)
        return out
