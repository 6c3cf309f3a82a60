import statistics
from typing import Callable

from dagster import AssetExecutionContext, Config, Failure, MetadataValue, Output, asset
from pydantic import Field

from neutts_assets.core.codec import MIN_SAMPLES, Codec, CodecUnavailable
from neutts_assets.core.progress import Progress
from neutts_assets.core.segment_store import channel_prefix
from neutts_assets.core.stage2 import EncodeTally, encode_stream
from neutts_assets.core.stage2_store import STAGE2_PREFIX, EncodePlan, Stage2Layout, encoded_manifest, plan_encoding
from neutts_assets.defs.codec import NeuCodecResource
from neutts_assets.defs.leases import channel_lease
from neutts_assets.defs.metadata import md_table, reason_counts, retry_metadata
from neutts_assets.defs.partitions import channels
from neutts_assets.defs.resources import SegmentStore


class EncodeConfig(Config):
    prefix: str = Field(default=STAGE2_PREFIX, description="where stage 2 writes in the segment store (old: stage2_with_codes/)")


@asset(
    partitions_def=channels,
    io_manager_key="manifest_io_manager",
    tags={"machine": "h200"},
    kinds={"pytorch"},
    description="Stage 2: every segment of the channel that lacks codes from the configured codec gets its NeuCodec "
    "VQ codes, streamed from the store in batches of one code count (the single-clip codes, exactly) and written "
    "under stage2_with_codes/{channel}/. Finished segments are never encoded twice; a codec change encodes again. "
    "Value: the manifest of the channel's encoded segments.",
)
def encoded_segments(
    context: AssetExecutionContext, config: EncodeConfig, segments_npz: dict, codec: NeuCodecResource, store: SegmentStore
) -> Output[dict]:
    # One run at a time writes a channel's objects for this asset; a second stops here (defs/leases.py).
    with channel_lease(context, store, "encoded_segments") as lease:
        return _encode_channel(context, config, segments_npz, codec, store, lease.check)


def _encode_channel(
    context: AssetExecutionContext, config: EncodeConfig, segments_npz: dict, codec: NeuCodecResource, store: SegmentStore,
    guard: Callable[[], None],
) -> Output[dict]:
    channel = context.partition_key
    layout = Stage2Layout(channel, config.prefix if config.prefix.endswith("/") else config.prefix + "/")

    # The codec first: without weights nothing is written.
    try:
        model = codec.load()
    except CodecUnavailable as exc:
        raise Failure(description=str(exc), metadata={"codec_model": codec.model_id, "weights": codec.weights}) from exc
    if model.test_only:
        context.log.warning(f"{model.label}: random weights, the codes are for tests only")

    dst = store.open()
    orphan_temporaries = dst.remove_orphan_temporaries()  # what writers killed mid-write left
    sources = {o.key: (o.version, o.size) for o in dst.list(channel_prefix(channel)) if o.key.endswith(".npz")}
    stage2_keys = {o.key for o in dst.list(layout.channel_prefix)}
    plan = plan_encoding(segments_npz, layout, model.label, sources, stage2_keys, MIN_SAMPLES)
    context.log.info(
        f"{channel}: {len(plan.todo)} segments to encode with {model.label} on {model.device}, "
        f"{len(plan.done)} already encoded, {len(plan.too_short)} too short, {len(plan.missing_source)} missing"
    )
    if plan.orphans:
        guard()
    for key in plan.orphans:  # stage-2 files of segments stage 1 no longer has
        dst.delete(key)

    progress = Progress(context.log.info, len(plan.todo), f"{channel} encoding", unit="segments")
    tally = encode_stream(plan.todo, model, dst, codec.stream_settings(),
                          on_batch=lambda n, seconds: progress.update(n, seconds, done=n), guard=guard)

    with_codes = set(plan.done) | {item.audio_id for item, _ in tally.encoded} | {item.audio_id for item in tally.kept}
    failed = [(key, reason) for key, reason in plan.missing_source] + tally.failed
    manifest = encoded_manifest(segments_npz, layout, model.label, model.test_only, with_codes, plan.too_short, failed)
    metadata = {**_metadata(model, plan, tally, manifest, failed, f"{dst.describe()} {layout.channel_prefix}", orphan_temporaries),
                **retry_metadata(store=dst)}
    if tally.store_failed:
        # Every other segment is written with its marker. Failing the run keeps a manifest that leaves
        # these out from being published; a rerun encodes only these.
        raise Failure(
            description=f"{channel}: {len(tally.store_failed)} segment(s) failed in the store; rerun to retry them: "
            + "; ".join(f"{audio_id}: {why}" for audio_id, why in sorted(tally.store_failed)[:5]),
            metadata={**metadata, "retryable_failures": md_table(["segment", "reason"], sorted(tally.store_failed))},
        )
    return Output(manifest, metadata=metadata)


def _metadata(model: Codec, plan: EncodePlan, tally: EncodeTally, manifest: dict, failed: list, where: str, orphans: int) -> dict:
    wall = tally.wall_seconds
    sizes = tally.batch_sizes or [0]
    return {
        "store": where,
        "codec": model.label,
        "test_only_codes": MetadataValue.md(
            "**yes: random weights. These codes are for tests only; do not train on them.**" if model.test_only else "no"
        ),
        "device": str(model.device),
        "dtype": model.settings.dtype,
        "w2v_bert_layers_trimmed": model.layers_trimmed,
        "segments_encoded": len(tally.encoded),
        "segments_already_encoded": len(plan.done),
        "segments_kept_after_check": len(tally.kept),
        "segments_skipped": len(plan.too_short),
        "segments_failed": len(failed),
        "segments_with_codes_in_channel": manifest["segment_count"],
        "skip_reasons": reason_counts(reason.split(":")[0] for _, reason in plan.too_short),
        "skipped_segments": md_table(["segment", "reason"], plan.too_short, empty="nothing skipped"),
        "failures": md_table(["segment or object", "reason"], sorted(failed), empty="no failures"),
        "stage2_objects_removed": len(plan.orphans),
        "orphan_temporaries_removed": orphans,
        "audio_hours_encoded": round(tally.audio_seconds / 3600, 4),
        "codes_in_channel": manifest["code_count"],
        "segments_per_second": round(len(tally.encoded) / wall, 2) if wall else 0.0,
        "audio_seconds_per_second": round(tally.audio_seconds / wall, 1) if wall else 0.0,
        "encode_audio_seconds_per_second": round(sum(tally.batch_seconds) / tally.encode_seconds, 1) if tally.encode_seconds else 0.0,
        "batches": len(tally.batch_sizes),
        "batch_segments_mean": round(statistics.fmean(sizes), 2),
        "batch_segments_max": max(sizes),
        "batch_audio_seconds_mean": round(statistics.fmean(tally.batch_seconds), 1) if tally.batch_seconds else 0.0,
        # download and upload threads overlap encoding: their sums can exceed the wall time
        "download_seconds": round(tally.download_seconds, 2),
        "encode_seconds": round(tally.encode_seconds, 2),
        "upload_seconds": round(tally.upload_seconds, 2),
        "wall_seconds": round(wall, 2),
        "bytes_downloaded": tally.bytes_downloaded,
        "bytes_uploaded": tally.bytes_uploaded,
        "peak_inflight_mb": round(tally.peak_inflight_bytes / 1e6, 1),
    }
