"""Bad and hostile input: each gets a clear per-object error in metadata, the rest of the channel
completes, and nothing is written outside the store."""

from __future__ import annotations

import json
import os
import shutil
import struct

from dagster import DagsterInstance

from neutts_assets import read_segment
from neutts_assets_tests.helpers import (
    DEMO_TRANSCRIPTS,
    asset_metadata,
    audio_key,
    convert,
    demo_audio,
    make_resources,
    populate_source,
    run_stage1,
    transcript_key,
)

CHANNEL = "bad_channel"
GOOD = ["austen_0870", "austen_0930"]
REFUSED = "refused by the inventory, listed in raw_audio's unpaired table"


def _ffmpeg_wrapper(tmp_path, script: str):
    """A folder holding an `ffmpeg` shell script (`{real}` in it names the real ffmpeg), to put
    first on PATH: a decoder that fails in a chosen way, for the real stage-1 code."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "ffmpeg").write_text("#!/bin/sh\n" + script.replace("{real}", shutil.which("ffmpeg")) + "\n")
    (folder / "ffmpeg").chmod(0o755)
    return folder


def _wav_with_unknown_codec() -> bytes:
    """A well-formed RIFF/WAVE header whose format tag (0x7A7A) no decoder knows."""
    data = b"\x00\x01" * 8000
    fmt = struct.pack("<HHIIHH", 0x7A7A, 1, 16000, 32000, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _ok_transcript() -> bytes:
    return (DEMO_TRANSCRIPTS / "audio_austen_0870.json").read_bytes()


def populate_bad_channel(store) -> dict[str, str]:
    """Writes the hostile objects; returns {object key: words its failure reason must contain}."""
    populate_source(store, CHANNEL, ids=GOOD)
    wav = demo_audio("austen_0870").read_bytes()
    expect = {}

    def recording(rec_id, transcript: bytes, audio: bytes | None, ext="wav"):
        store.write_bytes(transcript_key(CHANNEL, rec_id), transcript)
        if audio is not None:
            store.write_bytes(audio_key(CHANNEL, f"{rec_id}.{ext}"), audio)

    recording("corrupt", _ok_transcript(), b"\x13\x37" * 5000, "mp3")
    expect[audio_key(CHANNEL, "corrupt.mp3")] = "cannot decode"
    recording("empty", _ok_transcript(), b"", "wav")
    expect[audio_key(CHANNEL, "empty.wav")] = "cannot decode"
    recording("unknown_codec", _ok_transcript(), _wav_with_unknown_codec(), "wav")
    expect[audio_key(CHANNEL, "unknown_codec.wav")] = "cannot decode"
    recording("no_audio", _ok_transcript(), None)
    expect[transcript_key(CHANNEL, "no_audio")] = "no audio object"
    recording("malformed", b'{"segments": [ {"start_ms": 0, ', wav)
    expect[transcript_key(CHANNEL, "malformed")] = "malformed JSON"
    recording("a_number", b"42", wav)
    expect[transcript_key(CHANNEL, "a_number")] = "got int"
    recording("no_segments_key", b'{"utterances": []}', wav)
    expect[transcript_key(CHANNEL, "no_segments_key")] = "no 'segments' list"
    recording("not_utf8", b'[{"start_ms": 0, "end_ms": 900, "text": "\xff\xfe"}]', wav)
    expect[transcript_key(CHANNEL, "not_utf8")] = "not UTF-8"
    # Segment-level problems: these recordings still succeed, minus the bad segments.
    recording(
        "bad_segments",
        json.dumps(
            [
                {"start_ms": 0, "end_ms": 1500, "text": "a good segment"},  # 0 kept
                {"end_ms": 1500, "text": "no start"},  # 1 missing field
                {"start_ms": "zero", "end_ms": 1500, "text": "x"},  # 2 non-numeric
                {"start_ms": 2000, "end_ms": 1000, "text": "reversed"},  # 3 reversed
                {"start_ms": 1000, "end_ms": 1000, "text": "zero length"},  # 4 zero length
                {"start_ms": 60000, "end_ms": 61000, "text": "past the end"},  # 5 outside
                {"start_ms": 6000, "end_ms": 9000, "text": "overhangs the end"},  # 6 clipped at 7.1 s
                {"start_ms": 100, "end_ms": 300, "text": "too short"},  # 7 < 0.3 s
                {"start_ms": 100, "end_ms": 900, "text": "   "},  # 8 empty text
                "not an object",  # 9
                {"start_ms": True, "end_ms": 900, "text": "bool time"},  # 10
            ]
        ).encode(),
        wav,
    )
    recording(
        "nan_times",
        b'[{"start_ms": NaN, "end_ms": 900, "text": "nan"}, {"start_ms": 0, "end_ms": Infinity, "text": "inf"},'
        b' {"start_ms": 0, "end_ms": 900, "text": "fine"}]',
        wav,
    )
    # Hostile JSON that the json module itself chokes on in ways other than a syntax error.
    recording("deep_nesting", b"[" * 100_000 + b"]" * 100_000, wav)
    expect[transcript_key(CHANNEL, "deep_nesting")] = "nested too deeply"
    recording("long_integer", b'[{"start_ms": ' + b"7" * 5000 + b', "end_ms": 900}]', wav)
    expect[transcript_key(CHANNEL, "long_integer")] = "unreadable JSON"
    # Segment-level: absurd numbers are skipped with a reason, odd characters are replaced.
    recording(
        "absurd_times",
        json.dumps(
            [
                {"start_ms": int("9" * 400), "end_ms": 900, "text": "an integer too large for a float"},  # 0
                {"start_ms": 0, "end_ms": 1e305, "text": "a float too large for samples"},  # 1
                {"start_ms": 0, "end_ms": 1200, "text": "lone \ud800 surrogate", "speaker_id": "\udfff"},  # 2 kept
            ]
        ).encode(),
        wav,
    )
    # A hostile name: a '..' recording ID.
    store.write_bytes(f"processed_runs/processed_{CHANNEL}/transcripts/audio_...json", _ok_transcript())
    expect[f"processed_runs/processed_{CHANNEL}/transcripts/audio_...json"] = REFUSED
    return expect


def _check(meta, store, expect):
    failures = meta["failures"]
    for key, words in expect.items():
        if words is REFUSED:
            continue  # unsafe names are refused by the inventory: see raw_audio's unpaired table
        row = next((r for r in failures if key in r["object"]), None)
        assert row is not None, f"{key} missing from failures:\n{failures}"
        assert words in row["reason"], row
    for seg_id in [f"{g}_seg_0" for g in GOOD] + ["bad_segments_seg_0", "nan_times_seg_2", "absurd_times_seg_2"]:
        assert store.read_bytes_or_none(f"stage1/{CHANNEL}/{seg_id}.npz") is not None, seg_id
    odd = read_segment(store.read_bytes(f"stage1/{CHANNEL}/absurd_times_seg_2.npz"))
    assert odd.text == "lone ? surrogate" and odd.speaker_id == "?"
    reasons = meta["skipped_segments"]
    by_segment = {r["segment"]: r for r in reasons}
    assert by_segment["absurd_times_seg_0"]["reason"] == "malformed segment"
    assert by_segment["absurd_times_seg_0"]["detail"].startswith("start_ms is out of range")
    assert by_segment["absurd_times_seg_1"]["reason"] == "malformed segment"
    assert by_segment["absurd_times_seg_1"]["detail"].startswith("end_ms is out of range (1e+305 ms)")
    for words in (
        "missing start_ms",
        "not a number",
        "reversed times",
        "zero length",
        "outside the audio",
        "shorter than 0.3 s",
        "empty text",
        "not an object",
        "not finite",
    ):
        assert any(words in str(c) for r in reasons for c in r.values()), f"{words!r} not in\n{reasons}"
    assert by_segment["bad_segments_seg_3"]["reason"] == "reversed times"
    assert any("malformed segment" in r["reason"] for r in meta["skip_reasons"])


def test_bad_input_on_gcs_and_s3(gcs_store, gcs_bucket, s3_store, s3_bucket, s3_endpoint, s3_client):
    expect = populate_bad_channel(gcs_store)
    # A name carrying the temporary-file marker, which our stores refuse to write: put there by another tool.
    marked = f"processed_runs/processed_{CHANNEL}/transcripts/audio_x.neutts-tmp-1-y.json"
    gcs_store.bucket.blob(marked).upload_from_string(_ok_transcript())
    resources = make_resources(f"gs://{gcs_bucket}", f"s3://{s3_bucket}/neutts_segments", s3_endpoint)
    instance = DagsterInstance.ephemeral()
    result = run_stage1(instance, resources, CHANNEL)
    meta = asset_metadata(result, "segments_npz")
    _check(meta, s3_store, expect)
    assert meta["files_failed"] == 10
    unpaired = asset_metadata(result, "raw_audio")["unpaired"]
    refused = {r["object"].rsplit("/", 1)[-1]: r["reason"] for r in unpaired}
    assert "'..'" in refused["audio_...json"]
    assert "marks temporary files" in refused["audio_x.neutts-tmp-1-y.json"]

    # bad_segments: the overhanging segment is clipped to the audio's end; the others were not written
    clipped = read_segment(s3_store.read_bytes(f"stage1/{CHANNEL}/bad_segments_seg_6.npz"))
    assert clipped.text == "overhangs the end" and abs(clipped.duration_sec - (7.1 - 6.0)) < 0.01
    written = sorted(o.key.rsplit("/", 1)[1] for o in s3_store.list(f"stage1/{CHANNEL}/bad_segments_seg_"))
    assert written == ["bad_segments_seg_0.npz", "bad_segments_seg_6.npz"]
    # every object the run wrote stays under the store's prefix
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert all(
        k.startswith((f"neutts_segments/stage1/{CHANNEL}/", "neutts_segments/manifests/", "neutts_segments/_leases/"))
        for k in keys
    )

    # A second run does not download the deterministic failures again, and still reports them.
    meta2 = asset_metadata(run_stage1(instance, resources, CHANNEL), "segments_npz")
    assert meta2["bytes_downloaded"] == 0 and meta2["files_failed"] == 10
    assert any("unchanged since the last run" in r["reason"] for r in meta2["failures"])


def test_bad_input_on_local_folders(tmp_path):
    from neutts_assets.storage.local import LocalStore

    source = LocalStore(tmp_path / "source")
    expect = populate_bad_channel(source)
    resources = make_resources(str(tmp_path / "source"), str(tmp_path / "store"))
    meta = asset_metadata(run_stage1(DagsterInstance.ephemeral(), resources, CHANNEL), "segments_npz")
    store = LocalStore(tmp_path / "store")
    _check(meta, store, expect)
    # nothing was created outside the store and the source folders
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source", "store"]
    assert not list((tmp_path / "store").rglob("*.neutts-tmp-*"))


def test_a_new_bad_upload_never_hides_good_segments(gcs_store, gcs_bucket, s3_store, s3_bucket, s3_endpoint):
    populate_source(gcs_store, CHANNEL, ids=GOOD)
    resources = make_resources(f"gs://{gcs_bucket}", f"s3://{s3_bucket}/neutts_segments", s3_endpoint)
    instance = DagsterInstance.ephemeral()
    run_stage1(instance, resources, CHANNEL)
    before = {o.key for o in s3_store.list(f"stage1/{CHANNEL}/austen_0870_seg_")}
    gcs_store.write_bytes(transcript_key(CHANNEL, "austen_0870"), b"not json")
    meta = asset_metadata(run_stage1(instance, resources, CHANNEL), "segments_npz")
    assert meta["files_failed"] == 1 and any("malformed JSON" in r["reason"] for r in meta["failures"])
    assert {o.key for o in s3_store.list(f"stage1/{CHANNEL}/austen_0870_seg_")} == before
    assert meta["segments_in_channel"] == len(before) + len(list(s3_store.list(f"stage1/{CHANNEL}/austen_0930_seg_")))
    # The bad upload is still there: the next run neither downloads it again nor drops the good cut.
    meta2 = asset_metadata(run_stage1(instance, resources, CHANNEL), "segments_npz")
    assert meta2["bytes_downloaded"] == 0 and meta2["files_unchanged"] == 1 and meta2["files_failed"] == 1
    assert any("malformed JSON" in r["reason"] for r in meta2["failures"])
    assert any("unchanged since the last run" in r["reason"] for r in meta2["failures"])
    assert meta2["segments_in_channel"] == meta["segments_in_channel"]
    # A fixed upload is cut again.
    populate_source(gcs_store, CHANNEL, ids=["austen_0870"])
    meta3 = asset_metadata(run_stage1(instance, resources, CHANNEL), "segments_npz")
    assert meta3["files_changed"] == 1 and meta3["files_failed"] == 0


def test_a_killed_decoder_is_retried_not_recorded_as_bad_audio(tmp_path, monkeypatch):
    """ffmpeg killed by the kernel halfway through the stream (here: SIGKILL after 0.5 MB of
    samples, as the OOM killer does) says nothing about the audio. The run fails naming the object,
    the other recordings are published, and the next run cuts it."""
    from dagster import DagsterInstance

    from neutts_assets.storage.local import LocalStore

    populate_source(LocalStore(tmp_path / "source"), CHANNEL, ids=["austen_0870", "sonnet001"])
    # mp3 input (sonnet001) only: the samples stop after 0.5 MB and the decoder dies by SIGKILL.
    limited = _ffmpeg_wrapper(
        tmp_path, 'case "$*" in *audio.mp3*) "{real}" "$@" | head -c 500000; kill -KILL $$;; esac\nexec "{real}" "$@"'
    )
    resources = make_resources(str(tmp_path / "source"), str(tmp_path / "store"))
    instance = DagsterInstance.ephemeral()

    monkeypatch.setenv("PATH", f"{limited}{os.pathsep}{os.environ['PATH']}")
    result = run_stage1(instance, resources, CHANNEL, raise_on_error=False)
    assert not result.success
    failure = next(
        e for e in result.all_events if e.event_type_value == "STEP_FAILURE" and e.step_key == "segments_npz"
    )
    text = failure.event_specific_data.error.message
    assert "sonnet001.mp3" in text and "ffmpeg failed" in text and "rerun to retry" in text, text
    store = LocalStore(tmp_path / "store")
    assert store.read_bytes_or_none(f"stage1/{CHANNEL}/_index/austen_0870.json") is not None
    assert store.read_bytes_or_none(f"stage1/{CHANNEL}/_index/sonnet001.json") is None  # nothing recorded as bad

    monkeypatch.setenv("PATH", os.environ["PATH"].split(os.pathsep, 1)[1])
    meta = asset_metadata(run_stage1(instance, resources, CHANNEL), "segments_npz")
    assert meta["files_new"] == 1 and meta["files_unchanged"] == 1 and meta["files_failed"] == 0


def test_audio_failing_halfway_through_the_stream(tmp_path, monkeypatch):
    """Segments are written as the audio streams past, so a decode that fails after some of them
    (ffmpeg stops with an error midway) must leave nothing of a new recording behind, and must
    not touch the segments of an earlier good cut when it is the replacement audio that fails:
    those of a replacement are held locally until the decode has succeeded."""
    from neutts_assets.storage.local import LocalStore

    source, store = LocalStore(tmp_path / "source"), LocalStore(tmp_path / "store")
    populate_source(source, CHANNEL, ids=["austen_0870"])
    resources = make_resources(str(tmp_path / "source"), str(tmp_path / "store"))
    instance = DagsterInstance.ephemeral()
    run_stage1(instance, resources, CHANNEL)
    good = {o.key: store.read_bytes(o.key) for o in store.list(f"stage1/{CHANNEL}/austen_0870_seg_")}
    assert len(good) == 3

    quieter = convert(demo_audio("austen_0870"), tmp_path / "quieter.wav", "-af", "volume=0.5")  # other samples
    # 3.5 s of samples (enough for the first segments to be cut), then a decoding error.
    failing = _ffmpeg_wrapper(
        tmp_path, '"{real}" "$@" | head -c 112000\necho "[error] Invalid data found when processing input" >&2\nexit 1'
    )
    monkeypatch.setenv("PATH", f"{failing}{os.pathsep}{os.environ['PATH']}")
    # A new recording, and new audio for the good one (another file: a new version).
    populate_source(source, CHANNEL, ids=["austen_0930"])
    (source.root / audio_key(CHANNEL, "austen_0870.wav")).write_bytes(quieter.read_bytes())
    meta = asset_metadata(run_stage1(instance, resources, CHANNEL), "segments_npz")

    invalid = [r for r in meta["failures"] if "Invalid data found" in r["reason"]]
    assert meta["files_failed"] == 2 and len(invalid) == 2, meta["failures"]
    assert {o.key: store.read_bytes(o.key) for o in store.list(f"stage1/{CHANNEL}/austen_0870_seg_")} == good
    assert not list(store.list(f"stage1/{CHANNEL}/austen_0930_seg_"))  # what it had written is removed
    assert meta["segments_in_channel"] == 3


def test_a_new_transcript_whose_recut_dies_halfway_leaves_the_good_cut_whole(tmp_path, monkeypatch):
    """Same audio, new transcript: the recut writes the same keys the good index lists, so they
    are held until the decode has succeeded. A decoder killed halfway (SIGKILL: a failure that
    may pass) then leaves every listed segment as it was, and the rerun recuts it."""
    from neutts_assets.storage.local import LocalStore

    source, store = LocalStore(tmp_path / "source"), LocalStore(tmp_path / "store")
    populate_source(source, CHANNEL, ids=["austen_0870"])
    resources = make_resources(str(tmp_path / "source"), str(tmp_path / "store"))
    instance = DagsterInstance.ephemeral()
    run_stage1(instance, resources, CHANNEL)
    good = {o.key: store.read_bytes(o.key) for o in store.list(f"stage1/{CHANNEL}/")}
    transcript = json.loads(source.read_bytes(transcript_key(CHANNEL, "austen_0870")))
    segments = transcript["segments"] if isinstance(transcript, dict) else transcript
    for seg in segments:
        seg["text"] = seg["text"].upper()  # every segment file changes
    source.write_bytes(transcript_key(CHANNEL, "austen_0870"), json.dumps(transcript).encode())

    dying = _ffmpeg_wrapper(tmp_path, '"{real}" "$@" | head -c 112000; kill -KILL $$')
    monkeypatch.setenv("PATH", f"{dying}{os.pathsep}{os.environ['PATH']}")
    result = run_stage1(instance, resources, CHANNEL, raise_on_error=False)
    assert not result.success
    assert {o.key: store.read_bytes(o.key) for o in store.list(f"stage1/{CHANNEL}/")} == good  # index and segments

    monkeypatch.setenv("PATH", os.environ["PATH"].split(os.pathsep, 1)[1])
    meta = asset_metadata(run_stage1(instance, resources, CHANNEL), "segments_npz")
    assert meta["files_changed"] == 1 and meta["files_failed"] == 0
    texts = {read_segment(store.read_bytes(o.key)).text for o in store.list(f"stage1/{CHANNEL}/austen_0870_seg_")}
    assert texts and all(t == t.upper() for t in texts)
