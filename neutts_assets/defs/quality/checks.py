"""The quality stage's asset check: quality_scores_cover_segments."""

from dagster import AssetCheckExecutionContext, AssetCheckResult, asset_check

from neutts_assets.defs.io_managers import read_manifest
from neutts_assets.defs.metadata import metadata_table
from neutts_assets.defs.partitions import channels
from neutts_assets.defs.quality.segment_quality import segment_quality
from neutts_assets.defs.resources import SegmentStore
from neutts_assets.pipeline.quality.manifest import QualityManifest
from neutts_assets.pipeline.quality.scoring import read_documents
from neutts_assets.pipeline.segments.manifest import SegmentsManifest
from neutts_assets.pipeline.segments.store import segment_name


@asset_check(
    asset=segment_quality,
    partitions_def=channels,
    description="Every segment of the segments_npz manifest has a score entry (or the reason it has none) "
    "made by the scorer version of the last materialization.",
)
def quality_scores_cover_segments(
    context: AssetCheckExecutionContext, segment_quality: QualityManifest, store: SegmentStore
) -> AssetCheckResult:
    dst = store.open()
    channel = context.partition_key
    stage1 = read_manifest(dst, "segments_npz", channel, SegmentsManifest)
    expected = {segment_name(s.key) for s in stage1.segments} if stage1 else set()
    documents = read_documents(dst, channel)
    current = {n for d in documents.values() if d.scorer == segment_quality.scorer for n in d.segments}
    missing = sorted(expected - current)
    return AssetCheckResult(
        passed=not missing,
        metadata={
            "segments_expected": len(expected),
            "segments_scored": len(expected & current),
            "scorer": segment_quality.scorer,
            "missing": metadata_table(["segment"], [(n,) for n in missing]),
        },
    )
