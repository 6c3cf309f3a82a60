"""training_pairs: the channel's voice-cloning (ref, target) pairs from its published dataset
(the work is pipeline/pairs/training_pairs.py; this is the Dagster side: config, lease, metadata)."""

import tempfile
import time
from pathlib import Path
from typing import Optional

from dagster import (
    AssetExecutionContext,
    Config,
    Failure,
    MetadataValue,
    Output,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
)
from pydantic import Field

from neutts_assets.defs.leases import channel_lease
from neutts_assets.defs.metadata import retry_metadata
from neutts_assets.defs.partitions import channels
from neutts_assets.defs.resources import HuggingFaceHub, SegmentStore
from neutts_assets.pipeline.dataset.writer import read_record
from neutts_assets.pipeline.pairs.manifest import PairsManifest
from neutts_assets.pipeline.pairs.store import folder
from neutts_assets.pipeline.pairs.training_pairs import (
    PairsBuild,
    PairSettings,
    build_and_publish,
    finish_publishing,
    is_current,
    local_path,
    read_pair_record,
)


class TrainingPairsConfig(Config):
    min_duration_sec: float = Field(default=0.5, description="shortest segment paired (inclusive)")
    max_duration_sec: float = Field(default=15.0, description="longest segment paired (inclusive)")
    min_segments_per_speaker: int = Field(default=2, description="a (recording, speaker) group with fewer is left out")
    max_pairs_per_speaker: Optional[int] = Field(
        default=None, description="at most this many pairs per speaker, a seeded sample; None: every ordered pair"
    )
    random_seed: int = Field(default=42, description="seed of the per-speaker sample (with max_pairs_per_speaker)")
    include_audio: bool = Field(default=False, description="also ref_audio / target_audio (Audio, 16 kHz): much larger")
    force: bool = Field(default=False, description="rebuild even when the dataset build and the settings are unchanged")

    def settings(self) -> PairSettings:
        return PairSettings(
            self.min_duration_sec,
            self.max_duration_sec,
            self.min_segments_per_speaker,
            self.max_pairs_per_speaker,
            self.random_seed,
            self.include_audio,
        )


@asset(
    partitions_def=channels,
    group_name="dataset",
    deps=["hf_dataset"],  # read from the store: the channel's published dataset record and shards
    io_manager_key="manifest_io_manager",
    tags={"machine": "t4"},
    kinds={"huggingface"},
    description="The channel's voice-cloning (ref, target) pairs, as the users' pair builder makes them, as a "
    "load_from_disk folder under training_pairs/{channel}/, built in memory bounded by the channel's rows.",
)
def training_pairs(
    context: AssetExecutionContext, config: TrainingPairsConfig, store: SegmentStore, hub: HuggingFaceHub
) -> Output[PairsManifest]:
    with channel_lease(context, store, "training_pairs") as lease:
        return _build(context, config, store, hub, lease.check)


def _build(
    context, config: TrainingPairsConfig, store: SegmentStore, hub: HuggingFaceHub, guard
) -> Output[PairsManifest]:
    """The pairs of the channel's published dataset build: kept when already published with these settings
    (finishing what a killed run left), built and published otherwise; report."""
    channel = context.partition_key
    dst = store.open()
    settings = _settings(config)
    dataset = _published_dataset(dst, channel)
    previous = read_pair_record(dst, channel)
    started = time.perf_counter()
    if not config.force and is_current(dst, previous, dataset["build_id"], settings):
        context.log.info(
            f"{channel}: pairs of dataset build {dataset['build_id']} with these settings already published"
        )
        record, rebuilt, incremental = previous, False, {}
        removed = finish_publishing(dst, record, hub.title, guard)  # a run killed after the record left the rest
    else:
        build = _build_pairs(context, config, dst, settings, dataset, hub.title, guard)
        record, rebuilt, removed = build.record, True, build.removed
        incremental = _incremental(build)
    wall = time.perf_counter() - started

    manifest = PairsManifest.of(channel, record)
    metadata = _metadata(dst, channel, record, rebuilt, removed, incremental, wall)
    return Output(manifest, metadata={**metadata, **retry_metadata(store=dst)})


def _settings(config: TrainingPairsConfig) -> PairSettings:
    try:
        return config.settings()
    except ValueError as exc:  # a negative max_pairs_per_speaker or random_seed
        raise Failure(description=str(exc)) from exc


def _published_dataset(dst, channel: str) -> dict:
    dataset = read_record(dst, channel)
    if dataset is None:
        raise Failure(description=f"channel {channel!r} has no published dataset: materialize hf_dataset first")
    return dataset


def _build_pairs(
    context, config: TrainingPairsConfig, dst, settings: PairSettings, dataset: dict, title: str, guard
) -> PairsBuild:
    """Builds the pairs files in a temporary folder and publishes them with their record. A shard that
    went away while it was read (the dataset republished meanwhile) fails the run: a rerun pairs the new build."""
    channel = context.partition_key
    with tempfile.TemporaryDirectory(prefix="neutts-pairs-") as tmp:
        try:
            return build_and_publish(
                dst, channel, settings, Path(tmp), title, guard, log=context.log.info, force=config.force
            )
        except FileNotFoundError as exc:  # hf_dataset published another build (and removed shards) meanwhile
            raise Failure(
                description=f"{channel}: a shard of dataset build {dataset['build_id']} went away while "
                f"it was read ({exc}); the dataset was republished meanwhile: rerun"
            ) from exc


def _incremental(build: PairsBuild) -> dict:
    """What this run's build kept and wrote (shown only when it built)."""
    return {
        "full_rebuild": build.plan.full,
        "files_kept": len(build.plan.keep),
        "files_written": build.files_written,
        "dataset_shards_read": build.shards_read,
        "recordings_paired": build.recordings_paired,
    }


def _metadata(dst, channel: str, record: dict, rebuilt: bool, removed: list, incremental: dict, wall: float) -> dict:
    """The materialization's metadata, in the order the UI lists it: the pair counts, the folder, the
    build's work and the top speakers; the local path where the store is a local folder."""
    counts = record["counts"]
    per = counts["pairs_per_speaker"]
    metadata = {
        "rebuilt": rebuilt,
        "build_id": record["build_id"],
        "dataset_build_id": record["dataset_build_id"],
        "pairs": counts["pairs"],
        "speakers": counts["speakers"],
        "speakers_dropped": counts["speakers_dropped"],
        "pairs_per_speaker_min": per["min"],
        "pairs_per_speaker_median": per["median"],
        "pairs_per_speaker_max": per["max"],
        "rows_used": counts["rows_used"],
        "rows_eligible": counts["rows_eligible"],
        "rows_in_dataset": counts["rows_in_dataset"],
        "include_audio": record["settings"]["include_audio"],
        "settings": MetadataValue.json(record["settings"]),
        "folder": f"{dst.describe()} {folder(channel)}",
        "bytes": record["bytes"],
        "arrow_files": len(record["arrow_files"]),
        "old_files_removed": len(removed),
        **incremental,
        "wall_seconds": round(wall, 2),
        "top_speakers": _top_speakers(record["top_speakers"]),
    }
    path = local_path(dst, channel)
    if path is not None:
        metadata["local_path"] = MetadataValue.path(path)  # what load_from_disk opens
    return metadata


def _top_speakers(rows: list[dict]) -> MetadataValue:
    return MetadataValue.table(
        records=[TableRecord(data=s) for s in rows],
        schema=TableSchema(
            columns=[
                TableColumn("recording", "string"),
                TableColumn("speaker_id", "string"),
                TableColumn("segments", "int"),
                TableColumn("pairs", "int"),
            ]
        ),
    )
