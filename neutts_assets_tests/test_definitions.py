"""The code location loads whole, the way `dagster dev` loads it."""

from dagster import AssetKey

from neutts_assets.definitions import defs
from neutts_assets.defs.partitions import channels


def test_channel_partitioned_assets_all_built():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {"raw_audio", "segments_npz", "encoded_segments", "hf_dataset", "training_pairs"}
    for key in keys:
        assert graph.get(AssetKey(key)).partitions_def == channels
    assert {k.to_user_string() for k in graph.executable_asset_keys} == {
        "raw_audio",
        "segments_npz",
        "encoded_segments",
        "hf_dataset",
        "training_pairs",
    }
    # Rows come from encoded_segments' files, or from segments_npz's with the no-codes option.
    assert graph.get(AssetKey("hf_dataset")).parent_keys == {AssetKey("encoded_segments"), AssetKey("segments_npz")}
    assert graph.get(AssetKey("encoded_segments")).parent_keys == {AssetKey("segments_npz")}
    assert graph.get(AssetKey("training_pairs")).parent_keys == {AssetKey("hf_dataset")}
    assert channels.name == "channels"


def test_clean_up_job_is_partitioned_by_channel():
    job = defs.resolve_job_def("clean_up_segments")
    assert job.partitions_def == channels


def test_machine_tags():
    graph = defs.resolve_asset_graph()
    assert graph.get(AssetKey("segments_npz")).tags["machine"] == "t4"
    assert graph.get(AssetKey("encoded_segments")).tags["machine"] == "h200"


def test_workspace_yaml_points_at_the_code_location():
    from pathlib import Path

    import yaml

    ws = yaml.safe_load((Path(__file__).parents[1] / "workspace.yaml").read_text())
    assert ws["load_from"][0]["python_module"]["module_name"] == "neutts_assets.definitions"
