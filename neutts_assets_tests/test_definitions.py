"""The code location loads whole, the way `dagster dev` loads it."""

from dagster import AssetKey

from neutts_assets.definitions import defs
from neutts_assets.defs.partitions import channels


def test_channel_partitioned_assets_all_built():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {"raw_audio", "segments_npz", "segment_quality", "encoded_segments", "hf_dataset", "training_pairs"}
    for key in keys:
        assert graph.get(AssetKey(key)).partitions_def == channels
    assert {k.to_user_string() for k in graph.executable_asset_keys} == {
        "raw_audio",
        "segments_npz",
        "segment_quality",
        "encoded_segments",
        "hf_dataset",
        "training_pairs",
    }
    # Rows come from encoded_segments' files, or from segments_npz's with the no-codes option; their
    # scores from segment_quality, which reads the stage-1 files beside encoding (both under segments_npz).
    assert graph.get(AssetKey("hf_dataset")).parent_keys == {
        AssetKey("encoded_segments"),
        AssetKey("segments_npz"),
        AssetKey("segment_quality"),
    }
    assert graph.get(AssetKey("encoded_segments")).parent_keys == {AssetKey("segments_npz")}
    assert graph.get(AssetKey("segment_quality")).parent_keys == {AssetKey("segments_npz")}
    assert graph.get(AssetKey("training_pairs")).parent_keys == {AssetKey("hf_dataset")}
    assert channels.name == "channels"


def test_clean_up_job_is_partitioned_by_channel():
    job = defs.resolve_job_def("clean_up_segments")
    assert job.partitions_def == channels


def test_machine_tags():
    graph = defs.resolve_asset_graph()
    assert graph.get(AssetKey("segments_npz")).tags["machine"] == "t4"
    assert graph.get(AssetKey("encoded_segments")).tags["machine"] == "h200"
    assert graph.get(AssetKey("segment_quality")).tags["machine"] == "t4"  # beside the H200's encoding


def test_workspace_yaml_points_at_the_code_location():
    from pathlib import Path

    import yaml

    ws = yaml.safe_load((Path(__file__).parents[1] / "workspace.yaml").read_text())
    assert ws["load_from"][0]["python_module"]["module_name"] == "neutts_assets.definitions"


def test_assets_sit_in_the_workflows_groups():
    groups = {key.to_user_string(): group for a in defs.assets for key, group in a.group_names_by_key.items()}
    assert groups == {
        "raw_audio": "stage1",
        "segments_npz": "stage1",
        "segment_quality": "stage1",
        "encoded_segments": "encoding",
        "hf_dataset": "dataset",
        "training_pairs": "dataset",
    }


def test_every_definition_in_the_defs_folder_is_loaded_once():
    """definitions.py lists nothing: a definition added under defs/ is in the code location."""
    import inspect
    from pathlib import Path

    from dagster import AssetChecksDefinition, AssetsDefinition, JobDefinition, SensorDefinition

    import neutts_assets.defs as defs_package

    found = set()
    for path in Path(defs_package.__file__).parent.rglob("*.py"):
        parts = path.relative_to(Path(defs_package.__file__).parents[1]).with_suffix("").parts
        module = __import__("neutts_assets." + ".".join(parts), fromlist=["_"])
        for _, obj in inspect.getmembers(module):
            if isinstance(obj, AssetChecksDefinition):
                found |= {f"check:{k.name}" for k in obj.check_keys}
            elif isinstance(obj, AssetsDefinition):
                found |= {k.to_user_string() for k in obj.keys}
            elif isinstance(obj, (JobDefinition, SensorDefinition)):
                found.add(obj.name)
    loaded = (
        {a.key.to_user_string() for a in defs.assets} | {j.name for j in defs.jobs} | {s.name for s in defs.sensors}
    )
    loaded |= {f"check:{k.name}" for c in defs.asset_checks for k in c.check_keys}
    assert len(found) >= 11  # five assets, four checks, two jobs, one sensor: the walk found them
    assert found <= loaded
    assert len(defs.assets) == len({a.key for a in defs.assets})  # no asset twice


def test_dg_check_defs_passes():
    """Dagster's project CLI ([tool.dg] in pyproject.toml) loads the project as `dagster dev` does."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    dg = Path(sys.executable).with_name("dg")
    env = {**os.environ, "VIRTUAL_ENV": str(Path(sys.executable).parents[1])}
    out = subprocess.run([str(dg), "check", "defs"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "All definitions loaded successfully" in out.stdout + out.stderr
