"""Manifests (small JSON documents describing a partition) go through an IO manager over the
segment store. Bulk segment objects never do: the assets write those themselves, as Dagster
advises for large file sets."""

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

    def handle_output(self, context: OutputContext, obj: dict) -> None:
        key = self._key(context)
        data = json.dumps(obj, ensure_ascii=False, sort_keys=True).encode()
        store = self.store.open()
        store.write_bytes(key, data)  # atomic: readers see the old or the new manifest
        context.add_output_metadata(
            {"manifest": key, "manifest_bytes": len(data), "manifest_write_retries": sum(store.retries.values())}
        )

    def load_input(self, context: InputContext) -> dict:
        key = self._key(context)
        try:
            return json.loads(self.store.open().read_bytes(key))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{key} is missing from the segment store: materialize {context.asset_key.to_user_string()} "
                f"for channel {context.asset_partition_key!r} first"
            ) from None
