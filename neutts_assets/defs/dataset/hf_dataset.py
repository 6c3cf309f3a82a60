import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from dagster import AssetExecutionContext, Config, Failure, MetadataValue, Output, asset
from pydantic import Field

from neutts_assets.defs.io_managers import read_manifest
from neutts_assets.defs.leases import channel_lease
from neutts_assets.defs.metadata import grouped_tables, metadata_table, reason_counts, retry_metadata
from neutts_assets.defs.partitions import channels
from neutts_assets.defs.resources import DatasetSplit, HuggingFaceHub, SegmentStore
from neutts_assets.pipeline.dataset.annotations import Annotations
from neutts_assets.pipeline.dataset.card import card_body, channel_section, quality_in_order
from neutts_assets.pipeline.dataset.disk import disk_copy_current, save_channel_to_disk
from neutts_assets.pipeline.dataset.hub import HubPushError, PushResult, push_channel
from neutts_assets.pipeline.dataset.manifest import DatasetManifest, HubCommit
from neutts_assets.pipeline.dataset.rows import QUALITY_FILTERS, RowFilter
from neutts_assets.pipeline.dataset.sources import NoSegments, Sources, channel_sources
from neutts_assets.pipeline.dataset.splits import SplitSettingsError
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
from neutts_assets.pipeline.inventory.manifest import Inventory
from neutts_assets.pipeline.progress import Progress
from neutts_assets.pipeline.quality.distribution import QUANTILE_HEADERS, QUANTILE_NAMES
from neutts_assets.pipeline.quality.scoring import read_documents
from neutts_assets.pipeline.segments.manifest import SegmentsManifest
from neutts_assets.pipeline.segments.store import load_indexes


class DatasetConfig(Config):
    include_segments_without_codes: bool = Field(
        default=False,
        description="the old 'no codes, for testing' option: every stage-1 segment, with codes where encoded",
    )
    min_duration_s: Optional[float] = Field(default=None, description="leave out shorter segments; off by default")
    max_duration_s: Optional[float] = Field(default=None, description="leave out longer segments; off by default")
    # Quality thresholds (segment_quality's scores), all off by default; what they leave out is counted
    # in the metadata and on the card. A row without the score a threshold is on is left out.
    min_speech_ratio: Optional[float] = Field(default=None, description="leave out rows with less speech (VAD)")
    min_snr_db: Optional[float] = Field(default=None, description="leave out rows with a lower SNR estimate")
    max_clipping_fraction: Optional[float] = Field(default=None, description="leave out rows clipping more")
    min_dnsmos_sig: Optional[float] = Field(default=None, description="DNSMOS P.835 signal threshold")
    min_dnsmos_bak: Optional[float] = Field(default=None, description="DNSMOS P.835 background threshold")
    min_dnsmos_ovrl: Optional[float] = Field(default=None, description="DNSMOS P.835 overall threshold")
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
    deps=["segments_npz", "encoded_segments", "segment_quality"],
    io_manager_key="manifest_io_manager",
    tags={"machine": "t4"},
    kinds={"parquet", "huggingface"},
    description="The channel's rows as Parquet shards under hf_dataset/data/{channel}/{split}/, written in "
    "bounded memory: the users' columns, then each row's speaker-disjoint split, quality scores (segment_quality) "
    "and lineage. A dataset card lists one config per channel plus 'all', with each split and each score's "
    "distribution; optionally a save_to_disk copy, and a push to the Hub as one commit.",
)
def hf_dataset(
    context: AssetExecutionContext,
    config: DatasetConfig,
    store: SegmentStore,
    hub: HuggingFaceHub,
    dataset_split: DatasetSplit,
) -> Output[DatasetManifest]:
    # One run at a time writes a channel's objects for this asset; a second stops here (defs/leases.py).
    with channel_lease(context, store, "hf_dataset") as lease:
        return _build_dataset(context, config, store, hub, dataset_split, lease.check)


def _build_dataset(
    context: AssetExecutionContext,
    config: DatasetConfig,
    store: SegmentStore,
    hub: HuggingFaceHub,
    dataset_split: DatasetSplit,
    guard: Callable[[], None],
) -> Output[DatasetManifest]:
    """Plan from the published record, two listings and the rows' annotations; build and publish the
    changed shards (or finish the publishing a killed run left); make the load_from_disk copy and push
    to the Hub; report."""
    channel = context.partition_key
    dst = store.open()
    # What a run killed mid-upload left: a shard's temporary file, or its unfinished multipart upload.
    orphan_temporaries = dst.remove_orphan_temporaries(shard_prefix(channel))
    sources = _sources(dst, channel, config.include_segments_without_codes)
    row_filter = _row_filter(config)
    annotations = _annotations(dst, channel, dataset_split)
    previous = read_record(dst, channel)
    shard_bytes = int(config.shard_size_mb * 1e6)
    # Pure planning from the record, two listings and the annotations: which shards stay, which segments are read.
    present = {o.key[len(DATASET_PREFIX) :]: o.size for o in dst.list(shard_prefix(channel))}
    plan = plan_build(
        previous, sources.objects, row_filter, shard_bytes, config.compact, config.force, present, annotations
    )
    context.log.info(
        f"{channel}: {len(sources.objects)} segments from {sources.description}; "
        + ("unchanged since the published build" if plan.unchanged else plan.summary())
    )

    build, disk, push = None, None, None
    # Shards stay here until pushed (a channel's size on local disk when pushing; TMPDIR chooses where).
    with tempfile.TemporaryDirectory(prefix="neutts-dataset-") as tmp:
        work = Path(tmp)
        want_push = config.push_to_hub and bool(hub.hf_repo)
        if plan.unchanged:
            record = previous
            removed = finish_publishing(dst, record, hub.title, guard)  # a run killed after the record left the rest
        else:
            keep_local = want_push or config.save_to_disk  # the push and the disk copy read the new shards here
            build = _build_shards(
                context,
                config,
                dst,
                sources,
                row_filter,
                shard_bytes,
                work,
                keep_local,
                guard,
                previous,
                plan,
                annotations,
            )
            record = build.record
            removed = publish_channel(dst, record, hub.title, guard)
        local = build.local_shards if build else {}
        if config.save_to_disk and not disk_copy_current(dst, record):
            guard()  # one Arrow file set per Parquet shard: only the new shards are converted
            disk = save_channel_to_disk(dst, record, work, local)
        if want_push:
            guard()  # the Hub's copy is published: only while this run still holds the channel
            push = _push(context, dst, hub, record, work, local)

    manifest = DatasetManifest.of(channel, record, HubCommit(push.repo_id, push.commit_oid) if push else None)
    metadata = _metadata(dst, record, sources, plan, build, removed, disk, push, hub.title, orphan_temporaries)
    return Output(manifest, metadata={**metadata, **retry_metadata(store=dst)})


def _row_filter(config: DatasetConfig) -> RowFilter:
    return RowFilter(
        not config.include_segments_without_codes,
        config.min_duration_s,
        config.max_duration_s,
        **{name: getattr(config, name) for name in QUALITY_FILTERS},
    )


def _annotations(dst, channel: str, dataset_split: DatasetSplit) -> Annotations:
    """Each row's split, scores and lineage: stage 1's recording indexes, segment_quality's documents,
    and the transcripts' keys from the inventory (for indexes written before they kept them)."""
    try:
        rule = dataset_split.rule()
    except SplitSettingsError as exc:
        raise Failure(description=f"the dataset_split resource cannot split: {exc}") from exc
    inventory = read_manifest(dst, "raw_audio", channel, Inventory)
    transcripts = {e.recording_id: e.transcript_key for e in inventory.entries} if inventory else {}
    return Annotations(channel, rule, load_indexes(dst, channel), read_documents(dst, channel), transcripts)


def _sources(dst, channel: str, include_segments_without_codes: bool) -> Sources:
    """The segment files the rows come from: encoded_segments' (with codes), or with the no-codes option
    segments_npz's; a channel with neither fails the run."""
    try:
        return channel_sources(
            dst,
            channel,
            include_segments_without_codes,
            stage1_manifest=read_manifest(dst, "segments_npz", channel, SegmentsManifest),
            encoded_manifest=read_manifest(dst, "encoded_segments", channel, EncodedManifest),
        )
    except NoSegments as exc:
        raise Failure(description=str(exc)) from exc


def _build_shards(
    context: AssetExecutionContext,
    config: DatasetConfig,
    dst,
    sources: Sources,
    row_filter: RowFilter,
    shard_bytes: int,
    work: Path,
    keep_local: bool,
    guard: Callable[[], None],
    previous: Optional[dict],
    plan: BuildPlan,
    annotations: Annotations,
) -> ChannelBuild:
    """Writes the plan's shards and the build's record, not yet published. Segment files the store could
    not read fail the run with the build discarded: the segments are not at fault, and a rerun retries."""
    channel = context.partition_key
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
        keep_local=keep_local,
        progress=lambda n, s: progress.update(n, s),
        guard=guard,
        previous=previous,
        plan=plan,
        annotations=annotations,
    )
    if build.store_failures:  # the store failed, not the segments: publish no build that lacks them
        discard_build(dst, build.record)
        raise Failure(
            description=f"{channel}: {len(build.store_failures)} segment file(s) could not be read from the "
            "store; nothing published, rerun to retry: "
            + "; ".join(f"{k}: {why}" for k, why in build.store_failures[:5]),
            metadata={
                "retryable_failures": metadata_table(["object", "reason"], build.store_failures),
                **retry_metadata(store=dst),
            },
        )
    return build


def _push(
    context: AssetExecutionContext, dst, hub: HuggingFaceHub, record: dict, work: Path, local: dict
) -> PushResult:
    """Pushes the channel's shards and the dataset card to the Hub as one commit (shards not kept in
    `local` are fetched from the store into `work` as the push wants them)."""
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
    context.log.info(f"{context.partition_key}: pushed to {hub.hf_repo}: {push.commit_url}")
    return push


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
    """The materialization's metadata, in the order the UI lists it: the rows, the build's work, the
    cards, then the build's speed, the load_from_disk copy and the push where there were any."""
    stats = record["stats"]
    meta = {
        "dataset_folder": f"{dst.describe()} {DATASET_PREFIX}",
        "rebuilt": build is not None,
        "build_id": record["build_id"],
        "rows": stats["rows"],
        **_segment_counts(record, sources, build),
        "hours": stats["hours"],
        "speakers": stats["speakers"],
        "shards": len(record["shards"]),
        "splits": _splits_table(record),
        "rows_without_quality_scores": stats.get("quality", {}).get("speech_ratio", {}).get("unscored", 0),
        "quality": _quality_table(stats),
        "dataset_bytes": sum(s["bytes"] for s in record["shards"]),
        "old_shards_removed": len(removed),
        **_build_work(record, plan, build),
        "orphan_temporaries_removed": orphan_temporaries,
        "codec": ", ".join(stats["codecs"]) or "none (rows without codes)",
        "channel_card": MetadataValue.md(channel_section(record)),
        "dataset_card": MetadataValue.md(card_body(list(read_records(dst).values()), title)),
    }
    if build is not None:
        meta.update(_build_speed(stats, build))
    if disk is not None:
        meta.update(_disk_copy(dst, disk))
    if push is not None:
        meta.update(_hub_push(push))
    return meta


def _splits_table(record: dict):
    split_stats = record.get("split_stats") or {}
    return metadata_table(
        ["split", "rows", "hours", "speakers"],
        [(split, st["rows"], st["hours"], st["speakers"]) for split, st in split_stats.items()],
    )


def _quality_table(stats: dict):
    """Each score's quantiles over the channel's rows (the card has the histograms)."""
    rows = []
    for name, q in quality_in_order(stats).items():
        qs = q["quantiles"] or {}
        rows.append((name, q["scored"], q["unscored"], *(qs.get(k) for k in QUANTILE_NAMES)))
    return metadata_table(["score", "scored", "not scored", *QUANTILE_HEADERS], rows)


def _segment_counts(record: dict, sources: Sources, build: Optional[ChannelBuild]) -> dict:
    """What became of the channel's segments: rows, skipped (and why) or failed."""
    failures = sources.missing + (build.failures if build else [])
    return {
        "segments_seen": record["segments_seen"],
        "segments_skipped": record["segments_skipped"],
        "segments_failed": len(failures),
        "segments_not_encoded_yet": sources.not_encoded,
        "skip_reasons": reason_counts(reason for _, reason in (build.skipped if build else [])),
        **grouped_tables(
            "failures", ["object", "reason"], sorted(failures), "failures", reason=lambda row: row[1][:80]
        ),
    }


def _build_work(record: dict, plan: BuildPlan, build: Optional[ChannelBuild]) -> dict:
    """What this run's build did, by the plan: shards kept, written, rewritten and compacted; all zero
    (and every shard kept) when the published build was unchanged."""
    return {
        "build_plan": "unchanged" if build is None else plan.summary(),
        "full_rebuild": build is not None and plan.full,
        "shards_kept": len(record["shards"]) if build is None else len(plan.keep),
        "shards_written": build.shards_written if build else 0,
        "shards_rewritten": len(plan.rewritten) if build else 0,  # held a changed or removed segment
        "shards_compacted": len(plan.compacted) if build else 0,
        "segments_read": build.segments_read if build else 0,
        "bytes_written": build.bytes_written if build else 0,
    }


def _build_speed(stats: dict, build: ChannelBuild) -> dict:
    wall = build.wall_seconds
    return {
        "shards_resumed": build.resumed_shards,  # finished by a killed run of the same build, kept
        "wall_seconds": round(wall, 2),
        "rows_per_second": round(stats["rows"] / wall, 1) if wall else 0.0,
        "mb_read_per_second": round(build.bytes_read / 1e6 / wall, 2) if wall else 0.0,
    }


def _disk_copy(dst, disk: dict) -> dict:
    return {
        "save_to_disk_copy": f"{dst.describe()} {disk['folder']} ({disk['arrow_files']} Arrow files: "
        f"{disk['converted']} converted, {disk['kept']} kept)",
        "save_to_disk_arrow_converted": disk["converted"],
        "save_to_disk_arrow_kept": disk["kept"],
    }


def _hub_push(push: PushResult) -> dict:
    return {
        "hub_repo": push.repo_id,
        "hub_commit": MetadataValue.url(push.commit_url) if push.commit_url.startswith("http") else push.commit_url,
        "hub_files_added": len(push.added),
        "hub_files_deleted": len(push.deleted),
        "hub_files_already_there": len(push.already_on_hub),
    }
