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

hf_dataset = AssetSpec(
    "hf_dataset",
    deps=["encoded_segments"],
    partitions_def=channels,
    tags={"machine": "t4", "status": "not-built-yet"},
    description="NOT BUILT YET (issue 4): the channel's rows as Parquet shards under data/{channel}/, pushed to the Hub.",
)
