import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Literal, Optional

from dagster import AssetExecutionContext, Config, DataVersion, Failure, Output, asset
from pydantic import Field

from neutts_assets.defs.leases import channel_lease
from neutts_assets.defs.metadata import grouped_tables, metadata_table, reason_counts, retry_metadata
from neutts_assets.defs.partitions import channels
from neutts_assets.defs.resources import SegmentStore, SourceBucket
from neutts_assets.pipeline.inventory.manifest import Inventory
from neutts_assets.pipeline.inventory.source_layout import UnsafeNameError, check_channel_name
from neutts_assets.pipeline.orchestration.lease import LeaseLost
from neutts_assets.pipeline.progress import Progress
from neutts_assets.pipeline.segments.cutting import CutRules
from neutts_assets.pipeline.segments.manifest import SegmentsManifest
from neutts_assets.pipeline.segments.recordings import (
    ChannelPlan,
    ChannelTally,
    Removal,
    channel_manifest,
    cut_recording,
    plan_channel,
    plan_removal,
)
from neutts_assets.pipeline.segments.segment_file import DEFAULT_AUDIO_FORMAT
from neutts_assets.pipeline.segments.store import channel_prefix, keys_by_recording, load_indexes
from neutts_assets.storage.store import ObjectChanged


class SegmentsConfig(Config):
    min_duration_s: float = Field(default=0.3, description="skip segments shorter than this (old default 0.3 s)")
    max_duration_s: Optional[float] = Field(default=None, description="skip segments longer than this; off by default")
    skip_empty_text: bool = Field(default=True, description="skip segments whose text is empty (old default)")
    audio_format: Literal["float32", "flac"] = Field(
        default=DEFAULT_AUDIO_FORMAT,
        description="float32: `audio` is the waveform, as the old scripts read it; flac: half the size, under "
        "`audio_flac`, no `audio` key (old readers fail loudly). A change re-cuts the channel.",
    )
    workers: int = Field(default=4, description="recordings downloaded, decoded and written at once")
    force: bool = Field(default=False, description="re-cut every recording, even unchanged ones")


@asset(
    partitions_def=channels,
    group_name="stage1",
    io_manager_key="manifest_io_manager",
    tags={"machine": "t4"},
    kinds={"numpy"},
    description="Stage 1: each new or changed recording is downloaded once, decoded once to 16 kHz mono "
    "and cut into one .npz per transcript segment under stage1/{channel}/. Unchanged recordings cost "
    "nothing; segments a new transcript no longer has are removed. Value: the segment manifest.",
)
def segments_npz(
    context: AssetExecutionContext,
    config: SegmentsConfig,
    raw_audio: Inventory,
    source: SourceBucket,
    store: SegmentStore,
) -> Output[SegmentsManifest]:
    # A partition added some other way than add-channel or the sensor (the UI) is checked before
    # anything, the lease included, is written under its name.
    try:
        check_channel_name(context.partition_key)
    except UnsafeNameError as exc:
        raise Failure(
            description=f"channel {context.partition_key!r} cannot be processed: {exc}; "
            "delete this partition and add the channel under a name without those characters",
            metadata={"channel": repr(context.partition_key), "reason": str(exc)},
        ) from None
    # One run at a time writes a channel's objects for this asset; a second stops here (defs/leases.py).
    with channel_lease(context, store, "segments_npz") as lease:
        return _cut_channel(context, config, raw_audio, source, store, lease.check)


def _cut_channel(
    context: AssetExecutionContext,
    config: SegmentsConfig,
    raw_audio: Inventory,
    source: SourceBucket,
    store: SegmentStore,
    guard: Callable[[], None],
) -> Output[SegmentsManifest]:
    """Plan from the inventory and the stored indexes; cut the new and changed recordings; publish the
    channel's manifest, or fail naming the recordings a rerun retries; report."""
    channel = context.partition_key
    inventory = raw_audio
    rules = CutRules(config.min_duration_s, config.max_duration_s, config.skip_empty_text, config.audio_format)
    src, dst = source.open(), store.open()

    orphans = dst.remove_orphan_temporaries()
    indexes = load_indexes(dst, channel)
    existing = {o.key for o in dst.list(channel_prefix(channel)) if o.key.endswith(".npz")}
    stored = keys_by_recording(channel, existing)
    plan = plan_channel(inventory.entries, indexes, rules, existing, force=config.force)
    context.log.info(
        f"{channel}: {len(plan.new)} new, {len(plan.changed)} changed, {len(plan.unchanged)} unchanged, "
        f"{len(plan.failed_unchanged)} failed before and unchanged"
    )

    tally = _unusable_inputs(inventory, plan, indexes)
    started = time.perf_counter()
    retry = _cut_recordings(context, plan, src, dst, rules, indexes, stored, tally, config.workers, guard)
    removal = _remove_gone(dst, channel, plan, indexes, stored, inventory, tally, guard)
    if removal.held_back:
        context.log.warning(f"{channel}: {removal.held_back}")
    wall = time.perf_counter() - started

    manifest = channel_manifest(channel, inventory.entries, indexes)
    metadata = {
        **_metadata(
            tally,
            plan,
            manifest,
            inventory,
            wall,
            orphans,
            removal,
            f"{dst.describe()} {channel_prefix(channel)}",
        ),
        **retry_metadata(source=src, store=dst),
    }
    if retry:
        # Everything else is written and indexed; failing the run keeps a partial manifest from being
        # published as the channel's, and a rerun redoes only these recordings.
        raise Failure(
            description=f"{channel}: {len(retry)} recording(s) failed for reasons that may pass; rerun to retry them: "
            + "; ".join(f"{obj}: {why}" for obj, why in sorted(retry)[:5]),
            metadata={**metadata, "retryable_failures": metadata_table(["object", "reason"], sorted(retry))},
        )
    return Output(manifest, data_version=DataVersion(manifest.version()), metadata=metadata)


def _unusable_inputs(inventory: Inventory, plan: ChannelPlan, indexes: dict) -> ChannelTally:
    """The run's tally, started with the inputs that could not be used at all: they are failures too,
    whether found now or on an earlier run."""
    tally = ChannelTally(
        failures=[(u.key, u.reason) for u in inventory.unpaired if u.kind == "transcript_without_audio"]
    )
    tally.failures += [
        (e.audio_key, indexes[e.recording_id].error + " (unchanged since the last run)") for e in plan.failed_unchanged
    ]
    return tally


def _cut_recordings(
    context: AssetExecutionContext,
    plan: ChannelPlan,
    src,
    dst,
    rules: CutRules,
    indexes: dict,
    stored: dict,
    tally: ChannelTally,
    workers: int,
    guard: Callable[[], None],
) -> list[tuple[str, str]]:
    """Cuts the plan's recordings, `workers` at a time: each result goes into `tally`, each new index
    into `indexes`. Returns the (object, reason) failures that may pass (store, decoder): nothing of
    them is published. A lost lease stops the run at once."""
    channel = context.partition_key
    progress = Progress(context.log.info, len(plan.todo), channel)
    retry = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {
            pool.submit(
                cut_recording,
                e,
                channel,
                src,
                dst,
                rules,
                indexes.get(e.recording_id),
                stored_keys=stored.get(e.recording_id, set()),
                guard=guard,
            ): e
            for e in plan.todo
        }
        for future in as_completed(futures):
            try:
                result = future.result()
            except LeaseLost:  # another run may own the channel now: stop, and leave the rest to it
                for f in futures:
                    f.cancel()
                raise
            except Exception as exc:  # the other recordings go on; this one is retried by the next run
                retry.append((futures[future].audio_key, _retry_reason(exc)))
                context.log.warning(f"{futures[future].audio_key}: {retry[-1][1]} (will be retried)")
                progress.update(0, 0.0)
                continue
            tally.add(result)
            if result.index is not None:
                indexes[result.recording_id] = result.index
            progress.update(
                len(result.index.segments) if result.index else 0, result.index.audio_seconds if result.index else 0.0
            )
    return retry


def _remove_gone(
    dst, channel: str, plan: ChannelPlan, indexes: dict, stored: dict, inventory: Inventory, tally: ChannelTally, guard
) -> Removal:
    """Removes the stage-1 objects of the recordings no longer in the source (plan_removal), each
    recording's while the lease holds; their segment files count in `segments_removed`."""
    removal = plan_removal(channel, plan.gone, indexes, stored, inventory)
    for rid, keys in removal.keys.items():
        guard()
        for key in keys:
            dst.delete(key)
        tally.removed += [k for k in keys if k.endswith(".npz")]
        indexes.pop(rid, None)
    return removal


def _retry_reason(exc: Exception) -> str:
    """What a failure that may pass is listed with; a source object replaced since the inventory names the fix."""
    hint = (
        " (materialize raw_audio with segments_npz to list the new version)" if isinstance(exc, ObjectChanged) else ""
    )
    return f"{type(exc).__name__}: {str(exc)[:300]}{hint}"


def _metadata(
    tally: ChannelTally,
    plan: ChannelPlan,
    manifest: SegmentsManifest,
    inventory: Inventory,
    wall: float,
    orphans: int,
    removal: Removal,
    where: str,
) -> dict:
    missing_audio = sum(u.kind == "transcript_without_audio" for u in inventory.unpaired)
    return {
        "store": where,
        "files_seen": len(inventory.entries) + missing_audio,
        "files_new": len(plan.new),
        "files_changed": len(plan.changed),
        "files_unchanged": len(plan.unchanged),
        "files_failed": len({obj for obj, _ in tally.failures}),
        "segments_written": tally.segments_written,
        "segments_already_written": tally.segments_kept,
        "segments_skipped": len(tally.skipped),
        "segments_removed": len(tally.removed),
        "segments_in_channel": manifest.segment_count,
        "skip_reasons": reason_counts(reason for _, reason, _ in tally.skipped),
        **grouped_tables(
            "skipped_segments",
            ["segment", "reason", "detail"],
            sorted(tally.skipped),
            "segments skipped",
            reason=lambda row: row[1],
        ),
        "failures": metadata_table(["object", "reason"], sorted(tally.failures)),
        # Input used, but not exactly as given (text cleaned, audio misnamed): nothing was lost but what it says.
        **grouped_tables("input_notes", ["segment or object", "note"], tally.notes, "notes", group=lambda row: row[2]),
        "audio_hours_processed": round(tally.audio_seconds / 3600, 4),
        "segment_hours_in_channel": round(manifest.segment_seconds / 3600, 4),
        "bytes_downloaded": tally.downloaded_bytes,
        "bytes_written": tally.written_bytes,
        # per worker: audio seconds decoded per second spent decoding, bytes written per second writing
        "decode_realtime_factor": round(tally.audio_seconds / tally.decode_seconds, 1) if tally.decode_seconds else 0.0,
        "write_mb_per_s": round(tally.written_bytes / 1e6 / tally.write_seconds, 2) if tally.write_seconds else 0.0,
        "audio_seconds_per_wall_second": round(tally.audio_seconds / wall, 1) if wall else 0.0,
        "wall_seconds": round(wall, 2),
        "orphan_temporaries_removed": orphans,
        # Deleted from the source, or out of its audio folder since the channel mapping changed: their
        # stage-1 files are removed (stage 2 and the quality scores follow on their next run).
        "recordings_gone_from_source": metadata_table(["recording", "segment files removed"], removal.segment_files),
        "gone_recordings_kept": removal.held_back or "no",
        "audio_choices": metadata_table(["recording", "audio used", "why"], sorted(tally.audio_choices)),
    }
