"""Finding a channel's two folders in the source, and saying where we looked when they are empty.

A channel's transcripts are under `processed_runs/processed_{channel}/transcripts/` and its audio
under `{audio folder}/audio/` (source_layout.py). Names typed on one machine and uploaded from
another often differ only in their Unicode normal form: macOS writes file names decomposed (NFD),
so an Arabic or accented channel added as NFC text finds nothing. Where a folder is empty:

- a folder whose name is the same text in the other normal form (NFC / NFD) is used, with a note;
- otherwise the folders whose names nearly match (case, width, spaces, a close spelling) are
  named as a hint;
- a channel with nothing in either folder is refused, naming where it looked (ChannelNotFound): a
  partition that finds nothing must not be a green run that says nothing. One with transcripts and
  no audio object at all (or audio and no transcript) is refused too: that is a wrong folder or
  mapping far more often than a real channel, and going on would remove every recording's
  segments as gone from the source.

Only when a folder is empty does this cost anything: one delimiter listing per level.
"""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from neutts_assets.pipeline.inventory.manifest import InventoryNote
from neutts_assets.pipeline.inventory.source_layout import ChannelLayout, UnsafeNameError, check_name, loose_name
from neutts_assets.storage.store import ObjectInfo, ObjectStore

TRANSCRIPTS_ROOT, PROCESSED_PREFIX, TRANSCRIPTS_FOLDER, AUDIO_FOLDER = (
    "processed_runs/",
    "processed_",
    "transcripts",
    "audio",
)


class ChannelNotFound(Exception):
    """The channel has no transcript or no audio object in the source; the message names where it
    looked and the near matches."""


@dataclass
class ChannelListing:
    layout: ChannelLayout  # as found: its folders may be spelled in another normal form
    transcripts: list[ObjectInfo]
    audio: list[ObjectInfo]
    notes: list[InventoryNote] = field(default_factory=list)  # a folder found under another spelling
    hints: list[str] = field(default_factory=list)  # near-matches of an empty folder


def other_normal_forms(name: str) -> list[str]:
    return sorted({unicodedata.normalize(form, name) for form in ("NFC", "NFD")} - {name})


def near_matches(wanted: str, names: list[str], limit: int = 3) -> list[str]:
    """The names that nearly match `wanted`: equal but for case, width or surrounding spaces, then
    the closest spellings (difflib, ratio >= 0.8)."""
    loose = [n for n in names if n != wanted and loose_name(n) == loose_name(wanted)]
    close = difflib.get_close_matches(wanted, [n for n in names if n != wanted and n not in loose], limit, 0.8)
    return (loose + close)[:limit]


def list_channel(bucket: ObjectStore, layout: ChannelLayout) -> ChannelListing:
    """The channel's transcripts and audio objects. Raises ChannelNotFound when either side is empty."""
    listing = ChannelListing(
        layout, list(bucket.list(layout.transcripts_prefix)), list(bucket.list(layout.audio_prefix))
    )
    if not listing.transcripts:
        _find_transcripts(bucket, listing)
    if not listing.audio:
        _find_audio(bucket, listing)
    if not listing.transcripts or not listing.audio:
        found = listing.layout
        t = f"{len(listing.transcripts)} transcripts" if listing.transcripts else "no transcripts"
        a = f"{len(listing.audio)} audio objects" if listing.audio else "no audio"
        what = "nothing in the source" if not (listing.transcripts or listing.audio) else f"{t} and {a}"
        hints = f"; {'; '.join(listing.hints)}" if listing.hints else ""
        raise ChannelNotFound(
            f"channel {layout.channel!r} has {what} in {bucket.describe()} (looked for transcripts under "
            f"{found.transcripts_prefix!r} and audio under {found.audio_prefix!r}){hints}. Check the channel's "
            "spelling and NEUTTS_CHANNEL_MAPPING (channel -> audio folder)"
        )
    return listing


def _find_transcripts(bucket: ObjectStore, listing: ChannelListing) -> None:
    layout = listing.layout
    channel = layout.source_channel or layout.channel
    found = _find(
        bucket,
        listing,
        TRANSCRIPTS_ROOT,
        PROCESSED_PREFIX + channel,
        TRANSCRIPTS_FOLDER,
        lambda folder: replace(layout, source_channel=check_name(folder[len(PROCESSED_PREFIX) :], "channel")),
        "transcripts folder",
    )
    if found:
        listing.layout, listing.transcripts = found


def _find_audio(bucket: ObjectStore, listing: ChannelListing) -> None:
    layout = listing.layout
    found = _find(
        bucket,
        listing,
        "",
        layout.audio_folder,
        AUDIO_FOLDER,
        lambda folder: replace(layout, audio_folder=check_name(folder, "audio folder")),
        "audio folder",
    )
    if found:
        listing.layout, listing.audio = found


def _find(
    bucket: ObjectStore,
    listing: ChannelListing,
    parent: str,
    folder: str,
    child: str,
    relayout: Callable[[str], ChannelLayout],
    what: str,
) -> tuple[ChannelLayout, list[ObjectInfo]] | None:
    """Where `{parent}{folder}/{child}/` is empty: the (layout, objects) of the same folder in the
    other Unicode normal form, noted; else None, with a hint added naming what is there instead."""
    folders = bucket.list_folders(parent)
    for other in other_normal_forms(folder):
        if other in folders:
            try:
                layout = relayout(other)
            except UnsafeNameError:  # the other form may be longer than a name may be: not this folder
                continue
            prefix = f"{parent}{other}/{child}/"
            objs = list(bucket.list(prefix))
            if objs:
                listing.notes.append(
                    InventoryNote(prefix, f"the channel's {what}, spelled in another Unicode normal form: used")
                )
                return layout, objs
    if folder in folders:  # the folder is there, its `child` is not
        near = near_matches(child, bucket.list_folders(f"{parent}{folder}/"))
        listing.hints.append(
            f"{parent}{folder}/ holds "
            + (f"{', '.join(repr(n) for n in near)}, not {child!r}" if near else f"no {child!r} folder")
        )
        return None
    near = near_matches(folder, folders)
    if near:
        listing.hints.append(f"near-matching {what}s: {', '.join(repr(parent + n + '/') for n in near)}")
    return None
