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
from dataclasses import dataclass, field, replace

from neutts_assets.pipeline.inventory.source_layout import ChannelLayout
from neutts_assets.storage.store import ObjectInfo, ObjectStore

TRANSCRIPTS_ROOT, PROCESSED_PREFIX, TRANSCRIPTS_FOLDER, AUDIO_FOLDER = (
    "processed_runs/",
    "processed_",
    "transcripts",
    "audio",
)


class ChannelNotFound(Exception):
    """The channel has no transcripts and no audio in the source; the message names where it looked."""


@dataclass
class ChannelListing:
    layout: ChannelLayout  # as found: its folders may be spelled in another normal form
    transcripts: list[ObjectInfo]
    audio: list[ObjectInfo]
    notes: list[tuple[str, str]] = field(default_factory=list)  # (folder, what was done)
    hints: list[str] = field(default_factory=list)  # near-matches of an empty folder


def other_normal_forms(name: str) -> list[str]:
    return sorted({unicodedata.normalize(form, name) for form in ("NFC", "NFD")} - {name})


def _loose(name: str) -> str:
    return unicodedata.normalize("NFKC", name).casefold().strip()


def near_matches(wanted: str, names: list[str], limit: int = 3) -> list[str]:
    """The names that nearly match `wanted`: equal but for case, width or surrounding spaces, then
    the closest spellings (difflib, ratio >= 0.8)."""
    loose = [n for n in names if n != wanted and _loose(n) == _loose(wanted)]
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
    folders = bucket.list_folders(TRANSCRIPTS_ROOT)
    for other in other_normal_forms(channel):
        if PROCESSED_PREFIX + other in folders:
            found = replace(layout, source_channel=other)
            objs = list(bucket.list(found.transcripts_prefix))
            if objs:
                listing.layout, listing.transcripts = found, objs
                listing.notes.append(
                    (
                        found.transcripts_prefix,
                        f"the channel's transcripts folder, spelled in another Unicode normal form than {layout.channel!r}: used",
                    )
                )
                return
    own = PROCESSED_PREFIX + channel
    if own in folders:  # the channel's folder is there, its transcripts/ is not
        inside = bucket.list_folders(f"{TRANSCRIPTS_ROOT}{own}/")
        near = near_matches(TRANSCRIPTS_FOLDER, inside)
        listing.hints.append(
            f"{TRANSCRIPTS_ROOT}{own}/ holds "
            + (
                f"{', '.join(repr(n) for n in near)}, not {TRANSCRIPTS_FOLDER!r}"
                if near
                else f"no {TRANSCRIPTS_FOLDER!r} folder"
            )
        )
        return
    near = near_matches(own, folders)
    if near:
        listing.hints.append(
            f"near-matching transcripts folders: {', '.join(repr(TRANSCRIPTS_ROOT + n + '/') for n in near)}"
        )


def _find_audio(bucket: ObjectStore, listing: ChannelListing) -> None:
    layout = listing.layout
    folders = bucket.list_folders("")
    for other in other_normal_forms(layout.audio_folder):
        if other in folders:
            found = replace(layout, audio_folder=other)
            objs = list(bucket.list(found.audio_prefix))
            if objs:
                listing.layout, listing.audio = found, objs
                listing.notes.append(
                    (
                        found.audio_prefix,
                        f"the audio folder, spelled in another Unicode normal form than {layout.audio_folder!r}: used",
                    )
                )
                return
    if layout.audio_folder in folders:  # the folder is there, its audio/ is not
        inside = bucket.list_folders(f"{layout.audio_folder}/")
        near = near_matches(AUDIO_FOLDER, inside)
        listing.hints.append(
            f"{layout.audio_folder}/ holds "
            + (f"{', '.join(repr(n) for n in near)}, not {AUDIO_FOLDER!r}" if near else f"no {AUDIO_FOLDER!r} folder")
        )
        return
    near = near_matches(layout.audio_folder, folders)
    if near:
        listing.hints.append(f"near-matching audio folders: {', '.join(repr(n + '/audio/') for n in near)}")
