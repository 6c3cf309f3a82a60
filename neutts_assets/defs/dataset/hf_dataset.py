import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from dagster import AssetExecutionContext, Config, Failure, MetadataValue, Output, asset
from pydantic import Field

from neutts_assets.defs.io_managers import read_manifest
from neutts_assets.defs.leases import channel_lease
from neutts_assets.defs.metadata import metadata_table, reason_counts, retry_metadata
from neutts_assets.defs.partitions import channels
from neutts_assets.defs.resources import HuggingFaceHub, SegmentStore
from neutts_assets.pipeline.dataset.card import card_body, channel_section
from neutts_assets.pipeline.dataset.disk import disk_copy_current, save_channel_to_disk
from neutts_assets.pipeline.dataset.hub import HubPushError, PushResult, push_channel
from neutts_assets.pipeline.dataset.manifest import DatasetManifest, HubCommit
from neutts_assets.pipeline.dataset.rows import RowFilter
from neutts_assets.pipeline.dataset.sources import NoSegments, Sources, channel_sources
from neutts_assets.pipeline.dataset.store import DATASET_PREFIX, shard_prefix
from neutts_assets.pipeline.dataset.writer import (
    BuildPlan,
    ChannelBuild,
    build_channel,
    discard_build,
    fetch_shards,
    finish_publishing,
    plan_build,
    publish_channel,
    read_record,
    read_records,
)
from neutts_assets.pipeline.encoding.manifest import EncodedManifest
from neutts_assets.pipeline.progress import Progress
from neutts_assets.pipeline.segments.manifest import SegmentsManifest


class DatasetConfig(Config):
    include_segments_without_codes: bool = Field(
        default=False,
        description="the old 'no codes, for testing' option: every stage-1 segment, with codes where encoded",
    )
    min_duration_s: Optional[float] = Field(default=None, description="leave out shorter segments; off by default")
    max_duration_s: Optional[float] = Field(default=None, description="leave out longer segments; off by default")
    shard_size_mb: float = Field(default=500, description="target Parquet shard size")
    save_to_disk: bool = Field(default=False, description="also write the load_from_disk copy under hf_dataset_disk/")
    push_to_hub: bool = Field(default=True, description="push when the hub resource names a repo")
    workers: int = Field(default=8, description="segment files read at once")
    force: bool = Field(default=False, description="rebuild every shard, even those no segment change touched")
    compact: bool = Field(
        default=False,
        description="also rewrite the shards under a quarter of shard_size_mb together "
        "into full-size shards (never done otherwise: an incremental build adds new shards)",
    )


@asset(
    partitions_def=channels,
    group_name="dataset",
    # Both stages are upstream: with codes the rows come from encoded_segments' files, with the
    # no-codes option from segments_npz's. Their manifests are read from the store, so this asset
    # runs whichever of the two has been materialized.
    deps=["segments_npz", "encoded_segments"],
    io_manager_key="manifest_io_manager",
    tags={"machine": "t4"},
    kinds={"parquet", "huggingface"},
    description="The channel's rows as Parquet shards under hf_dataset/data/{channel}/, written in bounded "
    "memory, with a dataset card listing one config per channel plus 'all'; optionally a save_to_disk copy, "
    "and a push to the Hub as one commit.",
)
def hf_dataset(
    context: AssetExecutionContext, config: DatasetConfig, store: SegmentStore, hub: HuggingFaceHub
) -> Output[DatasetManifest]:
    # One run at a time writes a channel's objects for this asset; a second stops here (defs/leases.py).
    with channel_lease(context, store, "hf_dataset") as lease:
        return _build_dataset(context, config, store, hub, lease.check)


def _build_dataset(
    context: AssetExecutionContext,
    config: DatasetConfig,
    store: SegmentStore,
    hub: HuggingFaceHub,
    guard: Callable[[], None],
) -> Output[DatasetManifest]:
    channel = context.partition_key
    dst = store.open()
    # What a run killed mid-upload left: a shard's temporary file, or its unfinished multipart upload.
    orphan_temporaries = dst.remove_orphan_temporaries(shard_prefix(channel))
    try:
        sources = channel_sources(
            dst,
            channel,
            config.include_segments_without_codes,
            stage1_manifest=read_manifest(dst, "segments_npz", channel, SegmentsManifest),
            encoded_manifest=read_manifest(dst, "encoded_segments", channel, EncodedManifest),
        )
    except NoSegments as exc:
        raise Failure(description=str(exc)) from exc
    row_filter = RowFilter(not config.include_segments_without_codes, config.min_duration_s, config.max_duration_s)
    previous = read_record(dst, channel)
    shard_bytes = int(config.shard_size_mb * 1e6)
    # Pure planning from the record and two listings: which shards stay, which segments are read.
    present = {o.key[len(DATASET_PREFIX) :]: o.size for o in dst.list(shard_prefix(channel))}
    plan = plan_build(previous, sources.objects, row_filter, shard_bytes, config.compact, config.force, present)
    unchanged = plan.unchanged
    context.log.info(
        f"{channel}: {len(sources.objects)} segments from {sources.description}; "
        + ("unchanged since the published build" if unchanged else plan.summary())
    )

    build, removed, disk, push = None, [], None, None
    # Shards stay here until pushed (a channel's size on local disk when pushing; TMPDIR chooses where).
    with tempfile.TemporaryDirectory(prefix="neutts-dataset-") as tmp:
        work = Path(tmp)
        want_push = config.push_to_hub and bool(hub.hf_repo)
        if unchanged:
            record = previous
            removed = finish_publishing(dst, record, hub.title, guard)  # a run killed after the record left the rest
        else:
            progress = Progress(context.log.info, len(plan.read), channel)
            build = build_channel(
                dst,
                channel,
                sources.objects,
                row_filter,
                work,
                source=f"{dst.describe()} {sources.description}",
                shard_bytes=shard_bytes,
                workers=config.workers,
                keep_local=want_push or config.save_to_disk,
                progress=lambda n, s: progress.update(n, s),
                guard=guard,
                previous=previous,
                plan=plan,
            )
            record = build.record
            if build.store_failures:  # the store failed, not the segments: publish no build that lacks them
                discard_build(dst, record)
                raise Failure(
                    description=f"{channel}: {len(build.store_failures)} segment file(s) could not be read from the "
                    "store; nothing published, rerun to retry: "
                    + "; ".join(f"{k}: {why}" for k, why in build.store_failures[:5]),
                    metadata={
                        "retryable_failures": metadata_table(["object", "reason"], build.store_failures),
                        **retry_metadata(store=dst),
                    },
                )
            removed = publish_channel(dst, record, hub.title, guard)
        local = build.local_shards if build else {}
        if config.save_to_disk and not disk_copy_current(dst, record):
            guard()  # one Arrow file set per Parquet shard: only the new shards are converted
            disk = save_channel_to_disk(dst, record, work, local)
        if want_push:
            guard()  # the Hub's copy is published: only while this run still holds the channel
            try:
                push = push_channel(
                    record,
                    read_records(dst),
                    hub.hf_repo,
                    hub.token,
                    lambda wanted: fetch_shards(dst, record, work, local, wanted),
                    hub.title,
                    private=hub.private,
                    endpoint=hub.endpoint,
                    log=context.log.warning,
                )
            except HubPushError as exc:
                raise Failure(
                    description=str(exc),
                    metadata={
                        "dataset_folder": f"{dst.describe()} {DATASET_PREFIX}",
                        "build_id": record["build_id"],
                        "rows": record["stats"]["rows"],
                        "hub_repo": hub.hf_repo,
                    },
                ) from exc
            context.log.info(f"{channel}: pushed to {hub.hf_repo}: {push.commit_url}")

    manifest = DatasetManifest.of(channel, record, HubCommit(push.repo_id, push.commit_oid) if push else None)
    metadata = _metadata(dst, record, sources, plan, build, removed, disk, push, hub.title, orphan_temporaries)
    return Output(manifest, metadata={**metadata, **retry_metadata(store=dst)})


def _metadata(
    dst,
    record: dict,
    sources: Sources,
    plan: BuildPlan,
    build: Optional[ChannelBuild],
    removed: list,
    disk: Optional[dict],
    push: Optional[PushResult],
    title: str,
    orphan_temporaries: int,
) -> dict:
    stats = record["stats"]
    failures = sources.missing + (build.failures if build else [])
    meta = {
        "dataset_folder": f"{dst.describe()} {DATASET_PREFIX}",
        "rebuilt": build is not None,
        "build_id": record["build_id"],
        "rows": stats["rows"],
        "segments_seen": record["segments_seen"],
        "segments_skipped": record["segments_skipped"],
        "segments_failed": len(failures),
        "segments_not_encoded_yet": sources.not_encoded,
        "skip_reasons": reason_counts(reason for _, reason in (build.skipped if build else [])),
        "failures": metadata_table(["object", "reason"], sorted(failures)),
        "hours": stats["hours"],
        "speakers": stats["speakers"],
        "shards": len(record["shards"]),
        "dataset_bytes": sum(s["bytes"] for s in record["shards"]),
        "old_shards_removed": len(removed),
        "build_plan": "unchanged" if build is None else plan.summary(),
        "full_rebuild": build is not None and plan.full,
        "shards_kept": len(record["shards"]) if build is None else len(plan.keep),
        "shards_written": build.shards_written if build else 0,
        "shards_rewritten": len(plan.rewritten) if build else 0,  # held a changed or removed segment
        "shards_compacted": len(plan.compacted) if build else 0,
        "segments_read": build.segments_read if build else 0,
        "bytes_written": build.bytes_written if build else 0,
        "orphan_temporaries_removed": orphan_temporaries,
        "codec": ", ".join(stats["codecs"]) or "none (rows without codes)",
        "channel_card": MetadataValue.md(channel_section(record)),
        "dataset_card": MetadataValue.md(card_body(list(read_records(dst).values()), title)),
    }
    if build is not None:
        meta["shards_resumed"] = build.resumed_shards  # finished by a killed run of the same build, kept
        meta["wall_seconds"] = round(build.wall_seconds, 2)
        meta["rows_per_second"] = round(stats["rows"] / build.wall_seconds, 1) if build.wall_seconds else 0.0
        meta["mb_read_per_second"] = (
            round(build.bytes_read / 1e6 / build.wall_seconds, 2) if build.wall_seconds else 0.0
        )
    if disk is not None:
        meta["save_to_disk_copy"] = (
            f"{dst.describe()} {disk['folder']} ({disk['arrow_files']} Arrow files: "
            f"{disk['converted']} converted, {disk['kept']} kept)"
        )
        meta["save_to_disk_arrow_converted"] = disk["converted"]
        meta["save_to_disk_arrow_kept"] = disk["kept"]
    if push is not None:
        meta["hub_repo"] = push.repo_id
        meta["hub_commit"] = (
            MetadataValue.url(push.commit_url) if push.commit_url.startswith("http") else push.commit_url
        )
        meta["hub_files_added"] = len(push.added)
        meta["hub_files_deleted"] = len(push.deleted)
        meta["hub_files_already_there"] = len(push.already_on_hub)
    return meta
