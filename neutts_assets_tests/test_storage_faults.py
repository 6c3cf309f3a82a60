"""The four stages through a fault-injecting proxy (fault_proxy.py): source on the GCS emulator,
store on the S3 server, each behind a proxy that answers 5xx, throttles, resets connections
mid-body and delays responses past the clients' read timeout. The clients' own retries must carry
every stage to the output of a run without faults; a fault that never passes must fail the run,
naming the object, with nothing of it published."""

from __future__ import annotations

import io
import os
import time
import uuid

import numpy as np
import pyarrow.parquet as pq
import pytest
from dagster import AssetSelection, DagsterInstance, materialize

from neutts_assets.defs.encoding.codec import NeuCodecResource
from neutts_assets.defs.encoding.encoded_segments import encoded_segments
from neutts_assets.defs.inventory.raw_audio import raw_audio
from neutts_assets.defs.io_managers import ManifestIOManager, manifest_key
from neutts_assets.defs.resources import (
    ChannelSettings,
    DatasetSplit,
    HuggingFaceHub,
    QualityScoring,
    SegmentStore,
    SourceBucket,
)
from neutts_assets.defs.segments.segments_npz import segments_npz
from neutts_assets.pipeline.dataset.store import CARD_KEY, DATASET_PREFIX, record_key
from neutts_assets.pipeline.dataset.writer import read_record
from neutts_assets.pipeline.encoding.store import Stage2Layout
from neutts_assets.pipeline.segments.segment_file import read_segment
from neutts_assets.pipeline.segments.store import index_key, segment_key
from neutts_assets.storage.gcs import GCSStore
from neutts_assets.storage.s3 import S3Store
from neutts_assets_tests.fault_proxy import FAULTS, FaultProxy
from neutts_assets_tests.helpers import (
    DEMO_IDS,
    S3_ACCESS,
    S3_SECRET,
    asset_metadata,
    encode_stage2,
    populate_source,
    run_dataset,
    run_stage1,
)

CHANNEL, FOLDER = "Faults_ch", "Faults - أثير"
IDS = DEMO_IDS[:3]
STAGES = ("raw_audio", "segments_npz", "encoded_segments", "hf_dataset")
PREFIX = "neutts_segments"
# Short timeouts and backoff, so that the delayed responses time out and the retries are quick; many
# attempts, since about four requests in ten fail.
READ_TIMEOUT_S, DELAY_S = 1.0, 1.8
UNDER_FAULTS = dict(
    max_attempts=25,
    connect_timeout_s=2.0,
    read_timeout_s=READ_TIMEOUT_S,
    retry_deadline_s=300.0,
    initial_backoff_s=0.05,
    max_backoff_s=1.0,
)
FAIL_FAST = dict(max_attempts=3, connect_timeout_s=2.0, read_timeout_s=5.0, initial_backoff_s=0.05, max_backoff_s=0.2)


def _codec() -> NeuCodecResource:
    return NeuCodecResource(weights="random", device="cpu", batch_seconds=8.0)


def _resources(gcs_bucket: str, s3_bucket: str, s3_url: str, **client) -> dict:
    store = SegmentStore(
        url=f"s3://{s3_bucket}/{PREFIX}",
        endpoint_url=s3_url,
        access_key=S3_ACCESS,
        secret_key=S3_SECRET,
        region="us-east-1",
        **client,
    )
    return {
        "source": SourceBucket(url=f"gs://{gcs_bucket}", **client),
        "store": store,
        "channel_settings": ChannelSettings(channel_mapping={CHANNEL: FOLDER}),
        "manifest_io_manager": ManifestIOManager(store=store),
        "hub": HuggingFaceHub(),
        "dataset_split": DatasetSplit(validation_fraction=0.0),
        "quality": QualityScoring(device="cpu"),
        "codec": _codec(),
    }


def _run_encode(instance, resources: dict, raise_on_error: bool = True):
    return materialize(
        [raw_audio, segments_npz, encoded_segments],
        selection=AssetSelection.assets(encoded_segments),
        partition_key=CHANNEL,
        instance=instance,
        resources=resources,
        raise_on_error=raise_on_error,
    )


def _run_all(resources: dict) -> dict:
    """The four stages in order, as four runs; each stage's materialization metadata."""
    instance = DagsterInstance.ephemeral()
    stage1 = run_stage1(instance, resources, CHANNEL)
    encode = _run_encode(instance, resources)
    dataset = run_dataset(instance, resources, CHANNEL)
    return {
        "raw_audio": asset_metadata(stage1, "raw_audio"),
        "segments_npz": asset_metadata(stage1, "segments_npz"),
        "encoded_segments": asset_metadata(encode, "encoded_segments"),
        "hf_dataset": asset_metadata(dataset, "hf_dataset"),
    }


def _direct_store(s3_client, bucket: str) -> S3Store:
    return S3Store(s3_client, bucket, PREFIX)


def _snapshot(store: S3Store) -> dict:
    """What the pipeline left in the store, in a form two runs can be compared by: segment keys,
    every field of every segment file (its audio and codes as bytes), the dataset's rows."""

    def fields(data: bytes) -> dict:
        seg = read_segment(data)
        return {k: (v.tobytes() if isinstance(v, np.ndarray) else v) for k, v in vars(seg).items()}

    layout = Stage2Layout(CHANNEL)
    keys = sorted(o.key for o in store.list(""))
    record = read_record(store, CHANNEL)
    rows = []
    for shard in record["shards"]:
        table = pq.read_table(io.BytesIO(store.read_bytes(DATASET_PREFIX + shard["path"])))
        rows += table.drop_columns(["build_id"]).to_pylist()  # each run's own build id; every other column equal
    return {
        "stage1": {
            k: fields(store.read_bytes(k)) for k in keys if k.startswith(f"stage1/{CHANNEL}/") and k.endswith(".npz")
        },
        "stage1_indexes": [k for k in keys if k.startswith(f"stage1/{CHANNEL}/") and k.endswith(".json")],
        "stage2": {
            k: fields(store.read_bytes(k)) for k in keys if k.startswith(layout.channel_prefix) and k.endswith(".npz")
        },
        # marker names carry the source's S3 ETag, which differs between runs (zip timestamps)
        "stage2_markers": sum(k.startswith(layout.marker_prefix) for k in keys),
        "manifests": [k for k in keys if k.startswith("manifests/")],
        "rows": sorted(rows, key=lambda r: r["audio_id"]),
        "shards": len(record["shards"]),
        "card": CARD_KEY in keys,
    }


@pytest.fixture(scope="module")
def source_bucket(gcs_endpoint):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    name = f"src-{uuid.uuid4().hex[:12]}"
    client = storage.Client(project="test", credentials=AnonymousCredentials())
    client.create_bucket(name)
    populate_source(GCSStore(client, name), CHANNEL, FOLDER, ids=IDS)
    return name


@pytest.fixture
def emulator_through(gcs_endpoint, monkeypatch):
    """Points the GCS clients the pipeline makes at `url` (a proxy) for the test."""
    return lambda url: monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)


def _new_bucket(s3_client) -> str:
    name = f"seg-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


def test_every_stage_completes_under_storage_faults_with_the_output_of_a_clean_run(
    source_bucket, gcs_endpoint, s3_endpoint, s3_client, emulator_through
):
    clean_bucket, faulty_bucket = _new_bucket(s3_client), _new_bucket(s3_client)
    started = time.perf_counter()
    clean_meta = _run_all(_resources(source_bucket, clean_bucket, s3_endpoint))
    clean_seconds = time.perf_counter() - started
    clean = _snapshot(_direct_store(s3_client, clean_bucket))
    assert clean["stage1"] and len(clean["stage2"]) == len(clean["stage1"]) == len(clean["rows"]) > 0
    assert all(m["storage_retries"] == 0 for m in clean_meta.values()), clean_meta

    with FaultProxy(gcs_endpoint, "gcs", delay_s=DELAY_S) as gcs, FaultProxy(s3_endpoint, "s3", delay_s=DELAY_S) as s3:
        emulator_through(gcs.url)
        gcs.enabled = s3.enabled = True
        started = time.perf_counter()
        meta = _run_all(_resources(source_bucket, faulty_bucket, s3.url, **UNDER_FAULTS))
        faulty_seconds = time.perf_counter() - started
        gcs.enabled = s3.enabled = False
    print(f"clean run {clean_seconds:.1f} s, under faults {faulty_seconds:.1f} s")
    for proxy in (gcs, s3):
        print(proxy.flavor, dict(proxy.counts), {f: round(proxy.share(f), 3) for f in FAULTS})
    for stage in STAGES:
        print(stage, meta[stage]["storage_retries"], meta[stage]["storage_retries_by_reason"])

    # Each fault hit at least a tenth of each proxy's requests.
    for proxy in (gcs, s3):
        for fault in FAULTS:
            assert proxy.share(fault) >= 0.10, (proxy.flavor, fault, dict(proxy.counts))
    assert (
        s3.counts["error_5xx_after_forward"] > 0
        and s3.counts["reset_mid_body"] > 0
        and gcs.counts["reset_mid_body"] > 0
    )

    # Every stage retried, and says so in its metadata; nothing was given up on.
    for stage in STAGES:
        assert meta[stage]["storage_retries"] > 0, stage
        assert meta[stage]["storage_retries_by_reason"], stage  # a table with rows, not an empty one
    assert any(r["store"] == "source" for r in meta["raw_audio"]["storage_retries_by_reason"])
    assert meta["segments_npz"]["files_failed"] == 0 and meta["encoded_segments"]["segments_failed"] == 0
    assert meta["hf_dataset"]["segments_failed"] == 0
    for key in ("recordings", "segments_in_channel"):
        stage = "raw_audio" if key == "recordings" else "segments_npz"
        assert meta[stage][key] == clean_meta[stage][key], key
    assert meta["encoded_segments"]["segments_encoded"] == clean_meta["encoded_segments"]["segments_encoded"]
    assert meta["hf_dataset"]["rows"] == clean_meta["hf_dataset"]["rows"]

    # The same keys, the same audio, codes and rows as the run without faults.
    faulty = _snapshot(_direct_store(s3_client, faulty_bucket))
    assert faulty.keys() == clean.keys()
    for part in clean:
        assert faulty[part] == clean[part], part


def _failure_text(result) -> str:
    texts = []
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            data = event.step_failure_data
            texts.append(data.error.to_string() if data.error else "")
            if data.user_failure_data is not None:
                texts.append(data.user_failure_data.description or "")
    return "\n".join(texts)


def test_a_segment_write_that_always_fails_fails_stage1_naming_it_and_publishes_nothing_of_it(
    source_bucket, gcs_endpoint, s3_endpoint, s3_client, emulator_through
):
    bucket, rec = _new_bucket(s3_client), IDS[1]
    doomed = segment_key(CHANNEL, f"{rec}_seg_1")
    store = _direct_store(s3_client, bucket)
    with FaultProxy(s3_endpoint, "s3") as s3:
        s3.fail_forever = lambda method, path: method == "PUT" and path.split("?")[0].endswith("/" + doomed)
        resources = _resources(source_bucket, bucket, s3.url, **FAIL_FAST)
        instance = DagsterInstance.ephemeral()
        result = run_stage1(instance, resources, CHANNEL, raise_on_error=False)
        assert not result.success
        text = _failure_text(result)
        assert doomed in text and "ServiceUnavailable" in text, text
        assert s3.counts["permanent"] == FAIL_FAST["max_attempts"]  # the client's attempts, then no more
        assert not store.exists(doomed)
        assert not store.exists(index_key(CHANNEL, rec))  # the recording's index publishes last: not written
        assert not store.exists(manifest_key("segments_npz", CHANNEL))  # nor the channel's manifest
        for other in set(IDS) - {rec}:  # the rest of the channel went on
            assert store.exists(index_key(CHANNEL, other))

        s3.fail_forever = None  # the fault passes: the rerun cuts only the failed recording
        result = run_stage1(instance, resources, CHANNEL)
        meta = asset_metadata(result, "segments_npz")
        assert meta["files_new"] == 1 and meta["files_unchanged"] == len(IDS) - 1 and meta["files_failed"] == 0
        assert store.exists(doomed) and store.exists(manifest_key("segments_npz", CHANNEL))


def test_a_source_that_always_fails_fails_raw_audio_naming_the_listing(
    source_bucket, gcs_endpoint, s3_endpoint, s3_client, emulator_through
):
    bucket = _new_bucket(s3_client)
    with FaultProxy(gcs_endpoint, "gcs") as gcs:
        gcs.fail_forever, gcs.permanent_status = (lambda method, path: True), 500
        emulator_through(gcs.url)
        result = run_stage1(
            DagsterInstance.ephemeral(),
            _resources(source_bucket, bucket, s3_endpoint, **FAIL_FAST),
            CHANNEL,
            raise_on_error=False,
        )
    assert not result.success
    text = _failure_text(result)
    listing = ChannelSettings(channel_mapping={CHANNEL: FOLDER}).layout(CHANNEL).transcripts_prefix
    assert f"cannot list {listing!r} in gs://{source_bucket}/: 500" in text, text
    # the listing was tried max_attempts times (the library also fetches bucket metadata in the background)
    assert sum("/o?" in path for _, path, _ in gcs.log) == FAIL_FAST["max_attempts"], "\n".join(map(str, gcs.log))
    assert list(_direct_store(s3_client, bucket).list("")) == []  # nothing written at all


def test_an_encoded_segment_write_that_always_fails_fails_the_run_and_publishes_no_manifest(
    source_bucket, gcs_endpoint, s3_endpoint, s3_client, emulator_through
):
    bucket = _new_bucket(s3_client)
    store = _direct_store(s3_client, bucket)
    layout = Stage2Layout(CHANNEL)
    with FaultProxy(s3_endpoint, "s3") as s3:
        resources = _resources(source_bucket, bucket, s3.url, **FAIL_FAST)
        instance = DagsterInstance.ephemeral()
        run_stage1(instance, resources, CHANNEL)
        doomed = layout.segment_key(f"{IDS[0]}_seg_0")
        s3.fail_forever = lambda method, path: method == "PUT" and path.split("?")[0].endswith("/" + doomed)
        result = _run_encode(instance, resources, raise_on_error=False)
    assert not result.success
    text = _failure_text(result)
    assert doomed in text and "ServiceUnavailable" in text, text
    assert not store.exists(doomed) and not store.exists(manifest_key("encoded_segments", CHANNEL))
    written = [o.key for o in store.list(layout.channel_prefix) if o.key.endswith(".npz")]
    markers = list(store.list(layout.marker_prefix))
    assert written and len(markers) == len(written)  # the other segments are finished, each with its marker


def test_a_segment_read_that_always_fails_fails_the_dataset_and_publishes_no_build(
    source_bucket, gcs_endpoint, s3_endpoint, s3_client, emulator_through
):
    bucket = _new_bucket(s3_client)
    store = _direct_store(s3_client, bucket)
    instance = DagsterInstance.ephemeral()
    run_stage1(instance, _resources(source_bucket, bucket, s3_endpoint), CHANNEL)
    stage2 = encode_stage2(store, CHANNEL)  # stand-in codes: this test is about the store, not the codec
    # encode_stage2 writes no encoded_segments manifest: hf_dataset then reads the stage-2 files it lists
    doomed = stage2[len(stage2) // 2]
    with FaultProxy(s3_endpoint, "s3") as s3:
        s3.fail_forever = lambda method, path: method == "GET" and path.split("?")[0].endswith("/" + doomed)
        result = run_dataset(
            instance, _resources(source_bucket, bucket, s3.url, **FAIL_FAST), CHANNEL, raise_on_error=False
        )
    assert not result.success
    text = _failure_text(result)
    assert doomed in text, text
    assert not store.exists(record_key(CHANNEL)) and not store.exists(CARD_KEY)
    assert not store.exists(manifest_key("hf_dataset", CHANNEL))
    assert list(store.list(DATASET_PREFIX)) == []  # the build's shards are removed too


def test_retry_settings_come_from_the_environment(monkeypatch):
    from neutts_assets.defs.resources import resources_from_env

    for name, value in {
        "NEUTTS_STORAGE_MAX_ATTEMPTS": "4",
        "NEUTTS_STORAGE_READ_TIMEOUT_S": "7.5",
        "NEUTTS_STORAGE_CONNECT_TIMEOUT_S": "3",
        "NEUTTS_STORAGE_RETRY_DEADLINE_S": "90",
    }.items():
        monkeypatch.setenv(name, value)
    resources = resources_from_env()
    for name in ("source", "store"):
        settings = resources[name].retry_settings()
        assert (settings.max_attempts, settings.read_timeout_s, settings.connect_timeout_s, settings.deadline_s) == (
            4,
            7.5,
            3.0,
            90.0,
        )
    monkeypatch.delenv("NEUTTS_STORAGE_MAX_ATTEMPTS")
    assert resources_from_env()["store"].retry_settings().max_attempts == 10  # the default


def test_a_gcs_segment_store_writes_reads_and_deletes_through_faults(gcs_endpoint, emulator_through):
    """The segment store may be GCS too: uploads retry only because the store passes retry= (the
    library does not retry them by default); the same key gets the same bytes, so a repeat is safe."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    name = f"seg-{uuid.uuid4().hex[:12]}"
    storage.Client(project="test", credentials=AnonymousCredentials()).create_bucket(name)
    blobs = {f"stage1/ch/{i}.npz": os.urandom(50_000 + i) for i in range(12)}
    with FaultProxy(gcs_endpoint, "gcs", delay_s=DELAY_S) as gcs:
        emulator_through(gcs.url)
        store = SegmentStore(url=f"gs://{name}/{PREFIX}", **UNDER_FAULTS).open()
        gcs.enabled = True
        for key, data in blobs.items():
            store.write_bytes(key, data)
        assert {o.key: o.size for o in store.list("stage1/")} == {k: len(v) for k, v in blobs.items()}
        for key, data in blobs.items():
            assert store.read_bytes(key) == data
        for key in sorted(blobs)[:6]:
            store.delete(key)
        assert sorted(o.key for o in store.list("stage1/")) == sorted(blobs)[6:]
    retries = store.retries
    print(dict(gcs.counts), retries)
    assert sum(n for what, n in retries.items() if what.startswith("upload:")) > 0, retries
    assert all(gcs.share(f) >= 0.10 for f in FAULTS) and gcs.counts["error_5xx_after_forward"] + gcs.counts["reset"] > 0


def test_a_reset_inside_an_s3_error_response_is_retried(s3_endpoint, s3_client):
    """botocore reads a GetObject error response's body (here a 404) outside its retry loop, and a
    reset there escapes as urllib3's ProtocolError; the store retries it, and the missing object
    still reads as missing."""
    bucket = _new_bucket(s3_client)
    with FaultProxy(s3_endpoint, "s3", faults=("reset",), seed=0) as s3:
        store = SegmentStore(
            url=f"s3://{bucket}/{PREFIX}",
            endpoint_url=s3.url,
            access_key=S3_ACCESS,
            secret_key=S3_SECRET,
            region="us-east-1",
            **UNDER_FAULTS,
        ).open()
        s3.enabled = True  # the first request is reset: the floor serves it first
        assert store.read_bytes_or_none("stage1/ch/missing.npz") is None
    assert s3.counts["reset_mid_body"] >= 1
    assert store.retries.get("GetObject body: ProtocolError", 0) >= 1, store.retries
