"""Credentials never leak. The whole graph (raw_audio -> segments_npz -> encoded_segments with the
random-weight codec -> hf_dataset pushed to the loopback Hub) runs from the command line with
sentinel credentials (S3 keys, Hub token, the Postgres password of the instance), then three runs
that fail on a credential: a wrong Hub token, a wrong S3 secret, a wrong Postgres password. Then
every place a credential could surface is searched for every sentinel: the instance's runs (run
config, tags) and every event (messages, metadata, errors and stack traces), the compute logs and
every other file under DAGSTER_HOME, each process's stdout and stderr, every object in the segment
store (manifests, leases, the card), every file and commit on the Hub, and what the UI's GraphQL
API shows for the runs (run config YAML, tags, events) and for the resources' configuration."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from dagster import DagsterInstance
from dagster._serdes import serialize_value

from neutts_assets.storage.local import LocalStore
from neutts_assets_tests.fake_hub import FakeHub
from neutts_assets_tests.helpers import S3_ACCESS, S3_SECRET, clean_env, free_port, populate_source
from neutts_assets_tests.services import PG_PASSWORD, postgres_server, wait_for

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHANNEL = "secret_ch"
HF_REPO = "neutts/sentinel-dataset"
HF_TOKEN = "hf_sentinelGOODtoken_Vb71"
SENTINELS = {
    "S3 access key": S3_ACCESS,
    "S3 secret key": S3_SECRET,
    "Hub token": HF_TOKEN,
    "wrong Hub token": "hf_sentinelWRONGtoken_Kd30",
    "wrong S3 secret": "sentinel-wrong-s3-secret-Pq5",
    "Postgres password": PG_PASSWORD,
    "wrong Postgres password": "pg-sentinel-wrong-Tz82",
}
ALL_ASSETS = "raw_audio,segments_npz,encoded_segments,hf_dataset"


def _materialize(env: dict, select: str, config: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [
        str(BIN / "dagster"),
        "asset",
        "materialize",
        "-m",
        "neutts_assets.definitions",
        "--select",
        select,
        "--partition",
        CHANNEL,
    ]
    if config:
        cmd += ["--config-json", json.dumps(config)]
    return subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture
def auth_s3(tmp_path):
    """An S3 server that checks credentials (moto with IAM authentication from the first request):
    the suite's shared server accepts any."""
    port = free_port()
    log = open(tmp_path / "moto-auth.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**clean_env(), "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: requests.get(f"{url}/moto-api/", timeout=1).status_code < 500, "moto with authentication", 60, proc
        )
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_no_credential_anywhere_after_the_whole_graph_and_failed_runs(
    tmp_path, s3_endpoint, s3_client, s3_bucket, auth_s3, monkeypatch
):
    populate_source(LocalStore(tmp_path / "source"), CHANNEL, ids=["austen_0870", "austen_0880"])
    home = tmp_path / "home"
    home.mkdir()
    # The production instance's storage (deploy/dagster.yaml: Postgres, password from the environment);
    # runs execute in the launching process, as `dagster asset materialize` does.
    deploy = (REPO_ROOT / "deploy" / "dagster.yaml").read_text()
    storage = deploy[deploy.index("storage:") : deploy.index("# Every run")]
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n" + storage)

    with postgres_server() as pg, FakeHub(HF_TOKEN) as hub:
        env = clean_env(
            **pg,
            DAGSTER_HOME=str(home),
            NEUTTS_SOURCE=str(tmp_path / "source"),
            NEUTTS_STORE=f"s3://{s3_bucket}/segs",
            S3_ENDPOINT_URL=s3_endpoint,
            S3_ACCESS_KEY=S3_ACCESS,
            S3_SECRET_KEY=S3_SECRET,
            S3_REGION="us-east-1",
            NEUTTS_CODEC="random",
            NEUTTS_CODEC_DEVICE="cpu",
            NEUTTS_HF_REPO=HF_REPO,
            HF_TOKEN=HF_TOKEN,
            HF_ENDPOINT=hub.url,
            HF_HUB_DISABLE_XET="1",
            HF_HOME=str(tmp_path / "hf"),
        )
        for key, value in env.items():  # this process opens the same instance and code location
            monkeypatch.setenv(key, value)
        instance = DagsterInstance.from_config(str(home))
        instance.add_dynamic_partitions("channels", [CHANNEL])

        outputs = {}
        started = time.monotonic()
        good = _materialize(env, ALL_ASSETS)
        outputs["whole graph"] = good.stdout + good.stderr
        assert good.returncode == 0, outputs["whole graph"][-4000:]
        (commit,) = hub.repos[HF_REPO].commits
        assert any(p.endswith(".parquet") for p in commit["lfs_added"])  # the token was used, and accepted
        graph_seconds = time.monotonic() - started

        bad = _materialize(
            {**env, "HF_TOKEN": SENTINELS["wrong Hub token"]},
            "hf_dataset",
            {"ops": {"hf_dataset": {"config": {"force": True}}}},
        )
        outputs["wrong Hub token"] = bad.stdout + bad.stderr
        assert bad.returncode != 0 and "401" in outputs["wrong Hub token"] and HF_REPO in outputs["wrong Hub token"]
        assert len(hub.repos[HF_REPO].commits) == 1

        bad = _materialize(
            {**env, "S3_ENDPOINT_URL": auth_s3, "S3_SECRET_KEY": SENTINELS["wrong S3 secret"]}, "raw_audio,segments_npz"
        )
        outputs["wrong S3 secret"] = bad.stdout + bad.stderr
        assert bad.returncode != 0 and "InvalidAccessKeyId" in outputs["wrong S3 secret"]

        bad = _materialize({**env, "DAGSTER_PG_PASSWORD": SENTINELS["wrong Postgres password"]}, "raw_audio")
        outputs["wrong Postgres password"] = bad.stdout + bad.stderr
        assert bad.returncode != 0 and "password authentication failed" in outputs["wrong Postgres password"]

        # ---- collect everything a person or a log shipper could see -----------------------------
        places: dict[str, bytes] = {f"stdout+stderr of the {name} run": out.encode() for name, out in outputs.items()}
        runs = instance.get_runs()
        assert len(runs) == 3  # the wrong-Postgres-password run never reached the instance
        assert sorted(r.status.value for r in runs) == ["FAILURE", "FAILURE", "SUCCESS"]
        n_events = 0
        for run in runs:
            places[f"run record {run.run_id} (run config, tags)"] = serialize_value(run).encode()
            events = instance.all_logs(run.run_id)
            n_events += len(events)
            places[f"{len(events)} events of run {run.run_id}"] = "\n".join(serialize_value(e) for e in events).encode()
        for path in home.rglob("*"):  # compute logs (captured stdout/stderr of each step) and anything else
            if path.is_file():
                places[f"file {path.relative_to(home)}"] = path.read_bytes()
        assert any("compute_logs" in name for name in places), sorted(places)
        for obj in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]:
            places[f"store object {obj['Key']}"] = (
                obj["Key"].encode() + s3_client.get_object(Bucket=s3_bucket, Key=obj["Key"])["Body"].read()
            )
        assert any(name.endswith("hf_dataset/README.md") for name in places) and any(
            "/manifests/" in name for name in places
        )
        repo = hub.repos[HF_REPO]
        for path in repo.files:
            places[f"Hub file {path}"] = path.encode() + hub.file_bytes(HF_REPO, path)
        places["Hub commits"] = json.dumps(repo.commits, default=str).encode()
        places.update(_what_the_ui_shows(instance, [r.run_id for r in runs]))

        # ---- search ---------------------------------------------------------------------------------
        found = [
            (what, where)
            for where, data in places.items()
            for what, secret in SENTINELS.items()
            if secret.encode() in data
        ]
        total = sum(len(d) for d in places.values())
        print(
            f"\nsearched {len(places)} places, {total / 1e6:.1f} MB, {n_events} events of {len(runs)} runs; "
            f"whole graph {graph_seconds:.0f} s"
        )
        assert not found, found


def _what_the_ui_shows(instance: DagsterInstance, run_ids: list[str]) -> dict[str, bytes]:
    """The UI's GraphQL answers for the runs (config YAML, tags, every event with its metadata and
    errors) and for the resources (their configured values), from the code location as a server."""
    from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

    out = {}
    run_query = """query($id: ID!) { runOrError(runId: $id) { ... on Run { runConfigYaml tags { key value }
        eventConnection { events { __typename ... on MessageEvent { message }
          ... on ExecutionStepFailureEvent { error { message stack causes { message stack } } failureMetadata { metadataEntries { label } } }
          ... on RunFailureEvent { pipelineFailureError: error { message stack causes { message stack } } }
          ... on MaterializationEvent { metadataEntries { label ... on TextMetadataEntry { text } ... on MarkdownMetadataEntry { mdStr }
                                                          ... on UrlMetadataEntry { url } ... on PathMetadataEntry { path } } } } } } } }"""
    resources_query = """{ repositoriesOrError { ... on RepositoryConnection { nodes { name
        allTopLevelResourceDetails { name configuredValues { key value type } } } } } }"""
    with define_out_of_process_context(str(REPO_ROOT / "workspace.yaml"), None, instance) as context:
        for run_id in run_ids:
            result = execute_dagster_graphql(context, run_query, {"id": run_id})
            assert not result.errors and result.data["runOrError"]["eventConnection"]["events"], result.errors
            out[f"GraphQL run {run_id}"] = json.dumps(result.data).encode()
        result = execute_dagster_graphql(context, resources_query)
        assert not result.errors, result.errors
        resources = {
            r["name"]: r
            for node in result.data["repositoriesOrError"]["nodes"]
            for r in node["allTopLevelResourceDetails"]
        }
        store_values = {v["key"]: v for v in resources["store"]["configuredValues"]}
        # the UI shows which variable holds the secret, never its value
        assert (
            store_values["secret_key"]["type"] == "ENV_VAR" and store_values["secret_key"]["value"] == "S3_SECRET_KEY"
        )
        out["GraphQL resources"] = json.dumps(result.data).encode()
    return out
