"""What changed in the source bucket since the last look, and which channels it touches.

The cursor is a watermark on the objects' `updated` time plus the (name, generation) of every object
updated within an overlap window below it. An object is new when it was updated after
`watermark - overlap` and its (name, generation) is not in that set. So:
- an overwrite (new generation, new `updated`) is new, even under the same name;
- an object that becomes visible a little after a later one was listed (uploads finishing out of
  order, clocks of different frontends) is still caught while it is within the overlap;
- evaluating again with the same cursor, after a restart, finds nothing twice;
- no object name is needed to still exist (a "since key" that was deleted would make a listing
  restart from the beginning).
Only names, sizes and versions are used: nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from neutts_assets.pipeline.inventory.source_layout import (
    AUDIO_PREFIX,
    TRANSCRIPTS_PREFIX,
    UnsafeNameError,
    check_channel_name,
    check_name,
)
from neutts_assets.storage.store import ObjectInfo

# GCS listings are strongly consistent, so an object is listable as soon as its `updated` time is
# set; the overlap only has to cover clock differences and slow finalisation. Ten minutes is generous.
DEFAULT_OVERLAP = timedelta(minutes=10)
TRANSCRIPTS_ROOT = TRANSCRIPTS_PREFIX.split("{channel}")[0]  # "processed_runs/processed_"
TRANSCRIPTS_TAIL = TRANSCRIPTS_PREFIX.split("{channel}")[1]  # "/transcripts/"
AUDIO_TAIL = AUDIO_PREFIX.split("{audio_folder}")[1]  # "/audio/"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def object_fingerprint(key: str, version: str) -> str:
    # Hashed so that a burst of thousands of uploads keeps the cursor small.
    return hashlib.sha256(f"{key}\0{version}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class WatchCursor:
    watermark: datetime | None = None
    recent: frozenset[str] = frozenset()

    def to_json(self) -> str:
        return json.dumps(
            {"watermark": self.watermark.isoformat() if self.watermark else None, "recent": sorted(self.recent)},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | None) -> WatchCursor:
        if not text:
            return cls()
        try:
            d = json.loads(text)
            mark = datetime.fromisoformat(d["watermark"]) if d.get("watermark") else None
            return cls(watermark=mark, recent=frozenset(d.get("recent", [])))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"unreadable source-watch cursor {text[:80]!r}: {exc}") from None


def _updated(obj: ObjectInfo) -> datetime:
    if obj.updated is None:
        return _EPOCH
    return obj.updated if obj.updated.tzinfo else obj.updated.replace(tzinfo=timezone.utc)


def new_objects(
    listed: Iterable[ObjectInfo], cursor: WatchCursor, overlap: timedelta = DEFAULT_OVERLAP
) -> tuple[list[ObjectInfo], WatchCursor]:
    """The objects not seen before, and the cursor that remembers everything listed now."""
    listed = list(listed)
    floor = cursor.watermark - overlap if cursor.watermark else None
    fresh = [
        o
        for o in listed
        if (floor is None or _updated(o) > floor) and object_fingerprint(o.key, o.version) not in cursor.recent
    ]
    marks = [_updated(o) for o in listed]
    watermark = max([m for m in marks] + ([cursor.watermark] if cursor.watermark else []), default=None)
    if watermark is None:
        return fresh, cursor
    keep_from = watermark - overlap
    recent = {object_fingerprint(o.key, o.version) for o, m in zip(listed, marks) if m > keep_from}
    return fresh, WatchCursor(watermark=watermark, recent=frozenset(recent))


def transcript_channel(key: str) -> str | None:
    """`processed_runs/processed_{C}/transcripts/...` -> C; None for any other key."""
    if not key.startswith(TRANSCRIPTS_ROOT):
        return None
    channel, sep, _ = key[len(TRANSCRIPTS_ROOT) :].partition(TRANSCRIPTS_TAIL)
    return channel if sep and channel and "/" not in channel else None


def audio_folder_of(key: str) -> str | None:
    """`{A}/audio/...` -> A; None for any other key."""
    folder, sep, rest = key.partition(AUDIO_TAIL)
    return folder if sep and folder and "/" not in folder and rest else None


def channels_in(transcript_objects: Iterable[ObjectInfo]) -> set[str]:
    """Every channel that has a transcripts folder, whatever its name (checked later)."""
    return {c for o in transcript_objects if (c := transcript_channel(o.key))}


@dataclass
class ChannelChange:
    channel: str
    is_new_channel: bool = False
    transcripts: list[ObjectInfo] = field(default_factory=list)
    audio: list[ObjectInfo] = field(default_factory=list)

    def run_key(self) -> str:
        """The same changes give the same key, so Dagster never starts a second run for them."""
        fps = sorted(object_fingerprint(o.key, o.version) for o in self.transcripts + self.audio)
        digest = hashlib.sha256("\n".join(fps).encode()).hexdigest()[:16]
        return f"{self.channel}:{digest}"

    def summary(self) -> str:
        parts = ["new channel"] if self.is_new_channel else []
        parts += [
            f"{len(self.transcripts)} new or changed transcript(s)",
            f"{len(self.audio)} new or changed audio object(s)",
        ]
        return f"{self.channel}: " + ", ".join(parts)


@dataclass
class WatchReport:
    changes: list[ChannelChange]
    rejected_channels: dict[str, str]  # name -> why it cannot be a partition
    ignored: int  # new objects outside any watched channel's folders
    listed: int

    def describe(self) -> str:
        lines = [
            f"listed {self.listed} objects; {sum(len(c.transcripts) + len(c.audio) for c in self.changes)} new or changed in {len(self.changes)} channel(s)"
        ]
        lines += [c.summary() for c in self.changes]
        lines += [
            f"channel {name!r} skipped (no partition, no run): {why}"
            for name, why in sorted(self.rejected_channels.items())
        ]
        if self.ignored:
            lines.append(f"{self.ignored} new object(s) outside the watched channels' folders ignored")
        return "\n".join(lines)


def changed_channels(
    fresh: Iterable[ObjectInfo],
    channels: Iterable[str],
    known_partitions: Iterable[str],
    mapping: Mapping[str, str],
    listed: int = 0,
) -> WatchReport:
    """Groups new objects by the channel whose transcripts or audio folder holds them.

    `channels` are the channels found in the bucket (already filtered by the allow-list); a channel
    not yet among `known_partitions` is new and always gets a run, even with no new object this tick
    (its objects may have been listed before the channel was allowed).
    """
    known = set(known_partitions)
    changes: dict[str, ChannelChange] = {}
    rejected: dict[str, str] = {}
    by_folder: dict[str, list[str]] = {}
    for channel in sorted(set(channels)):
        try:
            check_channel_name(channel)  # a refused channel gets no partition and no run; the others go on
            folder = check_name(mapping.get(channel, channel), "audio folder")
        except UnsafeNameError as exc:
            rejected[channel] = str(exc)
            continue
        by_folder.setdefault(folder, []).append(channel)
        if channel not in known:
            changes[channel] = ChannelChange(channel, is_new_channel=True)
    watched = {c for cs in by_folder.values() for c in cs}

    ignored = 0
    for obj in fresh:
        channel = transcript_channel(obj.key)
        if channel is not None:
            if channel in watched:
                changes.setdefault(channel, ChannelChange(channel)).transcripts.append(obj)
            else:
                ignored += 1
            continue
        owners = by_folder.get(audio_folder_of(obj.key) or "", [])
        for owner in owners:  # several channels may share one audio folder
            changes.setdefault(owner, ChannelChange(owner)).audio.append(obj)
        ignored += not owners
    return WatchReport(
        changes=[changes[c] for c in sorted(changes)], rejected_channels=rejected, ignored=ignored, listed=listed
    )
