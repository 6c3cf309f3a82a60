"""Which segment files become a channel's rows.

With codes (the default), the stage-2 files: those the encoded_segments manifest lists, or,
before that asset has run here, every file under stage2_with_codes/{channel}/. With the no-codes
option (the old "Option 3, for testing"), every stage-1 segment of the segments_npz manifest,
taken from stage 2 where it has been encoded already, so the codes that exist are kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from neutts_assets.pipeline.dataset.writer import segment_objects
from neutts_assets.pipeline.encoding.manifest import EncodedManifest
from neutts_assets.pipeline.encoding.store import Stage2Layout
from neutts_assets.pipeline.segments.manifest import SegmentsManifest
from neutts_assets.pipeline.segments.store import channel_prefix
from neutts_assets.storage.store import ObjectInfo, ObjectStore


class NoSegments(ValueError):
    """Nothing to build the channel from; the message says what to materialize first."""


@dataclass
class Sources:
    objects: list[ObjectInfo]
    description: str
    missing: list[tuple[str, str]] = field(
        default_factory=list
    )  # (key, reason): listed in a manifest, not in the store
    not_encoded: int = 0  # stage-1 segments with no stage-2 file yet (left out unless the no-codes option is set)


def manifest_keys(manifest: SegmentsManifest | EncodedManifest | None) -> list[str] | None:
    if manifest is None:
        return None
    return [s.key for s in manifest.segments]


def encoded_prefix(channel: str, encoded_manifest: EncodedManifest | None) -> str:
    """Where the channel's stage-2 files are: the encoded_segments manifest says (its prefix is
    configurable), else the old workflow's stage2_with_codes/{channel}/."""
    prefix = (encoded_manifest.prefix if encoded_manifest else "") or Stage2Layout(channel).channel_prefix
    return prefix if prefix.endswith("/") else prefix + "/"


def channel_sources(
    store: ObjectStore,
    channel: str,
    include_without_codes: bool,
    stage1_manifest: SegmentsManifest | None,
    encoded_manifest: EncodedManifest | None,
) -> Sources:
    prefix = encoded_prefix(channel, encoded_manifest)
    stage2 = segment_objects(store, prefix)
    stage1_keys = manifest_keys(stage1_manifest)
    encoded_ids = {os.path.basename(k) for k in stage2}

    if not include_without_codes:
        keys = manifest_keys(encoded_manifest)
        if keys is None:
            objects, missing = sorted(stage2.values(), key=lambda o: o.key), []
            where = f"{prefix} (listing: no encoded_segments manifest yet)"
        else:
            objects = [stage2[k] for k in keys if k in stage2]
            missing = [(k, "in the encoded_segments manifest but not in the store") for k in keys if k not in stage2]
            where = f"{prefix} (encoded_segments manifest, codec {encoded_manifest.codec or '?'})"
        if not objects:
            raise NoSegments(
                f"channel {channel!r} has no encoded segments under {prefix}: materialize "
                "encoded_segments first, or set include_segments_without_codes for a dataset without codes"
            )
        not_encoded = sum(os.path.basename(k) not in encoded_ids for k in stage1_keys) if stage1_keys else 0
        return Sources(objects, where, missing, not_encoded)

    stage1 = segment_objects(store, channel_prefix(channel))
    if stage1_keys is None:
        stage1_keys, where = sorted(stage1), f"{channel_prefix(channel)} (listing: no segments_npz manifest)"
    else:
        where = f"{channel_prefix(channel)} (segments_npz manifest)"
    if not stage1_keys:
        raise NoSegments(
            f"channel {channel!r} has no segments under {channel_prefix(channel)}: materialize segments_npz first"
        )
    objects, missing, not_encoded = [], [], 0
    for key in stage1_keys:
        encoded = prefix + os.path.basename(key)
        if encoded in stage2:
            objects.append(stage2[encoded])
        elif key in stage1:
            objects.append(stage1[key])
            not_encoded += 1
        else:
            missing.append((key, "in the segments_npz manifest but not in the store"))
    return Sources(objects, where + f", with codes from {prefix} where encoded", missing, not_encoded)
