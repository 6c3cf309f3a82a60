"""segment_quality and what hf_dataset makes of it, end to end on local stores: every row's
scores, split and lineage; incremental scoring; the quality filters and the card's distributions;
speaker-disjoint splits that load by name; and a row traced back to its source bytes and re-cut."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
import soundfile as sf
from dagster import AssetSelection, DagsterInstance, materialize
from datasets import Audio, load_dataset, load_from_disk

from neutts_assets.cli import main as cli_main
from neutts_assets.defs.inventory.raw_audio import raw_audio
from neutts_assets.defs.quality import segment_quality as quality_module
from neutts_assets.defs.quality.segment_quality import segment_quality
from neutts_assets.defs.resources import DatasetSplit, QualityScoring
from neutts_assets.defs.segments.segments_npz import segments_npz
from neutts_assets.pipeline.dataset.explain import explain
from neutts_assets.pipeline.dataset.writer import read_record
from neutts_assets.pipeline.quality import scores as scores_module
from neutts_assets.pipeline.quality.scores import SCORE_NAMES
from neutts_assets.pipeline.quality.scoring import read_documents
from neutts_assets.pipeline.segments.audio import decode_pcm16
from neutts_assets.pipeline.segments.cutting import ms_to_sample
from neutts_assets.storage.local import LocalStore
from neutts_assets_tests.helpers import (
    asset_metadata,
    encode_stage2,
    make_resources,
    populate_source,
    run_dataset,
    run_pairs,
    run_partition,
    transcript_key,
)

CH = "quality_ch"
IDS = ["austen_0870", "austen_0880", "austen_0890", "sonnet001"]


@pytest.fixture
def env(tmp_path):
    # The source as SourceBucket opens it (versions with file identity), so listed versions are the rows'.
    source, store = LocalStore(tmp_path / "source", file_identity=True), LocalStore(tmp_path / "store")
    populate_source(source, CH, ids=IDS)
    resources = make_resources(str(tmp_path / "source"), str(tmp_path / "store"))
    return resources, DagsterInstance.ephemeral(), source, store, tmp_path


def _score(instance, resources, config=None):
    return run_partition([raw_audio, segments_npz, segment_quality], "segment_quality", instance, resources, CH, config)


def _score_only(instance, resources):
    """segment_quality alone, on the stored segments_npz manifest (stage 1 not run again)."""
    return materialize(
        [raw_audio, segments_npz, segment_quality],
        selection=AssetSelection.assets(segment_quality),
        partition_key=CH,
        instance=instance,
        resources=resources,
    )


def _build(env, config=None):
    resources, instance, source, store, tmp = env
    encode_stage2(store, CH)
    return run_dataset(instance, resources, CH, config)


def _rows(tmp, split="train", cache="c"):
    return load_dataset(str(tmp / "store" / "hf_dataset"), CH, split=split, cache_dir=str(tmp / cache))


def test_every_row_carries_its_scores_split_and_lineage(env):
    resources, instance, source, store, tmp = env
    meta = asset_metadata(_score(instance, resources), "segment_quality")
    segments = meta["segments"]
    assert meta["segments_scored_now"] == segments > 10 and meta["segments_failed"] == 0
    assert {r["score"] for r in meta["cpu_seconds_by_score"]} >= {"vad_snr", "loudness", "clipping"}
    meta = asset_metadata(_build(env), "hf_dataset")
    assert meta["rows"] == segments and meta["rows_without_quality_scores"] == 0
    quality = {r["score"]: r for r in meta["quality"]}
    assert quality["speech_ratio"]["scored"] == segments and 0 < quality["speech_ratio"]["median"] <= 1

    inventory = {json.loads(source.read_bytes(transcript_key(CH, i))) and i: i for i in IDS}
    listed = {o.key: o for o in source.list("")}
    record = read_record(store, CH)
    for row in _rows(tmp):
        assert row["split"] == "train"
        for name in SCORE_NAMES:
            assert name == "snr_db" or row[name] is not None, (row["audio_id"], name)
        assert row["dnsmos_ovrl"] is None  # off unless configured
        recording = row["audio_id"].rsplit("_seg_", 1)[0]
        assert recording in inventory
        assert row["source_audio"] in listed and row["source_audio_version"] == listed[row["source_audio"]].version
        assert row["transcript"] == transcript_key(CH, recording)
        assert row["transcript_sha256"] == hashlib.sha256(source.read_bytes(row["transcript"])).hexdigest()
        assert row["end_ms"] > row["start_ms"] >= 0 and row["cut_rules"].endswith("/format-2")
        assert row["codec"] and row["build_id"] == record["build_id"]


def test_a_row_traces_back_to_its_source_bytes_and_recuts_to_the_same_samples(env, capsys, monkeypatch):
    resources, instance, source, store, tmp = env
    _score(instance, resources)
    _build(env)
    row = next(r for r in _rows(tmp) if r["audio_id"] == "sonnet001_seg_2")
    # the row's lineage, through the same lookup the command line uses
    doc = explain(store, f"{CH}/sonnet001_seg_2")
    assert {k: doc[k] for k in ("source_audio", "transcript_sha256", "start_ms", "end_ms", "split")} == {
        k: row[k] for k in ("source_audio", "transcript_sha256", "start_ms", "end_ms", "split")
    }
    monkeypatch.setenv("NEUTTS_STORE", str(tmp / "store"))
    assert cli_main(["explain", f"{CH}/sonnet001_seg_2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["source_audio"] == row["source_audio"]
    assert cli_main(["explain", f"{CH}/no_such_seg_1"]) == 1

    # The exact source bytes (the version listed now is the one the row names), the transcript segment
    # with those times, and the cut done again from them.
    (obj,) = [o for o in source.list(row["source_audio"]) if o.key == row["source_audio"]]
    assert obj.version == row["source_audio_version"]
    transcript = source.read_bytes(row["transcript"])
    assert hashlib.sha256(transcript).hexdigest() == row["transcript_sha256"]
    segments = json.loads(transcript)
    segments = segments["segments"] if isinstance(segments, dict) else segments
    (seg,) = [s for s in segments if (s["start_ms"], s["end_ms"]) == (row["start_ms"], row["end_ms"])]
    assert seg["text"].strip() == row["text"]
    local = tmp / ("audio" + row["source_audio"][row["source_audio"].rfind(".") :])
    local.write_bytes(source.read_bytes(row["source_audio"]))
    full = decode_pcm16(local)
    recut = full[ms_to_sample(row["start_ms"], 16000) : ms_to_sample(row["end_ms"], 16000)]
    undecoded = _rows(tmp, cache="c2").cast_column("audio", Audio(decode=False))
    raw = next(r for r in undecoded if r["audio_id"] == row["audio_id"])
    samples, sr = sf.read(io.BytesIO(raw["audio"]["bytes"]), dtype="int16")
    assert sr == 16000 and np.array_equal(samples, recut)


def test_scoring_is_incremental_and_a_new_scorer_version_rescores(env, monkeypatch):
    resources, instance, source, store, tmp = env
    first = asset_metadata(_score(instance, resources), "segment_quality")
    again = asset_metadata(_score(instance, resources), "segment_quality")
    assert again["segments_scored_now"] == 0 and again["segments_unchanged"] == first["segments"]
    assert again["recordings_written"] == 0

    # One recording's transcript changes one segment's end: only that segment is cut, then scored, again.
    key = transcript_key(CH, "austen_0880")
    doc = json.loads(source.read_bytes(key))
    segs = doc["segments"] if isinstance(doc, dict) else doc
    segs[0]["end_ms"] -= 200
    source.write_bytes(key, json.dumps(doc).encode())
    changed = asset_metadata(_score(instance, resources), "segment_quality")
    assert changed["segments_scored_now"] == 1 and changed["recordings_written"] == 1

    # A recording gone from the source: its document goes too.
    for o in list(source.list("")):
        if "austen_0890" in o.key:
            source.delete(o.key)
    gone = asset_metadata(_score(instance, resources), "segment_quality")
    assert gone["documents_removed"] == 1 and "austen_0890" not in read_documents(store, CH)

    _build(env)
    before = read_record(store, CH)
    monkeypatch.setattr(scores_module, "SCORER_VERSION", "test-next")
    quality_module._scorer.cache_clear()
    try:
        rescored = asset_metadata(_score(instance, resources), "segment_quality")
    finally:
        quality_module._scorer.cache_clear()
    assert rescored["segments_scored_now"] == rescored["segments"] and rescored["scorer"] == "test-next"
    assert {d.scorer for d in read_documents(store, CH).values()} == {"test-next"}
    # Same scores of the same audio: every row's annotations digest is as it was.
    _build(env)

    def digests(record):
        return sorted((m[0], m[3]) for shard in record["shards"] for m in shard["members"])

    assert digests(read_record(store, CH)) == digests(before)


def test_quality_filters_are_off_by_default_and_counted_when_on(env):
    resources, instance, source, store, tmp = env
    _score(instance, resources)
    everything = asset_metadata(_build(env), "hf_dataset")
    assert everything["segments_skipped"] == 0
    threshold = sorted(r["speech_ratio"] for r in _rows(tmp, cache="c0"))[len(_rows(tmp, cache="c0")) // 2]
    meta = asset_metadata(
        _build(env, {"min_speech_ratio": float(threshold), "max_clipping_fraction": 0.5}), "hf_dataset"
    )
    kept = _rows(tmp, cache="c1")
    assert 0 < meta["segments_skipped"] < everything["rows"] and meta["rows"] == len(kept)
    assert meta["rows"] + meta["segments_skipped"] == everything["rows"]
    assert all(r["speech_ratio"] >= threshold for r in kept)
    reasons = {r["reason"]: r["segments"] for r in meta["skip_reasons"]}
    assert reasons == {f"speech_ratio below {threshold:g}": meta["segments_skipped"]}
    card = (tmp / "store" / "hf_dataset" / "README.md").read_text()
    assert f"speech_ratio below {threshold:g} {meta['segments_skipped']}" in card  # the card's "left out"
    # and the card's distributions: the quantile table and a histogram per score
    assert "| `speech_ratio` |" in card and "| score | rows scored | not scored | p5 |" in card
    assert "| `loudness_lufs` | segments | |" in card
    # bins and scores in their order (the record is stored with sorted keys)
    assert card.index("| 2-3 s |") < card.index("| 10-15 s |") < card.index("| ≥ 30 s |")
    loudness = card[card.index("| `loudness_lufs` | segments | |") :]
    assert loudness.index("| -70 to -60 |") < loudness.index("| -10 to 0 |")
    assert card.index("| `speech_ratio` | ") < card.index("| `snr_db` | ") < card.index("| `chars_per_second` | ")


def test_a_dataset_without_scores_says_so_and_a_threshold_leaves_rows_out_with_the_reason(env):
    resources, instance, source, store, tmp = env
    run_partition([raw_audio, segments_npz], "segments_npz", instance, resources, CH)
    meta = asset_metadata(_build(env), "hf_dataset")
    assert meta["rows_without_quality_scores"] == meta["rows"] > 0
    assert all(r["speech_ratio"] is None for r in _rows(tmp))
    meta = asset_metadata(_build(env, {"min_snr_db": 10.0}), "hf_dataset")
    assert meta["rows"] == 0 and meta["segments_skipped"] > 0


def test_splits_are_speaker_disjoint_load_by_name_and_pairs_stay_within_one(env):
    resources, instance, source, store, tmp = env
    resources = {**resources, "dataset_split": DatasetSplit(validation_fraction=0.5)}
    _score(instance, resources)
    encode_stage2(store, CH)
    meta = asset_metadata(run_dataset(instance, resources, CH), "hf_dataset")
    splits = {r["split"]: r for r in meta["splits"]}
    train, validation = _rows(tmp, "train"), _rows(tmp, "validation")
    assert set(splits) == {"train", "validation"}, "4 recordings at 0.5: both splits (fixed by the hash)"
    assert splits["train"]["rows"] == len(train) and splits["validation"]["rows"] == len(validation)
    recordings = {s: {r["audio_id"].rsplit("_seg_", 1)[0] for r in ds} for s, ds in (("t", train), ("v", validation))}
    assert recordings["t"] and recordings["v"] and not recordings["t"] & recordings["v"]
    assert set(train["split"]) == {"train"} and set(validation["split"]) == {"validation"}
    card = (tmp / "store" / "hf_dataset" / "README.md").read_text()
    assert "| split | rows | hours | speakers |" in card and f"| validation | {len(validation)} |" in card
    # the load_from_disk copy keeps every row, each with its split, as the users' scripts read it
    run_dataset(instance, resources, CH, {"save_to_disk": True})
    disk = load_from_disk(str(tmp / "store" / "hf_dataset_disk" / CH))
    assert len(disk) == len(train) + len(validation) and set(disk["split"]) == {"train", "validation"}

    run_pairs(instance, resources, CH)
    pairs = load_from_disk(str(tmp / "store" / "training_pairs" / CH))
    split_of = {r["audio_id"]: r["split"] for ds in (train, validation) for r in ds}
    text_split = {(r["text"], r["speaker_id"]): r["split"] for ds in (train, validation) for r in ds}
    assert set(pairs["split"]) == {"train", "validation"} and len(split_of) == len(train) + len(validation)
    for p in pairs:
        assert (
            text_split[(p["ref_text"], p["ref_speaker_id"])] == text_split[(p["target_text"], p["target_speaker_id"])]
        )
        assert p["split"] == text_split[(p["ref_text"], p["ref_speaker_id"])]


def test_an_unreadable_segment_file_is_that_segments_failure_and_the_rest_is_scored(env):
    resources, instance, source, store, tmp = env
    first = asset_metadata(_score(instance, resources), "segment_quality")
    bad = f"stage1/{CH}/austen_0880_seg_0.npz"
    store.write_bytes(bad, b"PK\x03\x04 not a zip at all")
    meta = asset_metadata(_score_only(instance, resources), "segment_quality")
    assert meta["segments_scored_now"] == 0 and meta["recordings_written"] == 1 and meta["segments_failed"] == 1
    (failure,) = meta["failures"]
    assert failure["segment"] == "austen_0880_seg_0.npz" and "unreadable segment file" in failure["reason"]
    docs = read_documents(store, CH)
    assert sum(1 for d in docs.values() for e in d.segments.values() if not e.error) == first["segments"] - 1
    # Unchanged, it is not read again; its failure stays reported.
    again = asset_metadata(_score_only(instance, resources), "segment_quality")
    assert again["segments_scored_now"] == 0 and again["segments_failed"] == 1


def test_dnsmos_behind_its_setting_fills_its_columns_and_rescores(env):
    pytest.importorskip("onnxruntime")
    resources, instance, source, store, tmp = env
    plain = asset_metadata(_score(instance, resources), "segment_quality")
    resources = {**resources, "quality": QualityScoring(dnsmos=True, device="cpu")}
    meta = asset_metadata(_score(instance, resources), "segment_quality")
    # Another scorer version: every segment is scored again, DNSMOS with the rest.
    assert meta["scorer"] != plain["scorer"] and "dnsmos" in meta["scorer"]
    assert meta["segments_scored_now"] == meta["segments"] == plain["segments"]
    assert any(r["score"] == "dnsmos" and r["cpu_seconds"] > 0 for r in meta["cpu_seconds_by_score"])
    _build(env)
    rows = _rows(tmp)
    assert all(1.0 <= r[name] <= 5.0 for r in rows for name in ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl"))
    meta = asset_metadata(_build(env, {"min_dnsmos_ovrl": 5.0}), "hf_dataset")
    assert meta["rows"] == 0 and meta["segments_skipped"] == len(rows)
