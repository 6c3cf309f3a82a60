"""Incremental hf_dataset builds: only the shards a change touches are written; every other shard
stays byte for byte under its name (and so does its Arrow file in the save_to_disk copy, and its
file on the Hub); readers see exactly the current segments after each step; a killed
incremental build resumes. Real stores (LocalStore), the real Dagster asset, the loopback Hub."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from dagster import DagsterInstance
from datasets import load_dataset, load_from_disk

from neutts_assets.pipeline.dataset import writer as dataset_writer
from neutts_assets.pipeline.dataset.rows import ChannelStats, RowFilter
from neutts_assets.pipeline.dataset.store import DATASET_PREFIX, progress_key, shard_prefix
from neutts_assets.pipeline.dataset.writer import (
    WRITER_VERSION,
    build_basis,
    build_channel,
    plan_build,
    publish_channel,
    read_record,
    segment_objects,
    source_fingerprint,
)
from neutts_assets.pipeline.segments.segment_file import Segment, encode_segment
from neutts_assets.storage.local import LocalStore
from neutts_assets.storage.store import ObjectInfo
from neutts_assets_tests.helpers import TEST_CODEC, asset_metadata, make_resources, run_dataset
from neutts_assets_tests.test_hf_hub_push import hub  # noqa: F401  (the fake Hub fixture, shared)

CH = "inc_ch"


class CountingStore(LocalStore):
    """A LocalStore that remembers which segment files it was asked to read."""

    def __init__(self, root, **kw):
        super().__init__(root, **kw)
        self.reads: list[str] = []

    def read_bytes(self, key):
        if key.endswith(".npz"):
            self.reads.append(key)
        return super().read_bytes(key)


def _segment(audio_id: str, channel: str = CH, text: str | None = None, codes: bool = True) -> bytes:
    rng = np.random.default_rng(abs(hash(audio_id)) % 2**32)
    seg = Segment(
        audio_id=audio_id,
        channel=channel,
        text=text or f"نص {audio_id}",
        speaker_id="SPEAKER_00",
        gender="female",
        dialect="gulf",
        tone="neutral",
        pcm16=(rng.standard_normal(4000) * 3000).astype(np.int16),
        codes=np.arange(25, dtype=np.int32) if codes else np.zeros(0, np.int32),
        codec=TEST_CODEC,
    )
    return encode_segment(seg)


def _add(store, ids, channel: str = CH, **kw) -> list[str]:
    keys = []
    for audio_id in ids:
        keys.append(f"stage2_with_codes/{channel}/{audio_id}.npz")
        store.write_bytes(keys[-1], _segment(audio_id, channel, **kw))
    return keys


def _objects(store, channel: str = CH):
    return list(segment_objects(store, f"stage2_with_codes/{channel}/").values())


def _build(store, tmp: Path, shard_bytes=1, compact=False, force=False, channel=CH, filter_=RowFilter()):
    work = tmp / f"w{len(list(tmp.glob('w*')))}"
    work.mkdir()
    store.reads.clear()
    build = build_channel(
        store,
        channel,
        _objects(store, channel),
        filter_,
        work,
        "test",
        shard_bytes=shard_bytes,
        workers=2,
        previous=read_record(store, channel),
        compact=compact,
        force=force,
    )
    publish_channel(store, build.record, "T")
    return build


def _shard_objects(store, channel=CH) -> dict[str, str]:
    """Shard key -> version (a local file's mtime and size)."""
    return {o.key: o.version for o in store.list(shard_prefix(channel))}


def _rows(root: Path, config: str, cache: Path) -> list[tuple[str, str]]:
    ds = load_dataset(str(root / "hf_dataset"), config, split="train", cache_dir=str(cache))
    return list(zip(ds["audio_id"], ds["text"]))


@pytest.fixture
def small_row_groups(monkeypatch):
    # Shards close at a row group boundary: with shard_bytes=1, a shard holds ROW_GROUP_ROWS rows.
    monkeypatch.setattr(dataset_writer, "ROW_GROUP_ROWS", 4)


# ---- the plan, without a store --------------------------------------------------------------------


def _info(name, version="v1", size=10, prefix=f"stage2_with_codes/{CH}/"):
    return ObjectInfo(key=prefix + name, size=size, version=version)


def _record(shards, excluded=(), row_filter=RowFilter(), objects=None):
    rec = {
        "channel": CH,
        "build_id": "b0",
        "basis": build_basis(row_filter),
        "excluded": [list(e) for e in excluded],
        "shards": [
            {
                "path": f"data/{CH}/b0-{i:05d}.parquet",
                "rows": len(m),
                "bytes": b,
                "members": [[n, "v1", 10] for n in m],
                "stats_state": ChannelStats().to_state(),
            }
            for i, (m, b) in enumerate(shards)
        ],
    }
    if objects is not None:
        rec["source_fingerprint"] = source_fingerprint(objects, row_filter)
    return rec


def test_plan_rules():
    f = RowFilter()
    names = ["a.npz", "b.npz", "c.npz", "d.npz", "e.npz", "f.npz"]
    objs = [_info(n) for n in names]
    prev = _record([(names[:2], 1000), (names[2:4], 1000), (names[4:], 1000)], objects=objs)

    same = plan_build(prev, objs, f, 1000)
    assert same.unchanged and not same.full and not same.read and same.keep == prev["shards"]

    # Added: a new shard only; row order: kept shards, then the new segments in name order.
    added = plan_build(prev, objs + [_info("z.npz"), _info("g.npz")], f, 1000)
    assert (
        not added.full
        and added.keep == prev["shards"]
        and [o.key.rsplit("/", 1)[1] for o in added.read] == ["g.npz", "z.npz"]
    )
    assert added.new == ["g.npz", "z.npz"] and not added.unchanged

    # Changed (version or size): its shard's members are read again, in their order; the others kept.
    for changed in (_info("c.npz", version="v2"), _info("c.npz", size=11)):
        p = plan_build(prev, [o if o.key != changed.key else changed for o in objs], f, 1000)
        assert p.keep == [prev["shards"][0], prev["shards"][2]] and p.rewritten == [prev["shards"][1]]
        assert [o.key.rsplit("/", 1)[1] for o in p.read] == ["c.npz", "d.npz"] and p.changed == ["c.npz"]

    # Removed: its shard's survivors are read; a shard with no survivor just goes.
    p = plan_build(prev, [o for o in objs if o.key.rsplit("/", 1)[1] != "e.npz"], f, 1000)
    assert (
        p.keep == prev["shards"][:2]
        and [o.key.rsplit("/", 1)[1] for o in p.read] == ["f.npz"]
        and p.removed == ["e.npz"]
    )
    p = plan_build(prev, objs[:4], f, 1000)
    assert p.keep == prev["shards"][:2] and p.read == [] and p.rewritten == [prev["shards"][2]] and not p.unchanged

    # Excluded at the same version: not read again; at a new version: read like a new one.
    prev_x = _record(
        [(names[:2], 1000)], excluded=[["x.npz", "v1", 10, "skipped", "no codes"]], objects=objs[:2] + [_info("x.npz")]
    )
    p = plan_build(prev_x, objs[:2] + [_info("x.npz")], f, 1000)
    assert p.unchanged and p.carried == [(f"stage2_with_codes/{CH}/x.npz", ["x.npz", "v1", 10, "skipped", "no codes"])]
    p = plan_build(prev_x, objs[:2] + [_info("x.npz", version="v2")], f, 1000)
    assert p.retried == ["x.npz"] and [o.key.rsplit("/", 1)[1] for o in p.read] == ["x.npz"] and not p.carried

    # Everything again: a filter change, the writer's version, an older record, no record, force.
    assert plan_build(prev, objs, RowFilter(min_duration_s=1.0), 1000).full
    old_writer = {**prev, "basis": {**prev["basis"], "writer": WRITER_VERSION - 1}}
    assert plan_build(old_writer, objs, f, 1000).reasons == ["writer changed"]
    assert plan_build({k: v for k, v in prev.items() if k != "basis"}, objs, f, 1000).full
    assert plan_build(None, objs, f, 1000).full
    forced = plan_build(prev, objs, f, 1000, force=True)
    assert forced.full and forced.keep == [] and [o.key for o in forced.read] == sorted(o.key for o in objs)

    # A kept shard missing from the store is rewritten.
    present = {s["path"]: s["bytes"] for s in prev["shards"][1:]}
    p = plan_build(prev, objs, f, 1000, present=present)
    assert p.rewritten == [prev["shards"][0]] and [o.key.rsplit("/", 1)[1] for o in p.read] == ["a.npz", "b.npz"]

    # Compaction: only when asked, only shards under a quarter of the shard size, two at least.
    small = _record([(names[:2], 1000), (names[2:3], 100), (names[3:4], 100), (names[4:], 1000)], objects=objs)
    assert plan_build(small, objs, f, 1000).unchanged
    p = plan_build(small, objs, f, 1000, compact=True)
    assert p.compacted == small["shards"][1:3] and p.keep == [small["shards"][0], small["shards"][3]]
    assert [o.key.rsplit("/", 1)[1] for o in p.read] == ["c.npz", "d.npz"] and not p.unchanged
    one_small = _record([(names[:2], 1000), (names[2:3], 100)], objects=objs[:3])
    assert plan_build(one_small, objs[:3], f, 1000, compact=True).unchanged  # alone it would be rewritten as it is
    p = plan_build(one_small, objs[:4], f, 1000, compact=True)  # with a new segment it merges
    assert p.compacted == [one_small["shards"][1]] and [o.key.rsplit("/", 1)[1] for o in p.read] == ["c.npz", "d.npz"]
    # Different plans, different fingerprints (a killed build resumes only into its own plan).
    assert (
        len(
            {
                plan_build(small, objs, f, 1000, compact=True).fingerprint,
                plan_build(small, objs, f, 1000).fingerprint,
                plan_build(small, objs, f, 2000).fingerprint,
            }
        )
        == 3
    )


# ---- builds on a real store ------------------------------------------------------------------------


def test_add_change_remove_and_skip(tmp_path, small_row_groups):
    store = CountingStore(tmp_path / "store")
    ids = [f"rec00_seg_{i:02d}" for i in range(10)] + [f"rec01_seg_{i:02d}" for i in range(6)]
    keys = _add(store, ids)
    expected = {i: f"نص {i}" for i in ids}

    def check(step):
        for config in (CH, "all"):
            rows = _rows(tmp_path / "store", config, tmp_path / f"cache-{step}-{config}")
            assert sorted(rows) == sorted(expected.items()) and len(rows) == len(expected), (step, config)
        return [a for a, _ in _rows(tmp_path / "store", CH, tmp_path / f"cache-{step}-order")]

    first = _build(store, tmp_path)
    assert first.plan.full and len(first.record["shards"]) == 4 and sorted(store.reads) == sorted(keys)
    order = check(0)
    assert order == sorted(ids)

    # A recording added: only new shards; the old ones untouched (bytes, name, mtime); reads = the new segments.
    before = _shard_objects(store)
    before_bytes = {k: (tmp_path / "store" / k).read_bytes() for k in before}
    new_ids = [f"rec02_seg_{i:02d}" for i in range(6)]
    new_keys = _add(store, new_ids)
    expected.update({i: f"نص {i}" for i in new_ids})
    b = _build(store, tmp_path)
    assert sorted(store.reads) == sorted(new_keys) and b.segments_read == 6
    assert not b.plan.full and len(b.plan.keep) == 4 and b.shards_written == 2
    after = _shard_objects(store)
    assert {k: v for k, v in after.items() if k in before} == before and len(after) == 6
    assert all((tmp_path / "store" / k).read_bytes() == data for k, data in before_bytes.items())
    assert b.bytes_written == sum(s["bytes"] for s in b.record["shards"][4:])
    assert check(1) == order + sorted(new_ids)  # kept shards in their order, then the new ones
    assert b.record["stats"]["rows"] == 22 and b.record["stats"]["speakers"] == 3  # merged, not re-read

    # One segment changed: only its shard is rewritten (its 4 members read), under a new name.
    changed = "rec00_seg_05"  # in the second shard (rows 4-7)
    store.write_bytes(f"stage2_with_codes/{CH}/{changed}.npz", _segment(changed, text="نص جديد"))
    expected[changed] = "نص جديد"
    shards = [s["path"] for s in read_record(store, CH)["shards"]]
    before = _shard_objects(store)
    c = _build(store, tmp_path)
    assert sorted(store.reads) == sorted(f"stage2_with_codes/{CH}/rec00_seg_{i:02d}.npz" for i in range(4, 8))
    assert [s["path"] for s in c.plan.rewritten] == [shards[1]] and c.shards_written == 1
    after = _shard_objects(store)
    assert DATASET_PREFIX + shards[1] not in after
    assert all(after[DATASET_PREFIX + p] == before[DATASET_PREFIX + p] for p in shards if p != shards[1])
    check(2)

    # One segment removed: its shard rewritten from the 3 others, the rest kept.
    gone = "rec01_seg_00"
    shards = read_record(store, CH)["shards"]
    (holder,) = [s["path"] for s in shards if any(m[0] == gone + ".npz" for m in s["members"])]
    store.delete(f"stage2_with_codes/{CH}/{gone}.npz")
    del expected[gone]
    before = _shard_objects(store)
    d = _build(store, tmp_path)
    assert (
        len(store.reads) == 3
        and gone not in " ".join(store.reads)
        and [s["path"] for s in d.plan.rewritten] == [holder]
    )
    after = _shard_objects(store)
    assert all(
        after[DATASET_PREFIX + s["path"]] == before[DATASET_PREFIX + s["path"]] for s in shards if s["path"] != holder
    )
    check(3)

    # Segments without codes (skipped) and an unreadable one (failed): read once, never again at that version.
    skipped = _add(store, ["rec03_seg_00", "rec03_seg_01"], codes=False)
    store.write_bytes(f"stage2_with_codes/{CH}/rec03_seg_02.npz", b"PK\x03\x04 not a zip")
    e = _build(store, tmp_path)
    assert (
        sorted(store.reads) == sorted(skipped + [f"stage2_with_codes/{CH}/rec03_seg_02.npz"]) and e.shards_written == 0
    )
    assert e.record["segments_skipped"] == 2 and e.record["segments_failed"] == 1
    more = _add(store, ["rec04_seg_00"])
    expected["rec04_seg_00"] = "نص rec04_seg_00"
    f = _build(store, tmp_path)
    assert store.reads == more and len(f.skipped) == 2 and len(f.failures) == 1  # carried over, not read
    check(4)

    # Unchanged: nothing to do; force: everything again.
    assert plan_build(read_record(store, CH), _objects(store), RowFilter(), 1).unchanged
    g = _build(store, tmp_path, force=True)
    assert g.plan.full and len(store.reads) == len(_objects(store)) and not set(_shard_objects(store)) & set(after)
    check(5)
    # A filter change rebuilds everything too.
    h = _build(store, tmp_path, filter_=RowFilter(max_duration_s=100.0))
    assert h.plan.full and h.plan.reasons == ["filter changed"]


def test_compaction_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(dataset_writer, "ROW_GROUP_ROWS", 1)
    store = CountingStore(tmp_path / "store")
    _add(store, [f"r0_seg_{i:02d}" for i in range(16)])
    # What one more row adds to a shard (a shard's footer and schema are paid once, whatever its rows).
    one_shard = _build(store, tmp_path, shard_bytes=10**9, force=True).record["shards"][0]["bytes"]
    per_shard = max(s["bytes"] for s in _build(store, tmp_path, shard_bytes=1, force=True).record["shards"])
    one_row = (one_shard - per_shard) / 15
    full = int(8 * one_row)
    base = _build(store, tmp_path, shard_bytes=full, force=True)
    base_rows = [s["rows"] for s in base.record["shards"]]
    assert len(base_rows) >= 2 and base_rows[0] > 1
    for i in range(3):  # three small additions: three small shards, none merged
        _add(store, [f"r1_seg_{i:02d}"])
        b = _build(store, tmp_path, shard_bytes=full)
        assert (
            b.shards_written == 1
            and not b.plan.compacted
            and store.reads == [f"stage2_with_codes/{CH}/r1_seg_{i:02d}.npz"]
        )
    record = read_record(store, CH)
    assert [s["rows"] for s in record["shards"]] == base_rows + [1, 1, 1]
    small = [s for s in record["shards"] if s["bytes"] < full / 4]
    big = [s for s in record["shards"] if s["bytes"] >= full / 4]
    assert len(small) >= 3 and big
    kept = _shard_objects(store)
    c = _build(store, tmp_path, shard_bytes=full, compact=True)
    assert c.plan.compacted == small and c.plan.keep == big and len(store.reads) == sum(s["rows"] for s in small)
    record = read_record(store, CH)
    assert record["shards"][: len(big)] == big and sum(s["rows"] for s in record["shards"][len(big) :]) == sum(
        s["rows"] for s in small
    )
    assert len(record["shards"]) < len(big) + len(small)  # merged
    assert {k: v for k, v in _shard_objects(store).items() if k in kept} == {
        DATASET_PREFIX + s["path"]: kept[DATASET_PREFIX + s["path"]] for s in big
    }
    # Compacted once: asking again has nothing (or at most one small shard) to merge.
    assert plan_build(record, _objects(store), RowFilter(), full, compact=True).unchanged
    assert sorted(_rows(tmp_path / "store", CH, tmp_path / "c")) == sorted(
        (f"r{r}_seg_{i:02d}", f"نص r{r}_seg_{i:02d}") for r, n in ((0, 16), (1, 3)) for i in range(n)
    )


# ---- the asset: save_to_disk copy and the Hub follow --------------------------------------------


def test_asset_disk_copy_and_hub_push_follow_the_shards(tmp_path, small_row_groups, hub):  # noqa: F811  (the fixture)
    from neutts_assets.defs.resources import HuggingFaceHub
    from neutts_assets_tests.test_hf_hub_push import REPO, TOKEN

    (tmp_path / "source").mkdir()
    store = LocalStore(tmp_path / "store")
    resources = make_resources(str(tmp_path / "source"), str(tmp_path / "store"))
    resources["hub"] = HuggingFaceHub(hf_repo=REPO, token=TOKEN, endpoint=hub.url)
    instance = DagsterInstance.ephemeral()
    config = {"shard_size_mb": 1e-6, "save_to_disk": True}  # one row group (4 rows) per shard
    a_ids = [f"ra_seg_{i:02d}" for i in range(12)]
    _add(store, a_ids)
    _add(store, [f"rb_seg_{i:02d}" for i in range(4)], channel="other")
    run_dataset(instance, resources, CH, config)
    run_dataset(instance, resources, "other", config)
    repo = hub.repos[REPO]
    assert len(repo.commits) == 2 and len(repo.commits[0]["lfs_added"]) == 3
    disk = tmp_path / "store" / "hf_dataset_disk"

    def arrow(channel=CH):
        return {o.key: o.version for o in store.list(f"hf_dataset_disk/{channel}/") if o.key.endswith(".arrow")}

    def check(ids):
        parquet = _rows(tmp_path / "store", CH, tmp_path / f"cache-{len(ids)}")
        assert sorted(a for a, _ in parquet) == sorted(ids)
        one = load_from_disk(str(disk / CH))
        assert list(zip(one["audio_id"], one["text"])) == parquet  # same rows, same order as the Parquet config
        every = load_from_disk(str(disk))
        assert sorted(every["audio_id"]) == sorted(ids + [f"rb_seg_{i:02d}" for i in range(4)])
        assert len(_rows(tmp_path / "store", "all", tmp_path / f"cache-all-{len(ids)}")) == len(ids) + 4

    check(a_ids)
    arrow_before, other_before = arrow(), arrow("other")
    hub_files = {p: f["oid"] for p, f in repo.files.items()}

    # A recording added: one new shard, one new Arrow file, one LFS file in the commit.
    new_ids = [f"rc_seg_{i:02d}" for i in range(3)]
    _add(store, new_ids)
    meta = asset_metadata(run_dataset(instance, resources, CH, config), "hf_dataset")
    assert (meta["shards_kept"], meta["shards_written"], meta["segments_read"], meta["full_rebuild"]) == (
        3,
        1,
        3,
        False,
    )
    assert meta["save_to_disk_arrow_converted"] == 1 and meta["save_to_disk_arrow_kept"] == 3
    assert meta["bytes_written"] > 0 and meta["hub_files_added"] == 1 and meta["hub_files_deleted"] == 0
    record = read_record(store, CH)
    new_path = record["shards"][-1]["path"]
    last = repo.commits[-1]
    assert last["lfs_added"] == [new_path] and last["deleted"] == [] and last["added"] == ["README.md"]
    assert {p: f["oid"] for p, f in repo.files.items() if p in hub_files and p != "README.md"} == {
        p: o for p, o in hub_files.items() if p != "README.md"
    }  # every kept file as it was
    assert {k: v for k, v in arrow().items() if k in arrow_before} == arrow_before and len(arrow()) == 4
    assert arrow("other") == other_before
    check(a_ids + new_ids)

    # A segment removed: its shard (and Arrow file) replaced, in one commit that deletes the old one.
    gone = a_ids[5]
    (holder,) = [s["path"] for s in record["shards"] if any(m[0] == gone + ".npz" for m in s["members"])]
    store.delete(f"stage2_with_codes/{CH}/{gone}.npz")
    arrow_before = arrow()
    meta = asset_metadata(run_dataset(instance, resources, CH, config), "hf_dataset")
    assert (meta["shards_kept"], meta["shards_written"], meta["shards_rewritten"], meta["segments_read"]) == (
        3,
        1,
        1,
        3,
    )
    last = repo.commits[-1]
    assert last["deleted"] == [holder] and len(last["lfs_added"]) == 1 and holder not in repo.files
    stem = Path(holder).stem
    assert {k: v for k, v in arrow().items() if k in arrow_before} == {
        k: v for k, v in arrow_before.items() if stem not in k
    }
    assert not [k for k in arrow() if stem in k] and len(arrow()) == 4
    check([i for i in a_ids if i != gone] + new_ids)
    assert hub.file_bytes(REPO, new_path) == store.read_bytes(DATASET_PREFIX + new_path)


# ---- a kill mid-incremental-build ---------------------------------------------------------------

CHILD = textwrap.dedent(
    f"""
    import os, signal, sys
    from pathlib import Path
    from neutts_assets.pipeline.dataset import writer as dataset_writer
    from neutts_assets.pipeline.dataset.rows import RowFilter
    from neutts_assets.storage.local import LocalStore
    dataset_writer.ROW_GROUP_ROWS = 4
    store = LocalStore(sys.argv[1])
    calls = []
    def guard():  # called before each progress record: the second time, SIGKILL (shard 2 uploaded, no record of it)
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    objects = list(dataset_writer.segment_objects(store, "stage2_with_codes/{CH}/").values())
    dataset_writer.build_channel(store, "{CH}", objects, RowFilter(), Path(sys.argv[2]), "test", shard_bytes=1, workers=2,
                                 previous=dataset_writer.read_record(store, "{CH}"), guard=guard)
    print("not killed")
"""
)


def test_a_killed_incremental_build_resumes(tmp_path, small_row_groups):
    store = CountingStore(tmp_path / "store")
    _add(store, [f"r0_seg_{i:02d}" for i in range(8)])
    _build(store, tmp_path)
    kept = _shard_objects(store)
    _add(store, [f"r1_seg_{i:02d}" for i in range(12)])
    shutil.copytree(tmp_path / "store", tmp_path / "reference")
    (tmp_path / "child").mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "store"), str(tmp_path / "child")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    progress = json.loads(store.read_bytes(progress_key(CH)))
    assert progress["next"] == 4 and len(progress["shards"]) == 1
    assert read_record(store, CH)["shards"] == [
        s for s in read_record(LocalStore(tmp_path / "reference"), CH)["shards"]
    ]

    resumed = _build(store, tmp_path)
    assert resumed.resumed_shards == 1 and len(store.reads) == 8  # the 4 rows of the finished new shard not read again
    assert resumed.record["build_id"] == progress["build_id"] and store.read_bytes_or_none(progress_key(CH)) is None
    reference_store = CountingStore(tmp_path / "reference")
    reference = _build(reference_store, tmp_path)
    assert len(reference_store.reads) == 12
    members = lambda r: [[m[0] for m in s["members"]] for s in r["shards"]]  # noqa: E731
    assert members(resumed.record) == members(reference.record)
    assert resumed.record["stats"] == reference.record["stats"]
    # The kept shards untouched, the killed build's unlisted shard removed on publishing.
    after = _shard_objects(store)
    assert {k: v for k, v in after.items() if k in kept} == kept
    assert sorted(after) == sorted(DATASET_PREFIX + s["path"] for s in resumed.record["shards"])
    assert _rows(tmp_path / "store", CH, tmp_path / "c1") == _rows(tmp_path / "reference", CH, tmp_path / "c2")


# ---- the load_from_disk route from the command line ---------------------------------------------


def test_cli_save_to_disk_writes_the_copy_from_the_store(tmp_path, small_row_groups):
    store = CountingStore(tmp_path / "store")
    for channel in ("chan_x", "chan_y"):
        _add(store, [f"r_seg_{i:02d}" for i in range(6)], channel=channel)
        _build(store, tmp_path, channel=channel)
    env = {**os.environ, "NEUTTS_STORE": str(tmp_path / "store")}
    cli = [str(Path(sys.executable).parent / "neutts-assets"), "save-to-disk"]
    out = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    disk = tmp_path / "store" / "hf_dataset_disk"
    assert f"all channels: {disk}" in out.stdout and f"channel chan_x: {disk / 'chan_x'}" in out.stdout
    assert sorted(load_from_disk(str(disk))["audio_id"]) == sorted([f"r_seg_{i:02d}" for i in range(6)] * 2)
    assert load_from_disk(str(disk / "chan_y"))["audio_id"] == [
        a for a, _ in _rows(tmp_path / "store", "chan_y", tmp_path / "c")
    ]
    arrows = {o.key: o.version for o in store.list("hf_dataset_disk/") if o.key.endswith(".arrow")}
    assert len(arrows) == 4  # one per Parquet shard (6 rows in shards of 4)

    # After an incremental build of chan_x, only its new shard is converted; an unknown channel is an error.
    _add(store, ["r_seg_99"], channel="chan_x")
    _build(store, tmp_path, channel="chan_x")
    out = subprocess.run(cli + ["chan_x", "nope"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "'nope' has no published hf_dataset build" in out.stderr
    assert "1 converted, 2 kept" in out.stdout and "channel nope" not in out.stdout
    now = {o.key: o.version for o in store.list("hf_dataset_disk/") if o.key.endswith(".arrow")}
    assert {k: v for k, v in now.items() if k in arrows} == arrows and len(now) == 5
    assert len(load_from_disk(str(disk / "chan_x"))) == 7 and len(load_from_disk(str(disk))) == 13


# ---- splits in the incremental build ----------------------------------------------------------------


def _split_annotations(validation_fraction: float = 0.5):
    from neutts_assets.pipeline.dataset.annotations import Annotations
    from neutts_assets.pipeline.dataset.splits import SplitRule

    return Annotations(CH, SplitRule(validation_fraction))


def _two_split_ids(n_recordings: int = 6, per: int = 3) -> list[str]:
    """Segments of recordings that the 0.5 rule puts in both splits (asserted)."""
    ids = [f"r{r}_seg_{i}" for r in range(n_recordings) for i in range(per)]
    ann = _split_annotations()
    assert {ann.split(f"{a}.npz") for a in ids} == {"train", "validation"}
    return ids


def _split_build(store, tmp, shard_bytes=10**9, compact=False, previous="published"):
    work = tmp / f"w{len(list(tmp.glob('w*')))}"
    work.mkdir()
    return build_channel(
        store,
        CH,
        _objects(store),
        RowFilter(),
        work,
        "test",
        shard_bytes=shard_bytes,
        workers=2,
        previous=read_record(store, CH) if previous == "published" else previous,
        compact=compact,
        annotations=_split_annotations(),
    )


def test_each_shard_holds_one_split_in_its_folder(tmp_path):
    store = LocalStore(tmp_path / "store")
    ids = _two_split_ids()
    _add(store, ids)
    build = _split_build(store, tmp_path)
    publish_channel(store, build.record, "T")
    ann = _split_annotations()
    for shard in build.record["shards"]:
        assert shard["path"].startswith(f"data/{CH}/{shard['split']}/")
        assert {ann.split(m[0]) for m in shard["members"]} == {shard["split"]}
    assert sum(s["rows"] for s in build.record["shards"]) == len(ids)
    assert set(build.record["split_stats"]) == {"train", "validation"}


def test_a_build_killed_just_after_a_split_boundary_resumes_with_every_row(tmp_path, monkeypatch):
    """The progress saved when a change of split closes a shard must not count the row that caused
    it: that row is not in a shard yet."""
    store = LocalStore(tmp_path / "store")
    ids = _two_split_ids()
    _add(store, ids)
    original = dataset_writer._ChannelBuilder._save_progress

    class Killed(Exception):
        pass

    def save_then_die(self, next_read, shards):
        original(self, next_read, shards)
        raise Killed  # the run dies right after its first progress record

    monkeypatch.setattr(dataset_writer._ChannelBuilder, "_save_progress", save_then_die)
    with pytest.raises(Killed):
        _split_build(store, tmp_path)  # one big shard per split: the only progress is at the boundary
    monkeypatch.setattr(dataset_writer._ChannelBuilder, "_save_progress", original)
    resumed = _split_build(store, tmp_path)
    assert resumed.resumed_shards == 1
    publish_channel(store, resumed.record, "T")
    members = [m[0] for s in resumed.record["shards"] for m in s["members"]]
    assert sorted(members) == sorted(f"{a}.npz" for a in ids) and len(members) == len(set(members))


def test_compaction_merges_within_a_split_and_then_settles(tmp_path):
    store = LocalStore(tmp_path / "store")
    ids = _two_split_ids()
    for i in range(0, len(ids), 3):  # one small build per recording: small shards in both splits
        _add(store, ids[i : i + 3])
        publish_channel(store, _split_build(store, tmp_path).record, "T")
    before = read_record(store, CH)
    assert len(before["shards"]) == 6
    compacted = _split_build(store, tmp_path, compact=True)
    publish_channel(store, compacted.record, "T")
    after = read_record(store, CH)
    assert sorted(s["split"] for s in after["shards"]) == ["train", "validation"]  # one shard per split
    again = plan_build(after, _objects(store), RowFilter(), 10**9, compact=True, annotations=_split_annotations())
    assert again.unchanged and not again.compacted
