"""encoded_segments as Dagster runs it: against the S3 server, across reruns, a codec change, a
SIGKILL, too-short segments and a Hub that cannot be reached."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from dagster import AssetSelection, DagsterInstance, materialize

from neutts_assets.defs.encoding.checks import encoded_segments_present
from neutts_assets.defs.encoding.codec import NeuCodecResource
from neutts_assets.defs.encoding.encoded_segments import encoded_segments
from neutts_assets.defs.inventory.raw_audio import raw_audio
from neutts_assets.defs.segments.segments_npz import segments_npz
from neutts_assets.pipeline.encoding import codec as codec_module
from neutts_assets.pipeline.encoding.store import Stage2Layout
from neutts_assets.pipeline.segments.segment_file import read_segment
from neutts_assets.storage.local import LocalStore
from neutts_assets_tests.codec_corpus import small_random_codec
from neutts_assets_tests.helpers import (
    asset_metadata,
    audio_key,
    clean_env,
    demo_audio,
    free_port,
    make_resources,
    populate_source,
    run_stage1,
    transcript_key,
)

BIN = Path(sys.executable).parent


def run_encode(
    instance, resources: dict, channel: str, codec: NeuCodecResource | None = None, raise_on_error: bool = True
):
    return materialize(
        [raw_audio, segments_npz, encoded_segments, encoded_segments_present],
        selection=AssetSelection.assets(encoded_segments),
        partition_key=channel,
        instance=instance,
        resources={**resources, "codec": codec or NeuCodecResource(weights="random", device="cpu", batch_seconds=8.0)},
        raise_on_error=raise_on_error,
    )


def test_encoded_segments_on_s3_resume_and_codec_change(s3_endpoint, s3_bucket, tmp_path, monkeypatch):
    channel, ids = "ch_s3", ["austen_0870", "austen_0880", "austen_0890"]
    populate_source(LocalStore(tmp_path / "bucket"), channel, ids=ids)
    resources = make_resources(str(tmp_path / "bucket"), f"s3://{s3_bucket}/segs", s3_endpoint)
    instance = DagsterInstance.ephemeral()
    run_stage1(instance, resources, channel)

    result = run_encode(instance, resources, channel)
    md = asset_metadata(result, "encoded_segments")
    manifest = result.output_for_node("encoded_segments").to_dict()  # as stored
    codec = small_random_codec()
    assert md["segments_encoded"] == 7 and md["segments_failed"] == 0 and md["segments_skipped"] == 0
    assert md["codec"] == manifest["codec"] == codec.label and manifest["test_only_codes"] is True
    assert "tests only" in md["test_only_codes"] and md["device"] == "cpu" and md["batches"] >= 1
    for key in (
        "audio_hours_encoded",
        "segments_per_second",
        "audio_seconds_per_second",
        "download_seconds",
        "encode_seconds",
        "upload_seconds",
        "batch_segments_mean",
        "peak_inflight_mb",
    ):
        assert md[key] > 0, key
    (check,) = result.get_asset_check_evaluations()
    assert check.passed and check.metadata["segments_expected"].value == 7
    layout, store = Stage2Layout(channel), resources["store"].open()
    segments = [s for r in manifest["recordings"] for s in r["segments"]]
    assert len(segments) == manifest["segment_count"] == 7
    for s in segments:
        assert s["key"] == f"stage2_with_codes/{channel}/{s['audio_id']}.npz"
        seg = read_segment(store.read_bytes(s["key"]))
        source = read_segment(store.read_bytes(f"stage1/{channel}/{s['audio_id']}.npz"))
        assert np.array_equal(seg.pcm16, source.pcm16) and seg.text == source.text
        assert seg.codec == codec.label and seg.codes.dtype == np.int32
        assert (
            len(seg.codes) == s["n_codes"] == len(seg.pcm16) // 320 and 0 <= seg.codes.min() and seg.codes.max() < 65536
        )
        assert np.array_equal(seg.codes, codec.encode_one(seg.pcm16))  # the single-clip codes
        # the users' old reader on both stages' files from a real run: the waveform, exactly
        for key in (s["key"], f"stage1/{channel}/{s['audio_id']}.npz"):
            with np.load(io.BytesIO(store.read_bytes(key)), allow_pickle=True) as npz:
                assert npz["audio"].dtype == np.float32 and np.array_equal(
                    npz["audio"], source.pcm16 / np.float32(32768)
                )

    assert md["codec_loaded"] is True and 0 < md["device_busy_fraction"] <= 1 and md["host_workers"] >= 1
    assert set(md["host_seconds_per_step"]) == {"read", "decode", "prepare_batches", "stage2_file", "write"}
    assert md["host_seconds_per_step"]["decode"] > 0 and md["device_seconds_per_step"]["model"] > 0

    # Nothing to do the second time: the plan needs only the codec's label, and the model is never built.
    built = []
    real_build = codec_module.build_random_neucodec
    monkeypatch.setattr(codec_module, "build_random_neucodec", lambda *a, **kw: built.append(a) or real_build(*a, **kw))
    md = asset_metadata(run_encode(instance, resources, channel), "encoded_segments")
    assert md["segments_encoded"] == 0 and md["segments_already_encoded"] == 7
    assert md["codec_loaded"] is False and built == [] and md["codec"] == codec.label

    # Files whose marker is missing (a kill between the two writes) are checked and kept, not encoded again.
    markers = sorted(o.key for o in store.list(layout.marker_prefix))
    for key in markers[:2]:
        store.delete(key)
    md = asset_metadata(run_encode(instance, resources, channel), "encoded_segments")
    assert (md["segments_encoded"], md["segments_kept_after_check"], md["segments_already_encoded"]) == (0, 2, 5)

    # Another codec (here: other random weights) encodes everything again; old markers go.
    other = NeuCodecResource(weights="random", seed=1, device="cpu")
    result = run_encode(instance, resources, channel, other)
    md = asset_metadata(result, "encoded_segments")
    assert md["segments_encoded"] == 7 and md["codec"].endswith("seed1")
    assert all(read_segment(store.read_bytes(s["key"])).codec == md["codec"] for s in segments)
    marker_folders = {k.split("/")[3] for k in (o.key for o in store.list(layout.marker_prefix))}
    assert len(marker_folders) == 1 and len(list(store.list(layout.marker_prefix))) == 7


def test_too_short_segments_are_recorded_with_their_reason(tmp_path):
    channel, rec = "short", "austen_0870"
    bucket = LocalStore(tmp_path / "bucket")
    segments = [
        {"start_ms": 1000, "end_ms": 1015, "text": "a blip", "speaker_id": "S1"},  # 240 samples < 320
        {"start_ms": 2000, "end_ms": 3000, "text": "a second of speech", "speaker_id": "S1"},
    ]
    bucket.write_bytes(transcript_key(channel, rec), json.dumps(segments).encode())
    bucket.write_bytes(audio_key(channel, demo_audio(rec).name), demo_audio(rec).read_bytes())
    resources = make_resources(str(tmp_path / "bucket"), str(tmp_path / "store"))
    instance = DagsterInstance.ephemeral()
    run_stage1(instance, resources, channel, config={"min_duration_s": 0.0})

    result = run_encode(instance, resources, channel)
    md = asset_metadata(result, "encoded_segments")
    manifest = result.output_for_node("encoded_segments").to_dict()  # as stored
    assert md["segments_encoded"] == 1 and md["segments_skipped"] == 1 and md["segments_failed"] == 0
    assert manifest["skipped"] == [
        {"audio_id": f"{rec}_seg_0", "reason": "too short for the codec: 240 samples, needs at least 320"}
    ]
    assert any("240 samples" in r["reason"] for r in md["skipped_segments"])
    assert [s["audio_id"] for r in manifest["recordings"] for s in r["segments"]] == [f"{rec}_seg_1"]


def _cli_env(tmp_path: Path, store: Path, **extra) -> dict:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return clean_env(
        DAGSTER_HOME=str(home),
        NEUTTS_SOURCE=str(tmp_path / "bucket"),
        NEUTTS_STORE=str(store),
        HF_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        HF_HOME=str(tmp_path / "hf"),
        **extra,
    )


def _encode_cmd(channel: str) -> list[str]:
    return [
        str(BIN / "dagster"),
        "asset",
        "materialize",
        "-m",
        "neutts_assets.definitions",
        "--select",
        "encoded_segments",
        "--partition",
        channel,
    ]


def test_unreachable_hub_fails_clearly_and_writes_nothing(tmp_path):
    channel = "nohub"
    populate_source(LocalStore(tmp_path / "bucket"), channel, ids=["austen_0880"])
    store = tmp_path / "store"
    run_stage1(DagsterInstance.ephemeral(), make_resources(str(tmp_path / "bucket"), str(store)), channel)
    env = _cli_env(tmp_path, store)  # NEUTTS_CODEC unset: pretrained, as in production
    subprocess.run([str(BIN / "neutts-assets"), "add-channel", channel], env=env, check=True, capture_output=True)
    proc = subprocess.run(_encode_cmd(channel), env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "cannot load the NeuCodec weights 'neuphonic/neucodec'" in out and "Hugging Face Hub" in out
    assert "HF_HOME" in out and "NEUTTS_CODEC=random" in out
    assert not (store / "stage2_with_codes").exists()


def test_sigkill_mid_encode_then_resume_encodes_nothing_finished(tmp_path):
    channel = "killed"
    populate_source(LocalStore(tmp_path / "bucket"), channel, ids=["sonnet001"])  # 15 segments, 53 s
    store_root = tmp_path / "store"
    resources = make_resources(str(tmp_path / "bucket"), str(store_root))
    instance = DagsterInstance.ephemeral()
    run_stage1(instance, resources, channel)
    env = _cli_env(
        tmp_path, store_root, NEUTTS_CODEC="random", NEUTTS_CODEC_BATCH_SECONDS="1", NEUTTS_CODEC_DEVICE="cpu"
    )
    subprocess.run([str(BIN / "neutts-assets"), "add-channel", channel], env=env, check=True, capture_output=True)
    proc = subprocess.Popen(
        _encode_cmd(channel), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    layout = Stage2Layout(channel)
    markers = store_root / layout.marker_prefix
    deadline = time.monotonic() + 240
    while len(list(markers.rglob("*@*"))) < 4:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no progress to interrupt"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    folder = store_root / layout.channel_prefix
    finished = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.npz")}
    marked = len(list(markers.rglob("*@*")))
    assert 4 <= len(finished) < 15 and marked <= len(finished)

    md = asset_metadata(run_encode(instance, resources, channel), "encoded_segments")
    assert md["segments_already_encoded"] == marked
    assert md["segments_kept_after_check"] == len(finished) - marked
    assert md["segments_encoded"] == 15 - len(finished) and md["segments_failed"] == 0
    after = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.npz")}
    assert len(after) == 15 and all(after[name] == mtime for name, mtime in finished.items())  # none rewritten
    assert not [p for p in folder.rglob("*") if ".neutts-tmp-" in p.name]
    codec = small_random_codec()
    for path in folder.glob("*.npz"):
        seg = read_segment(path)
        assert seg.codec == codec.label and len(seg.codes) == len(seg.pcm16) // 320
