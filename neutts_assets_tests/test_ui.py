"""The UI path, through the same GraphQL API the Dagster UI uses: `dagster dev` on the code
location, add a channel partition, launch raw_audio + segments_npz for it, see it materialized. The
same `dagster dev` (its daemon runs the queue) then shows one channel's runs kept apart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from neutts_assets.storage.local import LocalStore
from neutts_assets_tests.helpers import DEMO_IDS, clean_env, free_port, populate_source

REPO = Path(__file__).resolve().parents[1]


QUEUE_A, QUEUE_B = "queue_a", "queue_b"  # the run-queue test's channels
REPO_SELECTOR = {"repositoryLocationName": "neutts_assets", "repositoryName": "__repository__"}


@pytest.fixture(scope="module")  # one `dagster dev` for the module: each start costs most of a minute here
def dagster_dev(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("ui")
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    populate_source(LocalStore(tmp_path / "bucket"), "ui_channel", ids=DEMO_IDS[:2])
    for channel in (QUEUE_A, QUEUE_B):
        populate_source(LocalStore(tmp_path / "bucket"), channel, ids=DEMO_IDS[1:2])
    env = clean_env(
        DAGSTER_HOME=str(home), NEUTTS_SOURCE=str(tmp_path / "bucket"), NEUTTS_STORE=str(tmp_path / "store")
    )
    port = free_port()
    log = open(tmp_path / "dagster-dev.log", "wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster"), "dev", "-w", str(REPO / "workspace.yaml"), "-p", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/graphql"
    deadline = time.monotonic() + 120
    while True:
        try:
            if requests.post(url, json={"query": "{ version }"}, timeout=2).ok:
                break
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("dagster dev did not start: " + (tmp_path / "dagster-dev.log").read_text()[-2000:])
        time.sleep(0.5)
    yield url, tmp_path
    # Ctrl-C is how a person stops `dagster dev`; on a loaded machine it sometimes does not finish
    # shutting down its children, so the whole process group is killed after a grace period.
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def gql(url, query, **variables):
    resp = requests.post(url, json={"query": query, "variables": variables}, timeout=60)
    resp.raise_for_status()
    body = resp.json()
    assert "errors" not in body, body
    return body["data"]


def wait_for_run(url, run_id, timeout=240) -> str:
    """Polls the run's status as the UI does until it ends; returns the final status."""
    deadline = time.monotonic() + timeout
    while True:
        status = gql(url, "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", id=run_id)[
            "runOrError"
        ]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            return status
        assert time.monotonic() < deadline, f"run still {status}"
        time.sleep(1)


def test_add_a_channel_and_materialize_it_from_the_ui(dagster_dev):
    url, tmp_path = dagster_dev
    nodes = gql(url, "{ assetNodes { assetKey { path } isExecutable partitionDefinition { name } } }")["assetNodes"]
    assert {n["assetKey"]["path"][0]: n["isExecutable"] for n in nodes} == {
        "raw_audio": True,
        "segments_npz": True,
        "segment_quality": True,
        "encoded_segments": True,
        "hf_dataset": True,
        "training_pairs": True,
    }
    assert all(n["partitionDefinition"]["name"] == "channels" for n in nodes)

    repo = {"repositoryLocationName": "neutts_assets", "repositoryName": "__repository__"}
    added = gql(
        url,
        """mutation($repo: RepositorySelector!) {
        addDynamicPartition(repositorySelector: $repo, partitionsDefName: "channels", partitionKey: "ui_channel") { __typename }
    }""",
        repo=repo,
    )
    assert added["addDynamicPartition"]["__typename"] == "AddDynamicPartitionSuccess"

    launched = gql(
        url,
        """mutation($params: ExecutionParams!) {
        launchPipelineExecution(executionParams: $params) {
            __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } ... on InvalidSubsetError { message }
        }
    }""",
        params={
            "selector": {
                **repo,
                "pipelineName": "__ASSET_JOB",
                "assetSelection": [{"path": ["raw_audio"]}, {"path": ["segments_npz"]}],
            },
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "ui_channel"}]},
            "mode": "default",
        },
    )["launchPipelineExecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]

    assert wait_for_run(url, run_id) == "SUCCESS"

    node = gql(
        url,
        """{ assetNodeOrError(assetKey: {path: ["segments_npz"]}) { ... on AssetNode {
        partitionStats { numMaterialized }
        assetMaterializations(partitions: ["ui_channel"]) { partition metadataEntries { label ... on IntMetadataEntry { intValue } } }
    } } }""",
    )["assetNodeOrError"]
    assert node["partitionStats"]["numMaterialized"] == 1
    (mat,) = node["assetMaterializations"]
    meta = {e["label"]: e.get("intValue") for e in mat["metadataEntries"]}
    assert mat["partition"] == "ui_channel" and meta["files_new"] == 2 and meta["segments_written"] > 0
    assert len(list((tmp_path / "store" / "stage1" / "ui_channel").glob("*.npz"))) == meta["segments_written"]

    # The dataset from the Launchpad, with the no-codes option (no encoder has run): its card is Markdown metadata.
    launched = gql(
        url,
        """mutation($params: ExecutionParams!) {
        launchPipelineExecution(executionParams: $params) {
            __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } ... on InvalidSubsetError { message }
        }
    }""",
        params={
            "selector": {**repo, "pipelineName": "__ASSET_JOB", "assetSelection": [{"path": ["hf_dataset"]}]},
            "runConfigData": {"ops": {"hf_dataset": {"config": {"include_segments_without_codes": True}}}},
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "ui_channel"}]},
            "mode": "default",
        },
    )["launchPipelineExecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    assert wait_for_run(url, launched["run"]["runId"]) == "SUCCESS"
    node = gql(
        url,
        """{ assetNodeOrError(assetKey: {path: ["hf_dataset"]}) { ... on AssetNode {
        assetMaterializations(partitions: ["ui_channel"]) { metadataEntries { label ... on IntMetadataEntry { intValue }
                                                            ... on MarkdownMetadataEntry { mdStr } } }
    } } }""",
    )["assetNodeOrError"]
    (mat,) = node["assetMaterializations"]
    entries = {e["label"]: e for e in mat["metadataEntries"]}
    assert entries["rows"]["intValue"] == meta["segments_written"]
    assert "### ui_channel" in entries["channel_card"]["mdStr"] and "## Features" in entries["dataset_card"]["mdStr"]


def launch(url, assets: list[str], channel: str) -> str:
    """A launch as the UI's Materialize button makes it: the implicit asset job, a partition tag."""
    out = gql(
        url,
        """mutation($p: ExecutionParams!) { launchPipelineExecution(executionParams: $p) {
        __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }""",
        p={
            "selector": {
                **REPO_SELECTOR,
                "pipelineName": "__ASSET_JOB",
                "assetSelection": [{"path": [a]} for a in assets],
            },
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": channel}]},
            "mode": "default",
        },
    )
    assert out["launchPipelineExecution"]["__typename"] == "LaunchRunSuccess", out
    return out["launchPipelineExecution"]["run"]["runId"]


def test_the_run_queue_starts_a_channels_second_run_only_after_its_first(dagster_dev):
    """dagster.yaml's one-run-per-channel limit, with the real daemon: channel A's second run waits
    for its first; channel B's run, queued behind both, does not wait for channel A."""
    url, _ = dagster_dev
    for channel in (QUEUE_A, QUEUE_B):
        out = gql(
            url,
            """mutation($repo: RepositorySelector!, $key: String!) { addDynamicPartition(
            repositorySelector: $repo, partitionsDefName: "channels", partitionKey: $key) { __typename } }""",
            repo=REPO_SELECTOR,
            key=channel,
        )
        assert out["addDynamicPartition"]["__typename"] == "AddDynamicPartitionSuccess", out
    ids = [launch(url, ["raw_audio", "segments_npz"], c) for c in (QUEUE_A, QUEUE_A, QUEUE_B)]
    for run_id in ids:
        assert wait_for_run(url, run_id, timeout=300) == "SUCCESS"
    runs = []
    for run_id in ids:
        r = gql(
            url,
            """query($id: ID!) { runOrError(runId: $id) { ... on Run { startTime endTime tags { key value } } } }""",
            id=run_id,
        )["runOrError"]
        runs.append({**r, "tags": {t["key"]: t["value"] for t in r["tags"]}})
    assert [r["tags"]["neutts/channel"] for r in runs] == [QUEUE_A, QUEUE_A, QUEUE_B]
    a1, a2, b = runs
    assert a2["startTime"] >= a1["endTime"], runs  # the channel's second run waited for its first
    assert b["startTime"] < a2["startTime"], runs  # another channel's run, queued after it, went first
