"""End-to-end stage 1 through Dagster: GCS emulator source, moto S3 segment store."""

from __future__ import annotations

import json

import numpy as np
import pytest
from dagster import DagsterInstance

from neutts_assets import read_segment
from neutts_assets.defs.io_managers import manifest_key
from neutts_assets.pipeline.segments.audio import decode_pcm16
from neutts_assets.pipeline.segments.cutting import ms_to_sample
from neutts_assets.pipeline.segments.store import channel_prefix
from neutts_assets_tests.helpers import (
    DEMO_IDS,
    DEMO_TRANSCRIPTS,
    asset_metadata,
    audio_key,
    demo_audio,
    make_resources,
    plain,
    populate_source,
    run_stage1,
    transcript_key,
)

CHANNEL = "Atheer_-"
FOLDER = "Atheer - أثير"  # the users' own mapping example: spaces and Arabic


@pytest.fixture
def setup(gcs_store, gcs_bucket, s3_store, s3_bucket, s3_endpoint):
    populate_source(gcs_store, CHANNEL, FOLDER)
    resources = make_resources(
        f"gs://{gcs_bucket}", f"s3://{s3_bucket}/neutts_segments", s3_endpoint, {CHANNEL: FOLDER}
    )
    instance = DagsterInstance.ephemeral()
    return resources, instance, gcs_store, s3_store


def _versions(store, prefix):
    return {o.key: o.version for o in store.list(prefix)}


def test_demo_channel_is_cut_with_the_seed_schema(setup):
    resources, instance, source, store = setup
    result = run_stage1(instance, resources, CHANNEL)
    meta = asset_metadata(result, "segments_npz")
    assert meta["files_seen"] == len(DEMO_IDS) and meta["files_new"] == len(DEMO_IDS) and meta["files_failed"] == 0

    keys = sorted(o.key for o in store.list(channel_prefix(CHANNEL)) if o.key.endswith(".npz"))
    assert len(keys) == meta["segments_written"] == meta["segments_in_channel"] > 20
    assert all(k.startswith(f"stage1/{CHANNEL}/") and "_seg_" in k for k in keys)

    # The seed's keys, loadable by plain numpy without pickle.
    import io

    with np.load(io.BytesIO(store.read_bytes(f"stage1/{CHANNEL}/sonnet001_seg_1.npz")), allow_pickle=False) as npz:
        for key in (
            "audio",
            "codes",
            "text",
            "speaker_id",
            "channel",
            "gender",
            "dialect",
            "tone",
            "duration_sec",
            "audio_id",
        ):
            assert key in npz.files
        assert str(npz["text"]) == "From fairest creatures we desire increase,"
        assert str(npz["channel"]) == CHANNEL and str(npz["audio_id"]) == "sonnet001_seg_1"
        assert npz["codes"].size == 0
    # austen transcripts leave gender/dialect/tone out: the old defaults apply
    seg = read_segment(store.read_bytes(f"stage1/{CHANNEL}/austen_0870_seg_0.npz"))
    assert (seg.gender, seg.dialect, seg.tone, seg.speaker_id) == ("unknown", "unknown", "neutral", "SPEAKER_01")
    # "1" (the sonnet number, 2.68 s) is kept; the manifest lists every key written
    manifest = json.loads(store.read_bytes(manifest_key("segments_npz", CHANNEL)))
    assert sorted(s["key"] for r in manifest["recordings"] for s in r["segments"]) == keys
    assert meta["bytes_written"] == sum(o.size for o in store.list(channel_prefix(CHANNEL)) if o.key.endswith(".npz"))
    assert meta["audio_hours_processed"] > 0 and meta["decode_realtime_factor"] > 0


def test_segment_samples_equal_the_slice_of_the_decoded_audio(setup, tmp_path):
    resources, instance, source, store = setup
    run_stage1(instance, resources, CHANNEL)
    for rec_id in DEMO_IDS:
        full = decode_pcm16(demo_audio(rec_id))
        segments = json.loads((DEMO_TRANSCRIPTS / f"audio_{rec_id}.json").read_text())
        segments = segments["segments"] if isinstance(segments, dict) else segments
        for i, s in enumerate(segments):
            data = store.read_bytes_or_none(f"stage1/{CHANNEL}/{rec_id}_seg_{i}.npz")
            if data is None:
                continue
            seg = read_segment(data)
            expected = full[ms_to_sample(s["start_ms"], 16000) : ms_to_sample(s["end_ms"], 16000)]
            assert np.array_equal(seg.pcm16, expected), f"{rec_id} segment {i}"
            assert abs(seg.duration_sec - (s["end_ms"] - s["start_ms"]) / 1000) < 1e-3


def test_rerun_downloads_and_writes_nothing(setup):
    resources, instance, source, store = setup
    run_stage1(instance, resources, CHANNEL)
    before = _versions(store, "stage1/")
    meta = asset_metadata(run_stage1(instance, resources, CHANNEL), "segments_npz")
    assert (meta["files_unchanged"], meta["files_new"], meta["files_changed"]) == (len(DEMO_IDS), 0, 0)
    assert meta["bytes_downloaded"] == 0 and meta["segments_written"] == 0
    assert _versions(store, "stage1/") == before


def test_new_audio_in_existing_channel_processes_only_that_file(
    gcs_store, gcs_bucket, s3_store, s3_bucket, s3_endpoint
):
    populate_source(gcs_store, CHANNEL, FOLDER, ids=DEMO_IDS[:-1])
    resources = make_resources(
        f"gs://{gcs_bucket}", f"s3://{s3_bucket}/neutts_segments", s3_endpoint, {CHANNEL: FOLDER}
    )
    instance = DagsterInstance.ephemeral()
    run_stage1(instance, resources, CHANNEL)
    before = _versions(s3_store, "stage1/")
    populate_source(gcs_store, CHANNEL, FOLDER, ids=DEMO_IDS[-1:])
    meta = asset_metadata(run_stage1(instance, resources, CHANNEL), "segments_npz")
    assert (meta["files_new"], meta["files_unchanged"], meta["files_changed"]) == (1, len(DEMO_IDS) - 1, 0)
    assert meta["bytes_downloaded"] == demo_audio(DEMO_IDS[-1]).stat().st_size
    after = _versions(s3_store, "stage1/")
    assert {k: v for k, v in after.items() if k in before} == before  # nothing old rewritten
    assert all(DEMO_IDS[-1] in k for k in set(after) - set(before))


def test_changed_transcript_recuts_that_audio_and_removes_dropped_segments(setup):
    resources, instance, source, store = setup
    run_stage1(instance, resources, CHANNEL)
    before = _versions(store, "stage1/")
    sonnet = json.loads((DEMO_TRANSCRIPTS / "audio_sonnet001.json").read_text())
    n = len(sonnet["segments"])
    sonnet["segments"] = sonnet["segments"][:5]  # a new, shorter segmentation
    sonnet["segments"][2]["text"] = "A corrected line."
    source.write_bytes(transcript_key(CHANNEL, "sonnet001"), json.dumps(sonnet).encode())
    # What a cut killed halfway through a longer transcript version leaves: a segment no index lists.
    stray = f"stage1/{CHANNEL}/sonnet001_seg_{n + 3}.npz"
    store.write_bytes(stray, store.read_bytes(f"stage1/{CHANNEL}/sonnet001_seg_0.npz"))

    meta = asset_metadata(run_stage1(instance, resources, CHANNEL), "segments_npz")
    assert (meta["files_changed"], meta["files_unchanged"]) == (1, len(DEMO_IDS) - 1)
    assert meta["segments_removed"] == n - 5 + 1
    after = _versions(store, "stage1/")
    sonnet_keys = sorted(k for k in after if "/sonnet001_seg_" in k)
    assert sonnet_keys == sorted(f"stage1/{CHANNEL}/sonnet001_seg_{i}.npz" for i in range(5))
    assert read_segment(store.read_bytes(f"stage1/{CHANNEL}/sonnet001_seg_2.npz")).text == "A corrected line."
    # every other recording's objects are untouched
    assert {k: v for k, v in after.items() if "sonnet001" not in k} == {
        k: v for k, v in before.items() if "sonnet001" not in k
    }


def test_new_channel_leaves_other_channels_untouched(setup, gcs_store):
    resources, instance, source, store = setup
    run_stage1(instance, resources, CHANNEL)
    before = _versions(store, "")
    populate_source(gcs_store, "ZadTVchannel", ids=DEMO_IDS[:2])  # no mapping: folder == channel
    meta = asset_metadata(run_stage1(instance, resources, "ZadTVchannel"), "segments_npz")
    assert meta["files_new"] == 2
    after = _versions(store, "")
    assert {k: v for k, v in after.items() if k in before} == before
    assert all("ZadTVchannel" in k for k in set(after) - set(before))


def test_raw_audio_data_version_follows_the_sources(setup):
    from dagster import AssetKey
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._core.loader import LoadingContextForTest

    from neutts_assets.definitions import defs

    resources, instance, source, store = setup
    run_stage1(instance, resources, CHANNEL)

    def data_version():
        rec = instance.get_latest_data_version_record(AssetKey("raw_audio"), partition_key=CHANNEL)
        return rec.asset_materialization.tags["dagster/data_version"]

    def stale():
        # The resolver behind the UI's "stale" badge.
        resolver = CachingStaleStatusResolver(instance, defs.resolve_asset_graph(), LoadingContextForTest(instance))
        return resolver.get_status(AssetKey("segments_npz"), CHANNEL) == StaleStatus.STALE

    v1 = data_version()
    assert not stale()
    source.write_bytes(
        audio_key(FOLDER, "extra.wav"), demo_audio("austen_0870").read_bytes()
    )  # audio without transcript: not paired
    from neutts_assets_tests.helpers import materialize, raw_audio

    materialize([raw_audio], partition_key=CHANNEL, instance=instance, resources=resources)
    assert data_version() == v1  # an unpaired object does not change the inventory's pairs
    source.write_bytes(transcript_key(CHANNEL, "sonnet001"), b'{"segments": []}')
    materialize([raw_audio], partition_key=CHANNEL, instance=instance, resources=resources)
    assert data_version() != v1
    assert stale()


def test_segments_data_version_changes_with_the_channels_segments(setup):
    from dagster import AssetKey

    resources, instance, source, store = setup

    def data_version():
        rec = instance.get_latest_data_version_record(AssetKey("segments_npz"), partition_key=CHANNEL)
        return rec.asset_materialization.tags["dagster/data_version"]

    run_stage1(instance, resources, CHANNEL)
    v1 = data_version()
    run_stage1(instance, resources, CHANNEL)
    assert data_version() == v1  # nothing changed, nothing for encoded_segments to redo
    sonnet = json.loads((DEMO_TRANSCRIPTS / "audio_sonnet001.json").read_text())
    sonnet["segments"] = sonnet["segments"][:3]
    source.write_bytes(transcript_key(CHANNEL, "sonnet001"), json.dumps(sonnet).encode())
    run_stage1(instance, resources, CHANNEL)
    assert data_version() != v1


def test_local_source_may_keep_audio_behind_a_symlink(tmp_path):
    """Owners keep big audio on another disk and link it in; keys still cannot climb out."""
    from neutts_assets.storage.local import LocalStore

    elsewhere = tmp_path / "big_disk"
    populate_source(LocalStore(elsewhere), CHANNEL, FOLDER, ids=DEMO_IDS[:2])
    source = tmp_path / "source"
    (source / "processed_runs").mkdir(parents=True)
    (source / "processed_runs" / f"processed_{CHANNEL}").symlink_to(
        elsewhere / "processed_runs" / f"processed_{CHANNEL}"
    )
    (source / FOLDER).symlink_to(elsewhere / FOLDER)
    resources = make_resources(str(source), str(tmp_path / "store"), mapping={CHANNEL: FOLDER})
    meta = asset_metadata(run_stage1(DagsterInstance.ephemeral(), resources, CHANNEL), "segments_npz")
    assert meta["files_new"] == 2 and meta["files_failed"] == 0 and meta["segments_written"] > 0


def test_asset_check_finds_missing_segments_and_a_rerun_repairs_them(setup):
    from dagster import AssetSelection, Definitions, define_asset_job

    from neutts_assets.defs.inventory.checks import every_object_paired
    from neutts_assets.defs.segments.checks import segments_present_in_store
    from neutts_assets.defs.segments.segments_npz import segments_npz
    from neutts_assets_tests.helpers import raw_audio

    resources, instance, source, store = setup
    run_stage1(instance, resources, CHANNEL)
    defs = Definitions(
        assets=[raw_audio, segments_npz],
        asset_checks=[every_object_paired, segments_present_in_store],
        resources=resources,
        jobs=[
            define_asset_job("check_only", selection=AssetSelection.checks(segments_present_in_store)),
            define_asset_job("pairing", selection=AssetSelection.checks(every_object_paired)),
        ],
    )

    def check(job="check_only"):
        result = defs.resolve_job_def(job).execute_in_process(instance=instance, tags={"dagster/partition": CHANNEL})
        (evaluation,) = result.get_asset_check_evaluations()
        return evaluation

    assert check("pairing").passed

    ok = check()
    assert ok.passed and ok.metadata["segments_found"].value == ok.metadata["segments_expected"].value > 0
    # An object lost behind the pipeline's back: the check fails and names it...
    store.delete(f"stage1/{CHANNEL}/sonnet001_seg_3.npz")
    bad = check()
    assert not bad.passed and any("sonnet001_seg_3.npz" in r["key"] for r in plain(bad.metadata["missing"]))
    # ...and the next run cuts that recording again, and only that one.
    meta = asset_metadata(run_stage1(instance, resources, CHANNEL), "segments_npz")
    assert (meta["files_changed"], meta["files_unchanged"]) == (1, len(DEMO_IDS) - 1)
    # Its other segment files are already there byte for byte: kept, not written again.
    assert (meta["segments_written"], meta["segments_already_written"]) == (1, 14)
    assert check().passed

    # An audio object with no transcript: the pairing check warns once raw_audio sees it.
    source.write_bytes(audio_key(FOLDER, "orphan.wav"), demo_audio("austen_0870").read_bytes())
    run_stage1(instance, resources, CHANNEL)
    pairing = check("pairing")
    assert (
        not pairing.passed
        and pairing.severity.value == "WARN"
        and pairing.metadata["unpaired_audio_without_transcript"].value == 1
    )


def test_environment_configuration_and_no_secret_in_events(
    gcs_store, gcs_bucket, s3_store, s3_bucket, s3_endpoint, monkeypatch
):
    """The production wiring (resources_from_env, EnvVar credentials) against the servers; the
    secret key appears nowhere in the run's events or metadata."""
    from neutts_assets.defs.io_managers import ManifestIOManager
    from neutts_assets.defs.resources import resources_from_env
    from neutts_assets_tests.helpers import S3_ACCESS, S3_SECRET

    populate_source(gcs_store, CHANNEL, FOLDER, ids=DEMO_IDS[:2])
    for key, value in {
        "NEUTTS_SOURCE": f"gs://{gcs_bucket}",
        "NEUTTS_STORE": f"s3://{s3_bucket}/neutts_segments",
        "NEUTTS_CHANNEL_MAPPING": json.dumps({CHANNEL: FOLDER}),
        "S3_ENDPOINT_URL": s3_endpoint,
        "S3_ACCESS_KEY": S3_ACCESS,
        "S3_SECRET_KEY": S3_SECRET,
        "S3_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    resources = resources_from_env()
    assert S3_SECRET not in repr(resources["store"])  # an EnvVar reference, not the value
    resources["manifest_io_manager"] = ManifestIOManager(store=resources["store"])
    instance = DagsterInstance.ephemeral()
    result = run_stage1(instance, resources, CHANNEL)
    assert asset_metadata(result, "segments_npz")["files_new"] == 2
    assert len(list(s3_store.list(f"stage1/{CHANNEL}/"))) > 2
    events = instance.all_logs(result.run_id)
    assert events and not [e for e in events if S3_SECRET in str(e) or S3_ACCESS in str(e)]


def test_audio_replaced_after_the_inventory_is_not_cut_under_the_old_version(setup, tmp_path):
    """The cut is pinned to the generation raw_audio listed: audio replaced in between fails only
    that recording (naming it, and what to rematerialize), publishes nothing for it, and the next
    raw_audio + segments_npz run cuts the new bytes."""
    from dagster import materialize

    from neutts_assets.defs.inventory.raw_audio import raw_audio
    from neutts_assets.defs.segments.segments_npz import segments_npz

    resources, instance, source, store = setup
    instance.add_dynamic_partitions("channels", [CHANNEL])
    materialize([raw_audio], partition_key=CHANNEL, instance=instance, resources=resources)
    rec = DEMO_IDS[0]
    src = demo_audio(rec)
    # New bytes under the same name: the same speech, a shorter recording.
    from neutts_assets_tests.helpers import convert

    shorter = convert(src, tmp_path / f"short{src.suffix}", "-t", "3")
    source.write_bytes(audio_key(FOLDER, src.name), shorter.read_bytes())

    result = materialize(
        [raw_audio, segments_npz],
        selection="segments_npz",
        partition_key=CHANNEL,
        instance=instance,
        resources=resources,
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = str(failure.event_specific_data.error)
    assert src.name in message and "changed since it was listed" in message and "raw_audio" in message
    assert not [
        o for o in store.list(f"stage1/{CHANNEL}/") if f"/{rec}_seg_" in o.key or o.key.endswith(f"/{rec}.json")
    ]
    assert [o for o in store.list(f"stage1/{CHANNEL}/") if f"/{DEMO_IDS[1]}_seg_" in o.key]  # the others were cut

    meta = asset_metadata(run_stage1(instance, resources, CHANNEL), "segments_npz")
    assert meta["files_failed"] == 0 and meta["files_new"] == 1
    cut = [read_segment(store.read_bytes(o.key)) for o in store.list(f"stage1/{CHANNEL}/") if f"/{rec}_seg_" in o.key]
    # The segments come from the new, 3-second bytes: none reaches past 3 s of audio.
    assert cut and all(s.start_ms < 3000 and len(s.pcm16) <= (3000 - s.start_ms) * 16 + 1 for s in cut)
