"""w2v-BERT 2.0's input features computed in torch, batched, on any device: what
transformers' `SeamlessM4TFeatureExtractor()` (default settings, as NeuCodec 0.0.6 builds and calls
it) returns as `input_features` for each row alone,

    feature_extractor(y[None], sampling_rate=16000, return_tensors="pt").input_features

with y a 1-D float32 waveform in [-1, 1]. Checked against transformers 5.24.0
(models/seamless_m4t/feature_extraction_seamless_m4t.py and audio_utils.spectrogram), step by step:

1. The waveform as float32 (the extractor's np.asarray(..., float32)) times 2**15, then float64.
2. Frames of 400 samples every 160 (center=False: no padding; 1 + (T - 400) // 160 frames).
3. Per frame: subtract the frame's mean (remove_dc_offset), then preemphasis 0.97 Kaldi-style
   (x[i] -= 0.97 * x[i-1] on the original values, x[0] *= 1 - 0.97), then the symmetric povey
   window (hann(400) ** 0.85).
4. rfft over 512 (zero-padded). The extractor stores the spectrum in a complex64 array, so its
   real and imaginary parts are rounded to float32 before the float64 power |X|^2; we do the same.
5. Kaldi mel filters (80 bins, 20..8000 Hz, triangular in mel space, no norm), the power spectrum
   times them in float64, floored at 1.192092955078125e-07, natural log, then cast to float32.
6. Per-utterance, per-mel-bin normalisation, in float32 as numpy does it:
   (x - mean) / sqrt(var + 1e-7) with ddof=1 (the sample variance) and 1e-7 added to the variance,
   not to the standard deviation. A bin that is the same in every frame (digital silence, or a
   constant (DC) clip: every bin sits on the floor) has variance 0, so its output is the float32
   rounding error of the mean divided by sqrt(1e-7): numpy's pairwise float32 sum of F equal values
   is not always F times the value, and its outputs there are about +-3e-3 (for some frame counts
   exactly 0). To give those same numbers we reproduce numpy's float32 pairwise summation order
   (`_PairwisePlan`) for the two sums (mean and variance) and its float64 division by the count.
7. Padding after the normalisation: the extractor pads to a multiple of 2 frames
   (pad_to_multiple_of=2) with padding_value 0.0, so an odd frame count gets one all-zero frame at
   the end, not normalised and not counted in the statistics.
8. Stride-2 stacking: frames 2i and 2i+1 concatenated into one 160-dim row.

The attention mask (not computed here): the extractor's mask keeps the mask of each odd frame, so for
an odd frame count the last stacked row (one real frame plus the zero frame) is masked out. NeuCodec
passes only input_features to w2v-BERT, so the mask is not used.

Short inputs: 400 <= T < 560 gives one frame, whose ddof=1 variance is 0/0 = NaN, and the extractor
returns NaN there (first 80 values; the zero-padded frame after them); 240 <= T < 400 gives no
frames and an empty [1, 0, 160]; below 240 numpy raises. We return NaN for the one-frame case and an
empty [B, 0, 160] for any T < 400. NeuCodec's model input is at least 640 samples (2 frames).

compute_dtype: torch.float64 (default) computes steps 1-5 as the extractor does, so the log-mel
values round to the same float32 numbers (but where one lies within float64 noise of a float32
rounding boundary) and step 6 then gives the same float32 results: on the demo speech (whole
recordings, ~850 windows of 640 samples to 2 s, silence, DC) the output is bit-identical to the
extractor's. torch.float32 does steps 1-5 in float32 (faster; on a GPU the little mel product stays
float64 so that TF32 settings cannot reach it): its FFT's rounding is large against the quiet bins
of a frame, and the output differs by up to about 1e-3 (measured: 2e-4..3e-4 typical, 8.7e-4 on the
quiet opening of sonnet001; silence exact). A clip that is only DC is not floored in float32 (the
frame mean leaves a residue above the mel floor): up to 6e-3 there. Step 6 is float32 in both modes.
"""

from __future__ import annotations

import numpy as np
import torch

SAMPLE_RATE = 16_000
FRAME_LENGTH = 400
HOP_LENGTH = 160
FFT_LENGTH = 512
NUM_MEL_BINS = 80
STRIDE = 2
FEATURE_DIM = NUM_MEL_BINS * STRIDE  # 160
PREEMPHASIS = 0.97
MEL_FLOOR = 1.192092955078125e-07
NORM_EPSILON = 1e-7  # added to the (ddof=1) variance
PADDING_VALUE = 0.0

CPU_BLOCK_FRAMES = 512  # frames (all rows together) per step of the CPU path; see log_mel

_PW_BLOCKSIZE = 128  # numpy's PW_BLOCKSIZE in its pairwise summation


def num_frames(num_samples: int) -> int:
    """Frames before padding (center=False)."""
    return 0 if num_samples < FRAME_LENGTH else 1 + (num_samples - FRAME_LENGTH) // HOP_LENGTH


def num_output_frames(num_samples: int) -> int:
    """Rows of input_features: frames padded to a multiple of 2, then stacked in pairs."""
    return (num_frames(num_samples) + STRIDE - 1) // STRIDE


def _numpy_mel_filters() -> np.ndarray:
    from transformers.audio_utils import mel_filter_bank

    return mel_filter_bank(
        num_frequency_bins=FFT_LENGTH // 2 + 1,
        num_mel_filters=NUM_MEL_BINS,
        min_frequency=20,
        max_frequency=SAMPLE_RATE // 2,
        sampling_rate=SAMPLE_RATE,
        norm=None,
        mel_scale="kaldi",
        triangularize_in_mel_space=True,
    )  # float64, [257, 80]


def _numpy_window() -> np.ndarray:
    from transformers.audio_utils import window_function

    return window_function(FRAME_LENGTH, "povey", periodic=False)  # float64, [400]


# --- numpy's float32 pairwise summation, reproduced ------------------------------------------


def _pairwise_leaves(start: int, n: int, leaves: list[tuple[int, int]]):
    """numpy's pairwise_sum recursion over [start, start + n): the blocks it sums directly (the
    leaves, in order) and the tree that adds their results (nested tuples of leaf numbers)."""
    if n <= _PW_BLOCKSIZE:
        leaves.append((start, n))
        return len(leaves) - 1
    n2 = n // 2
    n2 -= n2 % 8
    return (_pairwise_leaves(start, n2, leaves), _pairwise_leaves(start + n2, n - n2, leaves))


class _PairwisePlan:
    """How numpy (`np.add.reduce` along a contiguous axis of float32, as `x.mean(0)` and
    `x.var(0)` run on the extractor's [frames, 80] array, which is a transposed C array) sums n
    values: blocks of at most 128 summed by 8 interleaved accumulators that are then added
    ((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7)), the last n % 8 values added one by one (blocks under 8:
    added one by one from 0), and the blocks' results added along the recursion tree. Here all
    blocks run at once: their values are gathered into [blocks, steps, 8] (+ [blocks, 7] for the
    rest) with zeros where a block is shorter, and adding 0.0 to a float32 sum changes nothing."""

    def __init__(self, n: int, device: torch.device):
        leaves: list[tuple[int, int]] = []
        self.tree = _pairwise_leaves(0, n, leaves)
        steps = max(1, max((length - length % 8) // 8 for _, length in leaves))
        sentinel = n  # index of an appended zero row
        main = np.full((len(leaves), steps * 8), sentinel, dtype=np.int64)
        rest = np.full((len(leaves), 7), sentinel, dtype=np.int64)
        for k, (start, length) in enumerate(leaves):
            m = length - length % 8
            main[k, :m] = np.arange(start, start + m)
            rest[k, : length - m] = np.arange(start + m, start + length)
        self.steps = steps
        self.index = torch.from_numpy(np.concatenate([main, rest], axis=1).reshape(-1)).to(device)
        self.num_leaves = len(leaves)

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, n, C] float32 -> [B, C], summed in numpy's order."""
        b, _, c = x.shape
        padded = torch.cat([x, x.new_zeros(b, 1, c)], dim=1)
        g = padded.index_select(1, self.index).view(b, self.num_leaves, self.steps * 8 + 7, c)
        main = g[:, :, : self.steps * 8].view(b, self.num_leaves, self.steps, 8, c)
        r = main[:, :, 0]
        for k in range(1, self.steps):
            r = r + main[:, :, k]
        r = [r[:, :, j] for j in range(8)]
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        for k in range(7):
            res = res + g[:, :, self.steps * 8 + k]

        def combine(node):
            if isinstance(node, int):
                return res[:, node]
            return combine(node[0]) + combine(node[1])

        return combine(self.tree)


class W2vBertFeatures:
    """SeamlessM4TFeatureExtractor's input_features for a batch of equal-length waveforms.

        features = W2vBertFeatures(device="cuda")            # once per device / dtype
        x = features(waveforms)                                # [B, T] float -> [B, frames_out, 160] float32

    Row b of the result is exactly what the extractor gives for waveforms[b] alone (see the module
    docstring for the steps and how exact each compute_dtype is). No gradients.
    """

    def __init__(
        self,
        device: str | torch.device = "cpu",
        compute_dtype: torch.dtype = torch.float64,
        cpu_block_frames: int = CPU_BLOCK_FRAMES,
    ):
        if compute_dtype not in (torch.float64, torch.float32):
            raise ValueError(f"compute_dtype must be torch.float64 or torch.float32, got {compute_dtype}")
        self.device = torch.device(device)
        self.compute_dtype = compute_dtype
        self.cpu_block_frames = cpu_block_frames
        self.window = torch.from_numpy(_numpy_window()).to(self.device, compute_dtype)
        mel_filters = torch.from_numpy(_numpy_mel_filters())  # float64 [257, 80]
        self.mel_filters = mel_filters.to(self.device, compute_dtype)
        self._mel_filters64 = mel_filters.to(self.device)
        # A float32 matmul on a GPU may run in TF32 (torch.backends.cuda.matmul.allow_tf32, which the
        # codec's "tf32" dtype turns on for the whole process): in float32 mode off the CPU the small
        # mel product is done in float64, so these features do not depend on that setting.
        self._mel_in_float64 = compute_dtype == torch.float32 and self.device.type != "cpu"
        self._epsilon = torch.tensor(NORM_EPSILON, dtype=torch.float32, device=self.device)
        self._plans: dict[int, _PairwisePlan] = {}

    def _plan(self, n: int) -> _PairwisePlan:
        plan = self._plans.get(n)
        if plan is None:
            plan = self._plans[n] = _PairwisePlan(n, self.device)
        return plan

    def log_mel(self, waveforms: torch.Tensor) -> torch.Tensor:
        """[B, T] -> [B, frames, 80] float32 log-mel filterbank energies (steps 1-5), before
        normalisation: the extractor's _extract_fbank_features for each row.

        Every frame is independent here, so on the CPU the frames go through in blocks of
        CPU_BLOCK_FRAMES (all rows at once): the temporaries then stay a few MB, which glibc
        reuses, instead of tens of MB that are mapped and page-faulted afresh on every call
        (2-2.5x faster for a batch of 16 clips of 5.5 s). Elsewhere the whole batch is one block."""
        # float32 first, as the extractor's np.asarray(..., dtype=float32); a copy, so mul_ is ours
        x = waveforms.to(self.device, torch.float32).to(self.compute_dtype, copy=True).mul_(2.0**15)
        b, t = x.shape
        f = num_frames(t)
        out = torch.empty(b, f, NUM_MEL_BINS, dtype=torch.float32, device=self.device)
        step = max(1, self.cpu_block_frames // max(b, 1)) if self.device.type == "cpu" else max(f, 1)
        for f0 in range(0, f, step):
            n = min(step, f - f0)
            block = x[:, f0 * HOP_LENGTH : (f0 + n - 1) * HOP_LENGTH + FRAME_LENGTH]
            out[:, f0 : f0 + n] = self._log_mel_frames(block.unfold(-1, FRAME_LENGTH, HOP_LENGTH))
        return out

    def _log_mel_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, n, 400] frames (compute dtype, scaled by 2**15) -> [B, n, 80] float32 log-mel."""
        frames = frames - frames.mean(dim=-1, keepdim=True)
        # preemphasis on the DC-free frame, windowed, written into the zero-padded FFT buffer
        buffer = frames.new_zeros(*frames.shape[:-1], FFT_LENGTH)
        body = buffer[..., 1:FRAME_LENGTH]
        torch.mul(frames[..., :-1], -PREEMPHASIS, out=body)
        body += frames[..., 1:]
        buffer[..., 0] = frames[..., 0] * (1.0 - PREEMPHASIS)
        buffer[..., :FRAME_LENGTH] *= self.window
        spectrum = torch.view_as_real(torch.fft.rfft(buffer, dim=-1))  # [B, n, 257, 2]
        if self.compute_dtype == torch.float64:
            # the extractor keeps the spectrum in complex64 before |X|^2 in float64
            spectrum = spectrum.to(torch.float32).to(torch.float64)
        re, im = spectrum[..., 0], spectrum[..., 1]
        power = re * re + im * im
        if self._mel_in_float64:
            mel = torch.matmul(power.to(torch.float64), self._mel_filters64).clamp_min(MEL_FLOOR)
        else:
            mel = torch.matmul(power, self.mel_filters).clamp_min(MEL_FLOOR)
        return torch.log(mel).to(torch.float32)

    def normalise(self, logmel: torch.Tensor) -> torch.Tensor:
        """Per-utterance, per-mel-bin (x - mean) / sqrt(var_ddof1 + 1e-7) in float32, as numpy
        computes it on the extractor's array (same summation order, same roundings)."""
        n = logmel.shape[1]
        plan = self._plan(n)
        mean = (plan.sum(logmel).to(torch.float64) / n).to(torch.float32)[:, None, :]
        centred = logmel - mean
        var = (plan.sum(centred * centred).to(torch.float64) / max(n - 1, 0)).to(torch.float32)[:, None, :]
        # sqrt and / of float32 values done in float64 and rounded once: the correctly rounded float32
        # results numpy gives (torch's vectorised float32 sqrt on CPU is off by one ulp at times)
        std = torch.sqrt((var + self._epsilon).to(torch.float64)).to(torch.float32)
        return (centred.to(torch.float64) / std.to(torch.float64)).to(torch.float32)

    @torch.no_grad()
    def __call__(self, waveforms: torch.Tensor) -> torch.Tensor:
        if waveforms.dim() == 1:
            waveforms = waveforms[None]
        if waveforms.dim() != 2:
            raise ValueError(f"waveforms must be [B, T], got shape {tuple(waveforms.shape)}")
        b, t = waveforms.shape
        if t < FRAME_LENGTH:
            return torch.zeros(b, 0, FEATURE_DIM, dtype=torch.float32, device=self.device)
        features = self.normalise(self.log_mel(waveforms))  # [B, F, 80]
        f = features.shape[1]
        if f % STRIDE:
            pad = features.new_full((b, STRIDE - f % STRIDE, NUM_MEL_BINS), PADDING_VALUE)
            features = torch.cat([features, pad], dim=1)
        return features.reshape(b, features.shape[1] // STRIDE, FEATURE_DIM)
