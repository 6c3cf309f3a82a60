"""One dataset row per segment file, with exactly the columns and features the users' training
scripts read (seed/SOURCE_LAYOUT.md), and the per-channel figures the dataset card states.

The row's audio is FLAC bytes, which `Audio(sampling_rate=16000)` decodes to the 16 kHz waveform:
a file of the FLAC option gives its FLAC bytes as they are; the default float32 files (and the old
scripts' float files) are encoded to FLAC once, here (~5,000x realtime per core).
"""

from __future__ import annotations

import io
import math
import re
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from neutts_assets.pipeline.segments.audio import SAMPLE_RATE
from neutts_assets.pipeline.segments.npz_zip import member_bytes, raw_members
from neutts_assets.pipeline.segments.segment_file import STRING_KEYS, flac_bytes, pcm16_of


def dataset_features():
    """The final dataset's features. `datasets` is imported here so the rest of core loads without it."""
    from datasets import Audio, Features, Sequence, Value

    return Features(
        {
            "audio": Audio(sampling_rate=SAMPLE_RATE),
            "codes": Sequence(Value("int32")),
            **{key: Value("string") for key in STRING_KEYS},
            "duration_sec": Value("float32"),
        }
    )


COLUMNS = ("audio", "codes", *STRING_KEYS, "duration_sec")


@dataclass
class Row:
    audio_flac: bytes
    codes: np.ndarray  # int32
    strings: dict[str, str]
    duration_sec: float
    codec: str

    @property
    def audio_id(self) -> str:
        return self.strings["audio_id"]


class BadSegment(ValueError):
    """A segment object that cannot become a row; the message says why."""


# The header numpy writes for a plain array: "{'descr': '<U5', 'fortran_order': False, 'shape': (), }".
_NPY_HEADER = re.compile(r"\{'descr': '([<>|=][A-Za-z][0-9]*)', 'fortran_order': False, 'shape': \(([0-9, ]*)\), \}")


class _Npz:
    """The members of an .npz, like numpy.load's NpzFile. numpy parses every member's header with
    ast.literal_eval, a third of the CPU of building a row; the headers numpy writes for plain
    arrays have one fixed form, read here with a regex. Anything else goes to numpy's own reader.
    Every member read is checked against its CRC (npz_zip.member_bytes)."""

    def __init__(self, data: bytes):
        self._members = raw_members(data)
        self.files = [n[:-4] for n in self._members if n.endswith(".npy")]

    def __getitem__(self, key: str) -> np.ndarray:
        raw = member_bytes(self._members[key + ".npy"])
        if raw[:6] != b"\x93NUMPY" or raw[6] not in (1, 2, 3):
            raise ValueError(f"member {key!r} is not a .npy array")
        start = 10 if raw[6] == 1 else 12
        size = struct.unpack("<H" if raw[6] == 1 else "<I", raw[8:start])[0]
        match = _NPY_HEADER.match(raw[start : start + size].decode("latin1"))
        if match is None:
            return np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False)
        shape = tuple(int(x) for x in match[2].split(",") if x.strip())
        dtype = np.dtype(match[1])
        return np.frombuffer(raw, dtype, count=math.prod(shape), offset=start + size).reshape(shape)


def read_row(data: bytes) -> Row:
    """A segment file's row: FLAC bytes as they are when the file holds FLAC, else encoded once."""
    try:
        npz = _Npz(data)
        files = set(npz.files)
        missing = {*STRING_KEYS} - files
        if missing or not files & {"audio", "audio_flac"}:
            raise BadSegment(f"not a segment file: missing {', '.join(sorted(missing) or ['audio'])}")
        strings = {key: str(npz[key][()]) for key in STRING_KEYS}
        codes = np.asarray(npz["codes"]).astype(np.int32).ravel() if "codes" in files else np.zeros(0, np.int32)
        codec = str(npz["codec"][()]) if "codec" in files else ""
        audio_format = str(npz["audio_format"][()]) if "audio_format" in files else ""
        num_samples = int(npz["num_samples"]) if "num_samples" in files else None
        if "audio_flac" in files:  # format 2, FLAC option
            flac = npz["audio_flac"].tobytes()
        elif audio_format == "flac":  # format 1: FLAC under `audio`
            flac = npz["audio"].tobytes()
        else:  # a float waveform (ours, or the old scripts'): encoded once
            pcm16 = pcm16_of(npz)
            flac, num_samples = flac_bytes(pcm16), len(pcm16)
        if num_samples is None:  # an incomplete header: decode to count
            num_samples = len(pcm16_of(npz))
    except BadSegment:
        raise
    except Exception as exc:  # zip, numpy and decoding errors: the object is unusable
        raise BadSegment(f"unreadable segment file: {type(exc).__name__}: {exc}") from None
    return Row(flac, codes, strings, num_samples / SAMPLE_RATE, codec)


@dataclass(frozen=True)
class RowFilter:
    """Which segments become rows. Only rows with codes, unless the no-codes option is set; a
    duration range, off by default."""

    require_codes: bool = True
    min_duration_s: float | None = None
    max_duration_s: float | None = None

    def reason_to_skip(self, row: Row) -> str | None:
        if self.require_codes and len(row.codes) == 0:
            return "no codes"
        if self.min_duration_s is not None and row.duration_sec < self.min_duration_s:
            return f"shorter than {self.min_duration_s} s"
        if self.max_duration_s is not None and row.duration_sec > self.max_duration_s:
            return f"longer than {self.max_duration_s} s"
        return None

    def fingerprint(self) -> dict:
        return {
            "require_codes": self.require_codes,
            "min_duration_s": self.min_duration_s,
            "max_duration_s": self.max_duration_s,
        }


# Duration histogram bins, seconds: the pair builder keeps 0.5-15 s, so those edges are visible.
DURATION_EDGES = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 10.0, 15.0, 20.0, 30.0)


def duration_bin(seconds: float) -> str:
    for lo, hi in zip(DURATION_EDGES, DURATION_EDGES[1:]):
        if seconds < hi:
            return f"{lo:g}-{hi:g} s"
    return f"≥ {DURATION_EDGES[-1]:g} s"


def duration_bins() -> list[str]:
    return [f"{lo:g}-{hi:g} s" for lo, hi in zip(DURATION_EDGES, DURATION_EDGES[1:])] + [f"≥ {DURATION_EDGES[-1]:g} s"]


@dataclass
class ChannelStats:
    """What the card says about a channel: counts only, so memory does not grow with the rows
    (speakers are counted per recording, as speaker_id is only unique within one audio file)."""

    rows: int = 0
    seconds: float = 0.0
    speakers: set = field(default_factory=set)
    gender: Counter = field(default_factory=Counter)
    dialect: Counter = field(default_factory=Counter)
    tone: Counter = field(default_factory=Counter)
    durations: Counter = field(default_factory=Counter)
    codecs: Counter = field(default_factory=Counter)
    rows_with_codes: int = 0

    def add(self, row: Row) -> None:
        self.rows += 1
        self.seconds += row.duration_sec
        recording = row.audio_id.rsplit("_seg_", 1)[0]
        self.speakers.add((recording, row.strings["speaker_id"]))
        self.gender[row.strings["gender"]] += 1
        self.dialect[row.strings["dialect"]] += 1
        self.tone[row.strings["tone"]] += 1
        self.durations[duration_bin(row.duration_sec)] += 1
        if len(row.codes):
            self.rows_with_codes += 1
            self.codecs[row.codec or "unknown"] += 1

    def to_state(self) -> dict:
        """Everything `add` has gathered, as JSON, so that a resumed build goes on counting."""
        return {
            "rows": self.rows,
            "seconds": self.seconds,
            "speakers": sorted(list(s) for s in self.speakers),
            "gender": dict(self.gender),
            "dialect": dict(self.dialect),
            "tone": dict(self.tone),
            "durations": dict(self.durations),
            "codecs": dict(self.codecs),
            "rows_with_codes": self.rows_with_codes,
        }

    @classmethod
    def from_state(cls, d: dict) -> ChannelStats:
        return cls(
            rows=d["rows"],
            seconds=d["seconds"],
            speakers={tuple(s) for s in d["speakers"]},
            gender=Counter(d["gender"]),
            dialect=Counter(d["dialect"]),
            tone=Counter(d["tone"]),
            durations=Counter(d["durations"]),
            codecs=Counter(d["codecs"]),
            rows_with_codes=d["rows_with_codes"],
        )

    def merge(self, other: ChannelStats) -> ChannelStats:
        """Adds another part's figures to these (a channel's are the merge of its shards'); returns self."""
        self.rows += other.rows
        self.seconds += other.seconds
        self.speakers |= other.speakers
        for name in ("gender", "dialect", "tone", "durations", "codecs"):
            getattr(self, name).update(getattr(other, name))
        self.rows_with_codes += other.rows_with_codes
        return self

    @classmethod
    def merged(cls, states: Iterable[dict]) -> ChannelStats:
        """The figures of several parts, each given as its `to_state`, in the order given."""
        total = cls()
        for state in states:
            total.merge(cls.from_state(state))
        return total

    def to_dict(self) -> dict:
        return {
            "rows": self.rows,
            "hours": round(self.seconds / 3600, 4),
            "seconds": round(self.seconds, 3),
            "speakers": len(self.speakers),
            "gender": dict(self.gender.most_common()),
            "dialect": dict(self.dialect.most_common()),
            "tone": dict(self.tone.most_common()),
            "duration_histogram": {b: self.durations.get(b, 0) for b in duration_bins()},
            "codecs": dict(self.codecs.most_common()),
            "rows_with_codes": self.rows_with_codes,
        }
