"""The code location: `dagster dev` (see README) loads `defs` from here."""

from dagster import Definitions

from neutts_assets.defs.assets.dataset import hf_dataset
from neutts_assets.defs.assets.encoded import encoded_segments
from neutts_assets.defs.assets.pairs import training_pairs
from neutts_assets.defs.assets.raw_audio import raw_audio
from neutts_assets.defs.assets.segments import segments_npz
from neutts_assets.defs.checks import dataset_shards_present, encoded_segments_present, every_object_paired, segments_present_in_store
from neutts_assets.defs.io_managers import ManifestIOManager
from neutts_assets.defs.cleanup import clean_up_segments
from neutts_assets.defs.jobs import stage1_job
from neutts_assets.defs.orchestration.backfills import split_backfills_by_machine
from neutts_assets.defs.orchestration.sensors import new_audio_sensor, watch_settings_from_env
from neutts_assets.defs.resources import resources_from_env

_resources = resources_from_env()

defs = Definitions(
    assets=split_backfills_by_machine([raw_audio, segments_npz, encoded_segments, hf_dataset, training_pairs]),
    asset_checks=[every_object_paired, segments_present_in_store, encoded_segments_present, dataset_shards_present],
    jobs=[stage1_job, clean_up_segments],
    sensors=[new_audio_sensor],
    resources={
        **_resources,
        "manifest_io_manager": ManifestIOManager(store=_resources["store"]),
        "watch": watch_settings_from_env(),
    },
)
