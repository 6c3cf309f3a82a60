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
    paired    used, but not as named; raw_audio's `input_notes` says how it was matched
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
from neutts_assets.defs.metadata import MAX_CELL_CHARS, MAX_TABLE_ROWS
from neutts_assets.defs.segments.segments_npz import segments_npz
from neutts_assets.pipeline.inventory.source_layout import recording_of
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
    run_partition,
    transcript_key,
)
from neutts_assets_tests.privileges import no_read_override, unreadable

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
        elif self.verb == "paired":
            _row(run.inventory["input_notes"], self.target, *self.words)
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


def cut_from(sid: str, audio: str):
    """The segment (its file and its dataset row) was cut from that audio object."""

    def check(run: Run):
        assert run.segment(sid).source_key == audio
        assert run.rows[sid]["source_audio"] == audio

    return check


def inventory_noted(key: str, *words: str) -> Outcome:
    return Outcome("paired", key, words)


def _no_seconds(run: Run, key: str) -> None:
    (reason,) = [r["reason"] for r in run.stage1["failures"] if r["object"] == key]
    assert "second" not in reason, reason


MANY_SKIPS = 250  # past the tables' 200 rows


def _every_recording_in_the_detail(run: Run) -> None:
    by_recording = {r["recording"]: r["segments skipped"] for r in run.stage1["skipped_segments_by_recording"]}
    assert by_recording["many_skips"] == MANY_SKIPS and by_recording["duplicates"] == 1, by_recording
    shown = {recording_of(r["segment"]) for r in run.stage1["skipped_segments"]}
    assert shown == set(by_recording), set(by_recording) - shown
    assert len(run.stage1["skipped_segments"]) == MAX_TABLE_ROWS


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
        "two audio files for one recording (.wav and .mp3): the first in the documented order is used",
        lambda s: (
            s.recording("two_files", ONE, s.wav16k),
            s.recording("two_files", None, s.converted("two.mp3"), "mp3"),
        ),
        [
            cut("two_files_seg_0", cut_from("two_files_seg_0", A("two_files.wav"))),
            noted(A("two_files.wav"), "used of 2 audio objects", "the first of 2 audio objects in the order tried"),
        ],
    ),
    Case(
        "two audio files, the preferred .wav undecodable: the .mp3 is used",
        lambda s: (
            s.recording("bad_wav", ONE, b"not audio at all\n" * 40),
            s.recording("bad_wav", None, s.converted("bad_wav.mp3"), "mp3"),
        ),
        [
            cut("bad_wav_seg_0", cut_from("bad_wav_seg_0", A("bad_wav.mp3"))),
            noted(A("bad_wav.mp3"), "used of 2 audio objects", A("bad_wav.wav") + " cannot be used", "ffmpeg cannot"),
        ],
    ),
    Case(
        "two audio files, the preferred .wav truncated to 2.5 s of 7.1 s: the complete .flac is used",
        lambda s: (
            s.recording("short_wav", GOOD_TRANSCRIPT, SPEECH.read_bytes()[: 44 + 96_000 * 5 // 2]),
            s.recording("short_wav", None, s.converted("short_wav.flac"), "flac"),
        ),
        [
            *[cut(f"short_wav_seg_{i}", cut_from(f"short_wav_seg_{i}", A("short_wav.flac"))) for i in range(3)],
            noted(A("short_wav.flac"), A("short_wav.wav") + " is much shorter than the transcript needs", "2.5 s"),
        ],
    ),
    Case(
        "two audio files, the complete one a partial download (.mp3.part) and the other a short .wav: the longest",
        lambda s: (
            s.recording("both_short", GOOD_TRANSCRIPT, SPEECH.read_bytes()[: 44 + 96_000 * 3 // 2]),
            s.recording(
                "both_short",
                None,
                (lambda mp3: mp3[: len(mp3) * 3 // 4])(s.converted("both_short.mp3")),
                "mp3.part",
            ),
        ),
        [
            cut("both_short_seg_0", cut_from("both_short_seg_0", A("both_short.mp3.part"))),
            noted(A("both_short.mp3.part"), "no copy covers the transcript", "the longest is used"),
        ],
        "the segments past the longer copy's end",
    ),
    Case(
        "two audio files, neither decodable",
        lambda s: (
            s.recording("both_bad", ONE, b""),
            s.recording("both_bad", None, b"not audio\n" * 30, "mp3"),
        ),
        [failed(A("both_bad.wav"), "none of its 2 audio objects can be used", A("both_bad.mp3"))],
    ),
    Case(
        "transcript and audio named in different Unicode normal forms (NFC transcript, NFD audio): paired",
        lambda s: (
            s.recording(unicodedata.normalize("NFC", "نَص_é"), ONE),
            s.recording(unicodedata.normalize("NFD", "نَص_é"), None, s.wav16k),
        ),
        [
            cut(f"{unicodedata.normalize('NFC', 'نَص_é')}_seg_0"),
            inventory_noted(A(unicodedata.normalize("NFD", "نَص_é") + ".wav"), "different Unicode normal forms"),
        ],
    ),
    Case(
        "audio whose name differs from its transcript's only in case: a hint naming the near match",
        lambda s: (s.recording("Case_Differs", ONE), s.recording("case_differs", None, s.wav16k)),
        [
            failed(T("Case_Differs"), "no audio object", "near match", A("case_differs.wav")),
            refused(A("case_differs.wav"), "no transcript"),
        ],
    ),
    Case(
        "audio with an unlisted extension (.aiff)",
        lambda s: s.recording("aiff", ONE, s.converted("x.aiff"), "aiff"),
        [
            refused(A("aiff.aiff"), "has no known audio extension"),
            failed(T("aiff"), "no audio object", "near match", A("aiff.aiff")),
        ],
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
        "word-level transcript in milliseconds (words of 60-110 ms): its own message, not 'seconds'",
        lambda s: s.recording(
            "word_level", [seg(200 + 100 * i, 260 + 100 * i + 5 * (i % 10), "w") for i in range(60)], s.wav16k
        ),
        [failed(T("word_level"), "word-level", check=lambda run: _no_seconds(run, T("word_level")))],
        "the recording, until its transcript has utterance-level segments",
    ),
    Case(
        "word-level transcript in milliseconds (words of 150-450 ms)",
        lambda s: s.recording(
            "word_level_long", [seg(150 + 500 * i, 300 + 500 * i + 30 * (i % 11), "word") for i in range(13)], s.wav16k
        ),
        [failed(T("word_level_long"), "word-level", check=lambda run: _no_seconds(run, T("word_level_long")))],
        "the recording, until its transcript has utterance-level segments",
    ),
    Case(
        "times in microseconds instead of milliseconds",
        lambda s: s.recording("microseconds", [seg(200_000, 2_210_000), seg(2_250_000, 3_950_000)], s.wav16k),
        [failed(T("microseconds"), "microseconds")],
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
    Case(
        f"one recording with {MANY_SKIPS} skipped segments beside others with a few: per-recording counts first, "
        "then a capped detail that keeps every recording's share",
        lambda s: s.recording(
            "many_skips", [seg(200, 2210), *[seg(3000 + i, 5000 + i, "") for i in range(MANY_SKIPS)]], s.wav16k
        ),
        [cut("many_skips_seg_0", check=lambda run: _every_recording_in_the_detail(run))],
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


def _expected_failures(cases: list[Case]) -> set[str]:
    return {o.target for c in cases for o in c.expect if o.verb == "failed"}


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
    return _run_channel(f"gs://{bucket}", tmp)


def _run_channel(source_url: str, tmp: Path) -> Run:
    """raw_audio, segments_npz, encoded_segments (random weights) and hf_dataset, once, for CHANNEL;
    the run must succeed: every bad input is one object's failure, none the step's."""
    resources = make_resources(source_url, str(tmp / "store"))
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
    _the_rest_is_processed(run, CASES)


def _the_rest_is_processed(run: Run, cases: list[Case]) -> None:
    full = decode_pcm16(SPEECH)
    for i, s in enumerate(GOOD_TRANSCRIPT):
        seg = run.segment(f"{GOOD}_seg_{i}")
        assert np.array_equal(seg.pcm16, full[ms_to_sample(s["start_ms"], 16000) : ms_to_sample(s["end_ms"], 16000)])
        assert f"{GOOD}_seg_{i}" in run.rows
    failures = {r["object"] for r in run.stage1["failures"]}
    expected = _expected_failures(cases)
    assert failures == {_cell(k)[:300] for k in expected}, failures ^ {_cell(k) for k in expected}
    assert run.stage1["files_failed"] == len(expected)
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


# The local-folder corpus: what a folder can hold that a bucket cannot -----------------------------


class FolderSource(Source):
    """The channel's source as a local folder, where links, FIFOs, sockets, devices and file modes exist."""

    def __init__(self, root: Path, tmp: Path):
        super().__init__(LocalStore(root), tmp)
        self.root = root

    def path(self, key: str) -> Path:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def socket(self, key: str) -> None:
        import socket

        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(self.path(key)))  # the socket file stays after the socket is closed


def _loop(s: FolderSource, rec_id: str) -> None:
    s.recording(rec_id, ONE)
    s.path(A(f"{rec_id}.wav")).symlink_to(s.path(f"elsewhere/{rec_id}_b.wav"))
    s.path(f"elsewhere/{rec_id}_b.wav").symlink_to(s.path(A(f"{rec_id}.wav")))


def _linked(s: FolderSource) -> None:
    s.recording("linked", ONE)
    s.path("elsewhere/kept_on_another_disk.wav").write_bytes(s.wav16k)
    s.path(A("linked.wav")).symlink_to(s.path("elsewhere/kept_on_another_disk.wav"))


LOCAL_CASES = [
    Case(
        "local folder: a dangling symbolic link as audio",
        lambda s: (s.recording("dangling", ONE), s.path(A("dangling.wav")).symlink_to(s.root / "missing.wav")),
        [failed(A("dangling.wav"), "dangling symbolic link", "missing.wav")],
    ),
    Case(
        "local folder: a symbolic-link loop as audio",
        lambda s: _loop(s, "loop"),
        [failed(A("loop.wav"), "symbolic link loop")],
    ),
    Case(
        "local folder: a FIFO as audio (never opened for a blocking read)",
        lambda s: (s.recording("fifo", ONE), os.mkfifo(s.path(A("fifo.wav")))),
        [failed(A("fifo.wav"), "not a regular file (FIFO)")],
    ),
    Case(
        "local folder: a UNIX socket as audio",
        lambda s: (s.recording("sock", ONE), s.socket(A("sock.wav"))),
        [failed(A("sock.wav"), "not a regular file (socket)")],
    ),
    Case(
        "local folder: a symbolic link to /dev/zero as audio (a read that would never end)",
        lambda s: (s.recording("zero_device", ONE), s.path(A("zero_device.wav")).symlink_to("/dev/zero")),
        [failed(A("zero_device.wav"), "not a regular file (character device)")],
    ),
    Case(
        "local folder: audio the process may not read (mode 000)",
        lambda s: (s.recording("no_read_audio", ONE, s.wav16k), unreadable(s.path(A("no_read_audio.wav")))),
        [failed(A("no_read_audio.wav"), "permission denied")],
    ),
    Case(
        "local folder: a transcript the process may not read (mode 000)",
        lambda s: (
            s.recording("no_read_transcript", ONE, s.wav16k),
            unreadable(s.path(T("no_read_transcript"))),
        ),
        [failed(T("no_read_transcript"), "permission denied")],
    ),
    Case(
        "local folder: a FIFO as transcript",
        lambda s: (s.recording("fifo_transcript", None, s.wav16k), os.mkfifo(s.path(T("fifo_transcript")))),
        [failed(T("fifo_transcript"), "not a regular file (FIFO)")],
    ),
    Case(
        "local folder: a dangling symbolic link as transcript",
        lambda s: (
            s.recording("dangling_transcript", None, s.wav16k),
            s.path(T("dangling_transcript")).symlink_to(s.root / "gone.json"),
        ),
        [failed(T("dangling_transcript"), "dangling symbolic link")],
    ),
    Case(
        "local folder: a folder named like the audio (r.wav/)",
        lambda s: (s.recording("a_folder", ONE), s.path(A("a_folder.wav")).mkdir()),
        [failed(T("a_folder"), "no audio object")],
    ),
    Case(
        "local folder: audio that is a symbolic link to a file outside the folder (used)",
        _linked,
        [cut("linked_seg_0", slice_of("linked_seg_0", "speech16k.wav", 200, 2210))],
    ),
    Case(
        "local folder: two audio objects, the preferred .wav a FIFO: the .mp3 is used",
        lambda s: (
            s.recording("fifo_pair", ONE, None),
            os.mkfifo(s.path(A("fifo_pair.wav"))),
            s.recording("fifo_pair", None, s.converted("fifo_pair.mp3"), "mp3"),
        ),
        [
            cut("fifo_pair_seg_0", cut_from("fifo_pair_seg_0", A("fifo_pair.mp3"))),
            noted(A("fifo_pair.mp3"), A("fifo_pair.wav") + " cannot be used", "not a regular file (FIFO)"),
        ],
    ),
]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Run:
    """The local corpus, run as a process that may not read a mode-000 file (root included)."""
    tmp = tmp_path_factory.mktemp("local_corpus")
    src = FolderSource(tmp / "source", tmp / "decoded")
    src.tmp.mkdir()
    src.recording(GOOD, GOOD_TRANSCRIPT, SPEECH.read_bytes())
    for case in LOCAL_CASES:
        case.make(src)
    with no_read_override():
        return _run_channel(str(tmp / "source"), tmp)


@pytest.mark.parametrize("case", LOCAL_CASES, ids=str)
def test_local_case(local_run, case):
    for outcome in case.expect:
        outcome.verify(local_run)


def test_the_rest_of_the_local_channel_is_processed(local_run):
    """None of the odd objects blocks the channel or fails the step (a permission error is the
    object's, not a passing fault): the good recording is cut exactly, encoded and in the dataset."""
    _the_rest_is_processed(local_run, LOCAL_CASES)


# Cases over several runs: each its own test, listed in the table ---------------------------------


def _stage1(instance, source: Path, store: Path, mapping: dict | None = None, assets=None, raise_on_error: bool = True):
    resources = make_resources(str(source), str(store), mapping=mapping)
    resources["codec"] = NeuCodecResource(weights="random", device="cpu", batch_seconds=16.0)
    return run_partition(
        assets or [raw_audio, segments_npz], "segments_npz", instance, resources, CHANNEL, raise_on_error=raise_on_error
    )


@pytest.fixture
def instance():
    return DagsterInstance.ephemeral()  # one per test: partitions and data versions carry over its runs


def _wav(pcm: np.ndarray, path: Path) -> bytes:
    import soundfile

    soundfile.write(path, pcm, 16000, subtype="PCM_16")
    return path.read_bytes()


def _replace_in_place(path: Path, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.write(data)


def _replace_by_rename(path: Path, data: bytes) -> None:
    other = path.with_name("new_copy.tmp")
    other.write_bytes(data)
    os.replace(other, path)


@pytest.mark.parametrize("replace", [_replace_in_place, _replace_by_rename], ids=["in place", "renamed over"])
def test_content_replaced_keeping_size_and_mtime_is_cut_again(tmp_path, instance, replace):
    """A recording whose bytes change while its size and mtime stay (the mtime restored) is seen as
    changed, and its segments are the new audio's."""
    src = FolderSource(tmp_path / "source", tmp_path / "work")
    src.tmp.mkdir()
    pcm = decode_pcm16(SPEECH)
    src.recording("same_size", GOOD_TRANSCRIPT, _wav(pcm, tmp_path / "a.wav"))
    first = asset_metadata(_stage1(instance, src.root, tmp_path / "store"), "segments_npz")
    assert first["files_new"] == 1 and first["segments_in_channel"] == 3

    path = src.path(A("same_size.wav"))
    before = path.stat()
    inverted = _wav((-pcm.astype(np.int32)).clip(-32768, 32767).astype(np.int16), tmp_path / "b.wav")
    assert len(inverted) == before.st_size
    replace(path, inverted)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)

    second = asset_metadata(_stage1(instance, src.root, tmp_path / "store"), "segments_npz")
    assert second["files_changed"] == 1 and second["segments_written"] == 3, second
    full = decode_pcm16(path)
    store = LocalStore(tmp_path / "store")
    for i, s in enumerate(GOOD_TRANSCRIPT):
        pcm = read_segment(store.read_bytes(f"stage1/{CHANNEL}/same_size_seg_{i}.npz")).pcm16
        assert np.array_equal(pcm, full[ms_to_sample(s["start_ms"], 16000) : ms_to_sample(s["end_ms"], 16000)])
    third = asset_metadata(_stage1(instance, src.root, tmp_path / "store"), "segments_npz")
    assert third["files_unchanged"] == 1 and third["segments_written"] == 0  # and not again


def test_a_mapping_change_removes_the_recordings_no_longer_in_the_source(tmp_path, instance):
    """NEUTTS_CHANNEL_MAPPING moves the channel to another audio folder that holds only one of its
    two recordings: the other's stage-1 files and index go (counted in segments_removed), then its
    stage-2 files; the kept recording keeps all of its files."""
    src = FolderSource(tmp_path / "source", tmp_path / "work")
    src.tmp.mkdir()
    for rec_id in ("kept", "dropped"):
        src.recording(rec_id, GOOD_TRANSCRIPT)
        src.path(audio_key("folder_a", f"{rec_id}.wav")).write_bytes(src.wav16k)
    src.path(audio_key("folder_b", "kept.wav")).write_bytes(src.wav16k)
    store = LocalStore(tmp_path / "store")
    assets = [raw_audio, segments_npz, encoded_segments]
    _stage1(instance, src.root, store.root, {CHANNEL: "folder_a"}, assets)
    keys = lambda prefix, rid: sorted(  # noqa: E731
        o.key for o in store.list(f"{prefix}/{CHANNEL}/") if rid in o.key and "/_encoded/" not in o.key
    )
    kept_before = keys("stage1", "kept"), keys("stage2_with_codes", "kept")
    assert len(keys("stage1", "dropped")) == 4 and keys("stage2_with_codes", "dropped")  # 3 segments and the index

    result = _stage1(instance, src.root, store.root, {CHANNEL: "folder_b"}, assets)
    meta, encoded = asset_metadata(result, "segments_npz"), asset_metadata(result, "encoded_segments")
    assert meta["segments_removed"] == 3, meta["segments_removed"]
    assert _row(meta["recordings_gone_from_source"], "dropped")["segment files removed"] == 3
    assert keys("stage1", "dropped") == [] and keys("stage2_with_codes", "dropped") == []
    assert encoded["stage2_objects_removed"] >= 3
    # The kept recording is cut again from its new place (its files name the audio they came from).
    assert keys("stage1", "kept") == kept_before[0] and keys("stage2_with_codes", "kept") == kept_before[1]
    assert read_segment(store.read_bytes(f"stage1/{CHANNEL}/kept_seg_0.npz")).source_key == audio_key(
        "folder_b", "kept.wav"
    )
    assert meta["segments_in_channel"] == 3
    _row(meta["failures"], T("dropped"), "no audio object")  # its transcript is still there: said so


def test_a_mapping_that_would_remove_every_recording_removes_none(tmp_path, instance):
    """A mapping to a folder holding none of the channel's recordings (but other audio): every
    recording would be gone, which is a wrong mapping far more often than an emptied channel. Nothing
    is removed, and the metadata says why."""
    src = FolderSource(tmp_path / "source", tmp_path / "work")
    src.tmp.mkdir()
    src.recording(GOOD, GOOD_TRANSCRIPT, src.wav16k)
    src.path(audio_key("other_channel", "someone_else.wav")).write_bytes(src.wav16k)
    _stage1(instance, src.root, tmp_path / "store")
    before = sorted(p.name for p in (tmp_path / "store" / "stage1" / CHANNEL).rglob("*"))
    meta = asset_metadata(_stage1(instance, src.root, tmp_path / "store", {CHANNEL: "other_channel"}), "segments_npz")
    assert meta["segments_removed"] == 0 and "nothing was removed" in meta["gone_recordings_kept"]
    assert sorted(p.name for p in (tmp_path / "store" / "stage1" / CHANNEL).rglob("*")) == before


def test_a_channel_spelled_in_another_unicode_normal_form_is_matched(tmp_path, instance):
    """The partition is the NFC spelling; the transcripts folder and the audio folder were uploaded
    with the NFD spelling (macOS): both are used, with a note, and the recording is cut."""
    channel = unicodedata.normalize("NFC", "قناةُ_café")
    nfd = unicodedata.normalize("NFD", channel)
    assert nfd != channel
    src = FolderSource(tmp_path / "source", tmp_path / "work")
    src.path(transcript_key(nfd, GOOD)).write_text(json.dumps(GOOD_TRANSCRIPT))
    src.path(audio_key(nfd, f"{GOOD}.wav")).write_bytes(SPEECH.read_bytes())
    result = run_partition(
        [raw_audio, segments_npz],
        "segments_npz",
        instance,
        make_resources(str(src.root), str(tmp_path / "store")),
        channel,
    )
    inventory, meta = asset_metadata(result, "raw_audio"), asset_metadata(result, "segments_npz")
    assert inventory["recordings"] == 1 and meta["segments_in_channel"] == 3
    _row(inventory["input_notes"], f"processed_runs/processed_{nfd}/transcripts/", "another Unicode normal form")
    _row(inventory["input_notes"], f"{nfd}/audio/", "another Unicode normal form")
    assert LocalStore(tmp_path / "store").exists(f"stage1/{channel}/{GOOD}_seg_0.npz")


def test_a_channel_with_nothing_in_the_source_fails_naming_where_it_looked(tmp_path, instance):
    """No transcripts and no audio: raw_audio fails (nothing downstream runs), naming both places
    and the near-matching folders that are there."""
    src = FolderSource(tmp_path / "source", tmp_path / "work")
    src.path(transcript_key("Bad_Corpus", GOOD)).write_text(json.dumps(ONE))
    src.path(audio_key("bad_corpus_audio", f"{GOOD}.wav")).write_bytes(SPEECH.read_bytes())
    result = _stage1(instance, src.root, tmp_path / "store", raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure.step_key == "raw_audio"
    text = failure.step_failure_data.error.message
    for words in (
        f"processed_runs/processed_{CHANNEL}/transcripts/",
        f"{CHANNEL}/audio/",
        "has nothing in the source",
        "processed_runs/processed_Bad_Corpus/",
        "NEUTTS_CHANNEL_MAPPING",
    ):
        assert words in text, (words, text)
    assert not (tmp_path / "store" / "stage1").exists()


def test_a_channel_with_transcripts_and_no_audio_at_all_fails_and_removes_nothing(tmp_path, instance):
    """A mapping that points at an empty or missing audio folder is refused, naming it, before
    stage 1 could take every recording for gone and remove its segments."""
    src = FolderSource(tmp_path / "source", tmp_path / "work")
    src.tmp.mkdir()
    src.recording(GOOD, GOOD_TRANSCRIPT, src.wav16k)
    _stage1(instance, src.root, tmp_path / "store")
    before = sorted(p.name for p in (tmp_path / "store" / "stage1" / CHANNEL).rglob("*"))
    result = _stage1(instance, src.root, tmp_path / "store", {CHANNEL: "no_such_folder"}, raise_on_error=False)
    assert not result.success
    text = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE").step_failure_data.error.message
    assert "1 transcripts and no audio" in text and "no_such_folder/audio/" in text, text
    assert sorted(p.name for p in (tmp_path / "store" / "stage1" / CHANNEL).rglob("*")) == before


SCENARIOS = [
    (
        "local folder: content replaced keeping its size and mtime (in place, or renamed over)",
        "cut again: the version holds the inode and ctime (test_content_replaced_keeping_size_and_mtime_is_cut_again)",
    ),
    (
        "NEUTTS_CHANNEL_MAPPING changed: a recording no longer in the channel's audio folder",
        "its stage-1 files removed, counted in segments_removed, then its stage-2 files "
        "(test_a_mapping_change_removes_the_recordings_no_longer_in_the_source)",
    ),
    (
        "NEUTTS_CHANNEL_MAPPING changed to a folder with none of the channel's recordings",
        "nothing removed, said in gone_recordings_kept (test_a_mapping_that_would_remove_every_recording_removes_none)",
    ),
    (
        "channel's transcripts and audio folders uploaded in another Unicode normal form (NFD)",
        "matched, with a note in raw_audio's input_notes (test_a_channel_spelled_in_another_unicode_normal_form_is_matched)",
    ),
    (
        "a channel with no transcripts and no audio in the source",
        "raw_audio fails naming both places and the near-matching folders "
        "(test_a_channel_with_nothing_in_the_source_fails_naming_where_it_looked)",
    ),
    (
        "a channel whose audio folder is empty or missing (a wrong mapping)",
        "raw_audio fails naming it; nothing is removed (test_a_channel_with_transcripts_and_no_audio_at_all_fails_and_removes_nothing)",
    ),
    (
        "errors classified by what they are: permission denied, not a regular file, a link loop: permanent; "
        "a timeout, a reset connection, a replaced object: transient",
        "permanent: the object's failure; transient: the run fails and a rerun retries (test_source_objects.py)",
    ),
]


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
    for case in CASES + LOCAL_CASES:
        lost = case.lost
        if lost == "nothing" and any(o.verb in ("failed", "refused") for o in case.expect):
            lost = "the object named, nothing else"
        print(f"| {case.kind} | {'; '.join(map(str, case.expect))} | {lost} |".replace("\n", "\\n"))
    print(
        f"| {HOURS}-hour recording | cut while streamed: peak RSS a few MB over the interpreter's, no decoded copy on disk "
        "(test_a_ten_hour_recording_is_streamed_in_bounded_memory) | nothing |"
    )
    for kind, outcome in SCENARIOS:
        print(f"| {kind} | {outcome} | nothing |")
