"""The encoding stage's asset check: encoded_segments_present."""

from dagster import AssetCheckExecutionContext, AssetCheckResult, asset_check

from neutts_assets.defs.encoding.encoded_segments import encoded_segments
from neutts_assets.defs.metadata import metadata_table
from neutts_assets.defs.partitions import channels
from neutts_assets.defs.resources import SegmentStore
from neutts_assets.pipeline.encoding.manifest import EncodedManifest
from neutts_assets.pipeline.encoding.store import Stage2Layout


@asset_check(
    asset=encoded_segments,
    partitions_def=channels,
    description="Every segment in the manifest has its stage-2 file and the marker of the manifest's codec.",
)
def encoded_segments_present(
    context: AssetCheckExecutionContext, encoded_segments: EncodedManifest, store: SegmentStore
) -> AssetCheckResult:
    layout = Stage2Layout(context.partition_key, encoded_segments.stage2_prefix)
    listed = {o.key for o in store.open().list(layout.channel_prefix)}
    marker_folder = layout.codec_marker_prefix(encoded_segments.codec)
    marked = {k[len(marker_folder) :].rpartition("@")[0] for k in listed if k.startswith(marker_folder)}
    segments = encoded_segments.segments
    missing = sorted(s.key for s in segments if s.key not in listed or s.audio_id not in marked)
    return AssetCheckResult(
        passed=not missing,
        metadata={
            "segments_expected": len(segments),
            "codec": encoded_segments.codec,
            "test_only_codes": encoded_segments.test_only_codes,
            "missing_or_unmarked": metadata_table(["key"], [(k,) for k in missing]),
        },
    )
