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

from neutts_assets.pipeline.dataset.annotations import LINEAGE_COLUMNS, RecordingLineage
from neutts_assets.pipeline.dataset.splits import TRAIN
from neutts_assets.pipeline.quality.distribution import coarse_histogram, fine_bin, quantiles
from neutts_assets.pipeline.quality.scores import ALL_SCORE_NAMES
from neutts_assets.pipeline.segments.audio import SAMPLE_RATE
from neutts_assets.pipeline.segments.npz_zip import member_bytes, raw_members
from neutts_assets.pipeline.segments.segment_file import STRING_KEYS, audio_digest, flac_bytes, pcm16_of

# The users' columns (seed/SOURCE_LAYOUT.md), in their order; then the split, the quality scores
# (pipeline/quality/scores.py; null where not scored) and the lineage (pipeline/dataset/annotations.py).
USERS_COLUMNS = ("audio", "codes", *STRING_KEYS, "duration_sec")
FLOAT64_LINEAGE = ("start_ms", "end_ms")
COLUMNS = (*USERS_COLUMNS, "split", *ALL_SCORE_NAMES, *LINEAGE_COLUMNS)


def dataset_features():
    """The final dataset's features. `datasets` is imported here so the rest of core loads without it."""
    from datasets import Audio, Features, Sequence, Value

    return Features(
        {
            "audio": Audio(sampling_rate=SAMPLE_RATE),
            "codes": Sequence(Value("int32")),
            **{key: Value("string") for key in STRING_KEYS},
            "duration_sec": Value("float32"),
            "split": Value("string"),
            **{name: Value("float32") for name in ALL_SCORE_NAMES},
            **{name: Value("float64" if name in FLOAT64_LINEAGE else "string") for name in LINEAGE_COLUMNS},
        }
    )


@dataclass
class Row:
    audio_flac: bytes
    codes: np.ndarray  # int32
    strings: dict[str, str]
    duration_sec: float
    codec: str
    source_key: str = ""
    start_ms: float | None = None
    end_ms: float | None = None
    audio_digest: str = ""  # segment_file.audio_digest: which audio the scores must be of
    # Set by the builder from the channel's Annotations before the filter sees the row.
    split: str = TRAIN
    scores: dict = field(default_factory=dict)  # score name -> value (None: undefined); empty: not scored
    lineage: RecordingLineage = field(default_factory=RecordingLineage)

    @property
    def audio_id(self) -> str:
        return self.strings["audio_id"]

    def score(self, name: str) -> float | None:
        """The score, or None where there is none (or it is not a finite number: never compared)."""
        value = self.scores.get(name)
        return value if value is None or math.isfinite(value) else None


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

    @property
    def members(self):
        return self._members

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
        source_key = str(npz["source_key"][()]) if "source_key" in files else ""
        start_ms = float(npz["start_ms"][()]) if "start_ms" in files else None
        end_ms = float(npz["end_ms"][()]) if "end_ms" in files else None
        digest = audio_digest(npz.members)
    except BadSegment:
        raise
    except Exception as exc:  # zip, numpy and decoding errors: the object is unusable
        raise BadSegment(f"unreadable segment file: {type(exc).__name__}: {exc}") from None
    return Row(flac, codes, strings, num_samples / SAMPLE_RATE, codec, source_key, start_ms, end_ms, digest)


@dataclass(frozen=True)
class RowFilter:
    """Which segments become rows. Only rows with codes, unless the no-codes option is set; a
    duration range and quality thresholds, all off by default. A row without the score a
    threshold is on (not scored, or undefined: the SNR of a segment with no pause) is left out,
    with that reason."""

    require_codes: bool = True
    min_duration_s: float | None = None
    max_duration_s: float | None = None
    min_speech_ratio: float | None = None
    min_snr_db: float | None = None
    max_clipping_fraction: float | None = None
    min_dnsmos_sig: float | None = None
    min_dnsmos_bak: float | None = None
    min_dnsmos_ovrl: float | None = None

    def _thresholds(self):
        """(score, bound, is a minimum) for every threshold that is set."""
        for name in QUALITY_FILTERS:
            bound = getattr(self, name)
            if bound is not None:
                yield name.split("_", 1)[1], bound, name.startswith("min_")

    def reason_to_skip(self, row: Row) -> str | None:
        if self.require_codes and len(row.codes) == 0:
            return "no codes"
        if self.min_duration_s is not None and row.duration_sec < self.min_duration_s:
            return f"shorter than {self.min_duration_s} s"
        if self.max_duration_s is not None and row.duration_sec > self.max_duration_s:
            return f"longer than {self.max_duration_s} s"
        for score, bound, minimum in self._thresholds():
            value = row.score(score)
            if value is None:
                return f"no {score} score"
            if minimum and value < bound:
                return f"{score} below {bound:g}"
            if not minimum and value > bound:
                return f"{score} above {bound:g}"
        return None

    def fingerprint(self) -> dict:
        out = {
            "require_codes": self.require_codes,
            "min_duration_s": self.min_duration_s,
            "max_duration_s": self.max_duration_s,
        }
        # Only the thresholds that are set: a record made before they existed is still current.
        out.update({name: getattr(self, name) for name in QUALITY_FILTERS if getattr(self, name) is not None})
        return out


QUALITY_FILTERS = (
    "min_speech_ratio",
    "min_snr_db",
    "max_clipping_fraction",
    "min_dnsmos_sig",
    "min_dnsmos_bak",
    "min_dnsmos_ovrl",
)


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
    scores: dict = field(default_factory=dict)  # score -> Counter of fine bins (pipeline/quality/distribution.py)
    unscored: Counter = field(default_factory=Counter)  # score -> rows without a value

    def add(self, row: Row) -> None:
        for name in ALL_SCORE_NAMES:
            value = row.score(name)  # None too where not finite
            if value is None:
                self.unscored[name] += 1
            else:
                self.scores.setdefault(name, Counter())[fine_bin(name, value)] += 1
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
            "scores": {name: {str(b): n for b, n in sorted(c.items())} for name, c in self.scores.items()},
            "unscored": dict(self.unscored),
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
            scores={name: Counter({int(b): n for b, n in c.items()}) for name, c in d.get("scores", {}).items()},
            unscored=Counter(d.get("unscored", {})),
        )

    def merge(self, other: ChannelStats) -> ChannelStats:
        """Adds another part's figures to these (a channel's are the merge of its shards'); returns self."""
        self.rows += other.rows
        self.seconds += other.seconds
        self.speakers |= other.speakers
        for name in ("gender", "dialect", "tone", "durations", "codecs", "unscored"):
            getattr(self, name).update(getattr(other, name))
        for name, counts in other.scores.items():
            self.scores.setdefault(name, Counter()).update(counts)
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
            "quality": {
                name: {
                    "scored": sum(self.scores.get(name, {}).values()),
                    "unscored": self.unscored.get(name, 0),
                    "quantiles": quantiles(name, self.scores.get(name, {})),
                    "histogram": coarse_histogram(name, self.scores.get(name, {})),
                }
                for name in ALL_SCORE_NAMES
            },
        }
