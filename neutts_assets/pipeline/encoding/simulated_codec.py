"""A codec with NeuCodec's interface whose device work costs a set time, for benchmarks and tests of
the stream (pipeline/encoding/stream.py) apart from the model.

`SimulatedCodec(audio_seconds_per_second=None)` is the zero-cost codec: its model call and its
features cost nothing, so a stream over it measures the host side alone (the host ceiling).
With a speed, each call sleeps for the batch's audio-seconds divided by it. A sleep releases the
GIL, as a CUDA call does while the GPU works, so the host can prepare the next batch meanwhile.

Host work is real: `prepare` is the codec's own (checks, layout in memory). Codes are a cheap
function of the audio (each 20 ms frame's first sample, as 0..65535), so a test can tell that every
segment got its own codes.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from neutts_assets.pipeline.encoding.codec import CODEBOOK_SIZE, HOP, Codec, CodecSettings, check_codes, n_codes


def simulated_codes(samples: np.ndarray) -> np.ndarray:
    """The codes SimulatedCodec gives a clip: each 320-sample frame's first sample, as 0..65535
    (a strided view: next to no host work, yet different for every stretch of speech)."""
    n = n_codes(len(samples))
    return samples[: n * HOP : HOP].astype(np.int32) % CODEBOOK_SIZE


class SimulatedCodec(Codec):
    def __init__(self, audio_seconds_per_second: float | None = None, label: str = "simulated-codec@random-weights"):
        import torch

        self.model, self.label, self.settings = None, label, CodecSettings(weights="random", device="cpu")
        self.device, self.layers_trimmed, self._copy_stream = torch.device("cpu"), 0, None
        self.speed = audio_seconds_per_second
        self.feature_seconds = self.model_seconds = 0.0
        self.calls = 0
        self.in_call = threading.Event()  # set while a model call runs (for tests of the overlap)

    @property
    def uses_features(self) -> bool:
        return False

    def encode_batch(self, clips, features=None) -> list[np.ndarray]:
        batch = clips if not isinstance(clips, (list, tuple)) else self.prepare(clips)
        t0 = time.perf_counter()
        self.in_call.set()
        try:
            self.model_call(batch)
        finally:
            self.in_call.clear()
        self.calls += 1
        rows = batch.device.numpy()
        codes = [check_codes(simulated_codes(rows[i, :n]), n) for i, n in enumerate(batch.lengths)]
        self.model_seconds += time.perf_counter() - t0
        return codes

    def model_call(self, batch) -> None:
        """The device's time for the batch: nothing, or a sleep (GIL released) at the set speed."""
        if self.speed:
            time.sleep(batch.audio_seconds / self.speed)
