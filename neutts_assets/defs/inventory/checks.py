"""The inventory stage's asset check: every_object_paired."""

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, asset_check

from neutts_assets.defs.inventory.raw_audio import raw_audio
from neutts_assets.defs.partitions import channels
from neutts_assets.pipeline.inventory.manifest import Inventory


@asset_check(
    asset=raw_audio,
    partitions_def=channels,
    description="Every transcript has its audio and every audio object its transcript.",
)
def every_object_paired(context: AssetCheckExecutionContext, raw_audio: Inventory) -> AssetCheckResult:
    inventory = raw_audio
    # A warning, not an error: the channel is still usable, but someone should look at the source bucket.
    by_kind = {}
    for u in inventory.unpaired:
        by_kind[u.kind] = by_kind.get(u.kind, 0) + 1
    return AssetCheckResult(
        passed=not inventory.unpaired,
        severity=AssetCheckSeverity.WARN,
        metadata={"recordings": len(inventory.entries), **{f"unpaired_{k}": v for k, v in sorted(by_kind.items())}},
    )
