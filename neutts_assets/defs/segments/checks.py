"""The segments stage's asset check: segments_present_in_store."""

from dagster import AssetCheckExecutionContext, AssetCheckResult, asset_check

from neutts_assets.defs.metadata import metadata_table
from neutts_assets.defs.partitions import channels
from neutts_assets.defs.resources import SegmentStore
from neutts_assets.defs.segments.segments_npz import segments_npz
from neutts_assets.pipeline.segments.manifest import SegmentsManifest
from neutts_assets.pipeline.segments.store import channel_prefix


@asset_check(
    asset=segments_npz, partitions_def=channels, description="Every segment in the manifest exists in the store."
)
def segments_present_in_store(
    context: AssetCheckExecutionContext, segments_npz: SegmentsManifest, store: SegmentStore
) -> AssetCheckResult:
    listed = {o.key for o in store.open().list(channel_prefix(context.partition_key)) if o.key.endswith(".npz")}
    expected = {s.key for s in segments_npz.segments}
    missing = sorted(expected - listed)
    return AssetCheckResult(
        passed=not missing,
        metadata={
            "segments_expected": len(expected),
            "segments_found": len(listed & expected),
            # Present but not in the manifest: cuts of recordings that left the source. Not an error.
            "segments_not_in_manifest": len(listed - expected),
            "missing": metadata_table(["key"], [(k,) for k in missing]),
        },
    )
