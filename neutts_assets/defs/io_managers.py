"""Manifests (small JSON documents describing a partition) go through an IO manager over the
segment store. Bulk segment objects never do: the assets write those themselves, as Dagster
advises for large file sets.

A manifest is a typed dataclass with `to_dict`/`from_dict` (Inventory, SegmentsManifest,
EncodedManifest, DatasetManifest, PairsManifest). The stored JSON is its `to_dict`; a
downstream asset gets the class its parameter is annotated with, built by `from_dict`."""

from __future__ import annotations

import json

from dagster import ConfigurableIOManager, InputContext, OutputContext

from neutts_assets.defs.resources import SegmentStore


def manifest_key(asset: str, partition: str) -> str:
    return f"manifests/{asset}/{partition}.json"


class ManifestIOManager(ConfigurableIOManager):
    store: SegmentStore

    def _key(self, context: OutputContext | InputContext) -> str:
        return manifest_key(context.asset_key.to_user_string(), context.asset_partition_key)

    def handle_output(self, context: OutputContext, obj) -> None:
        key = self._key(context)
        document = obj.to_dict() if hasattr(obj, "to_dict") else obj
        data = json.dumps(document, ensure_ascii=False, sort_keys=True).encode()
        store = self.store.open()
        store.write_bytes(key, data)  # atomic: readers see the old or the new manifest
        context.add_output_metadata(
            {"manifest": key, "manifest_bytes": len(data), "manifest_write_retries": sum(store.retries.values())}
        )

    def load_input(self, context: InputContext):
        key = self._key(context)
        try:
            document = json.loads(self.store.open().read_bytes(key))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{key} is missing from the segment store: materialize {context.asset_key.to_user_string()} "
                f"for channel {context.asset_partition_key!r} first"
            ) from None
        manifest_type = context.dagster_type.typing_type
        return manifest_type.from_dict(document) if hasattr(manifest_type, "from_dict") else document


def read_manifest(store, asset: str, partition: str, manifest_type):
    """A manifest another asset stored, read outside Dagster's inputs (an asset that depends on it
    only through `deps`); None when that asset has not run for the partition."""
    blob = store.read_bytes_or_none(manifest_key(asset, partition))
    return manifest_type.from_dict(json.loads(blob)) if blob is not None else None
