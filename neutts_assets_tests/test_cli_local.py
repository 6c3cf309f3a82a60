"""The documented command-line paths, as a person runs them: local folders, environment variables."""

from __future__ import annotations

import json
import re
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


DEMO_ASSETS = ("raw_audio", "segments_npz", "encoded_segments", "segment_quality", "hf_dataset", "training_pairs")
SUMMARY_HEADER = ["asset", "status", "segments", "audio", "h", "throughput", "failed", "seconds"]


def _summary_table(out: str) -> dict[str, list[str]]:
    """The console's summary table: asset -> [status, segments, audio h, throughput..., failed, seconds]."""
    lines = out.splitlines()
    (start,) = [i for i, line in enumerate(lines) if line.split() == SUMMARY_HEADER]
    rows = {}
    for line in lines[start + 1 :]:
        if not line.startswith("  ") or line.startswith("  asset checks:"):
            break
        name, *cells = line.split()
        rows[name] = cells
    return rows


def _assert_console(out: str, segments: int, rows: int) -> None:
    """The console: one line per asset as it finishes, a summary table read from the run's metadata,
    no Dagster DEBUG events (they are in the log file it names)."""
    assert "DEBUG" not in out and "STEP_START" not in out
    for asset in DEMO_ASSETS:
        assert len(re.findall(rf"^  {asset} +ok +\d+\.\d s  \S", out, re.M)) == 1, (asset, out)
    table = _summary_table(out)
    assert list(table) == list(DEMO_ASSETS) and all(row[0] == "ok" for row in table.values())
    assert table["segments_npz"][1] == str(segments) and table["hf_dataset"][1] == str(rows)
    assert table["encoded_segments"][1] == str(segments) and "audio-h/h" in " ".join(table["segments_npz"])
    assert "asset checks: 5 passed, 0 did not pass" in out
    log = Path(re.search(r"^the run's full output .*: (\S+\.log)$", out, re.M).group(1))
    assert log.is_file() and "STEP_START" in log.read_text() and "DEBUG" in log.read_text()


def _assert_verbose_demo(env: dict, cwd: Path) -> None:
    """--verbose brings Dagster's whole event log back (here a second run: nothing new to encode)."""
    proc = _run([str(BIN / "neutts-assets"), "demo", "--verbose"], env, cwd=cwd)
    verbose = proc.stdout + proc.stderr
    assert "DEBUG" in verbose and "STEP_START" in verbose and "RUN_SUCCESS" in verbose
    assert "0 segments to encode" in verbose and list(_summary_table(verbose)) == list(DEMO_ASSETS)
    assert "datasets.load_dataset(" in proc.stdout


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

    _assert_console(out, segments=len(stage1), rows=len(ds))
    _assert_verbose_demo(env, cwd=tmp_path)

    # The documented clean-up command (docs/operations.md): the dataset verifies against every segment, so they go.
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
