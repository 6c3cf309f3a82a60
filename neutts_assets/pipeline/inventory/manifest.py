"""A channel's inventory: every transcript paired with its audio object, plus what could not be paired."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

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

    audio_by_id: dict[str, list[tuple[ObjectInfo, str, bool]]] = {}
    for obj in audio:
        try:
            rec_id, ext, partial = layout.audio_id(obj.key)
        except (UnsafeNameError, ValueError) as exc:
            inv.unpaired.append(Unpaired(obj.key, str(exc)))
            continue
        audio_by_id.setdefault(rec_id, []).append((obj, ext, partial))

    transcript_ids: set[str] = set()
    pairs: list[tuple[str, ObjectInfo, ObjectInfo, str, bool]] = []
    for obj in transcripts:
        try:
            rec_id = layout.transcript_id(obj.key)
        except (UnsafeNameError, ValueError) as exc:
            inv.unpaired.append(Unpaired(obj.key, str(exc)))
            continue
        transcript_ids.add(rec_id)
        candidates = sorted(audio_by_id.get(rec_id, []), key=lambda c: audio_preference(c[1], c[2]))
        if not candidates:
            inv.unpaired.append(
                Unpaired(
                    obj.key,
                    f"no audio object {layout.audio_prefix}{rec_id}.<ext> for this transcript",
                    "transcript_without_audio",
                )
            )
            continue
        chosen, ext, partial = candidates[0]
        for other, _, _ in candidates[1:]:
            inv.unpaired.append(
                Unpaired(other.key, f"another file of recording {rec_id} is used: {chosen.key}", "duplicate_audio")
            )
        pairs.append((rec_id, obj, chosen, ext, partial))

    def digest(obj: ObjectInfo) -> str | None:
        if obj.size > MAX_TRANSCRIPT_BYTES:
            # Never read: stage 1 refuses it by its listed size, naming it. Its version stands in
            # for the content hash, so a replacement is still seen as a change.
            return f"not read, {obj.size} bytes, version {obj.version}"
        try:
            return hashlib.sha256(read(obj.key)).hexdigest()
        except FileNotFoundError:
            return None  # deleted between listing and reading

    with ThreadPoolExecutor(max_workers=read_workers) as pool:
        digests = pool.map(digest, [p[1] for p in pairs])
        for (rec_id, obj, chosen, ext, partial), digest_ in zip(pairs, digests):
            if digest_ is None:
                inv.unpaired.append(
                    Unpaired(obj.key, "transcript disappeared while the inventory was taken", "vanished")
                )
                continue
            inv.entries.append(
                InventoryEntry(
                    recording_id=rec_id,
                    transcript_key=obj.key,
                    transcript_version=obj.version,
                    transcript_size=obj.size,
                    transcript_sha256=digest_,
                    audio_key=chosen.key,
                    audio_version=chosen.version,
                    audio_size=chosen.size,
                    audio_ext=ext,
                    audio_partial=partial,
                )
            )
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
    inv.entries.sort(key=lambda e: e.recording_id)
    inv.unpaired.sort(key=lambda u: u.key)
    return inv
