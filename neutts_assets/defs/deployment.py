"""The resources every asset, check and sensor uses, built from the environment when the code
location loads (the embedded default, with no variables set: the demo channel on local folders)."""

from dagster import Definitions, definitions

from neutts_assets.defs.inventory.sensors import watch_settings_from_env
from neutts_assets.defs.io_managers import ManifestIOManager
from neutts_assets.defs.resources import resources_from_env


@definitions
def deployment() -> Definitions:
    resources = resources_from_env()
    return Definitions(
        resources={
            **resources,
            "manifest_io_manager": ManifestIOManager(store=resources["store"]),
            "watch": watch_settings_from_env(),
        }
    )
