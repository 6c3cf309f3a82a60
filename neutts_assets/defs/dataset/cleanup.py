"""The old workflow's "delete after success", as an opt-in job that nothing schedules: it deletes a
channel's stage-1 and stage-2 segment objects only after its published dataset is verified."""

import tempfile

from dagster import Config, Failure, OpExecutionContext, Output, job, op
from pydantic import Field

from neutts_assets.defs.io_managers import read_manifest
from neutts_assets.defs.leases import channel_lease
from neutts_assets.defs.partitions import channels
from neutts_assets.defs.resources import SegmentStore
from neutts_assets.pipeline.dataset.cleanup import clean_channel, verify_channel
from neutts_assets.pipeline.dataset.sources import encoded_prefix
from neutts_assets.pipeline.encoding.manifest import EncodedManifest


class CleanupConfig(Config):
    dry_run: bool = Field(default=False, description="verify and report what would be freed, delete nothing")


@op(
    description="Verify the channel's hf_dataset (every shard reads back, rows == segments, the same segments), "
    "then delete its stage-1 and stage-2 segment objects; report what was freed."
)
def delete_channel_segments(context: OpExecutionContext, config: CleanupConfig, store: SegmentStore) -> Output[dict]:
    # Nothing may write the channel's segments or dataset while they are verified and deleted: the
    # leases of all three writers, so a run of any of them meanwhile stops (and this one, if one runs).
    with (
        channel_lease(context, store, "segments_npz"),
        channel_lease(context, store, "encoded_segments"),
        channel_lease(context, store, "hf_dataset"),
    ):
        return _delete_channel_segments(context, config, store)


def _delete_channel_segments(context: OpExecutionContext, config: CleanupConfig, store: SegmentStore) -> Output[dict]:
    channel = context.partition_key
    dst = store.open()
    prefix = encoded_prefix(channel, read_manifest(dst, "encoded_segments", channel, EncodedManifest))
    with tempfile.TemporaryDirectory(prefix="neutts-verify-") as tmp:
        if config.dry_run:
            verification, deleted, freed = verify_channel(dst, channel, tmp, prefix), 0, 0
        else:
            report = clean_channel(dst, channel, tmp, prefix)
            verification, deleted, freed = report.verification, report.deleted, report.bytes_freed
    meta = {
        "verified": verification.ok,
        "rows_read_back": verification.rows,
        "shards_read": verification.shards_read,
        "stage1_segments": verification.stage1_segments,
        "stage2_segments": verification.stage2_segments,
        "objects_deleted": deleted,
        "bytes_freed": freed,
        "gb_freed": round(freed / 1e9, 3),
        "dry_run": config.dry_run,
    }
    if not verification.ok:
        raise Failure(
            description=f"channel {channel!r}: nothing deleted, the dataset is not verified: "
            + "; ".join(verification.problems),
            metadata=meta,
        )
    context.log.info(
        f"{channel}: {'would free' if config.dry_run else 'deleted'} {deleted} objects, {freed / 1e9:.3f} GB"
    )
    return Output({"channel": channel, **meta}, metadata=meta)


@job(
    partitions_def=channels,
    tags={"machine": "t4"},
    description="Opt-in: delete a channel's stage-1 and stage-2 segments once its hf_dataset is verified.",
)
def clean_up_segments():
    delete_channel_segments()
