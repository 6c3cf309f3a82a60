from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, asset_check

from neutts_assets.core.dataset_writer import DATASET_PREFIX, read_record, shard_prefix
from neutts_assets.core.inventory import Inventory
from neutts_assets.core.segment_store import channel_prefix
from neutts_assets.core.stage2_store import Stage2Layout
from neutts_assets.defs.assets.dataset import hf_dataset
from neutts_assets.defs.assets.encoded import encoded_segments
from neutts_assets.defs.assets.raw_audio import raw_audio
from neutts_assets.defs.assets.segments import segments_npz
from neutts_assets.defs.metadata import md_table
from neutts_assets.defs.partitions import channels
from neutts_assets.defs.resources import SegmentStore


@asset_check(asset=segments_npz, partitions_def=channels, description="Every segment in the manifest exists in the store.")
def segments_present_in_store(context: AssetCheckExecutionContext, segments_npz: dict, store: SegmentStore) -> AssetCheckResult:
    listed = {o.key for o in store.open().list(channel_prefix(context.partition_key)) if o.key.endswith(".npz")}
    expected = {s["key"] for r in segments_npz["recordings"] for s in r["segments"]}
    missing = sorted(expected - listed)
    return AssetCheckResult(
        passed=not missing,
        metadata={
            "segments_expected": len(expected),
            "segments_found": len(listed & expected),
            # Present but not in the manifest: cuts of recordings that left the source. Not an error.
            "segments_not_in_manifest": len(listed - expected),
            "missing": md_table(["key"], [(k,) for k in missing], empty="none missing"),
        },
    )


@asset_check(asset=encoded_segments, partitions_def=channels,
             description="Every segment in the manifest has its stage-2 file and the marker of the manifest's codec.")
def encoded_segments_present(context: AssetCheckExecutionContext, encoded_segments: dict, store: SegmentStore) -> AssetCheckResult:
    layout = Stage2Layout(context.partition_key, encoded_segments["stage2_prefix"])
    listed = {o.key for o in store.open().list(layout.channel_prefix)}
    marker_folder = layout.codec_marker_prefix(encoded_segments["codec"])
    marked = {k[len(marker_folder):].rpartition("@")[0] for k in listed if k.startswith(marker_folder)}
    segments = [s for r in encoded_segments["recordings"] for s in r["segments"]]
    missing = sorted(s["key"] for s in segments if s["key"] not in listed or s["audio_id"] not in marked)
    return AssetCheckResult(
        passed=not missing,
        metadata={
            "segments_expected": len(segments),
            "codec": encoded_segments["codec"],
            "test_only_codes": bool(encoded_segments.get("test_only_codes")),
            "missing_or_unmarked": md_table(["key"], [(k,) for k in missing], empty="none missing"),
        },
    )


@asset_check(asset=raw_audio, partitions_def=channels, description="Every transcript has its audio and every audio object its transcript.")
def every_object_paired(context: AssetCheckExecutionContext, raw_audio: dict) -> AssetCheckResult:
    inventory = Inventory.from_dict(raw_audio)
    # A warning, not an error: the channel is still usable, but someone should look at the source bucket.
    by_kind = {}
    for u in inventory.unpaired:
        by_kind[u.kind] = by_kind.get(u.kind, 0) + 1
    return AssetCheckResult(
        passed=not inventory.unpaired,
        severity=AssetCheckSeverity.WARN,
        metadata={"recordings": len(inventory.entries), **{f"unpaired_{k}": v for k, v in sorted(by_kind.items())}},
    )


@asset_check(asset=hf_dataset, partitions_def=channels,
             description="Every shard the channel's published build lists is in the store, at its recorded size.")
def dataset_shards_present(context: AssetCheckExecutionContext, store: SegmentStore) -> AssetCheckResult:
    dst = store.open()
    record = read_record(dst, context.partition_key)
    if record is None:
        return AssetCheckResult(passed=False, metadata={"problem": "no published build for this channel"})
    sizes = {o.key: o.size for o in dst.list(shard_prefix(context.partition_key))}
    wrong = [(s["path"], "missing" if DATASET_PREFIX + s["path"] not in sizes else f"{sizes[DATASET_PREFIX + s['path']]} bytes, "
              f"recorded {s['bytes']}") for s in record["shards"] if sizes.get(DATASET_PREFIX + s["path"]) != s["bytes"]]
    return AssetCheckResult(
        passed=not wrong,
        metadata={"shards": len(record["shards"]), "build_id": record["build_id"],
                  "problems": md_table(["shard", "problem"], wrong, empty="every shard present")},
    )
