"""The training_pairs manifest: which pairs build of the channel is published, from which dataset
build, and where. `to_dict` gives exactly the JSON document earlier runs stored; `from_dict` reads it."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from neutts_assets.pipeline.pairs.store import record_key


@dataclass(frozen=True)
class PairsManifest:
    channel: str
    build_id: str
    dataset_build_id: str
    folder: str  # the load_from_disk folder in the store
    pairs: int
    record: str  # the pairs build record's key

    @classmethod
    def of(cls, channel: str, record: dict) -> PairsManifest:
        """The manifest of a published pairs build record."""
        return cls(
            channel,
            record["build_id"],
            record["dataset_build_id"],
            record["folder"],
            record["counts"]["pairs"],
            record_key(channel),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PairsManifest:
        return cls(d["channel"], d["build_id"], d["dataset_build_id"], d["folder"], d["pairs"], d["record"])
