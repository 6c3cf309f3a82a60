"""The bad-input corpus: one table of hostile or odd inputs, each with the outcome it must have.

All of them sit in one channel of a GCS source (the emulator: object names no local folder can
hold, such as 1000-character or '//' names, are possible there), next to a good recording. The
channel goes once through raw_audio, segments_npz, encoded_segments (random-weight NeuCodec) and
hf_dataset; then every case is checked against that one run's store, dataset rows and
materialization metadata. Each outcome names the object and the reason:

    failed    the recording is not cut; segments_npz's `failures` names the object and why
    refused   the object is left out by the inventory; raw_audio's `unpaired` names it and why
    skipped   one segment is not cut; segments_npz's `skipped_segments` names it and why
    noted     used, but not exactly as given; segments_npz's `input_notes` says what changed
    cut       the segment is in the store, the encoded store and the dataset, as checked

`python -m neutts_assets_tests.test_bad_input_corpus` prints the table (kind, outcome).
The ten-hour recording is at the end: its own test, in a child process whose memory is measured.
"""

from __future__ import annotations

import functools
import json
import os
import struct
import subprocess
import sys
import textwrap
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from dagster import AssetSelection, DagsterInstance, materialize

from neutts_assets.defs.dataset.hf_dataset import hf_dataset
from neutts_assets.defs.encoding.codec import NeuCodecResource
from neutts_assets.defs.encoding.encoded_segments import encoded_segments
from neutts_assets.defs.inventory.raw_audio import raw_audio
from neutts_assets.defs.metadata import MAX_CELL_CHARS
from neutts_assets.defs.segments.segments_npz import segments_npz
from neutts_assets.pipeline.inventory.transcripts import MAX_TRANSCRIPT_BYTES
from neutts_assets.pipeline.segments.audio import decode_pcm16
from neutts_assets.pipeline.segments.cutting import ms_to_sample
from neutts_assets.pipeline.segments.segment_file import read_segment
from neutts_assets.storage.local import LocalStore
from neutts_assets_tests.helpers import (
    DEMO_TRANSCRIPTS,
    asset_metadata,
    audio_key,
    convert,
    demo_audio,
    make_resources,
    transcript_key,
)

CHANNEL = "bad_corpus"
SPEECH = demo_audio("austen_0870")  # 7.1 s of speech, 48 kHz mono wav
GOOD_TRANSCRIPT = json.loads((DEMO_TRANSCRIPTS / "audio_austen_0870.json").read_text())  # 3 segments


def seg(start_ms, end_ms, text="a line of speech", **labels) -> dict:
    return {"start_ms": start_ms, "end_ms": end_ms, "text": text, **labels}


ONE = [seg(200, 2210)]  # one segment, for cases about the audio or the name


# The corpus: how each input is made -------------------------------------------------------------


class Source:
    """Writes a case's objects into the channel's source bucket, in the users' layout."""

    def __init__(self, store, tmp: Path):
        self.store, self.tmp = store, tmp

    def recording(
        self, rec_id: str, transcript: list | dict | bytes | None = None, audio: bytes | None = None, ext: str = "wav"
    ):
        if transcript is not None:
            self.store.write_bytes(
                transcript_key(CHANNEL, rec_id),
                transcript if isinstance(transcript, bytes) else json.dumps(transcript, ensure_ascii=False).encode(),
            )
        if audio is not None:
            self.store.write_bytes(audio_key(CHANNEL, f"{rec_id}.{ext}"), audio)

    def raw(self, key: str, data: bytes):
        self.store.bucket.blob(key).upload_from_string(data)  # names our stores would refuse to write

    @functools.cached_property
    def wav16k(self) -> bytes:
        return convert(SPEECH, self.tmp / "speech16k.wav", "-ar", "16000").read_bytes()

    def converted(self, name: str, *args: str) -> bytes:
        return convert(SPEECH, self.tmp / name, *args).read_bytes()

    def ffmpeg(self, name: str, *args: str) -> bytes:
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args, str(self.tmp / name)], check=True)
        return (self.tmp / name).read_bytes()


def wav_header(channels: int, rate: int, data_bytes: int) -> bytes:
    block = 2 * max(channels, 1)
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * block, block, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", data_bytes)
    )


ARABIC = "قالَ المُعلِّمُ: \u200fمرحباً بكم\u200f — Hello, world! (٣ دروس) \u200ewith diacritics: بِسْمِ اللَّهِ"
LONG_TEXT = ("كلمة word " * 10_000).strip()  # 100 KB of UTF-8
LONG_ID = "ب" * 100  # 200 bytes of UTF-8: the longest recording ID, in 100 characters
TOO_LONG_ID = "ب" * 101  # 202 bytes, though only 101 characters


# Outcomes: what each case must lead to, checked against the one run --------------------------


@dataclass
class Run:
    stage1: dict  # segments_npz metadata
    inventory: dict  # raw_audio metadata
    encoded: dict  # encoded_segments metadata
    dataset: dict  # hf_dataset metadata
    store: LocalStore
    rows: dict  # audio_id -> dataset row

    def segment(self, sid: str):
        data = self.store.read_bytes_or_none(f"stage1/{CHANNEL}/{sid}.npz")
        return None if data is None else read_segment(data)


def _cell(text: str) -> str:
    """How metadata_table shows a string (defs/metadata.py)."""
    return str(text)[:MAX_CELL_CHARS]


def _row(table: list[dict], first: str, *words: str) -> dict:
    """The first row of `table` (a metadata table's rows) whose first column starts with `first`,
    after checking that one such row holds every one of `words` in its cells."""
    rows = [r for r in table if str(next(iter(r.values()))).startswith(_cell(first)[:250])]
    assert rows, f"{first[:80]!r} not in\n{table}"
    assert any(all(any(w in str(c) for c in r.values()) for w in words) for r in rows), f"{words} not in {rows}"
    return rows[0]


@dataclass
class Outcome:
    verb: str
    target: str
    words: tuple[str, ...] = ()
    check: Callable[[Run], None] | None = None

    def verify(self, run: Run) -> None:
        if self.verb == "failed":
            _row(run.stage1["failures"], self.target, *self.words)
            assert not list(run.store.list(f"stage1/{CHANNEL}/{_recording_of(self.target)}_seg_"))
        elif self.verb == "refused":
            _row(run.inventory["unpaired"], self.target, *self.words)
        elif self.verb == "skipped":
            _row(run.stage1["skipped_segments"], self.target, *self.words)
            assert run.segment(self.target) is None and self.target not in run.rows
        elif self.verb == "noted":
            _row(run.stage1["input_notes"], self.target, *self.words)
        elif self.verb == "cut":
            seg = run.segment(self.target)
            assert seg is not None, f"{self.target} was not cut"
            row = run.rows.get(self.target)
            assert row is not None, f"{self.target} is not in the dataset"
            # text and labels reach the row byte for byte
            assert row["text"].encode() == seg.text.encode() and row["speaker_id"] == seg.speaker_id
            assert len(row["codes"]) == len(seg.pcm16) // 320
        if self.check is not None:
            self.check(run)

    def __str__(self) -> str:
        return (
            f"{self.verb}: {' / '.join(self.words) or self.target}"
            if self.verb != "cut"
            else f"cut: {self.target[:60]}"
        )


def _recording_of(key: str) -> str:
    name = key.rsplit("/", 1)[1]
    return name[len("audio_") : -len(".json")] if key.startswith(PREFIX_T) else name.split(".", 1)[0]


def failed(key, *words, check=None):
    return Outcome("failed", key, words, check)


def refused(key, *words, check=None):
    return Outcome("refused", key, words, check)


def skipped(sid, *words, check=None):
    return Outcome("skipped", sid, words, check)


def noted(obj, *words, check=None):
    return Outcome("noted", obj, words, check)


def cut(sid, check=None):
    return Outcome("cut", sid, (), check)


def text_is(sid: str, text: str):
    def check(run: Run):
        assert run.segment(sid).text.encode("utf-8") == text.encode("utf-8")
        assert run.rows[sid]["text"].encode("utf-8") == text.encode("utf-8")

    return check


def seconds_is(sid: str, seconds: float, tol: float = 0.002):
    def check(run: Run):
        assert abs(run.segment(sid).duration_sec - seconds) <= tol, run.segment(sid).duration_sec

    return check


def slice_of(sid: str, audio: str, start_ms: float, end_ms: float):
    """The segment's samples are exactly that slice of the whole recording decoded at once."""

    def check(run: Run):
        full = decode_pcm16(run.store.root.parent / "decoded" / audio)
        assert np.array_equal(run.segment(sid).pcm16, full[ms_to_sample(start_ms, 16000) : ms_to_sample(end_ms, 16000)])

    return check


@dataclass
class Case:
    kind: str
    make: Callable[[Source], None]
    expect: list[Outcome] = field(default_factory=list)
    lost: str = "nothing"  # what of the input does not reach the dataset, beyond the object itself when it fails

    def __str__(self) -> str:
        return self.kind


T, A = (lambda rid: transcript_key(CHANNEL, rid)), (lambda name: audio_key(CHANNEL, name))
PREFIX_T = f"processed_runs/processed_{CHANNEL}/transcripts/"

CASES = [
    # audio -----------------------------------------------------------------------------------
    Case(
        "truncated audio (wav cut at 2.5 s of 7.1 s)",
        lambda s: s.recording("truncated", GOOD_TRANSCRIPT, SPEECH.read_bytes()[: 44 + 96_000 * 5 // 2]),
        [
            cut("truncated_seg_0", seconds_is("truncated_seg_0", 2.01)),
            skipped("truncated_seg_1", "shorter than 0.3 s", "after clipping"),
            skipped("truncated_seg_2", "outside the audio", "audio ends at 2500 ms"),
        ],
        "the segments past the cut-off point",
    ),
    Case(
        "audio truncated to its header (0 samples)",
        lambda s: s.recording("header_only", ONE, wav_header(1, 48000, 96000 * 7)),
        [failed(A("header_only.wav"), "decoded to no audio samples")],
    ),
    Case(
        "zero-byte audio",
        lambda s: s.recording("zero_bytes", ONE, b""),
        [failed(A("zero_bytes.wav"), "ffmpeg cannot decode it", "Invalid data")],
    ),
    Case(
        "wrong extension: WAV content named .mp3 (decoded by content, with a note)",
        lambda s: s.recording("wav_named_mp3", ONE, s.wav16k, "mp3"),
        [
            cut("wav_named_mp3_seg_0", slice_of("wav_named_mp3_seg_0", "speech16k.wav", 200, 2210)),
            noted(A("wav_named_mp3.mp3"), "named .mp3 but the content is wav: decoded by its content"),
        ],
    ),
    Case(
        "wrong extension: text named .wav",
        lambda s: s.recording("text_named_wav", ONE, b"this is not audio\n" * 50),
        [failed(A("text_named_wav.wav"), "ffmpeg cannot decode it")],
    ),
    Case(
        "0-channel WAV",
        lambda s: s.recording("zero_channels", ONE, wav_header(0, 16000, 32000) + b"\0" * 32000),
        [failed(A("zero_channels.wav"), "ffmpeg cannot decode it", "channel")],
    ),
    Case(
        "8-channel (7.1) WAV, downmixed to mono",
        lambda s: s.recording("eight_channels", ONE, s.converted("ch8.wav", "-ac", "8")),
        [cut("eight_channels_seg_0", seconds_is("eight_channels_seg_0", 2.01))],
    ),
    Case(
        "8 kHz audio, resampled to 16 kHz",
        lambda s: s.recording("rate_8k", ONE, s.converted("8k.wav", "-ar", "8000")),
        [cut("rate_8k_seg_0", seconds_is("rate_8k_seg_0", 2.01))],
    ),
    Case(
        "96 kHz 24-bit stereo FLAC, resampled to 16 kHz",
        lambda s: s.recording(
            "rate_96k", ONE, s.converted("96k.flac", "-ar", "96000", "-ac", "2", "-sample_fmt", "s32"), "flac"
        ),
        [cut("rate_96k_seg_0", seconds_is("rate_96k_seg_0", 2.01))],
    ),
    Case(
        "video only, no audio stream",
        lambda s: s.recording(
            "video_only",
            ONE,
            s.ffmpeg("v.webm", "-f", "lavfi", "-i", "color=c=black:s=32x32:d=1", "-c:v", "libvpx"),
            "webm",
        ),
        [failed(A("video_only.webm"), "no audio stream in the file")],
    ),
    Case(
        "video with an audio stream (the audio is used)",
        lambda s: s.recording(
            "video_and_audio",
            ONE,
            s.ffmpeg(
                "va.webm",
                "-f",
                "lavfi",
                "-i",
                "color=c=black:s=32x32:d=7",
                "-i",
                str(SPEECH),
                "-c:v",
                "libvpx",
                "-c:a",
                "libopus",
                "-shortest",
            ),
            "webm",
        ),
        [cut("video_and_audio_seg_0", seconds_is("video_and_audio_seg_0", 2.01))],
    ),
    Case(
        "partial download (.mp3.part, first half)",
        lambda s: s.recording("partial", ONE, (lambda mp3: mp3[: len(mp3) // 2])(s.converted("p.mp3")), "mp3.part"),
        [cut("partial_seg_0")],
    ),
    Case(
        "two audio files for one recording (.wav and .mp3)",
        lambda s: (
            s.recording("two_files", ONE, s.wav16k),
            s.recording("two_files", None, s.converted("two.mp3"), "mp3"),
        ),
        [
            cut("two_files_seg_0"),
            refused(A("two_files.mp3"), "another file of recording two_files is used", A("two_files.wav")),
        ],
    ),
    Case(
        "audio with an unlisted extension (.aiff)",
        lambda s: s.recording("aiff", ONE, s.converted("x.aiff"), "aiff"),
        [refused(A("aiff.aiff"), "has no known audio extension"), failed(T("aiff"), "no audio object")],
    ),
    Case(
        "audio without a transcript",
        lambda s: s.recording("no_transcript", None, s.wav16k),
        [refused(A("no_transcript.wav"), "no transcript", "audio_no_transcript.json")],
    ),
    Case(
        "transcript without audio", lambda s: s.recording("no_audio", ONE), [failed(T("no_audio"), "no audio object")]
    ),
    # transcript ------------------------------------------------------------------------------
    Case(
        "transcript JSON that is a number",
        lambda s: s.recording("a_number", b"1234.5", s.wav16k),
        [failed(T("a_number"), "expected a list of segments", "got float")],
    ),
    Case(
        "transcript JSON of the wrong shape ({'segments': {...}})",
        lambda s: s.recording("wrong_shape", {"segments": {"0": seg(0, 900)}}, s.wav16k),
        [failed(T("wrong_shape"), "got dict")],
    ),
    Case(
        "duplicated segments (the later one is skipped)",
        lambda s: s.recording(
            "duplicates", [seg(200, 2210, "same"), seg(2250, 3950), seg(200, 2210, "same")], s.wav16k
        ),
        [
            cut("duplicates_seg_0"),
            cut("duplicates_seg_1"),
            skipped("duplicates_seg_2", "duplicate segment", "same times and text as segment 0"),
        ],
        "nothing (the duplicate's audio and text are segment 0's)",
    ),
    Case(
        "overlapping segments (kept, each with all of its samples)",
        lambda s: s.recording(
            "overlaps",
            [
                seg(3000, 6000, "outer"),
                seg(200, 4000, "first"),
                seg(3500, 4500, "inner"),
                seg(3500, 4500, "same span, other text"),
            ],
            s.wav16k,
        ),
        [
            cut(f"overlaps_seg_{i}", slice_of(f"overlaps_seg_{i}", "speech16k.wav", a, b))
            for i, (a, b) in enumerate([(3000, 6000), (200, 4000), (3500, 4500), (3500, 4500)])
        ],
    ),
    Case(
        "times in seconds instead of milliseconds",
        lambda s: s.recording("seconds", [seg(0.2, 2.21), seg(2.25, 3.95), seg(4.0, 6.79)], s.wav16k),
        [failed(T("seconds"), "times look like seconds, not milliseconds", "6.79 s read as seconds")],
        "the recording, until its transcript is written in milliseconds",
    ),
    Case(
        f"huge transcript (over {MAX_TRANSCRIPT_BYTES // 2**20} MiB)",
        lambda s: s.recording("huge", b"[" + b" " * MAX_TRANSCRIPT_BYTES + json.dumps(ONE).encode()[1:], s.wav16k),
        [failed(T("huge"), "over the 32 MiB limit: not read")],
        "the recording",
    ),
    Case(
        "deeply nested JSON",
        lambda s: s.recording("deep", b"[" * 100_000 + b"]" * 100_000, s.wav16k),
        [failed(T("deep"), "nested too deeply")],
    ),
    Case(
        "negative and NaN times",
        lambda s: s.recording(
            "bad_times",
            b'[{"start_ms": -500, "end_ms": 900, "text": "x"}, {"start_ms": NaN, "end_ms": 900, "text": "y"},'
            b' {"start_ms": 200, "end_ms": 2210, "text": "fine"}]',
            s.wav16k,
        ),
        [
            skipped("bad_times_seg_0", "negative start"),
            skipped("bad_times_seg_1", "malformed segment", "not finite"),
            cut("bad_times_seg_2"),
        ],
    ),
    Case(
        "segments beyond and across the audio's end",
        lambda s: s.recording(
            "past_end", [seg(200, 2210), seg(6000, 9000, "overhangs"), seg(60_000, 61_000, "beyond")], s.wav16k
        ),
        [
            cut("past_end_seg_1", seconds_is("past_end_seg_1", 1.1)),
            noted("past_end_seg_1", "clipped", "audio ends at 7100 ms"),
            skipped("past_end_seg_2", "outside the audio"),
        ],
    ),
    Case(
        "a segment longer than the 600 s ceiling",
        lambda s: s.recording("too_long", [seg(200, 2210), seg(0, 700_000, "a whole programme")], s.wav16k),
        [skipped("too_long_seg_1", "longer than 600 s", "the most stage 1 cuts"), cut("too_long_seg_0")],
    ),
    Case(
        "non-UTF-8 transcript (Arabic in Windows-1256)",
        lambda s: s.recording(
            "cp1256", json.dumps([seg(200, 2210, "مرحبا")], ensure_ascii=False).encode("cp1256"), s.wav16k
        ),
        [failed(T("cp1256"), "not UTF-8 text (byte")],
    ),
    Case(
        "UTF-16 transcript with a byte-order mark",
        lambda s: s.recording("utf16", json.dumps(ONE).encode("utf-16"), s.wav16k),
        [failed(T("utf16"), "UTF-16 byte-order mark: save it as UTF-8")],
    ),
    Case(
        "UTF-8 transcript with a byte-order mark (accepted)",
        lambda s: s.recording("utf8_bom", b"\xef\xbb\xbf" + json.dumps(ONE).encode(), s.wav16k),
        [cut("utf8_bom_seg_0")],
    ),
    Case(
        "right-to-left, mixed Arabic/English text with diacritics and direction marks",
        lambda s: s.recording("arabic", [seg(200, 2210, ARABIC, speaker_id="المتحدث_١", dialect="خليجي")], s.wav16k),
        [cut("arabic_seg_0", text_is("arabic_seg_0", ARABIC))],
    ),
    Case(
        "NUL bytes in text",
        lambda s: s.recording("nul", [seg(200, 2210, "before\u0000after")], s.wav16k),
        [cut("nul_seg_0", text_is("nul_seg_0", "beforeafter")), noted("nul_seg_0", "text: 1 NUL character(s) removed")],
        "the NUL characters",
    ),
    Case(
        "lone surrogate in a label",
        lambda s: s.recording("surrogate", json.dumps([seg(200, 2210, "ok", speaker_id="S\ud800")]).encode(), s.wav16k),
        [cut("surrogate_seg_0"), noted("surrogate_seg_0", "speaker_id: 1 unpaired surrogate(s) replaced by '?'")],
        "the unpaired surrogate",
    ),
    Case(
        "a 100 KB text field",
        lambda s: s.recording("long_text", [seg(200, 2210, LONG_TEXT)], s.wav16k),
        [cut("long_text_seg_0", text_is("long_text_seg_0", LONG_TEXT))],
    ),
    # names -----------------------------------------------------------------------------------
    Case(
        "recording ID '..'",
        lambda s: s.raw(PREFIX_T + "audio_...json", json.dumps(ONE).encode()),
        [refused(PREFIX_T + "audio_...json", "is '.'/'..'")],
    ),
    Case(
        "'..' path traversal in an object name",
        lambda s: s.raw(PREFIX_T + "../../../etc/audio_evil.json", json.dumps(ONE).encode()),
        [refused(PREFIX_T + "../../../etc/audio_evil.json", "is in a sub-folder")],
    ),
    Case(
        "leading '/' in an object's name",
        lambda s: (s.raw(PREFIX_T + "/audio_slash.json", json.dumps(ONE).encode()), s.raw(A("/slash.wav"), s.wav16k)),
        [refused(PREFIX_T + "/audio_slash.json", "is in a sub-folder"), refused(A("/slash.wav"), "is in a sub-folder")],
    ),
    Case(
        "newline in a recording ID",
        lambda s: (s.raw(T("new\nline"), json.dumps(ONE).encode()), s.raw(A("new\nline.wav"), s.wav16k)),
        [
            refused(T("new\nline"), "contains control characters"),
            refused(A("new\nline.wav"), "contains control characters"),
        ],
    ),
    Case(
        "1000-character recording ID",
        lambda s: (s.raw(T("x" * 960), json.dumps(ONE).encode()), s.raw(A("x" * 1000 + ".wav"), s.wav16k)),
        [
            refused(T("x" * 960), "is longer than 200 bytes"),
            refused(A("x" * 1000 + ".wav"), "is longer than 200 bytes"),
        ],
    ),
    Case(
        "recording ID of 101 Arabic letters (202 bytes: past the limit in bytes, not in characters)",
        lambda s: s.recording(TOO_LONG_ID, ONE, s.wav16k),
        [refused(T(TOO_LONG_ID), "is longer than 200 bytes")],
    ),
    Case(
        "recording ID of exactly 200 bytes: every derived name (segment, index, stage-2 marker, temp files) fits 255",
        lambda s: s.recording(LONG_ID, ONE, s.wav16k),
        [cut(f"{LONG_ID}_seg_0", lambda run: _long_names_fit(run))],
    ),
    Case(
        "temporary-file marker in a name",
        lambda s: s.raw(T("x.neutts-tmp-1-y"), json.dumps(ONE).encode()),
        [refused(T("x.neutts-tmp-1-y"), "marks temporary files")],
    ),
    Case(
        "IDs equal after Unicode normalisation (NFC and NFD 'café'): kept apart",
        lambda s: [
            s.recording(unicodedata.normalize(form, "café"), [seg(200, 2210, form)], s.wav16k)
            for form in ("NFC", "NFD")
        ],
        [
            cut(
                f"{unicodedata.normalize('NFC', 'café')}_seg_0",
                text_is(f"{unicodedata.normalize('NFC', 'café')}_seg_0", "NFC"),
            ),
            cut(
                f"{unicodedata.normalize('NFD', 'café')}_seg_0",
                text_is(f"{unicodedata.normalize('NFD', 'café')}_seg_0", "NFD"),
            ),
        ],
    ),
]

GOOD = "good"  # a clean recording beside all of the above


def _long_names_fit(run: Run) -> None:
    names = [p.name for p in run.store.root.rglob("*") if LONG_ID in p.name]
    # the segment, its index, its stage-2 file and marker, all written on a real file system
    assert len(names) >= 4 and all(len(n.encode()) <= 255 for n in names), names


def _expected_failures() -> set[str]:
    return {o.target for c in CASES for o in c.expect if o.verb == "failed"}


# The one run -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(gcs_endpoint, tmp_path_factory) -> Run:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from neutts_assets.storage.gcs import GCSStore

    tmp = tmp_path_factory.mktemp("corpus")
    client = storage.Client(project="test", credentials=AnonymousCredentials())
    bucket = f"corpus-{uuid.uuid4().hex[:10]}"
    client.create_bucket(bucket)
    src = Source(GCSStore(client, bucket), tmp / "decoded")
    src.tmp.mkdir()
    src.recording(GOOD, GOOD_TRANSCRIPT, SPEECH.read_bytes())
    for case in CASES:
        case.make(src)

    resources = make_resources(f"gs://{bucket}", str(tmp / "store"))
    resources["codec"] = NeuCodecResource(weights="random", device="cpu", batch_seconds=16.0)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("channels", [CHANNEL])
    result = materialize(
        [raw_audio, segments_npz, encoded_segments, hf_dataset],
        partition_key=CHANNEL,
        instance=instance,
        resources=resources,
        selection=AssetSelection.assets(raw_audio, segments_npz, encoded_segments, hf_dataset),
    )
    store = LocalStore(tmp / "store")
    rows = {}
    for shard in (tmp / "store" / "hf_dataset" / "data" / CHANNEL).rglob("*.parquet"):
        for row in pq.read_table(shard).to_pylist():
            rows[row["audio_id"]] = row
    return Run(
        asset_metadata(result, "segments_npz"),
        asset_metadata(result, "raw_audio"),
        asset_metadata(result, "encoded_segments"),
        asset_metadata(result, "hf_dataset"),
        store,
        rows,
    )


@pytest.mark.parametrize("case", CASES, ids=str)
def test_case(run, case):
    for outcome in case.expect:
        outcome.verify(run)


def test_the_rest_of_the_channel_is_processed(run):
    """The good recording is cut exactly, encoded and in the dataset; the only failures are the
    expected ones, and stage 2 and the dataset fail nothing."""
    full = decode_pcm16(SPEECH)
    for i, s in enumerate(GOOD_TRANSCRIPT):
        seg = run.segment(f"{GOOD}_seg_{i}")
        assert np.array_equal(seg.pcm16, full[ms_to_sample(s["start_ms"], 16000) : ms_to_sample(s["end_ms"], 16000)])
        assert f"{GOOD}_seg_{i}" in run.rows
    failures = {r["object"] for r in run.stage1["failures"]}
    assert failures == {_cell(k)[:300] for k in _expected_failures()}, failures ^ {
        _cell(k) for k in _expected_failures()
    }
    assert run.stage1["files_failed"] == len(_expected_failures())
    assert run.encoded["segments_failed"] == 0 and run.dataset["segments_failed"] == 0
    assert run.encoded["segments_with_codes_in_channel"] == run.stage1["segments_in_channel"] == len(run.rows)
    # every object written stays in the store's folders, with no temporary left
    assert {p.relative_to(run.store.root).parts[0] for p in run.store.root.iterdir()} <= {
        "stage1",
        "stage2_with_codes",
        "manifests",
        "hf_dataset",
        "hf_dataset_builds",
        "hf_dataset_progress",
        "_leases",
    }
    assert not [p for p in run.store.root.rglob("*") if ".neutts-tmp-" in p.name]


# The ten-hour recording --------------------------------------------------------------------

HOURS = 10


def test_a_ten_hour_recording_is_streamed_in_bounded_memory(tmp_path):
    """Ten hours at 8 kHz (8-bit WAV, 288 MB, cheap to make and decode): 576 M samples, 1.15 GB
    once decoded to 16 kHz int16. The cut runs in a child process whose peak RSS is measured;
    no file the size of the decoded audio appears in its work folder."""
    source = LocalStore(tmp_path / "source")
    audio = source.root / audio_key(CHANNEL, "ten_hours.wav")
    audio.parent.mkdir(parents=True)
    # silence, with a 10 s tone at 5 h, so that one segment holds sound
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "anullsrc=r=8000:cl=mono",
            "-f",
            "lavfi",
            "-i",
            "sine=f=440:r=8000:d=10",
            "-filter_complex",
            "[0]atrim=duration=18000[a];[0]atrim=duration=17990[b];[a][1][b]concat=n=3:v=0:a=1",
            "-c:a",
            "pcm_u8",
            str(audio),
        ],
        check=True,
    )
    h = 3_600_000
    segments = [
        seg(10_000, 15_000),
        seg(5 * h + 2_000, 5 * h + 8_000, "the tone"),
        seg(7 * h, 7 * h + 20_000, "overlapping a"),
        seg(7 * h + 10_000, 7 * h + 30_000, "overlapping b"),
        seg(10 * h - 5_000, 10 * h - 500),
        seg(10 * h - 2_000, 10 * h + 5_000, "clipped"),
        seg(10 * h + 30_000, 10 * h + 31_000, "beyond the end"),
    ]
    source.write_bytes(transcript_key(CHANNEL, "ten_hours"), json.dumps(segments).encode())
    work = tmp_path / "work"
    work.mkdir()
    script = textwrap.dedent(f"""
        import json, os, threading, time, resource
        from neutts_assets.pipeline.segments.cutting import CutRules
        from neutts_assets.pipeline.inventory.manifest import build_inventory
        from neutts_assets.pipeline.inventory.source_layout import ChannelLayout
        from neutts_assets.pipeline.segments.recordings import cut_recording
        from neutts_assets.storage.local import LocalStore

        def hwm():
            return int([l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]) // 1024
        src, dst = LocalStore({str(source.root)!r}), LocalStore({str(tmp_path / "store")!r})
        layout = ChannelLayout.for_channel({CHANNEL!r})
        (entry,) = build_inventory(layout, src.list(layout.transcripts_prefix), src.list(layout.audio_prefix), src.read_bytes).entries
        largest, done = [0], threading.Event()
        def watch():  # the work folder's largest total while cutting
            while not done.wait(0.02):
                total = sum(p.stat().st_size for p in __import__("pathlib").Path({str(work)!r}).rglob("*") if p.is_file())
                largest[0] = max(largest[0], total)
        threading.Thread(target=watch, daemon=True).start()
        before = hwm()
        r = cut_recording(entry, {CHANNEL!r}, src, dst, CutRules(), None, workdir={str(work)!r})
        done.set()
        kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
        print(json.dumps({{"error": r.error, "audio_seconds": r.index.audio_seconds, "before_mb": before, "peak_mb": hwm(),
                          "ffmpeg_peak_mb": kids, "work_max_bytes": largest[0], "downloaded": r.downloaded_bytes,
                          "segments": [s.audio_id for s in r.index.segments],
                          "skipped": [[s.index, s.reason] for s in r.index.skipped], "notes": [n.note for n in r.index.notes]}}))
    """)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ}, timeout=300
        )
    finally:
        audio.unlink()  # 288 MB: pytest keeps the last runs' folders
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(out)
    decoded_bytes = HOURS * 3600 * 16000 * 2
    assert out["error"] == "" and out["audio_seconds"] == HOURS * 3600
    assert out["segments"] == [f"ten_hours_seg_{i}" for i in range(6)] and out["skipped"] == [[6, "outside the audio"]]
    assert any("clipped" in n for n in out["notes"])
    # Memory: the interpreter and its imports, plus a window of seconds; the decoded audio is 1.15 GB.
    assert out["peak_mb"] - out["before_mb"] < 64, out
    assert out["peak_mb"] < 250 < decoded_bytes / 2**20 / 4, out
    # Disk: the downloaded source only (288 MB); no decoded copy was written beside it.
    assert out["downloaded"] <= out["work_max_bytes"] < out["downloaded"] + 16 * 2**20 < decoded_bytes / 2, out
    store = LocalStore(tmp_path / "store")
    segs = {i: read_segment(store.read_bytes(f"stage1/{CHANNEL}/ten_hours_seg_{i}.npz")) for i in range(6)}
    assert [round(s.duration_sec, 3) for s in segs.values()] == [5.0, 6.0, 20.0, 20.0, 4.5, 2.0]
    assert np.abs(segs[1].pcm16.astype(np.int32)).max() > 2000  # the tone (sine at 1/8 of full scale)
    assert all(not np.any(segs[i].pcm16) for i in (0, 2, 3, 4, 5))  # silence
    assert np.array_equal(segs[2].pcm16[10 * 16000 :], segs[3].pcm16[: 10 * 16000])  # the overlap is the same audio


if __name__ == "__main__":
    print("| kind | outcome | lost |\n|---|---|---|")
    for case in CASES:
        lost = case.lost
        if lost == "nothing" and any(o.verb in ("failed", "refused") for o in case.expect):
            lost = "the object named, nothing else"
        print(f"| {case.kind} | {'; '.join(map(str, case.expect))} | {lost} |".replace("\n", "\\n"))
    print(
        f"| {HOURS}-hour recording | cut while streamed: peak RSS a few MB over the interpreter's, no decoded copy on disk "
        "(test_a_ten_hour_recording_is_streamed_in_bounded_memory) | nothing |"
    )
