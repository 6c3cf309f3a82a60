"""A channel's inventory: every transcript paired with its audio object, plus what could not be paired."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

from neutts_assets.pipeline.inventory.source_layout import (
    ChannelLayout,
    UnsafeNameError,
    audio_preference,
    loose_name,
)
from neutts_assets.pipeline.inventory.transcripts import MAX_TRANSCRIPT_BYTES
from neutts_assets.storage.store import ObjectInfo, is_permanent


@dataclass(frozen=True)
class AudioObject:
    """One audio object of a recording, as listed."""

    key: str
    version: str
    size: int
    ext: str
    partial: bool


@dataclass(frozen=True)
class InventoryEntry:
    recording_id: str
    transcript_key: str
    transcript_version: str
    transcript_size: int
    transcript_sha256: str
    # The recording's first audio object by AUDIO_PREFERENCE (source_layout.py) ...
    audio_key: str
    audio_version: str
    audio_size: int
    audio_ext: str
    audio_partial: bool
    # ... and its other ones, in that order: stage 1 falls back to them when the first cannot be
    # decoded or is much shorter than the transcript needs (pipeline/segments/audio_choice.py).
    alternates: tuple[AudioObject, ...] = ()

    @property
    def audio(self) -> AudioObject:
        return AudioObject(self.audio_key, self.audio_version, self.audio_size, self.audio_ext, self.audio_partial)

    @property
    def candidates(self) -> tuple[AudioObject, ...]:
        return (self.audio, *self.alternates)

    @classmethod
    def from_dict(cls, d: dict) -> InventoryEntry:
        return cls(**{**d, "alternates": tuple(AudioObject(**a) for a in d.get("alternates", ()))})


@dataclass(frozen=True)
class Unpaired:
    key: str
    reason: str
    # transcript_without_audio | audio_without_transcript | bad_name | vanished
    kind: str = "bad_name"
    recording_id: str = ""  # the recording it names, when its name is a good one


@dataclass(frozen=True)
class InventoryNote:
    """An object used, but not exactly as named: paired across Unicode normalisation, found under
    another spelling of the channel's folder."""

    key: str
    note: str


@dataclass
class Inventory:
    channel: str
    audio_folder: str
    entries: list[InventoryEntry] = field(default_factory=list)
    unpaired: list[Unpaired] = field(default_factory=list)
    notes: list[InventoryNote] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Inventory:
        return cls(
            channel=d["channel"],
            audio_folder=d["audio_folder"],
            entries=[InventoryEntry.from_dict(e) for e in d["entries"]],
            unpaired=[Unpaired(**u) for u in d["unpaired"]],
            notes=[InventoryNote(**n) for n in d.get("notes", [])],
        )

    def fingerprint(self) -> str:
        """Changes exactly when an audio object or a transcript's content changes, or pairs come and go."""
        lines = sorted(
            f"{e.recording_id}\t{e.audio_key}\t{e.audio_version}\t{e.transcript_sha256}"
            + "".join(f"\t{a.key}\t{a.version}" for a in e.alternates)
            for e in self.entries
        )
        return hashlib.sha256(json.dumps(lines).encode()).hexdigest()[:24]


def build_inventory(
    layout: ChannelLayout,
    transcripts: Iterable[ObjectInfo],
    audio: Iterable[ObjectInfo],
    read: Callable[[str], bytes],
    read_workers: int = 8,
) -> Inventory:
    """Pairs transcripts with audio by recording ID. `read` fetches a transcript for its content hash;
    transcripts are small and many, so they are fetched a few at a time in parallel."""
    inv = Inventory(channel=layout.channel, audio_folder=layout.audio_folder)
    audio_by_id = _audio_by_recording(layout, audio, inv.unpaired)
    pairs, transcript_ids = _pair_transcripts(layout, transcripts, audio_by_id, inv)
    _add_entries(inv, pairs, read, read_workers)
    _add_audio_without_transcript(inv, layout, audio_by_id, transcript_ids | {p.audio_id for p in pairs})
    inv.entries.sort(key=lambda e: e.recording_id)
    inv.unpaired.sort(key=lambda u: u.key)
    return inv


class _Pair(NamedTuple):
    recording_id: str
    transcript: ObjectInfo
    audio: list[AudioObject]  # in the order stage 1 tries them
    audio_id: str  # the recording ID the audio objects are named with (the transcript's, or its other normal form)


def _audio_by_recording(
    layout: ChannelLayout, audio: Iterable[ObjectInfo], unpaired: list[Unpaired]
) -> dict[str, list[AudioObject]]:
    """Each recording's audio objects, in the order stage 1 tries them; the objects whose name says
    no recording go to `unpaired`."""
    audio_by_id: dict[str, list[AudioObject]] = {}
    for obj in audio:
        try:
            rec_id, ext, partial = layout.audio_id(obj.key)
        except (UnsafeNameError, ValueError) as exc:
            unpaired.append(Unpaired(obj.key, str(exc)))
            continue
        audio_by_id.setdefault(rec_id, []).append(AudioObject(obj.key, obj.version, obj.size, ext, partial))
    for objs in audio_by_id.values():
        objs.sort(key=lambda a: (audio_preference(a.ext, a.partial), a.key))
    return audio_by_id


def _pair_transcripts(
    layout: ChannelLayout,
    transcripts: Iterable[ObjectInfo],
    audio_by_id: dict[str, list[AudioObject]],
    inv: Inventory,
) -> tuple[list[_Pair], set[str]]:
    """Each transcript with its recording's audio objects. A transcript whose ID has no audio under
    the same spelling is paired with the audio of its other Unicode normal form (NFC / NFD: names
    uploaded from macOS), when no transcript of that spelling claims it, with a note. The transcripts
    without audio (with a hint naming near-matches) and the badly named go to `unpaired`. Returns
    the pairs and the recording ids of every well-named transcript."""
    named: list[tuple[str, ObjectInfo]] = []
    for obj in transcripts:
        try:
            named.append((layout.transcript_id(obj.key), obj))
        except (UnsafeNameError, ValueError) as exc:
            inv.unpaired.append(Unpaired(obj.key, str(exc)))
    transcript_ids = {rec_id for rec_id, _ in named}
    by_normal_form: dict[str, list[str]] = {}
    for audio_id in audio_by_id:
        if audio_id not in transcript_ids:
            by_normal_form.setdefault(unicodedata.normalize("NFC", audio_id), []).append(audio_id)
    near = _NearMatches(layout, audio_by_id, inv.unpaired)
    claimed: set[str] = set()  # audio ids paired across normal forms: one transcript each
    pairs: list[_Pair] = []
    for rec_id, obj in named:
        audio_id = rec_id
        if rec_id not in audio_by_id:
            other = by_normal_form.get(unicodedata.normalize("NFC", rec_id), [])
            if len(other) != 1 or other[0] in claimed:
                inv.unpaired.append(Unpaired(obj.key, near.reason(rec_id), "transcript_without_audio", rec_id))
                continue
            audio_id = other[0]
            claimed.add(audio_id)
            for a in audio_by_id[audio_id]:
                inv.notes.append(
                    InventoryNote(
                        a.key,
                        f"paired with {obj.key}: the two names are the same text in different Unicode normal "
                        "forms (NFC / NFD)",
                    )
                )
        pairs.append(_Pair(rec_id, obj, audio_by_id[audio_id], audio_id))
    return pairs, transcript_ids


class _NearMatches:
    """Why a transcript has no audio, with the objects whose names nearly match (another case,
    width or normal form of its ID, an extension stage 1 does not read): the fix is usually a
    rename. Indexed once, so a folder of 50,000 wrong names costs one pass, not one per transcript."""

    def __init__(self, layout: ChannelLayout, audio_by_id: dict[str, list[AudioObject]], unpaired: list[Unpaired]):
        self.layout = layout
        self.by_loose: dict[str, list[str]] = {}
        for audio_id, objs in audio_by_id.items():
            self.by_loose.setdefault(loose_name(audio_id), []).extend(a.key for a in objs)
        for u in unpaired:
            if u.key.startswith(layout.audio_prefix):
                self.by_loose.setdefault(loose_name(u.key[len(layout.audio_prefix) :].split(".", 1)[0]), []).append(
                    u.key
                )

    def reason(self, rec_id: str) -> str:
        reason = f"no audio object {self.layout.audio_prefix}{rec_id}.<ext> for this transcript"
        near = sorted(self.by_loose.get(loose_name(rec_id), []))
        if near:
            reason += f"; near match: {', '.join(repr(k) for k in near[:3])} (rename it to {rec_id!r}.<ext>)"
        return reason


def _transcript_digest(obj: ObjectInfo, read: Callable[[str], bytes]) -> str | None:
    """The transcript's content hash; None when it was deleted between listing and reading."""
    if obj.size > MAX_TRANSCRIPT_BYTES:
        # Never read: stage 1 refuses it by its listed size, naming it. Its version stands in
        # for the content hash, so a replacement is still seen as a change.
        return f"not read, {obj.size} bytes, version {obj.version}"
    try:
        return hashlib.sha256(read(obj.key)).hexdigest()
    except FileNotFoundError:
        return None
    except Exception as exc:
        if not is_permanent(exc):
            raise  # the store failed: the inventory fails, and a rerun reads it again
        # Unreadable for a reason of its own (permission denied, not a regular file): stage 1 reads it
        # again and records that reason as the recording's failure. The version stands in for the hash.
        return f"unreadable, version {obj.version}"


def _add_entries(inv: Inventory, pairs: list[_Pair], read: Callable[[str], bytes], read_workers: int) -> None:
    """An entry for each pair whose transcript could still be read and hashed."""
    with ThreadPoolExecutor(max_workers=read_workers) as pool:
        digests = pool.map(lambda obj: _transcript_digest(obj, read), [p.transcript for p in pairs])
        for p, digest in zip(pairs, digests):
            if digest is None:
                inv.unpaired.append(
                    Unpaired(
                        p.transcript.key,
                        "transcript disappeared while the inventory was taken",
                        "vanished",
                        p.recording_id,
                    )
                )
                continue
            first, *others = p.audio
            inv.entries.append(
                InventoryEntry(
                    recording_id=p.recording_id,
                    transcript_key=p.transcript.key,
                    transcript_version=p.transcript.version,
                    transcript_size=p.transcript.size,
                    transcript_sha256=digest,
                    audio_key=first.key,
                    audio_version=first.version,
                    audio_size=first.size,
                    audio_ext=first.ext,
                    audio_partial=first.partial,
                    alternates=tuple(others),
                )
            )


def _add_audio_without_transcript(
    inv: Inventory,
    layout: ChannelLayout,
    audio_by_id: dict[str, list[AudioObject]],
    paired_ids: set[str],
) -> None:
    for rec_id, objs in audio_by_id.items():
        if rec_id not in paired_ids:
            for obj in objs:
                inv.unpaired.append(
                    Unpaired(
                        obj.key,
                        f"no transcript {layout.transcripts_prefix}audio_{rec_id}.json for this audio",
                        "audio_without_transcript",
                        rec_id,
                    )
                )
