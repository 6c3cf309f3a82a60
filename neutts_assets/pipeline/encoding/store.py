"""Where stage 2 keeps its output in the segment store, and how a run knows what is finished.

    stage2_with_codes/{channel}/{ID}_seg_{i}.npz                       the segment file with codes
    stage2_with_codes/{channel}/_encoded/{codec}/{ID}_seg_{i}@{source}  an empty marker, written after it

`{codec}` is a short hash of the codec label (model id @ revision) and `{source}` a short hash of
the stage-1 object's version, so one listing tells which segments hold codes from the configured
codec made from the current stage-1 audio: no segment file is read to find out.

Every write keeps the rule "a marker exists only for codes its segment file really holds": before
a segment file is (re)written, the markers of other codecs or older audio are deleted; the marker
is written after the file. A run killed between the file and its marker leaves a file without a
marker; the next run reads that one file, and keeps it when it holds the codec's codes for the
current audio. Nothing finished is encoded twice; nothing half-made is trusted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from neutts_assets.pipeline.segments.manifest import SegmentsManifest

STAGE2_PREFIX = "stage2_with_codes/"
MARKER_FOLDER = "_encoded"


def _short_hash(text: str, n: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


@dataclass(frozen=True)
class Stage2Layout:
    channel: str
    prefix: str = STAGE2_PREFIX

    @property
    def channel_prefix(self) -> str:
        return f"{self.prefix}{self.channel}/"

    @property
    def marker_prefix(self) -> str:
        return f"{self.channel_prefix}{MARKER_FOLDER}/"

    def segment_key(self, audio_id: str) -> str:
        return f"{self.channel_prefix}{audio_id}.npz"

    def codec_marker_prefix(self, codec_label: str) -> str:
        return f"{self.marker_prefix}{_short_hash(codec_label, 16)}/"

    def marker_key(self, codec_label: str, audio_id: str, source_version: str) -> str:
        return f"{self.codec_marker_prefix(codec_label)}{audio_id}@{_short_hash(source_version, 12)}"

    def parse_marker(self, key: str) -> tuple[str, str] | None:
        """(audio_id, marker key) of a marker key, None for anything else."""
        rest = key[len(self.marker_prefix) :] if key.startswith(self.marker_prefix) else ""
        _, _, name = rest.partition("/")
        audio_id, at, _ = name.rpartition("@")
        return (audio_id, key) if at and audio_id else None


@dataclass
class EncodeItem:
    """One stage-1 segment the run must give codes."""

    audio_id: str
    recording_id: str
    source_key: str  # stage-1 object
    target_key: str  # stage-2 object
    marker_key: str
    num_samples: int
    source_bytes: int
    unverified: bool = False  # a stage-2 file exists without this codec's marker: check it before encoding
    stale_markers: list[str] = field(default_factory=list)  # delete before writing the target


@dataclass
class EncodePlan:
    todo: list[EncodeItem] = field(default_factory=list)
    done: list[str] = field(default_factory=list)  # audio ids with current codes already
    too_short: list[tuple[str, str]] = field(default_factory=list)  # (audio id, reason)
    missing_source: list[tuple[str, str]] = field(default_factory=list)  # (stage-1 key, reason)
    orphans: list[str] = field(default_factory=list)  # stage-2 objects whose segment stage 1 no longer has


def plan_encoding(
    manifest: SegmentsManifest,
    layout: Stage2Layout,
    codec_label: str,
    source_versions: dict[str, tuple[str, int]],
    stage2_keys: set[str],
    min_samples: int,
) -> EncodePlan:
    """What a run must encode, from the stage-1 manifest and two listings (stage 1 and stage 2).

    `source_versions` maps stage-1 keys to (version, size); `stage2_keys` is every key under the
    channel's stage-2 prefix, markers included. Each segment is too short, missing its stage-1 file,
    done (its file and this codec's marker for the current audio both listed), or to do.
    """
    from neutts_assets.pipeline.segments.audio import SAMPLE_RATE

    markers_by_id = _markers_by_id(layout, stage2_keys)
    plan, wanted = EncodePlan(), set()
    for rec in manifest.recordings:
        for seg in rec.segments:
            audio_id, source_key = seg.audio_id, seg.key
            target, num_samples = layout.segment_key(audio_id), round(seg.duration_sec * SAMPLE_RATE)
            wanted.add(target)
            if num_samples < min_samples:
                plan.too_short.append(
                    (audio_id, f"too short for the codec: {num_samples} samples, needs at least {min_samples}")
                )
                continue
            if source_key not in source_versions:
                plan.missing_source.append(
                    (source_key, "stage-1 segment file is missing from the store: materialize segments_npz again")
                )
                continue
            version, size = source_versions[source_key]
            marker = layout.marker_key(codec_label, audio_id, version)
            if target in stage2_keys and marker in stage2_keys:
                plan.done.append(audio_id)
                continue
            plan.todo.append(
                EncodeItem(
                    audio_id,
                    rec.recording_id,
                    source_key,
                    target,
                    marker,
                    num_samples,
                    size,
                    unverified=target in stage2_keys,
                    stale_markers=[m for m in markers_by_id.get(audio_id, []) if m != marker],
                )
            )
    plan.orphans = _orphans(layout, stage2_keys, markers_by_id, wanted)
    return plan


def _markers_by_id(layout: Stage2Layout, stage2_keys: set[str]) -> dict[str, list[str]]:
    """The marker keys in the listing, by the audio id they are for (of any codec or source version)."""
    markers_by_id: dict[str, list[str]] = {}
    for key in stage2_keys:
        parsed = layout.parse_marker(key)
        if parsed:
            markers_by_id.setdefault(parsed[0], []).append(parsed[1])
    return markers_by_id


def _orphans(
    layout: Stage2Layout, stage2_keys: set[str], markers_by_id: dict[str, list[str]], wanted: set[str]
) -> list[str]:
    """The stage-2 segment files and markers of segments stage 1 no longer has, in the order they are deleted."""
    # Files first, then their markers: a marker left without its file is never trusted.
    orphans = sorted(
        k
        for k in stage2_keys
        if k.endswith(".npz")
        and k.startswith(layout.channel_prefix)
        and "/" not in k[len(layout.channel_prefix) :]
        and k not in wanted
    )
    orphans += sorted(
        m for audio_id, keys in markers_by_id.items() if layout.segment_key(audio_id) not in wanted for m in keys
    )
    return orphans
