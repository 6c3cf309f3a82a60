"""The graph's next steps, shown in the UI before they are built: visible, partitioned, and not
materializable, so nobody mistakes them for working stages."""

from dagster import AssetSpec

from neutts_assets.defs.partitions import channels

encoded_segments = AssetSpec(
    "encoded_segments",
    deps=["segments_npz"],
    partitions_def=channels,
    tags={"machine": "h200", "status": "not-built-yet"},
    description="NOT BUILT YET (issue 3): NeuCodec VQ codes for every segment, in GPU batches, under stage2_with_codes/.",
)
