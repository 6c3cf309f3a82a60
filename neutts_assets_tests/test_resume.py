"""A run killed with SIGKILL mid-channel leaves no half-written segment, and the next run
finishes the rest without redoing finished recordings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dagster import DagsterInstance

from neutts_assets import read_segment
from neutts_assets.storage.local import LocalStore
from neutts_assets_tests.helpers import (
    DEMO_IDS,
    DEMO_TRANSCRIPTS,
    asset_metadata,
    audio_key,
    clean_env,
    demo_audio,
    make_resources,
    run_stage1,
    transcript_key,
)

CHANNEL = "kill_me"
COPIES = 4


def _populate(root: Path) -> int:
    store = LocalStore(root)
    n = 0
    for copy in range(COPIES):
        for rec_id in DEMO_IDS:
            new_id = f"{rec_id}_c{copy}"
            store.write_bytes(transcript_key(CHANNEL, new_id), (DEMO_TRANSCRIPTS / f"audio_{rec_id}.json").read_bytes())
            audio = demo_audio(rec_id)
            store.write_bytes(audio_key(CHANNEL, new_id + audio.suffix), audio.read_bytes())
            n += 1
    return n


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): read_segment(p).pcm16.tobytes() for p in sorted(root.rglob("*.npz"))}


def test_sigkill_then_resume(tmp_path):
    total = _populate(tmp_path / "bucket")
    store_root = tmp_path / "store"
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(DAGSTER_HOME=str(home), NEUTTS_SOURCE=str(tmp_path / "bucket"), NEUTTS_STORE=str(store_root))
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "neutts-assets"), "add-channel", CHANNEL], env=env, check=True, capture_output=True)
    proc = subprocess.Popen(
        [
            str(bin_dir / "dagster"),
            "asset",
            "materialize",
            "-m",
            "neutts_assets.definitions",
            "--select",
            "raw_audio,segments_npz",
            "--partition",
            CHANNEL,
            "--config-json",
            json.dumps({"ops": {"segments_npz": {"config": {"workers": 1}}}}),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    index_dir = store_root / "stage1" / CHANNEL / "_index"
    deadline = time.monotonic() + 180
    while not (index_dir.is_dir() and len(list(index_dir.glob("*.json"))) >= 3):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p.stem for p in index_dir.glob("*.json")}
    debris = len([p for p in store_root.rglob("*") if ".neutts-tmp-" in p.name])  # a kill mid-write leaves one
    assert 3 <= len(done_before) < total

    # Whatever the kill left is either absent or whole: every listed segment reads back.
    for p in LocalStore(store_root).list("stage1/"):
        if p.key.endswith(".npz"):
            read_segment(store_root / p.key)

    resources = make_resources(str(tmp_path / "bucket"), str(store_root))
    meta = asset_metadata(run_stage1(DagsterInstance.ephemeral(), resources, CHANNEL), "segments_npz")
    assert meta["files_unchanged"] == len(done_before)  # finished recordings are not redone
    assert meta["files_new"] == total - len(done_before)
    assert meta["files_failed"] == 0
    assert meta["orphan_temporaries_removed"] == debris

    # The result equals an uninterrupted run's.
    ref_root = tmp_path / "reference"
    run_stage1(DagsterInstance.ephemeral(), make_resources(str(tmp_path / "bucket"), str(ref_root)), CHANNEL)
    assert _snapshot(store_root / "stage1") == _snapshot(ref_root / "stage1")
    assert not [p for p in store_root.rglob("*") if ".neutts-tmp-" in p.name]
