from dagster import AssetsDefinition, AssetSelection, define_asset_job

from neutts_assets.defs.inventory.raw_audio import raw_audio
from neutts_assets.defs.segments.segments_npz import segments_npz
from neutts_assets.pipeline.orchestration.routing import MACHINE_TAG, job_tags

STAGE1_ASSETS: list[AssetsDefinition] = [raw_audio, segments_npz]


def machine_classes(assets: list[AssetsDefinition]) -> set[str]:
    return {spec.tags[MACHINE_TAG] for a in assets for spec in a.specs if MACHINE_TAG in spec.tags}


# The old "Stage 1" on the T4: inventory and cut one channel. Its machine tag comes from its assets'
# tags; the run coordinator would set it anyway, but the launchpad then shows it up front.
stage1_job = define_asset_job(
    "stage1",
    selection=AssetSelection.assets(*STAGE1_ASSETS),
    description="Inventory a channel's source objects and cut new or changed recordings into segments.",
    tags=job_tags(machine_classes(STAGE1_ASSETS)),
)
