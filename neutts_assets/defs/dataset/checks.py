"""The dataset stage's asset check: dataset_shards_present."""

from dagster import AssetCheckExecutionContext, AssetCheckResult, asset_check

from neutts_assets.defs.dataset.hf_dataset import hf_dataset
from neutts_assets.defs.metadata import metadata_table
from neutts_assets.defs.partitions import channels
from neutts_assets.defs.resources import SegmentStore
from neutts_assets.pipeline.dataset.store import DATASET_PREFIX, shard_prefix
from neutts_assets.pipeline.dataset.writer import read_record


@asset_check(
    asset=hf_dataset,
    partitions_def=channels,
    description="Every shard the channel's published build lists is in the store, at its recorded size.",
)
def dataset_shards_present(context: AssetCheckExecutionContext, store: SegmentStore) -> AssetCheckResult:
    dst = store.open()
    record = read_record(dst, context.partition_key)
    if record is None:
        return AssetCheckResult(passed=False, metadata={"problem": "no published build for this channel"})
    sizes = {o.key: o.size for o in dst.list(shard_prefix(context.partition_key))}
    wrong = [
        (
            s["path"],
            "missing"
            if DATASET_PREFIX + s["path"] not in sizes
            else f"{sizes[DATASET_PREFIX + s['path']]} bytes, recorded {s['bytes']}",
        )
        for s in record["shards"]
        if sizes.get(DATASET_PREFIX + s["path"]) != s["bytes"]
    ]
    return AssetCheckResult(
        passed=not wrong,
        metadata={
            "shards": len(record["shards"]),
            "build_id": record["build_id"],
            "problems": metadata_table(["shard", "problem"], wrong),
        },
    )
