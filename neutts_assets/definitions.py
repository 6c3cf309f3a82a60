"""The code location (`dagster dev`, `dg dev`, the workspace.yaml): every definition in the defs
folder, found by Dagster's loader, so that a new asset, check, job or sensor needs no list here."""

from pathlib import Path

from dagster import Definitions, load_from_defs_folder

from neutts_assets.defs.orchestration.backfills import split_backfills_by_machine


def _once(objects) -> list:
    # The loader collects every module's attributes, so an asset imported by a check's or a job's
    # module is seen twice: it is one definition, kept once, in load order.
    return list({id(o): o for o in objects or []}.values())


def build_defs() -> Definitions:
    loaded = load_from_defs_folder(path_within_project=Path(__file__).parent)
    # Backfills are split by machine class (defs/orchestration/backfills.py): that is a property of the
    # whole graph, so it is applied here, after loading, rather than in each asset's module.
    return Definitions(
        assets=split_backfills_by_machine(_once(loaded.assets)),
        asset_checks=_once(loaded.asset_checks),
        jobs=_once(loaded.jobs),
        sensors=_once(loaded.sensors),
        schedules=_once(loaded.schedules),
        resources=loaded.resources,
    )


defs = build_defs()
