import functools

from dagster import AssetExecutionContext, Config, Failure, Output, asset
from pydantic import Field

from neutts_assets.defs.leases import channel_lease
from neutts_assets.defs.metadata import grouped_tables, metadata_table, reason_counts, retry_metadata
from neutts_assets.defs.partitions import channels
from neutts_assets.defs.resources import QualityScoring, SegmentStore
from neutts_assets.pipeline.dataset.writer import segment_objects
from neutts_assets.pipeline.progress import Progress
from neutts_assets.pipeline.quality.manifest import QualityManifest
from neutts_assets.pipeline.quality.scoring import (
    SCORE_BATCH,
    ScoringPlan,
    ScoringResult,
    documents_after,
    failures_of,
    plan_scoring,
    read_documents,
    score_channel,
)
from neutts_assets.pipeline.segments.manifest import SegmentsManifest
from neutts_assets.pipeline.segments.store import channel_prefix


class QualityConfig(Config):
    workers: int = Field(default=4, description="segment files read at once")
    force: bool = Field(default=False, description="score every segment again, even unchanged ones")


@functools.lru_cache(maxsize=4)
def _scorer(dnsmos: bool, device: str):
    """One scorer per process and setting: the models load once, not once per run."""
    from neutts_assets.pipeline.quality.scores import Scorer

    return Scorer(dnsmos=dnsmos, device=device, vad_batch=SCORE_BATCH)


def _device(device: str) -> str:
    if device != "auto":
        return device
    try:
        import onnxruntime

        return "cuda" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"
    except ImportError:
        return "cpu"


@asset(
    partitions_def=channels,
    group_name="stage1",
    io_manager_key="manifest_io_manager",
    # On the T4, beside stage 1: it reads the stage-1 files while the H200 encodes them, so the scores
    # cost the critical path nothing (bench/quality.py; pipeline/quality/scoring.py says why).
    tags={"machine": "t4"},
    kinds={"numpy"},
    description="Quality scores of every stage-1 segment (speech ratio from silero-vad, SNR, clipping, "
    "BS.1770 loudness, characters per second; DNSMOS P.835 when configured), one JSON document per "
    "recording under segment_quality/{channel}/. Only new or changed segments, or all of them under a new "
    "scorer version, are scored. hf_dataset puts the scores on every row and can filter on them.",
)
def segment_quality(
    context: AssetExecutionContext,
    config: QualityConfig,
    segments_npz: SegmentsManifest,
    store: SegmentStore,
    quality: QualityScoring,
) -> Output[QualityManifest]:
    # One run at a time writes a channel's scores; a second stops here (defs/leases.py).
    with channel_lease(context, store, "segment_quality") as lease:
        return _score(context, config, segments_npz, store, quality, lease.check)


def _score(context, config: QualityConfig, segments_npz: SegmentsManifest, store, quality, guard):
    """Plan from the stage-1 manifest, a listing and the documents; score what changed; report."""
    channel = context.partition_key
    dst = store.open()
    listed = segment_objects(dst, channel_prefix(channel))
    objects = [listed[s.key] for s in segments_npz.segments if s.key in listed]
    scorer = _scorer(quality.dnsmos, _device(quality.device))
    documents = read_documents(dst, channel)
    plan = plan_scoring(channel, objects, documents, scorer.version, config.force)
    context.log.info(f"{channel}: {plan.summary()}")
    progress = Progress(context.log.info, plan.to_score, channel)
    cpu_before = dict(scorer.cpu_seconds)  # the scorer lives as long as the process: this run's share
    result = score_channel(
        dst, plan, scorer.score_batch, channel, config.workers, guard, lambda n, s: progress.update(n, s)
    )
    documents = documents_after(channel, documents, result)
    failures = failures_of(documents.values())
    if result.retryable:  # the store failed, not the segments: what was scored is kept, a rerun does the rest
        raise Failure(
            description=f"{channel}: {len(result.retryable)} segment file(s) could not be read from the store; "
            "the other recordings' scores are written, rerun to score the rest",
            metadata={
                "retryable_failures": metadata_table(["object", "reason"], result.retryable),
                **retry_metadata(store=dst),
            },
        )
    manifest = QualityManifest.of(channel, scorer.version, documents)
    cpu = {part: scorer.cpu_seconds[part] - cpu_before.get(part, 0.0) for part in scorer.cpu_seconds}
    return Output(manifest, metadata={**_metadata(plan, result, manifest, failures, cpu), **retry_metadata(store=dst)})


def _metadata(plan: ScoringPlan, result: ScoringResult, manifest: QualityManifest, failures, cpu: dict) -> dict:
    hours = result.audio_seconds / 3600
    return {
        "scorer": plan.scorer,
        "segments": manifest.segments,
        "segments_scored_now": result.scored,
        "segments_unchanged": plan.kept,
        "recordings_written": result.recordings_written,
        "documents_removed": len(result.removed),
        "segments_failed": len(failures),
        "failure_reasons": reason_counts(reason for _, reason in failures),
        **grouped_tables(
            "failures", ["segment", "reason"], failures, "segments failed", reason=lambda row: row[1][:80]
        ),
        "audio_hours_scored": round(hours, 4),
        "scoring_seconds": round(result.scoring_seconds, 2),
        "scoring_cpu_s_per_audio_hour": round(result.scoring_seconds / hours, 1) if hours else 0.0,
        # Process CPU seconds of each score this run: where the scoring time goes.
        "cpu_seconds_by_score": metadata_table(
            ["score", "cpu_seconds", "cpu_s_per_audio_hour"],
            [(part, round(sec, 3), round(sec / hours, 1) if hours else 0.0) for part, sec in cpu.items()],
        ),
    }
