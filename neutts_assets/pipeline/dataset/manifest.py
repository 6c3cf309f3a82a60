"""The hf_dataset manifest: which build of the channel is published, where, and its shards.

The full build record (members, figures, exclusions) stays the dataset stage's own document
(pipeline/dataset/writer.py); this is the asset's value, what the UI and a downstream asset read.
`to_dict` gives exactly the JSON document earlier runs stored; `from_dict` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from neutts_assets.pipeline.dataset.store import CARD_KEY, DATASET_PREFIX


@dataclass(frozen=True)
class ShardRef:
    path: str  # in the dataset folder
    rows: int
    bytes: int

    def to_dict(self) -> dict:
        return {"path": self.path, "rows": self.rows, "bytes": self.bytes}

    @classmethod
    def from_dict(cls, d: dict) -> ShardRef:
        return cls(d["path"], d["rows"], d["bytes"])


@dataclass(frozen=True)
class HubCommit:
    repo_id: str
    commit: str

    def to_dict(self) -> dict:
        return {"repo_id": self.repo_id, "commit": self.commit}

    @classmethod
    def from_dict(cls, d: dict) -> HubCommit:
        return cls(d["repo_id"], d["commit"])


@dataclass(frozen=True)
class DatasetManifest:
    channel: str
    build_id: str
    rows: int
    source: str
    shards: list[ShardRef] = field(default_factory=list)
    hub: HubCommit | None = None
    dataset_folder: str = DATASET_PREFIX
    card: str = CARD_KEY

    @classmethod
    def of(cls, channel: str, record: dict, hub: HubCommit | None = None) -> DatasetManifest:
        """The manifest of a published build record."""
        return cls(
            channel=channel,
            build_id=record["build_id"],
            rows=record["stats"]["rows"],
            source=record["source"],
            shards=[ShardRef(s["path"], s["rows"], s["bytes"]) for s in record["shards"]],
            hub=hub,
        )

    def to_dict(self) -> dict:
        return {
            "channel": self.channel,
            "build_id": self.build_id,
            "rows": self.rows,
            "dataset_folder": self.dataset_folder,
            "card": self.card,
            "source": self.source,
            "shards": [s.to_dict() for s in self.shards],
            "hub": self.hub.to_dict() if self.hub else None,
        }

    @classmethod
    def from_dict(cls, d: dict) -> DatasetManifest:
        return cls(
            channel=d["channel"],
            build_id=d["build_id"],
            rows=d["rows"],
            source=d.get("source", ""),
            shards=[ShardRef.from_dict(s) for s in d.get("shards", [])],
            hub=HubCommit.from_dict(d["hub"]) if d.get("hub") else None,
            dataset_folder=d.get("dataset_folder", DATASET_PREFIX),
            card=d.get("card", CARD_KEY),
        )
