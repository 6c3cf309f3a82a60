from collections import Counter

from dagster import AssetExecutionContext, DataVersion, Failure, Output, asset

from neutts_assets.defs.metadata import grouped_tables, metadata_table, retry_metadata
from neutts_assets.defs.partitions import channels
from neutts_assets.defs.resources import ChannelSettings, SourceBucket
from neutts_assets.pipeline.inventory.manifest import Inventory, build_inventory
from neutts_assets.pipeline.inventory.source_folders import ChannelNotFound, list_channel
from neutts_assets.pipeline.inventory.source_layout import UnsafeNameError


@asset(
    partitions_def=channels,
    group_name="stage1",
    io_manager_key="manifest_io_manager",
    tags={"machine": "t4"},
    kinds={"gcs"},
    description="The channel's inventory in the source bucket: each transcript paired with its audio "
    "object, with versions, sizes and transcript content hashes. Its data version changes when any "
    "audio or transcript changes, so the UI marks segments_npz stale.",
)
def raw_audio(
    context: AssetExecutionContext, source: SourceBucket, channel_settings: ChannelSettings
) -> Output[Inventory]:
    channel = context.partition_key
    try:  # a partition added around `add-channel` (the UI) with a name the dataset cannot carry
        layout = channel_settings.layout(channel)
    except UnsafeNameError as exc:
        raise Failure(description=f"channel {channel!r} refused: {exc}") from exc
    bucket = source.open()

    try:
        found = list_channel(bucket, layout)
    except ChannelNotFound as exc:
        raise Failure(description=str(exc), metadata={"source": bucket.describe(), "reason": str(exc)}) from None
    layout, transcripts, audio = found.layout, found.transcripts, found.audio
    inventory = build_inventory(layout, transcripts, audio, bucket.read_bytes)
    for n in found.notes:
        context.log.warning(f"{n.key}: {n.note}")
    context.log.info(
        f"{channel}: {len(inventory.entries)} recordings paired, {len(inventory.unpaired)} objects unpaired"
    )

    return Output(
        inventory,
        data_version=DataVersion(inventory.fingerprint()),
        metadata={
            "source": bucket.describe(),
            "audio_folder": layout.audio_folder,
            "recordings": len(inventory.entries),
            "transcripts_found": len(transcripts),
            "audio_objects_found": len(audio),
            "unpaired_objects": len(inventory.unpaired),
            "audio_bytes": sum(e.audio_size for e in inventory.entries),
            "partial_downloads": sum(e.audio_partial for e in inventory.entries),
            # Several audio objects for one recording: stage 1 tries them in this order (segments_npz's
            # `audio_choices` says which it used and why).
            "duplicate_audio": metadata_table(
                ["recording", "audio objects, in the order tried"],
                [(e.recording_id, ", ".join(a.key for a in e.candidates)) for e in inventory.entries if e.alternates],
            ),
            "formats": metadata_table(
                ["extension", "recordings"], Counter(e.audio_ext or ".part" for e in inventory.entries).most_common()
            ),
            # By kind first: thousands of stray audio files must not hide a transcript without audio.
            **grouped_tables(
                "unpaired",
                ["object", "reason"],
                [(u.key, u.reason, u.kind) for u in inventory.unpaired],
                "objects",
                group=lambda row: row[2],
                by="kind",
            ),
            # Used, but not as named: a folder or an ID spelled in another Unicode normal form.
            "input_notes": metadata_table(
                ["object or folder", "note"], [(n.key, n.note) for n in found.notes + inventory.notes]
            ),
            **retry_metadata(source=bucket),
        },
    )
