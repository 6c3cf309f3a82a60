"""The segment file: one `.npz` per transcript segment, with the old workflow's keys.

`audio` holds the 16 kHz mono waveform as FLAC bytes (a uint8 array) instead of float32:
lossless for the 16-bit PCM it was decoded to, about half the size of the old
savez_compressed float32, and about 30x faster to write. `numpy.load` still opens the file
without pickling; the float waveform is one line away:

    audio, sr = soundfile.read(io.BytesIO(np.load(path)["audio"].tobytes()), dtype="float32")

`read_segment` does that and also reads the old float-array files.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
import soundfile as sf

from neutts_assets.core.audio import SAMPLE_RATE

FORMAT_VERSION = 1
STRING_KEYS = ("text", "speaker_id", "channel", "gender", "dialect", "tone", "audio_id")


@dataclass
class Segment:
    audio_id: str
    channel: str
    text: str
    speaker_id: str
    gender: str
    dialect: str
    tone: str
    pcm16: np.ndarray  # int16 samples at SAMPLE_RATE
    codes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    # Which codec made `codes` (model id @ revision, and "random-weights" for test-only codes); empty without codes.
    codec: str = ""
    # Provenance, beyond the old keys: where in which recording the segment came from.
    source_key: str = ""
    start_ms: float = 0.0
    end_ms: float = 0.0

    @property
    def duration_sec(self) -> float:
        return len(self.pcm16) / SAMPLE_RATE

    @property
    def audio(self) -> np.ndarray:
        """The float32 waveform in [-1, 1), as the old files stored it."""
        return self.pcm16.astype(np.float32) / 32768.0


def flac_bytes(pcm16: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, pcm16, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def encode_segment(seg: Segment) -> bytes:
    """Serialises a segment to npz bytes (uncompressed zip: the FLAC payload is already compressed)."""
    arrays = {
        "audio": np.frombuffer(flac_bytes(seg.pcm16), dtype=np.uint8),
        "audio_format": np.array("flac"),
        "sample_rate": np.array(SAMPLE_RATE, dtype=np.int32),
        "num_samples": np.array(len(seg.pcm16), dtype=np.int64),
        "codes": np.asarray(seg.codes, dtype=np.int32),
        "codec": np.array(seg.codec),
        "duration_sec": np.array(seg.duration_sec, dtype=np.float32),
        "source_key": np.array(seg.source_key),
        "start_ms": np.array(seg.start_ms, dtype=np.float64),
        "end_ms": np.array(seg.end_ms, dtype=np.float64),
        "format_version": np.array(FORMAT_VERSION, dtype=np.int32),
    }
    for key in STRING_KEYS:
        arrays[key] = np.array(getattr(seg, key))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def read_audio(data: bytes) -> np.ndarray:
    """Only the int16 samples of a segment file (either format), without parsing its other keys:
    stage 2's per-segment read, where every key parsed costs CPU on the encoding host."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return _pcm16(npz)


def _pcm16(npz) -> np.ndarray:
    raw = npz["audio"]
    if _str(npz, "audio_format") == "flac":
        pcm16, sr = sf.read(io.BytesIO(raw.tobytes()), dtype="int16")
        if sr != SAMPLE_RATE:
            raise ValueError(f"segment audio is {sr} Hz, expected {SAMPLE_RATE}")
        return pcm16
    # the old float waveform
    return np.clip(np.round(raw.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def _npy(value: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asanyarray(value), allow_pickle=False)
    return buf.getvalue()


def with_codes(data: bytes, codes: np.ndarray, codec: str) -> bytes:
    """The segment file `data` with its `codes` and `codec` set, every other entry kept byte for
    byte: stage 2's file is the stage-1 file plus codes, and the audio (already compressed) is
    neither decoded nor compressed again."""
    replaced = {"codes.npy": _npy(np.asarray(codes, dtype=np.int32)), "codec.npy": _npy(np.array(codec))}
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as dst:
        entries = [(i.filename, src.read(i)) for i in src.infolist() if i.filename not in replaced]
        for name, payload in entries + list(replaced.items()):
            # as np.savez writes each entry: no timestamp (ZipInfo's 1980 default), zip64 forced, so
            # the same segment and codes give the same bytes whenever they are written
            with dst.open(name, "w", force_zip64=True) as f:
                f.write(payload)
    return out.getvalue()


def same_audio_and_text(a: bytes, b: bytes) -> bool:
    """Whether two segment files hold the same samples and text: the entries compared as bytes
    (a stage-2 file made by with_codes), or else decoded."""
    with np.load(io.BytesIO(a), allow_pickle=False) as x, np.load(io.BytesIO(b), allow_pickle=False) as y:
        if _str(x, "text") != _str(y, "text"):
            return False
        if _str(x, "audio_format") == _str(y, "audio_format") and np.array_equal(x["audio"], y["audio"]):
            return True
        return np.array_equal(_pcm16(x), _pcm16(y))


def _str(npz, key: str, default: str = "") -> str:
    return str(npz[key][()]) if key in npz.files else default


def read_segment(source: str | os.PathLike | bytes | BinaryIO) -> Segment:
    """Reads a segment file written by this project or by the old scripts (float `audio`)."""
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    with np.load(source, allow_pickle=False) as npz:
        pcm16 = _pcm16(npz)
        return Segment(
            **{key: _str(npz, key) for key in STRING_KEYS},
            pcm16=pcm16,
            codes=np.asarray(npz["codes"]).astype(np.int32) if "codes" in npz.files else np.zeros(0, np.int32),
            codec=_str(npz, "codec"),
            source_key=_str(npz, "source_key"),
            start_ms=float(npz["start_ms"]) if "start_ms" in npz.files else 0.0,
            end_ms=float(npz["end_ms"]) if "end_ms" in npz.files else 0.0,
        )
