from dagster import AssetSelection, define_asset_job

# The old "Stage 1" on the T4: inventory and cut one channel.
stage1_job = define_asset_job(
    "stage1",
    selection=AssetSelection.assets("raw_audio", "segments_npz"),
    description="Inventory a channel's source objects and cut new or changed recordings into segments.",
)
