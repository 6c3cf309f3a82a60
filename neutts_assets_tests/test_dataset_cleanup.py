"""The opt-in clean-up job: deletes a channel's segments only after its dataset is verified."""

from __future__ import annotations

import shutil

from dagster import DagsterInstance

from neutts_assets.defs.dataset.cleanup import clean_up_segments
from neutts_assets.storage.local import LocalStore
from neutts_assets_tests.helpers import encode_stage2, make_resources, run_dataset
from neutts_assets_tests.test_hf_dataset import A, B, stage1_template  # noqa: F401  (the shared stage-1 fixture)


def _clean(instance, resources, channel, dry_run=False):
    return clean_up_segments.execute_in_process(
        partition_key=channel,
        instance=instance,
        resources={"store": resources["store"]},
        run_config={"ops": {"delete_channel_segments": {"config": {"dry_run": dry_run}}}},
        raise_on_error=False,
    )


def _failure(result) -> str:
    (event,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return str(event.event_specific_data.error)


def _objects(store, channel):
    return {o.key: o.size for p in (f"stage1/{channel}/", f"stage2_with_codes/{channel}/") for o in store.list(p)}


def test_cleanup_deletes_only_after_the_dataset_is_verified(stage1_template, tmp_path):  # noqa: F811
    shutil.copytree(stage1_template / "store", tmp_path / "store")
    store = LocalStore(tmp_path / "store")
    resources = make_resources(str(stage1_template / "source"), str(tmp_path / "store"))
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("channels", [A, B])
    encode_stage2(store, A)
    before = _objects(store, A)

    # No dataset yet: nothing deleted.
    result = _clean(instance, resources, A)
    assert not result.success and "no published hf_dataset" in _failure(result) and _objects(store, A) == before

    # A dataset that leaves segments out (duration range) is not a copy of them: nothing deleted.
    run_dataset(instance, resources, A, {"min_duration_s": 2.0})
    result = _clean(instance, resources, A)
    assert not result.success and "stage-1 segments" in _failure(result) and _objects(store, A) == before

    # A full dataset, but one shard damaged: nothing deleted.
    run_dataset(instance, resources, A)
    (shard,) = [o.key for o in store.list(f"hf_dataset/data/{A}/")]
    good = store.read_bytes(shard)
    store.write_bytes(shard, good[: len(good) // 2])
    result = _clean(instance, resources, A)
    assert not result.success and "unreadable" in _failure(result) and _objects(store, A) == before
    store.write_bytes(shard, good)

    # While a run of a writer of A holds its lease, nothing is verified or deleted.
    from neutts_assets.pipeline.orchestration.lease import acquire

    with acquire(store, "encoded_segments", A, "encoding-run"):
        result = _clean(instance, resources, A)
    assert (
        not result.success
        and "encoded_segments for channel 'Atheer_-' is already being materialized by run encoding-run"
        in _failure(result)
    )
    assert _objects(store, A) == before

    # Verified: a dry run reports, the real run deletes stage 1 and stage 2 of A only.
    b_before = _objects(store, B)
    assert _clean(instance, resources, A, dry_run=True).success and _objects(store, A) == before
    result = _clean(instance, resources, A)
    assert result.success
    out = result.output_for_node("delete_channel_segments")
    assert out["verified"] and out["rows_read_back"] == 7 and out["stage1_segments"] == 7 == out["stage2_segments"]
    assert out["objects_deleted"] == len(before) and out["bytes_freed"] == sum(before.values()) > 0
    assert _objects(store, A) == {} and _objects(store, B) == b_before
    # The dataset itself is untouched and still loads.
    from datasets import load_dataset

    assert (
        len(load_dataset(str(tmp_path / "store" / "hf_dataset"), A, split="train", cache_dir=str(tmp_path / "c"))) == 7
    )
