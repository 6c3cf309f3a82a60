"""A channel's inventory: every transcript paired with its audio object, plus what could not be paired."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

from neutts_assets.pipeline.inventory.source_layout import ChannelLayout, UnsafeNameError, audio_preference
from neutts_assets.pipeline.inventory.transcripts import MAX_TRANSCRIPT_BYTES
from neutts_assets.storage.store import ObjectInfo


@dataclass(frozen=True)
class InventoryEntry:
    recording_id: str
    transcript_key: str
    transcript_version: str
    transcript_size: int
    transcript_sha256: str
    audio_key: str
    audio_version: str
    audio_size: int
    audio_ext: str
    audio_partial: bool


@dataclass(frozen=True)
class Unpaired:
    key: str
    reason: str
    # transcript_without_audio | audio_without_transcript | duplicate_audio | bad_name | vanished
    kind: str = "bad_name"


@dataclass
class Inventory:
    channel: str
    audio_folder: str
    entries: list[InventoryEntry] = field(default_factory=list)
    unpaired: list[Unpaired] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Inventory:
        return cls(
            channel=d["channel"],
            audio_folder=d["audio_folder"],
            entries=[InventoryEntry(**e) for e in d["entries"]],
            unpaired=[Unpaired(**u) for u in d["unpaired"]],
        )

    def fingerprint(self) -> str:
        """Changes exactly when an audio object or a transcript's content changes, or pairs come and go."""
        lines = sorted(
            f"{e.recording_id}\t{e.audio_key}\t{e.audio_version}\t{e.transcript_sha256}" for e in self.entries
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
    pairs, transcript_ids = _pair_transcripts(layout, transcripts, audio_by_id, inv.unpaired)
    _add_entries(inv, pairs, read, read_workers)
    _add_audio_without_transcript(inv, layout, audio_by_id, transcript_ids)
    inv.entries.sort(key=lambda e: e.recording_id)
    inv.unpaired.sort(key=lambda u: u.key)
    return inv


class _Pair(NamedTuple):
    recording_id: str
    transcript: ObjectInfo
    audio: ObjectInfo
    audio_ext: str
    audio_partial: bool


def _audio_by_recording(
    layout: ChannelLayout, audio: Iterable[ObjectInfo], unpaired: list[Unpaired]
) -> dict[str, list[tuple[ObjectInfo, str, bool]]]:
    """Each recording's audio objects, with their extension and whether they are partial; the
    objects whose name says no recording go to `unpaired`."""
    audio_by_id: dict[str, list[tuple[ObjectInfo, str, bool]]] = {}
    for obj in audio:
        try:
            rec_id, ext, partial = layout.audio_id(obj.key)
        except (UnsafeNameError, ValueError) as exc:
            unpaired.append(Unpaired(obj.key, str(exc)))
            continue
        audio_by_id.setdefault(rec_id, []).append((obj, ext, partial))
    return audio_by_id


def _pair_transcripts(
    layout: ChannelLayout,
    transcripts: Iterable[ObjectInfo],
    audio_by_id: dict[str, list[tuple[ObjectInfo, str, bool]]],
    unpaired: list[Unpaired],
) -> tuple[list[_Pair], set[str]]:
    """Each transcript with its recording's preferred audio object; the transcripts without one,
    the other audio objects of a paired recording and the badly named go to `unpaired`. Returns
    the pairs and the recording ids of every well-named transcript."""
    transcript_ids: set[str] = set()
    pairs: list[_Pair] = []
    for obj in transcripts:
        try:
            rec_id = layout.transcript_id(obj.key)
        except (UnsafeNameError, ValueError) as exc:
            unpaired.append(Unpaired(obj.key, str(exc)))
            continue
        transcript_ids.add(rec_id)
        candidates = sorted(audio_by_id.get(rec_id, []), key=lambda c: audio_preference(c[1], c[2]))
        if not candidates:
            unpaired.append(
                Unpaired(
                    obj.key,
                    f"no audio object {layout.audio_prefix}{rec_id}.<ext> for this transcript",
                    "transcript_without_audio",
                )
            )
            continue
        chosen, ext, partial = candidates[0]
        for other, _, _ in candidates[1:]:
            unpaired.append(
                Unpaired(other.key, f"another file of recording {rec_id} is used: {chosen.key}", "duplicate_audio")
            )
        pairs.append(_Pair(rec_id, obj, chosen, ext, partial))
    return pairs, transcript_ids


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


def _add_entries(inv: Inventory, pairs: list[_Pair], read: Callable[[str], bytes], read_workers: int) -> None:
    """An entry for each pair whose transcript could still be read and hashed."""
    with ThreadPoolExecutor(max_workers=read_workers) as pool:
        digests = pool.map(lambda obj: _transcript_digest(obj, read), [p.transcript for p in pairs])
        for p, digest in zip(pairs, digests):
            if digest is None:
                inv.unpaired.append(
                    Unpaired(p.transcript.key, "transcript disappeared while the inventory was taken", "vanished")
                )
                continue
            inv.entries.append(
                InventoryEntry(
                    recording_id=p.recording_id,
                    transcript_key=p.transcript.key,
                    transcript_version=p.transcript.version,
                    transcript_size=p.transcript.size,
                    transcript_sha256=digest,
                    audio_key=p.audio.key,
                    audio_version=p.audio.version,
                    audio_size=p.audio.size,
                    audio_ext=p.audio_ext,
                    audio_partial=p.audio_partial,
                )
            )


def _add_audio_without_transcript(
    inv: Inventory,
    layout: ChannelLayout,
    audio_by_id: dict[str, list[tuple[ObjectInfo, str, bool]]],
    transcript_ids: set[str],
) -> None:
    for rec_id, objs in audio_by_id.items():
        if rec_id not in transcript_ids:
            for obj, _, _ in objs:
                inv.unpaired.append(
                    Unpaired(
                        obj.key,
                        f"no transcript {layout.transcripts_prefix}audio_{rec_id}.json for this audio",
                        "audio_without_transcript",
                    )
                )
