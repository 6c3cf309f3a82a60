import statistics

from dagster import AssetExecutionContext, Config, Failure, MetadataValue, Output, asset
from pydantic import Field

from neutts_assets.defs.encoding.codec import NeuCodecResource
from neutts_assets.defs.leases import channel_lease
from neutts_assets.defs.metadata import grouped_tables, metadata_table, reason_counts, retry_metadata
from neutts_assets.defs.partitions import channels
from neutts_assets.defs.resources import SegmentStore
from neutts_assets.pipeline.encoding.codec import MIN_SAMPLES, RANDOM_LABEL, Codec, CodecUnavailable
from neutts_assets.pipeline.encoding.manifest import EncodedManifest, encoded_manifest
from neutts_assets.pipeline.encoding.store import (
    STAGE2_PREFIX,
    EncodePlan,
    Stage2Layout,
    plan_encoding,
)
from neutts_assets.pipeline.encoding.stream import EncodeTally, encode_stream
from neutts_assets.pipeline.orchestration.lease import Lease
from neutts_assets.pipeline.progress import Progress
from neutts_assets.pipeline.segments.manifest import SegmentsManifest
from neutts_assets.pipeline.segments.store import channel_prefix


class EncodeConfig(Config):
    prefix: str = Field(
        default=STAGE2_PREFIX, description="where stage 2 writes in the segment store (old: stage2_with_codes/)"
    )


@asset(
    partitions_def=channels,
    group_name="encoding",
    io_manager_key="manifest_io_manager",
    tags={"machine": "h200"},
    kinds={"pytorch"},
    description="Stage 2: every segment of the channel that lacks codes from the configured codec gets its NeuCodec "
    "VQ codes, streamed from the store in batches of one code count (the single-clip codes, exactly) and written "
    "under stage2_with_codes/{channel}/. Finished segments are never encoded twice; a codec change encodes again. "
    "Value: the manifest of the channel's encoded segments.",
)
def encoded_segments(
    context: AssetExecutionContext,
    config: EncodeConfig,
    segments_npz: SegmentsManifest,
    codec: NeuCodecResource,
    store: SegmentStore,
) -> Output[EncodedManifest]:
    # One run at a time writes a channel's objects for this asset; a second stops here (defs/leases.py).
    with channel_lease(context, store, "encoded_segments") as lease:
        return _encode_channel(context, config, segments_npz, codec, store, lease)


def _encode_channel(
    context: AssetExecutionContext,
    config: EncodeConfig,
    segments_npz: SegmentsManifest,
    codec: NeuCodecResource,
    store: SegmentStore,
    lease: Lease,
) -> Output[EncodedManifest]:
    """Plan from one listing of each stage; remove what stage 1 no longer has; encode the segments that
    lack this codec's codes; publish the manifest, or fail naming the segments a rerun retries; report."""
    channel = context.partition_key
    layout = Stage2Layout(channel, config.prefix if config.prefix.endswith("/") else config.prefix + "/")

    # The codec's label first (without weights nothing is written); the model itself only if there is work.
    try:
        label = codec.label()
    except CodecUnavailable as exc:
        raise _codec_failure(codec, exc) from exc

    dst = store.open()
    orphan_temporaries = dst.remove_orphan_temporaries()  # what writers killed mid-write left
    plan = _plan(context, dst, layout, label, segments_npz)
    _remove_orphans(dst, plan, lease)
    model = _load_model(codec, plan)
    if RANDOM_LABEL in label:
        context.log.warning(f"{label}: random weights, the codes are for tests only")
    tally = _encode(context, plan, model, dst, codec, lease)

    with_codes = set(plan.done) | {item.audio_id for item, _ in tally.encoded} | {item.audio_id for item in tally.kept}
    failed = [(key, reason) for key, reason in plan.missing_source] + tally.failed
    manifest = encoded_manifest(segments_npz, layout, label, RANDOM_LABEL in label, with_codes, plan.too_short, failed)
    where = f"{dst.describe()} {layout.channel_prefix}"
    metadata = {
        **_metadata(label, codec, model, plan, tally, manifest, failed, where, orphan_temporaries),
        **retry_metadata(store=dst),
    }
    if tally.store_failed:
        # Every other segment is written with its marker. Failing the run keeps a manifest that leaves
        # these out from being published; a rerun encodes only these.
        raise Failure(
            description=f"{channel}: {len(tally.store_failed)} segment(s) failed in the store; rerun to retry them: "
            + "; ".join(f"{audio_id}: {why}" for audio_id, why in sorted(tally.store_failed)[:5]),
            metadata={
                **metadata,
                "retryable_failures": metadata_table(["segment", "reason"], sorted(tally.store_failed)),
            },
        )
    return Output(manifest, metadata=metadata)


def _codec_failure(codec: NeuCodecResource, exc: CodecUnavailable) -> Failure:
    return Failure(description=str(exc), metadata={"codec_model": codec.model_id, "weights": codec.weights})


def _plan(
    context: AssetExecutionContext, dst, layout: Stage2Layout, label: str, segments_npz: SegmentsManifest
) -> EncodePlan:
    """What the run encodes, from one listing of each stage: no segment file is read to find out."""
    channel = context.partition_key
    sources = {o.key: (o.version, o.size) for o in dst.list(channel_prefix(channel)) if o.key.endswith(".npz")}
    stage2_keys = {o.key for o in dst.list(layout.channel_prefix)}
    plan = plan_encoding(segments_npz, layout, label, sources, stage2_keys, MIN_SAMPLES)
    context.log.info(
        f"{channel}: {len(plan.todo)} segments to encode with {label}, "
        f"{len(plan.done)} already encoded, {len(plan.too_short)} too short, {len(plan.missing_source)} missing"
    )
    return plan


def _remove_orphans(dst, plan: EncodePlan, lease: Lease) -> None:
    """Deletes the stage-2 files of segments stage 1 no longer has (then their markers), while the lease holds."""
    if plan.orphans:
        lease.check()
    for key in plan.orphans:
        dst.delete(key)


def _load_model(codec: NeuCodecResource, plan: EncodePlan) -> Codec | None:
    """The codec's model, loaded only when there is work: with nothing to encode no GPU is held."""
    if not plan.todo:
        return None
    try:
        return codec.load()
    except CodecUnavailable as exc:
        raise _codec_failure(codec, exc) from exc


def _encode(
    context: AssetExecutionContext, plan: EncodePlan, model: Codec | None, dst, codec: NeuCodecResource, lease: Lease
) -> EncodeTally:
    """Streams the plan's segments through the codec in batches, writing each file then its marker; every
    publishing step checks the lease (the host workers against its deadline)."""
    progress = Progress(context.log.info, len(plan.todo), f"{context.partition_key} encoding", unit="segments")
    settings = codec.stream_settings()
    return (
        encode_stream(
            plan.todo,
            model,
            dst,
            settings,
            on_batch=lambda n, seconds: progress.update(n, seconds, done=n),
            guard=lease.check,
            publish_deadline=lease.valid_until,
        )
        if plan.todo
        else EncodeTally()
    )


def _metadata(
    label: str,
    codec: NeuCodecResource,
    model: Codec | None,
    plan: EncodePlan,
    tally: EncodeTally,
    manifest: EncodedManifest,
    failed: list,
    where: str,
    orphans: int,
) -> dict:
    """The materialization's metadata, in the order the UI lists it: the codec, the segments, then the
    run's speed, its batches and where its time and bytes went."""
    return {
        "store": where,
        **_codec_metadata(label, codec, model),
        **_segment_metadata(plan, tally, manifest, failed, orphans),
        **_speed_metadata(tally),
        **_batch_metadata(tally),
        **_time_metadata(tally),
    }


def _codec_metadata(label: str, codec: NeuCodecResource, model: Codec | None) -> dict:
    return {
        "codec": label,
        "test_only_codes": MetadataValue.md(
            "**yes: random weights. These codes are for tests only; do not train on them.**"
            if RANDOM_LABEL in label
            else "no"
        ),
        # nothing to encode: the codec is not loaded (and holds no GPU)
        "codec_loaded": model is not None,
        "device": str(model.device) if model is not None else codec.resolved_device(),
        "dtype": codec.dtype,
        "w2v_bert_layers_trimmed": model.layers_trimmed if model is not None else 0,
    }


def _segment_metadata(
    plan: EncodePlan, tally: EncodeTally, manifest: EncodedManifest, failed: list, orphans: int
) -> dict:
    return {
        "segments_encoded": len(tally.encoded),
        "segments_already_encoded": len(plan.done),
        "segments_kept_after_check": len(tally.kept),
        "segments_skipped": len(plan.too_short),
        "segments_failed": len(failed),
        "segments_with_codes_in_channel": manifest.segment_count,
        "skip_reasons": reason_counts(reason.split(":")[0] for _, reason in plan.too_short),
        **grouped_tables("skipped_segments", ["segment", "reason"], plan.too_short, "segments skipped"),
        **grouped_tables(
            "failures", ["segment or object", "reason"], sorted(failed), "failures", reason=lambda row: row[1][:80]
        ),
        "stage2_objects_removed": len(plan.orphans),
        "orphan_temporaries_removed": orphans,
        "audio_hours_encoded": round(tally.audio_seconds / 3600, 4),
        "codes_in_channel": manifest.code_count,
    }


def _speed_metadata(tally: EncodeTally) -> dict:
    wall = tally.wall_seconds
    return {
        "segments_per_second": round(len(tally.encoded) / wall, 2) if wall else 0.0,
        "audio_seconds_per_second": round(tally.audio_seconds / wall, 1) if wall else 0.0,
        "encode_audio_seconds_per_second": round(sum(tally.batch_seconds) / tally.encode_seconds, 1)
        if tally.encode_seconds
        else 0.0,
        # time in codec calls / wall: below 1, the device waited for the host (or for the first batch)
        "device_busy_fraction": round(tally.device_busy_fraction, 3),
        "device_idle_seconds": round(tally.device_idle_seconds, 2),
    }


def _batch_metadata(tally: EncodeTally) -> dict:
    sizes = tally.batch_sizes or [0]
    return {
        "batches": len(tally.batch_sizes),
        "batch_segments_mean": round(statistics.fmean(sizes), 2),
        "batch_segments_max": max(sizes),
        "batch_audio_seconds_mean": round(statistics.fmean(tally.batch_seconds), 1) if tally.batch_seconds else 0.0,
        "batch_audio_seconds_limit": tally.batch_seconds_limit,
        "host_workers": tally.host_workers,
    }


def _time_metadata(tally: EncodeTally) -> dict:
    return {
        # host seconds per step, summed over the workers' threads: they overlap each other and the device
        "host_seconds_per_step": MetadataValue.json(
            {
                "read": round(tally.read_seconds, 2),
                "decode": round(tally.decode_seconds, 2),
                "prepare_batches": round(tally.prepare_seconds, 2),
                "stage2_file": round(tally.file_seconds, 2),
                "write": round(tally.write_seconds, 2),
            }
        ),
        "device_seconds_per_step": MetadataValue.json(
            {
                "features": round(tally.features_seconds, 2),
                "model": round(tally.model_seconds, 2),
            }
        ),
        "download_seconds": round(tally.download_seconds, 2),
        "encode_seconds": round(tally.encode_seconds, 2),
        "upload_seconds": round(tally.upload_seconds, 2),
        "wall_seconds": round(tally.wall_seconds, 2),
        "bytes_downloaded": tally.bytes_downloaded,
        "bytes_uploaded": tally.bytes_uploaded,
        "peak_inflight_mb": round(tally.peak_inflight_bytes / 1e6, 1),
    }
