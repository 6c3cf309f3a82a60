"""The segment file: one `.npz` per transcript segment, with the old workflow's keys.

Formats, by what is under the audio keys (`read_segment` reads every one of them):

| format | written by | `audio` | other audio keys |
| --- | --- | --- | --- |
| old scripts | the seed workflow | float waveform, savez_compressed | none |
| 1 | this project until issue 12 | FLAC bytes (uint8) + `audio_format: "flac"` | none |
| 2, `float32` (default) | stage 1 now | float32 waveform in [-1, 1), 16 kHz | `audio_format: "float32"` |
| 2, `flac` (option) | stage 1 with `audio_format: flac` | absent | `audio_flac`: FLAC bytes (uint8) |

The default is what the users' scripts read: `np.load(f)["audio"]` is the waveform, the samples
`read_segment` gives divided by 32768. It is deflated by ISA-L (pipeline/segments/npz_zip.py) at ~6,000x
realtime per core, a little larger than the old savez_compressed file. The FLAC option is half
that size; its files have no `audio` key at all, so an old reader fails loudly (KeyError) and
never reads FLAC bytes as samples. Read it with `read_segment(path).audio`, or:

    audio, sr = soundfile.read(io.BytesIO(np.load(path)["audio_flac"].tobytes()), dtype="float32")

Format-1 files, which held FLAC under `audio`, are re-cut by stage 1 (the format version is in
every recording's fingerprint); stage 2 rewrites their stage-2 copies around the codes they have.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
import soundfile as sf

from neutts_assets.pipeline.segments.audio import SAMPLE_RATE
from neutts_assets.pipeline.segments.npz_zip import (
    Member,
    deflated,
    npy_bytes,
    raw_members,
    read_npy,
    stored,
    write_npz,
)

FORMAT_VERSION = 2
AUDIO_FORMATS = ("float32", "flac")  # what stage 1 may write; float32 is what old readers read
DEFAULT_AUDIO_FORMAT = "float32"
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


def check_audio_format(audio_format: str) -> str:
    if audio_format not in AUDIO_FORMATS:
        raise ValueError(f"audio_format {audio_format!r}: expected one of {', '.join(AUDIO_FORMATS)}")
    return audio_format


def _audio_members(pcm16: np.ndarray, audio_format: str) -> list[Member]:
    if check_audio_format(audio_format) == "flac":
        return [stored("audio_flac.npy", npy_bytes(np.frombuffer(flac_bytes(pcm16), dtype=np.uint8)))]
    # Exact: every int16 divided by 2**15 is a float32, and times 2**15 gives the int16 back.
    return [deflated("audio.npy", npy_bytes(pcm16.astype(np.float32) * np.float32(1 / 32768)))]


def encode_segment(seg: Segment, audio_format: str = DEFAULT_AUDIO_FORMAT) -> bytes:
    """Serialises a segment to npz bytes: the audio in `audio_format`, every other key stored."""
    arrays = {
        "audio_format": np.array(audio_format),
        "sample_rate": np.array(SAMPLE_RATE, dtype=np.int32),
        "num_samples": np.array(len(seg.pcm16), dtype=np.int64),
        "codes": np.asarray(seg.codes, dtype=np.int32),
        "codec": np.array(seg.codec),
        "duration_sec": np.array(seg.duration_sec, dtype=np.float32),
        "source_key": np.array(seg.source_key),
        "start_ms": np.array(seg.start_ms, dtype=np.float64),
        "end_ms": np.array(seg.end_ms, dtype=np.float64),
        "format_version": np.array(FORMAT_VERSION, dtype=np.int32),
        **{key: np.array(getattr(seg, key)) for key in STRING_KEYS},
    }
    members = _audio_members(seg.pcm16, audio_format) + [stored(f"{k}.npy", npy_bytes(v)) for k, v in arrays.items()]
    return write_npz(members)


def _float_topcm16_of(wave: np.ndarray) -> np.ndarray:
    """Samples times 2**15, rounded and clipped: exact for the float32 we write from int16 (the
    product is already an integer), and the old scripts' floats (librosa's) are rounded."""
    if not np.isfinite(wave).all():
        raise ValueError("'audio' holds NaN or infinite samples")
    return np.clip(np.rint(wave * wave.dtype.type(32768)), -32768, 32767).astype(np.int16)


def _flac_topcm16_of(raw: np.ndarray) -> np.ndarray:
    pcm16, sr = sf.read(io.BytesIO(raw.tobytes()), dtype="int16")
    if sr != SAMPLE_RATE:
        raise ValueError(f"segment audio is {sr} Hz, expected {SAMPLE_RATE}")
    return pcm16


def _decode(get, names, audio_format: str) -> np.ndarray:
    """The int16 samples, whichever format: `get(key)` gives a member's array, `names` the keys."""
    if "audio_flac" in names:
        return _flac_topcm16_of(get("audio_flac"))
    if "audio" not in names:
        raise ValueError("segment file holds no audio (neither 'audio' nor 'audio_flac')")
    raw = get("audio")
    if audio_format == "flac":  # format 1: FLAC bytes under `audio`
        return _flac_topcm16_of(raw)
    if raw.dtype.kind != "f" or raw.ndim != 1:
        raise ValueError(f"'audio' is {raw.dtype} of shape {raw.shape}, not a mono float waveform")
    return _float_topcm16_of(raw)


def read_audio(data: bytes) -> np.ndarray:
    """Only the int16 samples of a segment file (any format), without parsing its other keys:
    stage 2's per-segment read, where every key parsed costs CPU on the encoding host."""
    return audio_of_members(raw_members(data))


def audio_of_members(members: dict[str, Member]) -> np.ndarray:
    """The int16 samples of a segment file already split into its members (raw_members)."""
    names = {n[:-4] for n in members if n.endswith(".npy")}
    fmt = str(read_npy(members["audio_format.npy"])[()]) if "audio_format" in names else ""
    return _decode(lambda key: read_npy(members[f"{key}.npy"]), names, fmt)


def pcm16_of(npz) -> np.ndarray:
    """The int16 samples of an opened segment file (any format): numpy's NpzFile, or anything
    with its `files` and `[key]`."""
    return _decode(lambda key: npz[key], set(npz.files), _str(npz, "audio_format"))


def with_codes(data: bytes, codes: np.ndarray, codec: str) -> bytes:
    """The segment file `data` with its `codes` and `codec` set, every other member copied as its
    compressed bytes: stage 2's file is the stage-1 file plus codes, and the audio is neither
    inflated nor deflated again. The same segment and codes give the same bytes."""
    replaced = {
        "codes.npy": stored("codes.npy", npy_bytes(np.asarray(codes, dtype=np.int32))),
        "codec.npy": stored("codec.npy", npy_bytes(np.array(codec))),
    }
    members = raw_members(data)
    return write_npz([m for name, m in members.items() if name not in replaced] + list(replaced.values()))


_AUDIO_MEMBERS = ("audio.npy", "audio_flac.npy", "audio_format.npy")


def audio_digest(members: dict[str, Member]) -> str:
    """A short name for a segment file's audio (the CRC-32 and size of its audio members, as
    raw_members gives them): a stage-2 file made by with_codes has the stage-1 file's, so scores
    made from one file can be checked to be of the audio another holds, without decoding either."""
    return "-".join(f"{members[n].crc:08x}:{members[n].size}" for n in _AUDIO_MEMBERS if n in members)


def same_audio_and_text(a: bytes, b: bytes) -> bool:
    """Whether two segment files hold the same samples and text: the audio members compared as
    stored (a stage-2 file made by with_codes), or else decoded."""
    x, y = raw_members(a), raw_members(b)
    if read_npy(x["text.npy"])[()] != read_npy(y["text.npy"])[()]:
        return False
    if all(
        (n in x) == (n in y) and (n not in x or (x[n].crc, x[n].payload) == (y[n].crc, y[n].payload))
        for n in _AUDIO_MEMBERS
    ):
        return True
    return np.array_equal(read_audio(a), read_audio(b))


def same_members_but_codes(a: bytes, b: bytes) -> bool:
    """Whether `a` is `b` with other codes: every member but codes/codec stored identically (a
    stage-2 file made from this very stage-1 file, not from an older format's)."""
    x, y = raw_members(a), raw_members(b)
    skip = {"codes.npy", "codec.npy"}
    return {n: (m.crc, m.payload) for n, m in x.items() if n not in skip} == {
        n: (m.crc, m.payload) for n, m in y.items() if n not in skip
    }


def _str(npz, key: str, default: str = "") -> str:
    return str(npz[key][()]) if key in npz.files else default


def read_segment(source: str | os.PathLike | bytes | BinaryIO) -> Segment:
    """Reads a segment file of any format (module docstring): this project's, or the old scripts'."""
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    with np.load(source, allow_pickle=False) as npz:
        pcm16 = pcm16_of(npz)
        return Segment(
            **{key: _str(npz, key) for key in STRING_KEYS},
            pcm16=pcm16,
            codes=np.asarray(npz["codes"]).astype(np.int32) if "codes" in npz.files else np.zeros(0, np.int32),
            codec=_str(npz, "codec"),
            source_key=_str(npz, "source_key"),
            start_ms=float(npz["start_ms"]) if "start_ms" in npz.files else 0.0,
            end_ms=float(npz["end_ms"]) if "end_ms" in npz.files else 0.0,
        )
