"""training_pairs: the users' pair rules on a synthetic channel with controlled durations,
speakers and codes (hf_dataset materialized from stage-1 / stage-2 files, then training_pairs),
the result opened as their scripts open it (`load_from_disk`), collated as NeuTTS fine-tuning
collates it; the card's text_codes config; and the pure planner on a large group."""

from __future__ import annotations

import inspect
import itertools
import json
import shutil
import tracemalloc
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance
from datasets import load_dataset, load_from_disk

from neutts_assets.pipeline.dataset.card import TEXT_CODES_CONFIG, text_codes_features
from neutts_assets.pipeline.pairs.training_pairs import (
    Group,
    PairSettings,
    pair_chunks,
    pair_of,
    pairs_features,
    sampled_pair_numbers,
)
from neutts_assets.pipeline.segments.segment_file import Segment, encode_segment
from neutts_assets.storage.local import LocalStore
from neutts_assets_tests.helpers import TEST_CODEC, asset_metadata, fake_codes, make_resources, run_dataset, run_pairs

CH = "pairs_ch"
USERS_COLUMNS = [
    "ref_text",
    "ref_codes",
    "ref_speaker_id",
    "ref_gender",
    "ref_dialect",
    "ref_tone",
    "ref_duration_sec",
    "target_text",
    "target_codes",
    "target_speaker_id",
    "target_gender",
    "target_dialect",
    "target_tone",
    "target_duration_sec",
    "channel",
]
SIDE = ("text", "codes", "speaker_id", "gender", "dialect", "tone", "duration_sec")

# (audio_id, speaker_id, samples at 16 kHz, has codes)
SEGMENTS = [
    ("recA_seg_0", "SPEAKER_00", 8000, True),  # 0.5 s: kept (bounds are inclusive)
    ("recA_seg_1", "SPEAKER_00", 16000, True),
    ("recA_seg_2", "SPEAKER_00", 24000, True),
    ("recA_seg_3", "SPEAKER_00", 6400, True),  # 0.4 s: too short
    ("recA_seg_4", "SPEAKER_00", 16000, False),  # no codes
    ("recA_seg_5", "SPEAKER_01", 16000, True),  # alone in its group: dropped
    ("recA_seg_6", "SPEAKER_00", 240000, True),  # 15.0 s: kept
    ("recA_seg_7", "SPEAKER_00", 240320, True),  # 15.02 s: too long
    ("recB_seg_0", "SPEAKER_00", 12000, True),  # SPEAKER_00 of another recording: another speaker
    ("recB_seg_1", "SPEAKER_00", 20000, True),
    ("rec_seg_x_seg_0", "SPEAKER_02", 9000, True),  # recording "rec_seg_x": the part before the last _seg_
    ("rec_seg_x_seg_1", "SPEAKER_02", 11000, True),
    ("rec_seg_x_seg_2", "SPEAKER_02", 13000, True),
]
# (recording, speaker) -> its eligible rows, in dataset order
GROUPS = {
    ("recA", "SPEAKER_00"): ["recA_seg_0", "recA_seg_1", "recA_seg_2", "recA_seg_6"],
    ("recB", "SPEAKER_00"): ["recB_seg_0", "recB_seg_1"],
    ("rec_seg_x", "SPEAKER_02"): ["rec_seg_x_seg_0", "rec_seg_x_seg_1", "rec_seg_x_seg_2"],
}


def _pcm(audio_id: str, samples: int) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(audio_id.encode()))
    return (rng.standard_normal(samples) * 500).astype(np.int16)


def _segment(audio_id: str, speaker: str, samples: int, codes: bool) -> Segment:
    pcm = _pcm(audio_id, samples)
    return Segment(
        audio_id=audio_id,
        channel=CH,
        text=f"نص {audio_id}",
        speaker_id=speaker,
        gender="female" if speaker == "SPEAKER_02" else "male",
        dialect="gulf",
        tone="neutral",
        pcm16=pcm,
        codes=fake_codes(audio_id, samples) if codes else np.zeros(0, np.int32),
        codec=TEST_CODEC if codes else "",
    )


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """The channel's segment files (stage 1 all, stage 2 those with codes) and its dataset, built
    once with the no-codes option so the row without codes is in the dataset; tests copy the store."""
    root = tmp_path_factory.mktemp("pairs")
    store = LocalStore(root / "store")
    for audio_id, speaker, samples, codes in SEGMENTS:
        seg = _segment(audio_id, speaker, samples, codes)
        store.write_bytes(f"stage1/{CH}/{audio_id}.npz", encode_segment(_segment(audio_id, speaker, samples, False)))
        if codes:
            store.write_bytes(f"stage2_with_codes/{CH}/{audio_id}.npz", encode_segment(seg))
    resources = make_resources(str(root / "source"), str(root / "store"))
    meta = asset_metadata(
        run_dataset(DagsterInstance.ephemeral(), resources, CH, {"include_segments_without_codes": True}), "hf_dataset"
    )
    assert meta["rows"] == len(SEGMENTS)
    return root


@pytest.fixture
def env(template, tmp_path):
    shutil.copytree(template / "store", tmp_path / "store")
    resources = make_resources(str(template / "source"), str(tmp_path / "store"))
    return resources, DagsterInstance.ephemeral(), LocalStore(tmp_path / "store"), tmp_path


def _dataset_rows(tmp) -> dict:
    ds = load_dataset(str(tmp / "store" / "hf_dataset"), CH, split="train", cache_dir=str(tmp / "hf_cache"))
    return {row["audio_id"]: row for row in ds.remove_columns("audio")}


def _pair_ids(store, record) -> list[tuple[str, str]]:
    table = pa.concat_tables([pq.read_table(store.root / record["folder"] / name) for name in record["index_files"]])
    return list(zip(table["ref_audio_id"].to_pylist(), table["target_audio_id"].to_pylist()))


def _record(store) -> dict:
    return json.loads(store.read_bytes(f"training_pairs_builds/{CH}.json"))


def _reference_pairs() -> list[tuple[str, str]]:
    """The users' rule, written plainly: sorted groups, every ordered pair (itertools order)."""
    return [pair for key in sorted(GROUPS) for pair in itertools.permutations(GROUPS[key], 2)]


def test_pairs_follow_the_users_rules(env):
    resources, instance, store, tmp = env
    meta = asset_metadata(run_pairs(instance, resources, CH), "training_pairs")
    assert meta["rebuilt"] is True and meta["pairs"] == 12 + 2 + 6 == 20
    assert meta["speakers"] == 3 and meta["speakers_dropped"] == 1  # recA's SPEAKER_01 alone
    assert (meta["pairs_per_speaker_min"], meta["pairs_per_speaker_median"], meta["pairs_per_speaker_max"]) == (
        2,
        6,
        12,
    )
    assert (meta["rows_in_dataset"], meta["rows_eligible"], meta["rows_used"]) == (13, 10, 9)
    assert meta["include_audio"] is False and meta["local_path"] == str(store.root / "training_pairs" / CH)
    assert f"training_pairs/{CH}/" in meta["folder"] and meta["bytes"] > 0

    ds = load_from_disk(meta["local_path"])
    # the users' columns in their order, then the split (a pair never crosses splits)
    assert ds.features == pairs_features(False) and list(ds.features) == [*USERS_COLUMNS, "split"]
    assert set(ds["split"]) == {"train"}
    assert len(ds) == 20
    record = _record(store)
    ids = _pair_ids(store, record)
    assert ids == _reference_pairs()  # groups sorted, pairs in (i, j) order, ref != target
    rows = _dataset_rows(tmp)
    for pair, (ref, target) in zip(ds, ids):
        assert ref != target
        for prefix, audio_id in (("ref", ref), ("target", target)):
            for key in SIDE:
                assert pair[f"{prefix}_{key}"] == rows[audio_id][key], (prefix, key, audio_id)
        assert pair["channel"] == CH and pair["ref_codes"] and pair["target_codes"]
        assert 0.5 <= pair["ref_duration_sec"] <= 15.0
    # Speakers are per recording: recA's and recB's SPEAKER_00 never pair with each other.
    assert not any(r.rsplit("_seg_", 1)[0] != t.rsplit("_seg_", 1)[0] for r, t in ids)

    assert record["dataset_build_id"] == json.loads(store.read_bytes(f"hf_dataset_builds/{CH}.json"))["build_id"]
    assert record["counts"]["pairs"] == 20 and record["settings"] == PairSettings().to_dict()
    assert record["top_speakers"][0] == {"recording": "recA", "speaker_id": "SPEAKER_00", "segments": 4, "pairs": 12}
    card = (store.root / "hf_dataset" / "README.md").read_text()
    assert (
        "## Training pairs" in card
        and f"| {CH} | 3 | 20 | 2 / 6 / 12 | 9 of 13 |" in card
        and record["build_id"] in card
    )


def test_max_pairs_per_speaker_is_a_seeded_sample(env):
    resources, instance, store, tmp = env
    run_pairs(instance, resources, CH, {"max_pairs_per_speaker": 3})
    first = _pair_ids(store, _record(store))
    assert len(first) == 3 + 2 + 3 and len(set(first)) == len(first) and set(first) <= set(_reference_pairs())
    # The documented rule, for recA's group of 4 (12 pairs): rng([seed, crc32("recA\tSPEAKER_00")]).choice(12, 3).
    m = np.random.default_rng([42, zlib.crc32(b"recA\tSPEAKER_00")]).choice(12, 3, replace=False)
    i, j = pair_of(m, 4)
    members = GROUPS[("recA", "SPEAKER_00")]
    assert first[:3] == [(members[a], members[b]) for a, b in zip(i, j)]
    assert first[3:5] == list(itertools.permutations(GROUPS[("recB", "SPEAKER_00")], 2))  # 2 pairs <= 3: all, in order

    meta = asset_metadata(
        run_pairs(instance, resources, CH, {"max_pairs_per_speaker": 3, "random_seed": 7}), "training_pairs"
    )
    assert meta["rebuilt"] is True and meta["pairs"] == 8
    assert _pair_ids(store, _record(store)) != first
    run_pairs(instance, resources, CH, {"max_pairs_per_speaker": 3})
    assert _pair_ids(store, _record(store)) == first  # same seed, same pairs


def test_unchanged_rerun_is_a_no_op_and_a_new_dataset_build_rebuilds(env):
    resources, instance, store, tmp = env
    run_pairs(instance, resources, CH)
    before = {
        o.key: o.version
        for p in ("training_pairs/", "training_pairs_builds/", "hf_dataset/README.md")
        for o in store.list(p)
    }
    old = _record(store)
    meta = asset_metadata(run_pairs(instance, resources, CH), "training_pairs")
    assert meta["rebuilt"] is False and meta["pairs"] == 20 and meta["build_id"] == old["build_id"]
    assert {
        o.key: o.version
        for p in ("training_pairs/", "training_pairs_builds/", "hf_dataset/README.md")
        for o in store.list(p)
    } == before

    # recB's second segment leaves the channel: the dataset is rebuilt, the pairs follow it.
    store.delete(f"stage1/{CH}/recB_seg_1.npz")
    store.delete(f"stage2_with_codes/{CH}/recB_seg_1.npz")
    run_dataset(instance, resources, CH, {"include_segments_without_codes": True})
    meta = asset_metadata(run_pairs(instance, resources, CH), "training_pairs")
    assert meta["rebuilt"] is True and meta["pairs"] == 18 and meta["speakers"] == 2 and meta["old_files_removed"] >= 2
    assert not list(store.list(f"training_pairs/{CH}/{old['build_id']}/"))
    assert len(load_from_disk(meta["local_path"])) == 18


def _pairs_with_fields(path) -> list[tuple]:
    return sorted(
        tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in row.items()) for row in load_from_disk(path)
    )


def test_pairs_follow_the_dataset_incrementally(env):
    """A new recording pairs only itself, reading only the dataset shard that holds it; the other
    recordings' pairs file is kept as it is; a changed segment rewrites its recording's file; and
    every state equals a full rebuild's pairs."""
    resources, instance, store, tmp = env
    first = asset_metadata(run_pairs(instance, resources, CH), "training_pairs")
    kept = {
        o.key: o.version for o in store.list(f"training_pairs/{CH}/") if "/" in o.key[len(f"training_pairs/{CH}/") :]
    }
    assert first["full_rebuild"] is True and len(kept) == 2  # one pairs file and its index

    for i, samples in enumerate((16000, 20000, 24000)):  # a new recording, one speaker: 6 pairs
        seg = _segment(f"recC_seg_{i}", "SPEAKER_00", samples, True)
        store.write_bytes(
            f"stage1/{CH}/recC_seg_{i}.npz", encode_segment(_segment(f"recC_seg_{i}", "SPEAKER_00", samples, False))
        )
        store.write_bytes(f"stage2_with_codes/{CH}/recC_seg_{i}.npz", encode_segment(seg))
    dataset = asset_metadata(
        run_dataset(instance, resources, CH, {"include_segments_without_codes": True}), "hf_dataset"
    )
    assert dataset["shards_kept"] == 1 and dataset["shards_written"] == 1  # the dataset's own incremental build
    meta = asset_metadata(run_pairs(instance, resources, CH), "training_pairs")
    assert meta["full_rebuild"] is False and meta["files_kept"] == 1 and meta["files_written"] == 1
    assert meta["dataset_shards_read"] == 1 and meta["recordings_paired"] == 1 and meta["pairs"] == 26
    after = {o.key: o.version for o in store.list(f"training_pairs/{CH}/")}
    assert all(after.get(k) == v for k, v in kept.items())  # the kept file, untouched
    incremental = _pairs_with_fields(meta["local_path"])
    assert len(incremental) == 26
    assert ("recC_seg_0", "recC_seg_1") in _pair_ids(store, _record(store))

    # recB changes (one segment's text): its file is rewritten, recC's is kept
    seg = _segment("recB_seg_1", "SPEAKER_00", 20000, True)
    seg.text = "changed"
    store.write_bytes(f"stage2_with_codes/{CH}/recB_seg_1.npz", encode_segment(seg))
    run_dataset(instance, resources, CH, {"include_segments_without_codes": True})
    meta = asset_metadata(run_pairs(instance, resources, CH), "training_pairs")
    assert (
        meta["full_rebuild"] is False and meta["files_kept"] == 1 and meta["files_written"] == 1 and meta["pairs"] == 26
    )
    assert "changed" in {row["ref_text"] for row in load_from_disk(meta["local_path"])}
    incremental = _pairs_with_fields(meta["local_path"])
    full = asset_metadata(run_pairs(instance, resources, CH, {"force": True}), "training_pairs")
    assert full["full_rebuild"] is True and _pairs_with_fields(full["local_path"]) == incremental
    record, prefix = _record(store), f"training_pairs/{CH}/"
    named = {prefix + f for f in record["arrow_files"] + record["index_files"]}
    assert {o.key for o in store.list(prefix) if "/" in o.key[len(prefix) :]} == named  # nothing replaced is left


def test_include_audio_decodes_to_the_source_samples(env):
    resources, instance, store, tmp = env
    meta = asset_metadata(run_pairs(instance, resources, CH, {"include_audio": True}), "training_pairs")
    ds = load_from_disk(meta["local_path"])
    assert ds.features == pairs_features(True)
    assert list(ds.features) == ["ref_audio", "target_audio", *USERS_COLUMNS, "split"] and len(ds) == 20
    samples = {audio_id: n for audio_id, _, n, _ in SEGMENTS}
    for pair, (ref, target) in zip(ds, _pair_ids(store, _record(store))):
        for column, audio_id in (("ref_audio", ref), ("target_audio", target)):
            decoded = pair[column].get_all_samples()
            assert decoded.sample_rate == 16000
            np.testing.assert_array_equal(
                decoded.data.numpy()[0], _pcm(audio_id, samples[audio_id]).astype(np.float32) / 32768.0
            )


SPEECH_BASE, PAD, LENGTH = 300, 0, 512  # ids: text bytes 1..256, <|speech_i|> = SPEECH_BASE + i


def _speech_ids(codes) -> list[int]:
    return [SPEECH_BASE + int(c) for c in codes]


def _fixed(ids: list[int]) -> dict:
    ids = ids[:LENGTH]
    pad = LENGTH - len(ids)
    return {"input_ids": ids + [PAD] * pad, "attention_mask": [1] * len(ids) + [0] * pad, "labels": ids + [-100] * pad}


def test_pairs_collate_as_neutts_fine_tuning_reads_them(env):
    transformers = pytest.importorskip("transformers")
    resources, instance, store, tmp = env
    ds = load_from_disk(asset_metadata(run_pairs(instance, resources, CH), "training_pairs")["local_path"])

    def tokenise(row):
        text = [b + 1 for b in (row["ref_text"] + " " + row["target_text"]).encode("utf-8")]
        return _fixed(text + _speech_ids(row["ref_codes"]) + _speech_ids(row["target_codes"]))

    mapped = ds.map(tokenise, remove_columns=["ref_text", "ref_codes", "target_text", "target_codes"])
    batch = transformers.default_data_collator([mapped[i] for i in range(len(mapped))])
    assert tuple(batch["input_ids"].shape) == (20, LENGTH) and tuple(batch["labels"].shape) == (20, LENGTH)
    first = ds[0]
    expected = tokenise(first)["input_ids"]
    assert batch["input_ids"][0].tolist() == expected and SPEECH_BASE + first["ref_codes"][0] in expected


def test_text_codes_config_loads_without_audio_and_collates(env):
    transformers = pytest.importorskip("transformers")
    resources, instance, store, tmp = env
    folder = tmp / "store" / "hf_dataset"
    ds = load_dataset(str(folder), TEXT_CODES_CONFIG, split="train", cache_dir=str(tmp / "hf_cache"))
    assert set(ds.column_names) == {
        "text",
        "codes",
        "speaker_id",
        "channel",
        "gender",
        "dialect",
        "tone",
        "audio_id",
        "duration_sec",
    }
    assert ds.features == text_codes_features() and len(ds) == len(SEGMENTS)
    rows = _dataset_rows(tmp)
    assert all(row == {k: rows[row["audio_id"]][k] for k in ds.column_names} for row in ds)

    # Neuphonic's example: map text + codes to ids, remove only those two, collate every other column.
    with_codes = ds.filter(lambda row: len(row["codes"]) > 0)
    mapped = with_codes.map(
        lambda row: _fixed([b + 1 for b in row["text"].encode("utf-8")] + _speech_ids(row["codes"])),
        remove_columns=["text", "codes"],
    )
    batch = transformers.default_data_collator([mapped[i] for i in range(len(mapped))])
    assert tuple(batch["input_ids"].shape) == (len(with_codes), LENGTH) and tuple(batch["duration_sec"].shape) == (
        len(with_codes),
    )
    card = (folder / "README.md").read_text()
    assert f"config_name: {TEXT_CODES_CONFIG}" in card and "columns:" in card


# ---- the pure planner --------------------------------------------------------------------------


def test_pair_numbering_is_every_ordered_pair_in_order():
    for n in range(2, 8):
        i, j = pair_of(np.arange(n * (n - 1)), n)
        assert list(zip(i.tolist(), j.tolist())) == list(itertools.permutations(range(n), 2))
    groups = [Group("a", "S", np.array([5, 9, 2])), Group("b", "S", np.array([7])), Group("c", "S", np.array([0, 1]))]
    chunks = list(pair_chunks(groups, chunk=4))
    assert [len(r) for r, _ in chunks] == [4, 4]  # 6 + 2 pairs (the group of one has none), in chunks of 4
    pairs = [(int(a), int(b)) for r, t in chunks for a, b in zip(r, t)]
    assert pairs == [*itertools.permutations([5, 9, 2], 2), (0, 1), (1, 0)]


def test_planner_is_lazy_on_a_large_group():
    n = 3000  # 8,997,000 ordered pairs: 144 MB as two int64 arrays, never built
    group = Group("rec", "SPEAKER_00", np.arange(10_000, 10_000 + n, dtype=np.int64))
    chunks = pair_chunks([group], chunk=20_000)
    assert inspect.isgenerator(chunks)
    tracemalloc.start()
    try:
        ref, target = next(chunks)
        assert (
            len(ref) == 20_000
            and (ref[0], target[0]) == (10_000, 10_001)
            and (ref[-1], target[-1]) == (10_006, 10_000 + 20_000 - 6 * 2999)
        )
        total, last = len(ref), None
        for ref, target in chunks:
            assert len(ref) <= 20_000 and not np.any(ref == target)
            total += len(ref)
            last = (int(ref[-1]), int(target[-1]))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == n * (n - 1) and last == (10_000 + n - 1, 10_000 + n - 2)
    assert peak < 8_000_000, peak  # a few chunks' worth, not 144 MB

    # Capped: k pair numbers drawn without building the n*(n-1) pairs; seeded.
    tracemalloc.start()
    try:
        capped = list(pair_chunks([group], max_pairs=50_000, seed=42, chunk=20_000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [len(r) for r, _ in capped] == [20_000, 20_000, 10_000] and peak < 16_000_000, peak
    pairs = np.concatenate([r for r, _ in capped]) * n + np.concatenate([t for _, t in capped])
    assert len(np.unique(pairs)) == 50_000
    again = np.concatenate([r for r, _ in pair_chunks([group], max_pairs=50_000, seed=42)])
    other = np.concatenate([r for r, _ in pair_chunks([group], max_pairs=50_000, seed=43)])
    assert np.array_equal(again, np.concatenate([r for r, _ in capped])) and not np.array_equal(again, other)
    assert np.array_equal(sampled_pair_numbers(group, 5, 42), sampled_pair_numbers(group, 5, 42))


def test_shards_of_a_writer_before_splits_read_as_train(tmp_path):
    """A channel whose dataset was built before the split column existed is paired as all train."""
    from neutts_assets.pipeline.pairs.training_pairs import INDEX_COLUMNS, read_index

    old = pa.table(
        {
            "codes": pa.array([[1, 2]], pa.list_(pa.int32())),
            **{c: pa.array(["x"]) for c in INDEX_COLUMNS if c not in ("codes", "duration_sec", "split")},
            "duration_sec": pa.array([1.0], pa.float32()),
        }
    )
    pq.write_table(old, tmp_path / "old.parquet")
    index = read_index([tmp_path / "old.parquet"])
    assert index.column_names == list(INDEX_COLUMNS) and index["split"].to_pylist() == ["train"]
