"""The UI in a real browser: dagster-webserver and dagster-daemon on the code location (the embedded
default instance), driven by Debian's headless Chromium through Playwright. Clicks what a person
clicks: the asset graph, Materialize, Add a partition, Launch; then reads the run's status and the
partition's metadata off the pages."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest
import requests
from playwright.sync_api import sync_playwright

from neutts_assets.storage.local import LocalStore
from neutts_assets_tests.helpers import DEMO_IDS, clean_env, free_port, populate_source
from neutts_assets_tests.services import Processes, wait_for

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHANNEL = "browser_channel"


@pytest.fixture
def webserver(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    populate_source(LocalStore(tmp_path / "bucket"), CHANNEL, ids=DEMO_IDS[1:3])
    env = clean_env(
        DAGSTER_HOME=str(home), NEUTTS_SOURCE=str(tmp_path / "bucket"), NEUTTS_STORE=str(tmp_path / "store")
    )
    # Create the instance's tables first: the webserver and the daemon starting together on a fresh
    # SQLite instance race to create them, and the loser exits.
    import subprocess

    subprocess.run(
        [str(BIN / "dagster"), "instance", "migrate"], env=env, cwd=REPO, check=True, stdout=subprocess.DEVNULL
    )
    port = free_port()
    procs = Processes(tmp_path)
    web, log = procs.start(
        "webserver",
        [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", str(REPO / "workspace.yaml")],
        env,
        REPO,
    )
    # the run queue (QueuedRunCoordinator) needs the daemon to start runs
    daemon, daemon_log = procs.start(
        "daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")], env, REPO
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: requests.post(
                f"{base}/graphql",
                json={"query": "{ repositoriesOrError { ... on RepositoryConnection { nodes { name } } } }"},
                timeout=5,
            ).json()["data"]["repositoriesOrError"]["nodes"],
            "dagster-webserver",
            240,
            web,
            log,
        )
        assert daemon.poll() is None, daemon_log.read_text()[-3000:]
        yield base, tmp_path
    finally:
        procs.stop()


def test_add_a_channel_and_materialize_it_in_the_browser(webserver):
    assert Path(CHROMIUM).exists(), "chromium is required (scripts/install.sh installs Debian's package)"
    base, tmp_path = webserver
    shots = tmp_path / "screenshots"
    shots.mkdir()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            # 1. the asset graph shows the workflow's groups; expanded, the four assets
            page.goto(f"{base}/asset-groups", wait_until="networkidle", timeout=120_000)
            page.wait_for_timeout(2000)
            skip = page.get_by_role("button", name="Skip")  # the first-visit newsletter prompt
            if skip.is_visible():
                skip.click()
            for group in ("stage1", "encoding", "dataset"):  # collapsed at first
                page.get_by_text(group, exact=True).last.wait_for()
            page.mouse.click(1000, 250, button="right")  # the graph's own menu, on its background
            page.get_by_role("menuitem", name="Expand all groups").click()
            for asset in ("raw_audio", "segments_npz", "encoded_segments", "hf_dataset"):
                page.get_by_text(asset, exact=True).last.wait_for()  # the whole graph fits: compact nodes
            page.screenshot(path=str(shots / "1-asset-graph.png"))

            # 2. select raw_audio and segments_npz on the graph; add the channel partition in the launch dialog
            page.get_by_text("raw_audio", exact=True).last.click()
            page.keyboard.down("Shift")
            page.get_by_text("segments_npz", exact=True).last.click()
            page.keyboard.up("Shift")
            page.get_by_role("button", name="Materialize selected (2)…").click()
            dialog = page.get_by_role("dialog")
            dialog.get_by_text("Add a partition").click()
            page.get_by_placeholder("name").fill(CHANNEL)
            page.get_by_role("button", name="Save").click()
            dialog.get_by_text("1 partition", exact=True).wait_for()
            assert "materialize 2 assets" in dialog.inner_text()
            page.screenshot(path=str(shots / "2-partition-added.png"))

            # 3. launch raw_audio + segments_npz for it
            page.get_by_role("button", name="Launch 1 run").click()
            page.get_by_text("Launched run").wait_for()

            # 4. wait for success on the Runs page
            page.goto(f"{base}/runs", wait_until="networkidle")
            deadline = time.monotonic() + 300
            while not page.get_by_text("Success", exact=True).first.is_visible():
                assert not page.get_by_text("Failure", exact=True).first.is_visible(), page.inner_text("body")[:2000]
                assert time.monotonic() < deadline, "run did not finish: " + page.inner_text("body")[:2000]
                page.wait_for_timeout(2000)
                page.reload(wait_until="networkidle")
            runs_text = page.inner_text("body")
            assert f"partition: {CHANNEL}" in runs_text and "machine: t4" in runs_text
            page.screenshot(path=str(shots / "3-run-succeeded.png"))

            # 5. the partition shows as materialized, with its metadata
            page.goto(f"{base}/assets/segments_npz?view=partitions&partition={CHANNEL}", wait_until="networkidle")
            page.get_by_text("segments_written", exact=True).wait_for()
            body = page.inner_text("body")
            assert "Materialized" in body and "files_new" in body and "segment_hours_in_channel" in body
            metadata = page.locator("tr", has=page.get_by_text("files_new", exact=True)).first.inner_text()
            assert metadata.split()[-1] == "2", metadata  # the two recordings put in the bucket
            written = int(
                page.locator("tr", has=page.get_by_text("segments_written", exact=True)).first.inner_text().split()[-1]
            )
            page.screenshot(path=str(shots / "4-partition-metadata.png"), full_page=True)
        finally:
            page.screenshot(path=str(shots / "last.png"))
            browser.close()

    assert written > 0
    assert len(list((tmp_path / "store" / "stage1" / CHANNEL).glob("*.npz"))) == written
    assert (shots / "4-partition-metadata.png").stat().st_size > 10_000
