"""Each stage's output is a typed manifest whose `to_dict` is exactly the JSON document the IO
manager stores (what earlier runs stored and the users' tooling may read), and whose `from_dict`
reads that document back; downstream assets get the typed value."""

from __future__ import annotations

import json

from dagster import DagsterInstance

from neutts_assets.demo import DEMO_CHANNEL, DEMO_CHANNEL_MAPPING, DEMO_SOURCE
from neutts_assets.pipeline.dataset.manifest import DatasetManifest, HubCommit
from neutts_assets.pipeline.encoding.manifest import EncodedManifest, encoded_manifest
from neutts_assets.pipeline.encoding.store import Stage2Layout
from neutts_assets.pipeline.inventory.manifest import Inventory
from neutts_assets.pipeline.pairs.manifest import PairsManifest
from neutts_assets.pipeline.segments.manifest import SegmentsManifest
from neutts_assets_tests.helpers import make_resources, run_stage1


def _stored(store_root, asset: str, channel: str) -> dict:
    return json.loads((store_root / "manifests" / asset / f"{channel}.json").read_text())


def test_stage1_manifests_are_typed_and_stored_as_before(tmp_path):
    resources = make_resources(str(DEMO_SOURCE), str(tmp_path / "store"), mapping=DEMO_CHANNEL_MAPPING)
    result = run_stage1(DagsterInstance.ephemeral(), resources, DEMO_CHANNEL)

    inventory, segments = result.output_for_node("raw_audio"), result.output_for_node("segments_npz")
    assert isinstance(inventory, Inventory) and isinstance(segments, SegmentsManifest)
    doc = _stored(tmp_path / "store", "segments_npz", DEMO_CHANNEL)
    assert SegmentsManifest.from_dict(doc).to_dict() == doc == segments.to_dict()
    assert Inventory.from_dict(_stored(tmp_path / "store", "raw_audio", DEMO_CHANNEL)) == inventory
    # the old document's keys, each segment with the fields stage 2 and the users' tools read
    assert set(doc) == {"channel", "format_version", "recordings", "segment_count", "segment_seconds"}
    assert set(doc["recordings"][0]["segments"][0]) == {"key", "audio_id", "duration_sec", "bytes", "speaker_id"}
    assert doc["segment_count"] == len(segments.segments) > 0
    # the data version is the stored document's content hash, so an unchanged channel stays fresh
    (mat,) = [m for m in result.asset_materializations_for_node("segments_npz")]
    assert result.get_asset_materialization_events()  # the run materialized
    assert segments.version() == SegmentsManifest.from_dict(doc).version()
    assert mat.tags.get("dagster/data_version") == segments.version()

    encoded = encoded_manifest(
        segments,
        Stage2Layout(DEMO_CHANNEL),
        "codec@x",
        True,
        {s.audio_id for s in segments.segments[1:]},
        [(segments.segments[0].audio_id, "too short")],
        [],
    )
    d = encoded.to_dict()
    assert EncodedManifest.from_dict(json.loads(json.dumps(d))).to_dict() == d
    assert d["segment_count"] == len(segments.segments) - 1 and d["skipped"][0]["reason"] == "too short"
    assert d["code_count"] == sum(s["n_codes"] for r in d["recordings"] for s in r["segments"]) > 0


def test_an_older_encoded_document_reads_with_defaults():
    old = {"channel": "c", "codec": "x", "recordings": [{"segments": [{"key": "p/c/r_seg_0.npz"}]}]}
    m = EncodedManifest.from_dict(old)
    assert m.segments[0].audio_id == "r_seg_0" and m.layout.channel_prefix == "stage2_with_codes/c/"


def test_dataset_and_pairs_manifests_round_trip():
    record = {
        "build_id": "b1",
        "stats": {"rows": 3},
        "source": "s",
        "shards": [{"path": "data/c/b1-0.parquet", "rows": 3, "bytes": 10, "members": []}],
    }
    d = DatasetManifest.of("c", record, HubCommit("org/repo", "abc")).to_dict()
    assert d["shards"] == [{"path": "data/c/b1-0.parquet", "rows": 3, "bytes": 10}]
    assert d["hub"] == {"repo_id": "org/repo", "commit": "abc"} and d["card"] == "hf_dataset/README.md"
    assert DatasetManifest.from_dict(d).to_dict() == d
    pairs = PairsManifest.of("c", {"build_id": "p", "dataset_build_id": "b1", "folder": "f", "counts": {"pairs": 6}})
    assert PairsManifest.from_dict(pairs.to_dict()) == pairs and pairs.record == "training_pairs_builds/c.json"
