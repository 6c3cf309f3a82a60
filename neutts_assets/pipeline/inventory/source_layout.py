"""The users' source-bucket layout: where a channel's transcripts and audio live, and what a
recording ID is. Object names are untrusted, so every name that becomes part of an output key
is checked here.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from neutts_assets.storage.store import TEMP_MARK

TRANSCRIPTS_PREFIX = "processed_runs/processed_{channel}/transcripts/"
AUDIO_PREFIX = "{audio_folder}/audio/"
TRANSCRIPT_NAME_PREFIX, TRANSCRIPT_SUFFIX = "audio_", ".json"

# The order stage 1 tries a recording's audio objects in when it has several (a re-download in
# another format): complete files before partial ones, then by extension in this order (lossless
# first), then by key. A copy that cannot be decoded or is much shorter than the transcript needs
# gives way to the next (pipeline/segments/audio_choice.py).
AUDIO_EXTENSIONS = (".wav", ".flac", ".m4a", ".mp3", ".ogg", ".opus", ".webm")
PARTIAL_SUFFIX = ".part"  # interrupted yt-dlp downloads; ffmpeg usually decodes what is there

MAX_NAME_BYTES = 200  # leaves room for "_seg_N.npz" within common 255-byte file-name limits


class UnsafeNameError(ValueError):
    """A channel, folder or recording name that could escape its folder or break a key."""


def check_name(name: str, what: str) -> str:
    """A single path component: spaces and any script are fine; separators, '..' and control characters are not."""
    if not name or not name.strip():
        raise UnsafeNameError(f"{what} {name!r} is empty")
    if name in (".", "..") or "/" in name or "\\" in name:
        raise UnsafeNameError(f"{what} {name!r} contains a path separator or is '.'/'..'")
    if name.startswith(".."):
        raise UnsafeNameError(f"{what} {name!r} starts with '..'")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise UnsafeNameError(f"{what} {name!r} contains control characters")
    if TEMP_MARK in name:
        raise UnsafeNameError(f"{what} {name!r} contains {TEMP_MARK!r}, which marks temporary files")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise UnsafeNameError(f"{what} {name[:40]!r}... is longer than {MAX_NAME_BYTES} bytes")
    return name


# A channel name is also a Dagster partition key, a folder in the store, part of glob patterns, a
# config name in the dataset card's YAML and a heading in its Markdown: besides check_name's rules it
# may not hold characters special to any of them. Letters of any script, digits, spaces inside the
# name, '-', '_' and '.' (not '..', not leading) are fine: "Atheer_-", "ZadTVchannel", "قناة الجزيرة".
CHANNEL_SPECIAL_CHARACTERS = "[]*?{},!#|:\"'\\`<>"


# The dataset card's configs beside the per-channel ones (pipeline/dataset/card.py): all channels, and
# the text + codes view. A channel of that name would shadow them.
RESERVED_CHANNEL_NAMES = ("all", "text_codes")


def check_channel_name(name: str) -> str:
    """`name` if it can be a channel; raises UnsafeNameError naming the name and the reason.
    Audio folders and recording IDs keep the looser check_name."""
    check_name(name, "channel")
    if name != name.strip():
        raise UnsafeNameError(f"channel {name!r} starts or ends with a space")
    if ".." in name or name.startswith("."):
        raise UnsafeNameError(f"channel {name!r} contains '..' or starts with '.'")
    if name.casefold() in RESERVED_CHANNEL_NAMES:
        raise UnsafeNameError(
            f"channel {name!r} is the name of one of the dataset card's own configs "
            f"({', '.join(RESERVED_CHANNEL_NAMES)})"
        )
    special = sorted({c for c in name if c in CHANNEL_SPECIAL_CHARACTERS}, key=name.index)
    if special:
        raise UnsafeNameError(
            f"channel {name!r} contains {' '.join(repr(c) for c in special)}: characters special to globs, paths or "
            f"the dataset card are not allowed in channel names ({' '.join(CHANNEL_SPECIAL_CHARACTERS)})"
        )
    hidden = [
        c
        for c in name
        if (c.isspace() and c != " ") or unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")
    ]
    if hidden:
        codes = ", ".join(sorted({f"U+{ord(c):04X}" for c in hidden}))
        raise UnsafeNameError(
            f"channel {name!r} contains invisible, control or unassigned characters ({codes}); "
            "only plain spaces may separate words"
        )
    return name


@dataclass(frozen=True)
class ChannelLayout:
    channel: str
    audio_folder: str
    # The channel's name as its transcripts folder spells it, when that is another Unicode normal
    # form of `channel` (pipeline/inventory/source_folders.py); empty: spelled as `channel`.
    source_channel: str = ""

    @classmethod
    def for_channel(cls, channel: str, mapping: dict[str, str] | None = None) -> ChannelLayout:
        check_channel_name(channel)
        folder = (mapping or {}).get(channel, channel)
        return cls(channel=channel, audio_folder=check_name(folder, "audio folder"))

    @property
    def transcripts_prefix(self) -> str:
        return TRANSCRIPTS_PREFIX.format(channel=self.source_channel or self.channel)

    @property
    def audio_prefix(self) -> str:
        return AUDIO_PREFIX.format(audio_folder=self.audio_folder)

    def transcript_id(self, key: str) -> str:
        """`.../transcripts/audio_{ID}.json` -> ID. Raises UnsafeNameError or ValueError."""
        name = key[len(self.transcripts_prefix) :]
        if "/" in name:
            raise UnsafeNameError(f"transcript {key!r} is in a sub-folder of {self.transcripts_prefix!r}")
        if not (name.startswith(TRANSCRIPT_NAME_PREFIX) and name.endswith(TRANSCRIPT_SUFFIX)):
            raise ValueError(f"transcript {key!r} is not named audio_{{ID}}.json")
        return check_name(name[len(TRANSCRIPT_NAME_PREFIX) : -len(TRANSCRIPT_SUFFIX)], "recording ID")

    def audio_id(self, key: str) -> tuple[str, str, bool]:
        """`{folder}/audio/{ID}.{ext}[.part]` -> (ID, ext, partial). Raises on other names."""
        name = key[len(self.audio_prefix) :]
        if "/" in name:
            raise UnsafeNameError(f"audio {key!r} is in a sub-folder of {self.audio_prefix!r}")
        partial = name.lower().endswith(PARTIAL_SUFFIX)
        stem = name[: -len(PARTIAL_SUFFIX)] if partial else name
        for ext in AUDIO_EXTENSIONS:
            if stem.lower().endswith(ext):
                return check_name(stem[: -len(ext)], "recording ID"), ext, partial
        if partial and "." not in stem:
            return check_name(stem, "recording ID"), "", True  # "ID.part": format unknown until decoded
        raise ValueError(f"audio {key!r} has no known audio extension ({', '.join(AUDIO_EXTENSIONS)}, .part)")


def loose_name(name: str) -> str:
    """What a near-match compares: case, width, Unicode normal form and surrounding spaces ignored.
    Only ever a hint: names equal this way are not the same name."""
    return unicodedata.normalize("NFKC", name).casefold().strip()


def segment_id(recording_id: str, index: int) -> str:
    return f"{recording_id}_seg_{index}"


def recording_of(audio_id: str) -> str:
    """The recording ID of a segment's audio_id `{ID}_seg_{i}` (the last `_seg_`: an ID may hold one)."""
    return audio_id.rsplit("_seg_", 1)[0]


def audio_preference(ext: str, partial: bool) -> tuple[int, int]:
    """Sort key: complete files before partial ones, then the extension order above."""
    rank = AUDIO_EXTENSIONS.index(ext) if ext in AUDIO_EXTENSIONS else len(AUDIO_EXTENSIONS)
    return (1 if partial else 0, rank)
