"""hf_dataset end to end: real stage-1 segments of the demo recordings, stage-2 files in the
encoded_segments layout, the asset materialized by Dagster, and the result opened the way the
users' scripts open it (`load_dataset`, `load_from_disk`)."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance
from datasets import load_dataset, load_from_disk

from neutts_assets.pipeline.dataset.annotations import LINEAGE_COLUMNS
from neutts_assets.pipeline.dataset.rows import BadSegment, RowFilter, dataset_features, read_row
from neutts_assets.pipeline.dataset.store import record_key
from neutts_assets.pipeline.dataset.writer import ROW_GROUP_ROWS, build_channel, segment_objects
from neutts_assets.pipeline.quality.scores import ALL_SCORE_NAMES
from neutts_assets.pipeline.segments.segment_file import Segment, encode_segment, read_segment
from neutts_assets.storage.local import LocalStore
from neutts_assets_tests.helpers import (
    DEMO_IDS,
    TEST_CODEC,
    asset_metadata,
    encode_stage2,
    fake_codes,
    make_resources,
    plain,
    populate_source,
    run_dataset,
    run_stage1,
)

A, B = "Atheer_-", "ZadTVchannel"


@pytest.fixture(scope="module")
def stage1_template(tmp_path_factory):
    """Stage 1 run once for two channels (real cuts of the demo recordings); tests copy the store."""
    root = tmp_path_factory.mktemp("stage1")
    populate_source(LocalStore(root / "source"), A, "Atheer - أثير", ids=DEMO_IDS[:3])
    populate_source(LocalStore(root / "source"), B, ids=DEMO_IDS[3:5])
    resources = make_resources(str(root / "source"), str(root / "store"), mapping={A: "Atheer - أثير"})
    instance = DagsterInstance.ephemeral()
    run_stage1(instance, resources, A)
    run_stage1(instance, resources, B)
    return root


@pytest.fixture
def env(stage1_template, tmp_path):
    shutil.copytree(stage1_template / "store", tmp_path / "store")
    resources = make_resources(str(stage1_template / "source"), str(tmp_path / "store"))
    return resources, DagsterInstance.ephemeral(), LocalStore(tmp_path / "store"), tmp_path


def _load(folder, *config, cache):
    return load_dataset(str(folder), *config, split="train", cache_dir=str(cache))


def _samples(row) -> np.ndarray:
    decoded = row["audio"].get_all_samples()
    assert decoded.sample_rate == 16000
    return decoded.data.numpy()[0]


def _stage1_segments(store, channel) -> dict:
    return {
        read_segment(store.read_bytes(k)).audio_id: read_segment(store.read_bytes(k))
        for k in segment_objects(store, f"stage1/{channel}/")
    }


def test_rows_equal_their_segments_and_load_back(env):
    resources, instance, store, tmp = env
    encode_stage2(store, A)
    result = run_dataset(instance, resources, A, {"save_to_disk": True})
    meta = asset_metadata(result, "hf_dataset")
    segments = _stage1_segments(store, A)
    assert meta["rows"] == len(segments) == 7 and meta["segments_failed"] == 0 and meta["rebuilt"] is True
    assert "Atheer_-" in meta["channel_card"] and TEST_CODEC in meta["dataset_card"]

    folder = tmp / "store" / "hf_dataset"
    for ds in (
        _load(folder, cache=tmp / "c1"),
        _load(folder, A, cache=tmp / "c2"),
        load_from_disk(str(tmp / "store" / "hf_dataset_disk")),
        load_from_disk(str(tmp / "store" / "hf_dataset_disk" / A)),
    ):
        assert ds.features == dataset_features()
        assert list(ds.features) == [
            "audio",
            "codes",
            "text",
            "speaker_id",
            "channel",
            "gender",
            "dialect",
            "tone",
            "audio_id",
            "duration_sec",
            # then, after the users' columns: the split, the quality scores and the lineage
            "split",
            *ALL_SCORE_NAMES,
            *LINEAGE_COLUMNS,
        ]
        assert len(ds) == 7
        for row in ds:
            seg = segments[row["audio_id"]]
            assert (row["text"], row["speaker_id"], row["channel"], row["gender"], row["dialect"], row["tone"]) == (
                seg.text,
                seg.speaker_id,
                A,
                seg.gender,
                seg.dialect,
                seg.tone,
            )
            assert row["codes"] == fake_codes(seg.audio_id, len(seg.pcm16)).tolist() and len(row["codes"]) > 0
            assert row["duration_sec"] == pytest.approx(seg.duration_sec, abs=1e-6)
            np.testing.assert_array_equal(_samples(row), seg.pcm16.astype(np.float32) / 32768.0)  # lossless

    card = (folder / "README.md").read_text()
    assert "config_name: all" in card and f"config_name: {A}" in card and "default: true" in card
    for fact in (
        "| segments | 7 |",
        "speakers (per recording)",
        "| gender |",
        "| dialect |",
        "| tone |",
        "| duration | segments |",
        TEST_CODEC,
        "stage2_with_codes/Atheer_-/",
        "| built |",
    ):
        assert fact in card, fact


def test_replacing_a_channel_leaves_the_other_untouched(env):
    resources, instance, store, tmp = env
    encode_stage2(store, A)
    encode_stage2(store, B)
    run_dataset(instance, resources, A, {"save_to_disk": True})
    run_dataset(instance, resources, B, {"save_to_disk": True})
    b_objects = {
        o.key: o.version for p in ("hf_dataset/data/", "hf_dataset_disk/") for o in store.list(p) if f"/{B}/" in o.key
    }
    old_a = {o.key for o in store.list(f"hf_dataset/data/{A}/")}
    n_b = len(segment_objects(store, f"stage2_with_codes/{B}/"))
    assert len(_load(tmp / "store" / "hf_dataset", cache=tmp / "c0")) == 7 + n_b

    # Unchanged input: nothing rebuilt.
    meta = asset_metadata(run_dataset(instance, resources, A, {"save_to_disk": True}), "hf_dataset")
    assert meta["rebuilt"] is False and {o.key for o in store.list(f"hf_dataset/data/{A}/")} == old_a

    # A segment of A leaves stage 2: A is rebuilt, its old shards replaced, B not touched.
    gone = sorted(segment_objects(store, f"stage2_with_codes/{A}/"))[0]
    store.delete(gone)
    meta = asset_metadata(run_dataset(instance, resources, A, {"save_to_disk": True}), "hf_dataset")
    assert meta["rebuilt"] is True and meta["rows"] == 6 and meta["old_shards_removed"] == len(old_a)
    new_a = {o.key for o in store.list(f"hf_dataset/data/{A}/")}
    assert new_a and not new_a & old_a
    assert {
        o.key: o.version for p in ("hf_dataset/data/", "hf_dataset_disk/") for o in store.list(p) if f"/{B}/" in o.key
    } == b_objects

    ds = _load(tmp / "store" / "hf_dataset", cache=tmp / "c1")
    assert len(ds) == 6 + n_b and sorted(set(ds["channel"])) == sorted([A, B])
    assert gone.rsplit("/", 1)[1][:-4] not in ds["audio_id"]
    assert len(_load(tmp / "store" / "hf_dataset", B, cache=tmp / "c2")) == n_b
    all_disk = load_from_disk(str(tmp / "store" / "hf_dataset_disk"))
    assert len(all_disk) == 6 + n_b and all_disk.features == dataset_features()
    assert len(load_from_disk(str(tmp / "store" / "hf_dataset_disk" / A))) == 6


def test_no_codes_mode(env):
    resources, instance, store, tmp = env
    # Default: rows need codes, and there are none yet.
    result = run_dataset(instance, resources, B, raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "no encoded segments" in str(failure.event_specific_data.error) and "include_segments_without_codes" in str(
        failure.event_specific_data.error
    )
    assert store.read_bytes_or_none(record_key(B)) is None

    meta = asset_metadata(run_dataset(instance, resources, B, {"include_segments_without_codes": True}), "hf_dataset")
    segments = _stage1_segments(store, B)
    assert meta["rows"] == len(segments) and meta["segments_not_encoded_yet"] == len(segments)
    ds = _load(tmp / "store" / "hf_dataset", B, cache=tmp / "c1")
    assert all(codes == [] for codes in ds["codes"]) and sorted(ds["audio_id"]) == sorted(segments)

    # Two segments encoded since: the no-codes build keeps the codes that exist.
    some = sorted(segments)[:2]
    encode_stage2(store, B, only=some)
    meta = asset_metadata(run_dataset(instance, resources, B, {"include_segments_without_codes": True}), "hf_dataset")
    assert meta["rows"] == len(segments) and meta["segments_not_encoded_yet"] == len(segments) - 2
    ds = _load(tmp / "store" / "hf_dataset", B, cache=tmp / "c2")
    with_codes = {r["audio_id"] for r in ds if r["codes"]}
    assert with_codes == set(some)
    # The default mode now builds from those two only.
    assert asset_metadata(run_dataset(instance, resources, B), "hf_dataset")["rows"] == 2


def test_duration_range_and_a_bad_segment(env):
    resources, instance, store, tmp = env
    encode_stage2(store, A)
    durations = sorted(s.duration_sec for s in _stage1_segments(store, A).values())
    bad = f"stage2_with_codes/{A}/zzz_seg_0.npz"
    store.write_bytes(bad, b"PK\x03\x04 not really a zip")
    lo, hi = durations[1], durations[-2]
    meta = asset_metadata(
        run_dataset(instance, resources, A, {"min_duration_s": lo, "max_duration_s": hi}), "hf_dataset"
    )
    assert meta["rows"] == len([d for d in durations if lo <= d <= hi]) < 7
    failures = {r["object"]: r["reason"] for r in meta["failures"]}
    assert meta["segments_failed"] == 1 and bad in failures and "unreadable segment file" in failures[bad]
    reasons = [r["reason"] for r in meta["skip_reasons"]]
    assert any("shorter than" in r for r in reasons) and any("longer than" in r for r in reasons)


def _synthetic(store, channel, n, seconds=1.0):
    rng = np.random.default_rng(1)
    for i in range(n):
        seg = Segment(
            audio_id=f"r{i // 10}_seg_{i % 10}",
            channel=channel,
            text=f"نص {i}",
            speaker_id="SPEAKER_00",
            gender="female",
            dialect="gulf",
            tone="neutral",
            pcm16=(rng.standard_normal(int(16000 * seconds)) * 3000).astype(np.int16),
            codes=np.arange(50, dtype=np.int32),
            codec=TEST_CODEC,
        )
        store.write_bytes(f"stage2_with_codes/{channel}/{seg.audio_id}.npz", encode_segment(seg))


def test_shards_roll_over_at_the_configured_size(tmp_path):
    store = LocalStore(tmp_path / "store")
    _synthetic(store, "c", 450)
    (tmp_path / "w").mkdir()
    build = build_channel(
        store,
        "c",
        list(segment_objects(store, "stage2_with_codes/c/").values()),
        RowFilter(),
        tmp_path / "w",
        "test",
        shard_bytes=3_000_000,
        workers=4,
    )
    shards = build.record["shards"]
    assert len(shards) >= 3 and sum(s["rows"] for s in shards) == 450 == build.record["stats"]["rows"]
    for s in shards:
        pf = pq.ParquetFile(tmp_path / "store" / "hf_dataset" / s["path"])
        assert pf.metadata.num_rows == s["rows"] and all(
            pf.metadata.row_group(i).num_rows <= ROW_GROUP_ROWS for i in range(pf.num_row_groups)
        )
        last_group = pf.metadata.row_group(pf.num_row_groups - 1)
        last_group_bytes = sum(last_group.column(i).total_compressed_size for i in range(last_group.num_columns))
        assert s["bytes"] - last_group_bytes < 3_000_000  # closed at the first row group past the target
        assert s is shards[-1] or s["bytes"] >= 3_000_000
    ids = [
        r
        for s in shards
        for r in pq.read_table(tmp_path / "store" / "hf_dataset" / s["path"], columns=["audio_id"])[
            "audio_id"
        ].to_pylist()
    ]
    assert ids == sorted(ids) and len(set(ids)) == 450  # key order, no duplicates


def test_old_float_segment_files_and_garbage(tmp_path):
    pcm = (np.sin(np.arange(8000) / 7) * 10000).astype(np.int16)
    buf = io.BytesIO()  # the old scripts' savez_compressed of a float waveform, codes as a plain list
    np.savez_compressed(
        buf,
        audio=pcm.astype(np.float32) / 32768.0,
        codes=np.array([1, 2, 3]),
        text="t",
        speaker_id="S",
        channel="c",
        gender="male",
        dialect="gulf",
        tone="neutral",
        duration_sec=0.5,
        audio_id="x_seg_0",
    )
    row = read_row(buf.getvalue())
    import soundfile as sf

    decoded, sr = sf.read(io.BytesIO(row.audio_flac), dtype="int16")
    assert sr == 16000 and np.array_equal(decoded, pcm) and row.codes.tolist() == [1, 2, 3] and row.duration_sec == 0.5
    with pytest.raises(BadSegment, match="unreadable"):
        read_row(b"garbage")
    empty = io.BytesIO()
    np.savez(empty, text=np.array("t"))
    with pytest.raises(BadSegment, match="missing audio"):
        read_row(empty.getvalue())


def test_dataset_in_an_s3_store(stage1_template, s3_endpoint, s3_bucket, s3_store, tmp_path):
    src = LocalStore(stage1_template / "store")
    for o in src.list(f"stage1/{A}/"):
        s3_store.write_bytes(o.key, src.read_bytes(o.key))
    encode_stage2(s3_store, A)
    resources = make_resources(
        str(stage1_template / "source"), f"s3://{s3_bucket}/neutts_segments", s3_endpoint=s3_endpoint
    )
    meta = asset_metadata(run_dataset(DagsterInstance.ephemeral(), resources, A), "hf_dataset")
    assert meta["rows"] == 7 and meta["dataset_folder"].startswith("s3://")
    local = LocalStore(tmp_path / "copy")
    for o in s3_store.list("hf_dataset/"):
        local.write_bytes(o.key, s3_store.read_bytes(o.key))
    ds = _load(tmp_path / "copy" / "hf_dataset", A, cache=tmp_path / "c")
    assert len(ds) == 7 and ds.features == dataset_features()
    record = json.loads(s3_store.read_bytes(record_key(A)))
    assert record["stats"]["rows"] == 7 and record["source"].startswith("s3://")


def test_fast_segment_reader_agrees_with_numpy(tmp_path):
    from neutts_assets.pipeline.dataset.rows import _Npz

    seg = Segment(
        audio_id="a_seg_3",
        channel="قناة",
        text="مرحبا بكم",
        speaker_id="SPEAKER_01",
        gender="male",
        dialect="gulf",
        tone="neutral",
        pcm16=np.arange(-5000, 5000, dtype=np.int16),
        codes=np.arange(31, dtype=np.int32),
        codec="neuphonic/neucodec@abc",
    )
    data = encode_segment(seg)
    fast, ref = _Npz(data), np.load(io.BytesIO(data))
    assert sorted(fast.files) == sorted(ref.files)
    for key in ref.files:
        assert fast[key].dtype == ref[key].dtype and np.array_equal(fast[key], ref[key]), key
    row = read_row(data)
    assert row.strings["text"] == "مرحبا بكم" and row.codes.tolist() == list(range(31)) and row.codec == seg.codec
    assert row.duration_sec == len(seg.pcm16) / 16000


def test_codes_mode_follows_the_encoded_segments_manifest(env):
    """The contract with encoded_segments: its manifest (recordings[].segments[].key, codec, prefix)
    says which stage-2 files hold current codes; files it does not list stay out."""
    resources, instance, store, tmp = env
    keys = encode_stage2(store, A)
    for k in keys:  # a configured stage-2 prefix, as EncodeConfig.prefix allows
        store.write_bytes(k.replace("stage2_with_codes/", "codes_v2/"), store.read_bytes(k))
        store.delete(k)
    listed = [k.replace("stage2_with_codes/", "codes_v2/") for k in keys[:4]] + [f"codes_v2/{A}/gone_seg_0.npz"]
    manifest = {
        "channel": A,
        "codec": TEST_CODEC,
        "test_only_codes": True,
        "prefix": f"codes_v2/{A}/",
        "recordings": [
            {"recording_id": "r", "segments": [{"key": k, "audio_id": k.rsplit("/", 1)[1][:-4]} for k in listed]}
        ],
    }
    store.write_bytes(f"manifests/encoded_segments/{A}.json", json.dumps(manifest).encode())
    meta = asset_metadata(run_dataset(instance, resources, A), "hf_dataset")
    assert meta["rows"] == 4 and meta["segments_failed"] == 1
    assert any("gone_seg_0" in r["object"] for r in meta["failures"])
    assert meta["segments_not_encoded_yet"] == 0  # every stage-1 segment has a stage-2 file under the prefix
    ds = _load(tmp / "store" / "hf_dataset", A, cache=tmp / "c")
    assert sorted(ds["audio_id"]) == sorted(k.rsplit("/", 1)[1][:-4] for k in listed[:4])
    assert (
        "test-only codes" in meta["channel_card"]
        and "codes_v2/Atheer_-/" in (tmp / "store" / "hf_dataset" / "README.md").read_text()
    )


def test_asset_check_finds_a_missing_shard(env):
    from dagster import AssetSelection, Definitions, define_asset_job

    from neutts_assets.defs.dataset.checks import dataset_shards_present
    from neutts_assets.defs.dataset.hf_dataset import hf_dataset

    resources, instance, store, tmp = env
    encode_stage2(store, A)
    run_dataset(instance, resources, A)
    defs = Definitions(
        assets=[hf_dataset],
        asset_checks=[dataset_shards_present],
        resources=resources,
        jobs=[define_asset_job("check_only", selection=AssetSelection.checks(dataset_shards_present))],
    )

    def check():
        result = defs.resolve_job_def("check_only").execute_in_process(instance=instance, tags={"dagster/partition": A})
        (evaluation,) = result.get_asset_check_evaluations()
        return evaluation

    assert check().passed
    (shard,) = [o.key for o in store.list(f"hf_dataset/data/{A}/")]
    store.delete(shard)
    bad = check()
    assert not bad.passed and "missing" in [r["problem"] for r in plain(bad.metadata["problems"])]


def test_a_channel_with_every_segment_filtered_out_does_not_break_loading(env):
    resources, instance, store, tmp = env
    encode_stage2(store, A)
    encode_stage2(store, B)
    run_dataset(instance, resources, A)
    meta = asset_metadata(
        run_dataset(instance, resources, B, {"min_duration_s": 1000.0, "save_to_disk": True}), "hf_dataset"
    )
    assert meta["rows"] == 0 and meta["shards"] == 0
    ds = _load(tmp / "store" / "hf_dataset", cache=tmp / "c")
    assert len(ds) == 7 and set(ds["channel"]) == {A}
    empty = load_from_disk(str(tmp / "store" / "hf_dataset_disk" / B))
    assert len(empty) == 0 and empty.features == dataset_features()


def test_a_published_builds_leftover_progress_is_not_resumed(tmp_path):
    """A run killed between publishing a build and deleting its progress record leaves both naming
    one build id: a later (forced) build must start afresh, not adopt the published shards (which
    a failure would then discard)."""
    import json as _json

    from neutts_assets.pipeline.dataset.store import progress_key, record_key
    from neutts_assets.pipeline.dataset.writer import _resumable
    from neutts_assets.storage.local import LocalStore

    store = LocalStore(tmp_path / "store")
    progress = {"channel": "ch", "build_id": "b1", "plan_fingerprint": "f", "shard_bytes": 100, "shards": [], "next": 0}
    store.write_bytes(progress_key("ch"), _json.dumps(progress).encode())
    assert _resumable(store, "ch", "f", 100) == progress  # a killed, unpublished build: resumed
    store.write_bytes(record_key("ch"), _json.dumps({"channel": "ch", "build_id": "b1", "shards": []}).encode())
    assert _resumable(store, "ch", "f", 100) is None
