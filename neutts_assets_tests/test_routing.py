"""The routing rule alone, and the code location's jobs and sensor carrying it."""

import os
from pathlib import Path

import pytest

from neutts_assets.defs.segments.jobs import stage1_job
from neutts_assets.pipeline.orchestration.routing import (
    MIXED_TAG,
    QUEUE_TAG,
    ROUTED_BY_TAG,
    UnknownMachineError,
    job_tags,
    machine_for,
    routing_tags,
)


def test_selection_decides_when_the_run_names_no_machine():
    assert routing_tags({}, ["t4"]) == {"machine": "t4", QUEUE_TAG: "t4", ROUTED_BY_TAG: "selection"}
    assert routing_tags({}, ["h200"])["machine"] == "h200"
    assert routing_tags({}, [])[ROUTED_BY_TAG] == "default" and routing_tags({}, [])["machine"] == "t4"


def test_an_explicit_machine_tag_wins_and_the_queue_follows_it():
    tags = routing_tags({"machine": "h200", QUEUE_TAG: "t4"}, ["t4"])
    assert tags == {QUEUE_TAG: "h200", ROUTED_BY_TAG: "run tag"}
    with pytest.raises(UnknownMachineError, match="'a100'"):
        routing_tags({"machine": "a100"}, ["t4"])


def test_a_mixed_selection_goes_to_the_gpu_machine_never_the_t4():
    tags = routing_tags({}, ["t4", "h200", "t4"])
    assert tags["machine"] == "h200" and tags[QUEUE_TAG] == "h200" and tags[MIXED_TAG] == "t4,h200"
    assert machine_for(["h200", "t4"]) == "h200"


def test_stage1_job_is_tagged_from_its_assets():
    assert stage1_job.tags == {"machine": "t4"} == job_tags(["t4", "t4"])


def test_h200_assets_get_a_backfill_policy_of_their_own():
    from dagster import AssetKey, BackfillPolicy, Definitions, asset

    from neutts_assets.defs.orchestration.backfills import H200_BACKFILL_POLICY, split_backfills_by_machine
    from neutts_assets.defs.partitions import channels

    @asset(tags={"machine": "h200"}, partitions_def=channels)
    def gpu(): ...

    @asset(tags={"machine": "t4"}, deps=[gpu], partitions_def=channels)
    def cpu(): ...

    split = split_backfills_by_machine([gpu, cpu])
    graph = Definitions(assets=split).resolve_asset_graph()
    assert graph.get(AssetKey("gpu")).backfill_policy == H200_BACKFILL_POLICY
    assert graph.get(AssetKey("cpu")).backfill_policy != H200_BACKFILL_POLICY

    @asset(tags={"machine": "t4"}, backfill_policy=BackfillPolicy.multi_run(1), partitions_def=channels)
    def would_group_with_gpu(): ...

    with pytest.raises(ValueError, match="would_group_with_gpu"):
        split_backfills_by_machine([would_group_with_gpu])


def test_the_run_queue_holds_the_h200_to_one_run_unless_configured():
    from neutts_assets.defs.orchestration.run_coordinator import MachineRoutingRunCoordinator

    def limits(**config):
        return (
            MachineRoutingRunCoordinator.from_config_value(None, config).get_run_queue_config().tag_concurrency_limits
        )

    assert limits() == [{"key": "machine", "value": "h200", "limit": 1}]
    assert {"key": "machine", "value": "h200", "limit": 2} in limits(machine_limits={"h200": 2, "t4": 3})
    assert {"key": "machine", "value": "t4", "limit": 3} in limits(machine_limits={"h200": 2, "t4": 3})
    with pytest.raises(UnknownMachineError):
        limits(machine_limits={"a100": 1})


def test_a_run_is_tagged_with_its_one_channel_whichever_partition_tag_it_carries():
    from neutts_assets.pipeline.orchestration.routing import channel_of

    assert channel_of({"dagster/partition": "ch"}) == "ch"  # UI, sensor, CLI launches
    # a backfill run of an asset with a backfill policy (the H200 assets): a range of one channel
    assert channel_of({"dagster/asset_partition_range_start": "ch", "dagster/asset_partition_range_end": "ch"}) == "ch"
    assert channel_of({"dagster/asset_partition_range_start": "a", "dagster/asset_partition_range_end": "b"}) is None
    assert channel_of({}) is None


@pytest.mark.parametrize("path", ["dagster.yaml", "deploy/dagster.yaml"])
def test_both_instances_queue_one_run_per_channel(path, monkeypatch):
    import yaml

    from neutts_assets.defs.orchestration.run_coordinator import MachineRoutingRunCoordinator

    monkeypatch.setenv("NEUTTS_H200_CONCURRENT_RUNS", "1")
    monkeypatch.setenv("NEUTTS_T4_CONCURRENT_RUNS", "2")
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / path).read_text())["run_coordinator"]["config"]
    config = {k: int(os.environ[v["env"]]) if isinstance(v, dict) and "env" in v else v for k, v in config.items()}
    config["machine_limits"] = {
        m: int(os.environ[v["env"]]) if isinstance(v, dict) else v
        for m, v in (config.get("machine_limits") or {}).items()
    }
    limits = MachineRoutingRunCoordinator.from_config_value(None, config).get_run_queue_config().tag_concurrency_limits
    assert {"key": "neutts/channel", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits
