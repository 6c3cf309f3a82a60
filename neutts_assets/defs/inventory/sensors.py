"""The new-audio sensor: watches the source bucket and starts stage 1 for the channels that changed.

Each tick lists (never downloads) the transcripts folders under processed_runs/ and the audio folder
of every watched channel, finds the objects not seen before (core.source_watch), adds new channels as
partitions, and requests one stage-1 run per affected channel, keyed by exactly those objects.
"""

from __future__ import annotations

from datetime import timedelta

from dagster import (
    ConfigurableResource,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)
from pydantic import Field

from neutts_assets import settings as S
from neutts_assets.defs.partitions import channels as channels_partitions
from neutts_assets.defs.resources import ChannelSettings, SourceBucket
from neutts_assets.defs.segments.jobs import stage1_job
from neutts_assets.pipeline.inventory.source_layout import UnsafeNameError
from neutts_assets.pipeline.inventory.source_watch import (
    TRANSCRIPTS_ROOT,
    WatchCursor,
    changed_channels,
    channels_in,
    new_objects,
)

FOUND_TAG = "neutts/sensor-found"


class SourceWatchSettings(ConfigurableResource):
    """What the new-audio sensor watches (from the environment: watch_settings_from_env)."""

    channels: list[str] = S.WATCH_CHANNELS.pydantic_field()
    overlap_minutes: float = Field(
        default=10.0,
        description="how far below the newest `updated` time objects are still compared by name and generation",
    )

    def allows(self, channel: str) -> bool:
        return not self.channels or channel in self.channels


def _interval_seconds() -> int:
    return S.WATCH_INTERVAL_S.read()


def _default_status() -> DefaultSensorStatus:
    # Off in the embedded default (the demo needs no watcher); production turns it on from its env.
    return DefaultSensorStatus.RUNNING if S.WATCH_ENABLED.read() else DefaultSensorStatus.STOPPED


def watch_settings_from_env() -> SourceWatchSettings:
    return SourceWatchSettings(**S.values(S.WATCH))


@sensor(
    job=stage1_job,
    minimum_interval_seconds=_interval_seconds(),
    default_status=_default_status(),
    description="Lists the source bucket (names and generations only, no downloads); adds new channels as "
    "partitions and starts stage 1 for each channel with new or changed audio or transcripts.",
)
def new_audio_sensor(
    context: SensorEvaluationContext,
    source: SourceBucket,
    channel_settings: ChannelSettings,
    watch: SourceWatchSettings,
) -> SensorResult:
    bucket = source.open()
    transcripts = list(bucket.list(TRANSCRIPTS_ROOT))
    found = {c for c in channels_in(transcripts) if watch.allows(c)}
    audio_prefixes = set()
    for channel in found:
        try:
            audio_prefixes.add(channel_settings.layout(channel).audio_prefix)
        except UnsafeNameError:
            pass  # changed_channels names it among the rejected channels
    listed = transcripts + [o for prefix in sorted(audio_prefixes) for o in bucket.list(prefix)]

    cursor = WatchCursor.from_json(context.cursor)
    fresh, next_cursor = new_objects(listed, cursor, timedelta(minutes=watch.overlap_minutes))
    known = context.instance.get_dynamic_partitions(channels_partitions.name)
    report = changed_channels(fresh, found, known, channel_settings.channel_mapping, listed=len(listed))
    context.log.info(report.describe())
    for name, why in sorted(report.rejected_channels.items()):
        context.log.warning(f"channel {name!r} in the source bucket is skipped (no partition, no run): {why}")

    new_channels = [c.channel for c in report.changes if c.is_new_channel]
    tags = dict(stage1_job.tags)  # the job's machine tags, computed once where the job is defined
    requests = [
        RunRequest(run_key=c.run_key(), partition_key=c.channel, tags={**tags, FOUND_TAG: c.summary()[:250]})
        for c in report.changes
    ]
    return SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[channels_partitions.build_add_request(new_channels)] if new_channels else [],
        cursor=next_cursor.to_json(),
        skip_reason=None if requests else f"nothing new: {report.describe()}",
    )
