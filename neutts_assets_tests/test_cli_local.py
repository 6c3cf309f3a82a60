"""The documented command-line paths, as a person runs them: local folders, environment variables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from neutts_assets import read_segment
from neutts_assets.storage.local import LocalStore
from neutts_assets_tests.helpers import DEMO_IDS, clean_env, free_port, populate_source

BIN = Path(sys.executable).parent


def _env(tmp_path: Path, **extra) -> dict:
    (tmp_path / "dagster_home").mkdir(exist_ok=True)
    return clean_env(DAGSTER_HOME=str(tmp_path / "dagster_home"), **extra)


def _run(cmd, env, cwd=None):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_materialize_any_local_folder_with_the_documented_commands(tmp_path):
    populate_source(LocalStore(tmp_path / "bucket"), "Atheer_-", "Atheer - أثير", ids=DEMO_IDS[:3])
    env = _env(
        tmp_path,
        NEUTTS_SOURCE=str(tmp_path / "bucket"),
        NEUTTS_STORE=str(tmp_path / "segments"),
        NEUTTS_CHANNEL_MAPPING=json.dumps({"Atheer_-": "Atheer - أثير"}),
    )
    _run([str(BIN / "neutts-assets"), "add-channel", "Atheer_-"], env)
    proc = _run(
        [
            str(BIN / "dagster"),
            "asset",
            "materialize",
            "-m",
            "neutts_assets.definitions",
            "--select",
            "raw_audio,segments_npz",
            "--partition",
            "Atheer_-",
        ],
        env,
    )
    assert "files 3/3" in proc.stdout + proc.stderr  # the progress line
    written = sorted((tmp_path / "segments" / "stage1" / "Atheer_-").glob("*.npz"))
    assert len(written) == 7  # austen_0870: 3, austen_0880: 2, austen_0890: 2
    assert all(read_segment(p).channel == "Atheer_-" for p in written)


def test_add_channel_refuses_unsafe_names(tmp_path):
    proc = subprocess.run(
        [str(BIN / "neutts-assets"), "add-channel", "../etc"], env=_env(tmp_path), capture_output=True, text=True
    )
    assert proc.returncode == 2 and "'..'" in proc.stderr


def test_demo_command_runs_the_whole_built_graph(tmp_path):
    # No Hub here (a closed port stands in for it): the demo must say so before encoding and
    # name the switch it takes, then still run the whole graph.
    env = _env(tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{free_port()}", HF_HOME=str(tmp_path / "hf"))
    proc = _run([str(BIN / "neutts-assets"), "demo"], env, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert "RUN_SUCCESS" in out
    notice = out.find("NEUTTS_CODEC=random")
    assert "Hugging Face Hub cannot be reached" in out and 0 <= notice < out.find("segments to encode")
    store = tmp_path / "dagster_home" / "neutts_store"
    stage1 = sorted(p.name for p in (store / "stage1" / "demo_librivox").glob("*.npz"))
    assert len(stage1) > 20
    assert (store / "manifests" / "segments_npz" / "demo_librivox.json").is_file()
    manifest = json.loads((store / "manifests" / "encoded_segments" / "demo_librivox.json").read_text())
    assert manifest["test_only_codes"] is True and "random-weights" in manifest["codec"]
    assert manifest["segment_count"] == len(stage1)
    for name in stage1:
        seg = read_segment(store / "stage2_with_codes" / "demo_librivox" / name)
        assert seg.codec == manifest["codec"] and len(seg.codes) == len(seg.pcm16) // 320
    # The dataset too, with the codes, loadable as the users load it.
    from datasets import load_dataset

    segments = len(list((store / "stage1" / "demo_librivox").glob("*.npz")))
    ds = load_dataset(str(store / "hf_dataset"), "demo_librivox", split="train", cache_dir=str(tmp_path / "hf_cache"))
    assert len(ds) == segments and "datasets.load_dataset(" in proc.stdout
    assert all(len(codes) > 0 for codes in ds["codes"])  # rows carry encoded_segments' codes

    # The README's clean-up command: the dataset verifies against every segment, so they go.
    proc = _run(
        [
            str(BIN / "dagster"),
            "job",
            "execute",
            "-m",
            "neutts_assets.definitions",
            "-j",
            "clean_up_segments",
            "--tags",
            json.dumps({"dagster/partition": "demo_librivox"}),
        ],
        env,
        cwd=tmp_path,
    )
    assert "RUN_SUCCESS" in proc.stdout + proc.stderr
    assert not list((store / "stage1" / "demo_librivox").glob("*.npz"))
    assert (
        len(
            load_dataset(
                str(store / "hf_dataset"), "demo_librivox", split="train", cache_dir=str(tmp_path / "hf_cache2")
            )
        )
        == segments
    )
