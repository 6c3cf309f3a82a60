"""Backfills split into one run per machine class, per channel.

Dagster's asset backfill never puts a parent and a child with different backfill policies into one
run: it runs the parent, then the child in a run of its own. Giving H200 assets a policy of their
own (one channel per run, as T4 assets get by default) therefore makes a backfill over the whole
graph run stage 1 on the T4 and encoding on the H200, each run tagged by the run coordinator. A
single run launched by hand over both classes is not split: it goes to the H200 (pipeline/orchestration/routing.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from dagster import AssetsDefinition, AssetSpec, BackfillPolicy

from neutts_assets.pipeline.orchestration.routing import MACHINE_TAG

# One channel per run: a failed channel fails only its own run, and resuming redoes only that one.
H200_BACKFILL_POLICY = BackfillPolicy.multi_run(max_partitions_per_run=1)


def _machine(asset: AssetsDefinition) -> str | None:
    machines = {spec.tags.get(MACHINE_TAG) for spec in asset.specs}
    if len(machines) > 1:
        raise ValueError(
            f"{asset.key.to_user_string()}: one asset definition spans machine classes {sorted(map(str, machines))}"
        )
    return machines.pop()


def split_backfills_by_machine(assets: Sequence[AssetsDefinition | AssetSpec]) -> list[AssetsDefinition | AssetSpec]:
    out = []
    for asset in assets:
        if isinstance(asset, AssetsDefinition) and asset.is_executable and _machine(asset) == "h200":
            asset = asset.with_attributes(backfill_policy=H200_BACKFILL_POLICY)
        elif isinstance(asset, AssetsDefinition) and asset.backfill_policy == H200_BACKFILL_POLICY:
            # would be grouped with H200 assets in one backfill run
            raise ValueError(f"{asset.key.to_user_string()}: a non-H200 asset must not carry the H200 backfill policy")
        out.append(asset)
    return out
