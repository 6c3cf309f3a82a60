"""The production deployment on loopback: deploy/dagster.yaml over PostgreSQL, Redis as the Celery
broker, dagster-webserver and dagster-daemon, and Celery workers as separate processes serving one
queue each (t4, h200), each with its own DAGSTER_HOME and NEUTTS_MACHINE. Source on the
GCS emulator, segment store on the S3 server. Runs are launched through the webserver's GraphQL API,
the way the UI launches them; where a run executed is read from what the worker recorded on it.

One deployment serves the whole module (starting it costs about a minute on this machine).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import requests

from neutts_assets.storage.gcs import GCSStore
from neutts_assets.storage.s3 import S3Store
from neutts_assets_tests.helpers import DEMO_IDS, S3_ACCESS, S3_SECRET, clean_env, free_port, populate_source
from neutts_assets_tests.routing_location import FAIL_PREFIX
from neutts_assets_tests.services import Processes, postgres_server, redis_server, wait_for

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
REC = ["austen_0880"]  # one short recording per channel keeps each run small
assert set(REC) <= set(DEMO_IDS)
REPO_SELECTOR = {"repositoryLocationName": "neutts_assets", "repositoryName": "__repository__"}
STAGE1 = ["raw_audio", "segments_npz"]
TERMINAL = ("SUCCESS", "FAILURE", "CANCELED")
SENSED = "sensed_channel"


class Deployment:
    def __init__(self, url: str, env: dict, source: GCSStore, store: S3Store, broker: str):
        self.url, self.env, self.source, self.store, self.broker = url, env, source, store, broker

    def gql(self, query: str, **variables) -> dict:
        resp = requests.post(self.url, json={"query": query, "variables": variables}, timeout=120)
        resp.raise_for_status()
        body = resp.json()
        assert "errors" not in body, body
        return body["data"]

    def add_channel(self, channel: str) -> None:
        populate_source(self.source, channel, ids=REC)
        out = self.gql(
            """mutation($repo: RepositorySelector!, $key: String!) {
            addDynamicPartition(repositorySelector: $repo, partitionsDefName: "channels", partitionKey: $key) { __typename } }""",
            repo=REPO_SELECTOR,
            key=channel,
        )["addDynamicPartition"]
        assert out["__typename"] == "AddDynamicPartitionSuccess", out

    def launch(
        self,
        assets: list[str],
        channel: str,
        tags: dict | None = None,
        run_config: dict | None = None,
        job: str = "__ASSET_JOB",
    ) -> str:
        """A launch as the UI's Materialize button makes it: the implicit asset job, a partition tag."""
        tags = {"dagster/partition": channel, **(tags or {})}
        out = self.gql(
            """mutation($params: ExecutionParams!) { launchPipelineExecution(executionParams: $params) {
            __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } ... on InvalidSubsetError { message } } }""",
            params={
                "selector": {
                    **REPO_SELECTOR,
                    "pipelineName": job,
                    **({"assetSelection": [{"path": [a]} for a in assets]} if assets else {}),
                },
                "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
                "runConfigData": run_config or {},
                "mode": "default",
            },
        )["launchPipelineExecution"]
        assert out["__typename"] == "LaunchRunSuccess", out
        return out["run"]["runId"]

    def run(self, run_id: str) -> dict:
        run = self.gql(
            """query($id: ID!) { runOrError(runId: $id) { ... on Run {
            runId status startTime endTime tags { key value } assetSelection { path } } } }""",
            id=run_id,
        )["runOrError"]
        run["tags"] = {t["key"]: t["value"] for t in run["tags"]}
        run["assets"] = sorted(a["path"][0] for a in run["assetSelection"] or [])
        return run

    def wait(self, run_id: str, timeout: float = 300) -> dict:
        return wait_for(lambda: (r := self.run(run_id))["status"] in TERMINAL and r, f"run {run_id}", timeout)

    def runs_with_tag(self, key: str, value: str) -> list[dict]:
        out = self.gql(
            """query($key: String!, $value: String!) { runsOrError(filter: {tags: [{key: $key, value: $value}]}) {
            ... on Runs { results { runId } } } }""",
            key=key,
            value=value,
        )["runsOrError"]["results"]
        return [self.run(r["runId"]) for r in out]

    def probe_metadata(self, channel: str) -> list[dict]:
        node = self.gql(
            """query($p: [String!]) { assetNodeOrError(assetKey: {path: ["h200_probe"]}) { ... on AssetNode {
            assetMaterializations(partitions: $p) { runId metadataEntries { label
              ... on TextMetadataEntry { text } ... on FloatMetadataEntry { floatValue } } } } } }""",
            p=[channel],
        )["assetNodeOrError"]
        return [
            {"runId": m["runId"], **{e["label"]: e.get("text", e.get("floatValue")) for e in m["metadataEntries"]}}
            for m in node["assetMaterializations"]
        ]

    def partition_status(self, asset: str) -> dict:
        node = self.gql(
            """query($a: [String!]!) { assetNodeOrError(assetKey: {path: $a}) { ... on AssetNode {
            assetPartitionStatuses { ... on DefaultPartitionStatuses {
              materializedPartitions failedPartitions materializingPartitions unmaterializedPartitions } } } } }""",
            a=[asset],
        )
        return node["assetNodeOrError"]["assetPartitionStatuses"]

    def backfill(self, assets: list[str], channels: list[str]) -> str:
        out = self.gql(
            """mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {
            __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }""",
            p={"partitionNames": channels, "assetSelection": [{"path": [a]} for a in assets]},
        )["launchPartitionBackfill"]
        assert out["__typename"] == "LaunchBackfillSuccess", out
        return out["backfillId"]

    def wait_backfill(self, backfill_id: str, timeout: float = 420) -> str:
        def done():
            status = self.gql(
                """query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } } }""",
                id=backfill_id,
            )["partitionBackfillOrError"]["status"]
            return (
                status
                if status in ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED")
                else None
            )

        return wait_for(done, f"backfill {backfill_id}", timeout)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, gcs_endpoint, s3_endpoint):
    import boto3
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    tmp = tmp_path_factory.mktemp("deployment")
    gcs_client = storage.Client(project="test", credentials=AnonymousCredentials())
    s3_client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id=S3_ACCESS,
        aws_secret_access_key=S3_SECRET,
        region_name="us-east-1",
    )
    gcs_client.create_bucket("routing-source")
    s3_client.create_bucket(Bucket="routing-store")
    procs = Processes(tmp)
    with postgres_server() as pg, redis_server(tmp) as redis_url:
        base = clean_env(
            **pg,
            NEUTTS_CELERY_BROKER=f"{redis_url}/0",
            NEUTTS_CELERY_BACKEND=f"{redis_url}/1",
            NEUTTS_H200_CONCURRENT_RUNS="1",
            NEUTTS_T4_CONCURRENT_RUNS="2",
            NEUTTS_SOURCE="gs://routing-source",
            NEUTTS_STORE="s3://routing-store/neutts_segments",
            S3_ENDPOINT_URL=s3_endpoint,
            S3_ACCESS_KEY=S3_ACCESS,
            S3_SECRET_KEY=S3_SECRET,
            S3_REGION="us-east-1",
            # the new-audio sensor runs in the daemon, watching one channel so other tests' channels start nothing
            NEUTTS_WATCH_ENABLED="1",
            NEUTTS_WATCH_INTERVAL_S="5",
            NEUTTS_WATCH_CHANNELS=SENSED,
            # encoded_segments with the real NeuCodec architecture, small and random-weight (no Hub here)
            NEUTTS_CODEC="random",
            NEUTTS_CODEC_DEVICE="cpu",
        )
        workspace = tmp / "workspace.yaml"
        workspace.write_text(
            "load_from:\n  - python_module:\n      module_name: neutts_assets_tests.routing_location\n"
            "      location_name: neutts_assets\n"
        )

        def home(name: str) -> dict:
            h = tmp / name
            h.mkdir()
            (h / "dagster.yaml").write_text((REPO / "deploy" / "dagster.yaml").read_text())
            return {**base, "DAGSTER_HOME": str(h)}

        # A location that fails to load would only show as a webserver that never gets ready.
        from dagster import Definitions

        from neutts_assets_tests import routing_location

        Definitions.validate_loadable(routing_location.defs)
        server_env = home("home_server")
        import subprocess

        subprocess.run(
            [str(BIN / "dagster"), "instance", "migrate"],
            env=server_env,
            cwd=REPO,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        port = free_port()
        web, web_log = procs.start(
            "webserver",
            [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", str(workspace)],
            server_env,
            REPO,
        )
        daemon, daemon_log = procs.start(
            "daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)], server_env, REPO
        )
        # One run per worker process (`--pool=solo`), as in README: Celery's prefork children are
        # daemonic and cannot start the step processes of Dagster's multiprocess executor, and runs
        # in threads of one process fight over the process's stdout when their logs are captured.
        # Two H200 workers, so only the run queue can be what holds the H200 to one run.
        workers = {"t4-worker": "t4", "h200-worker-1": "h200", "h200-worker-2": "h200"}
        for name, machine in workers.items():
            procs.start(
                name,
                [
                    str(BIN / "dagster-celery"),
                    "worker",
                    "start",
                    "-A",
                    "dagster_celery.app",
                    "-y",
                    str(REPO / "deploy" / "celery.yaml"),
                    "-q",
                    machine,
                    "-n",
                    name,
                    "-i",
                    "neutts_assets.defs.orchestration.worker",
                    "--",
                    "--pool=solo",
                ],
                {**home(f"home_{name}"), "NEUTTS_MACHINE": machine, "PATH": f"{BIN}:{base.get('PATH', '')}"},
                REPO,
            )
        try:
            url = f"http://127.0.0.1:{port}/graphql"
            wait_for(
                lambda: requests.post(
                    url,
                    json={"query": "{ repositoriesOrError { ... on RepositoryConnection { nodes { name } } } }"},
                    timeout=5,
                ).json()["data"]["repositoriesOrError"]["nodes"],
                "dagster-webserver",
                240,
                web,
                web_log,
            )
            from celery import Celery

            app = Celery(broker=f"{redis_url}/0", backend=f"{redis_url}/1")
            wait_for(
                lambda: {n.split("@")[0] for r in app.control.ping(timeout=1.0) for n in r} >= set(workers),
                "the Celery workers",
                240,
            )
            assert daemon.poll() is None, daemon_log.read_text()[-3000:]
            deployment = Deployment(
                url,
                base,
                GCSStore(gcs_client, "routing-source"),
                S3Store(s3_client, "routing-store", "neutts_segments"),
                redis_url,
            )
            deployment.workspace, deployment.server_env = workspace, server_env
            yield deployment
        finally:
            procs.stop()


def executed_on(run: dict) -> str:
    return run["tags"].get("neutts/worker-machine")


def partition(run: dict) -> str:
    # backfill runs of assets with a backfill policy name a partition range, here of one channel
    tags = run["tags"]
    if "dagster/partition" in tags:
        return tags["dagster/partition"]
    assert tags["dagster/asset_partition_range_start"] == tags["dagster/asset_partition_range_end"], tags
    return tags["dagster/asset_partition_range_start"]


def test_stage1_launched_from_the_ui_runs_on_the_t4_worker(deployment):
    deployment.add_channel("ch_a")
    run = deployment.wait(deployment.launch(STAGE1, "ch_a"))
    assert run["status"] == "SUCCESS"
    assert run["tags"]["machine"] == "t4" and run["tags"]["dagster-celery/queue"] == "t4"
    assert run["tags"]["neutts/machine-from"] == "selection"
    assert executed_on(run) == "t4" and run["tags"]["neutts/worker"].startswith("t4-worker@")
    assert run["tags"]["neutts/worker-dagster-home"].endswith("home_t4-worker")
    assert "ch_a" in deployment.partition_status("segments_npz")["materializedPartitions"]


def test_the_sensor_adds_a_new_channel_and_its_run_goes_to_the_t4(deployment):
    populate_source(deployment.source, SENSED, ids=REC)
    sensed = lambda: deployment.runs_with_tag("dagster/sensor_name", "new_audio_sensor")  # noqa: E731
    (run,) = wait_for(
        lambda: (rs := sensed()) and all(r["status"] in TERMINAL for r in rs) and rs, "the sensor's run", 300
    )
    assert run["status"] == "SUCCESS" and run["tags"]["dagster/partition"] == SENSED
    assert run["tags"]["machine"] == "t4" and executed_on(run) == "t4"
    assert "new channel" in run["tags"]["neutts/sensor-found"]
    assert SENSED in deployment.partition_status("segments_npz")["materializedPartitions"]
    time.sleep(12)  # two more ticks: nothing changed, so no second run
    assert len(sensed()) == 1


def test_a_whole_job_with_a_process_per_step_runs_on_the_t4_worker(deployment):
    # no asset subset: the coordinator reads the job's assets; the worker's threads may start step processes
    deployment.add_channel("ch_j")
    run = deployment.wait(deployment.launch([], "ch_j", job="stage1_multiprocess"))
    assert run["status"] == "SUCCESS" and run["tags"]["machine"] == "t4" and executed_on(run) == "t4"


def test_encoded_segments_runs_on_the_h200_worker(deployment):
    # ch_a was cut by the first test; its encoding run must go to the GPU machine
    run = deployment.wait(deployment.launch(["encoded_segments"], "ch_a"), timeout=600)
    assert run["status"] == "SUCCESS", run
    assert run["tags"]["machine"] == "h200" and run["tags"]["dagster-celery/queue"] == "h200"
    assert executed_on(run) == "h200" and run["tags"]["neutts/worker"].startswith("h200-worker-")
    assert "ch_a" in deployment.partition_status("encoded_segments")["materializedPartitions"]


def test_an_h200_asset_runs_on_the_h200_worker(deployment):
    deployment.add_channel("ch_h")
    run = deployment.wait(deployment.launch(["h200_probe"], "ch_h"))
    assert run["status"] == "SUCCESS"
    assert run["tags"]["machine"] == "h200" and executed_on(run) == "h200"
    (meta,) = deployment.probe_metadata("ch_h")
    assert meta["machine_env"] == "h200" and "home_h200-worker-" in meta["dagster_home"]  # seen from inside the step


def test_an_explicit_machine_tag_wins(deployment):
    deployment.add_channel("ch_x")
    run = deployment.wait(deployment.launch(STAGE1, "ch_x", tags={"machine": "h200"}))
    assert run["status"] == "SUCCESS"
    assert run["tags"]["neutts/machine-from"] == "run tag" and run["tags"]["dagster-celery/queue"] == "h200"
    assert executed_on(run) == "h200"


def test_an_unknown_machine_tag_fails_the_run_with_the_reason_instead_of_guessing(deployment):
    deployment.add_channel("ch_u")
    run = deployment.wait(deployment.launch(STAGE1, "ch_u", tags={"machine": "a100"}), timeout=60)
    assert run["status"] == "FAILURE" and "neutts/worker" not in run["tags"]
    messages = deployment.gql(
        """query($id: ID!) { runOrError(runId: $id) { ... on Run { eventConnection { events {
        __typename ... on MessageEvent { message } } } } } }""",
        id=run["runId"],
    )["runOrError"]["eventConnection"]["events"]
    assert any("Cannot route this run" in (e.get("message") or "") and "'a100'" in e["message"] for e in messages), (
        messages
    )


def test_a_run_over_both_classes_goes_to_the_h200_never_the_t4(deployment):
    deployment.add_channel("ch_m")
    run = deployment.wait(deployment.launch([*STAGE1, "h200_probe"], "ch_m"))
    assert run["status"] == "SUCCESS"
    assert run["tags"]["machine"] == "h200" and run["tags"]["neutts/mixed-machines"] == "t4,h200"
    assert executed_on(run) == "h200"


def test_three_channel_backfill_runs_each_stage_on_its_machine_and_resumes_after_a_failed_channel(deployment):
    channels = ["bf_1", "bf_2", "bf_3"]
    for c in channels:
        deployment.add_channel(c)
    deployment.store.write_bytes(FAIL_PREFIX + "bf_3", b"fail")  # bf_3's H200 stage fails
    first = deployment.backfill([*STAGE1, "h200_probe"], channels)
    assert deployment.wait_backfill(first) in ("COMPLETED_FAILED", "FAILED")

    # one run per channel and machine class, each on its machine (the failed one too)
    runs = deployment.runs_with_tag("dagster/backfill", first)
    by_stage = {(partition(r), tuple(r["assets"])): r for r in runs}
    assert len(runs) == 6 and set(by_stage) == {(c, a) for c in channels for a in (tuple(STAGE1), ("h200_probe",))}, (
        by_stage.keys()
    )
    for (channel, assets), run in by_stage.items():
        assert (
            run["tags"]["neutts/channel"] == channel
        )  # the queue's one-run-per-channel limit sees range-tagged runs too
        want = "h200" if assets == ("h200_probe",) else "t4"
        assert run["tags"]["machine"] == want and executed_on(run) == want, (channel, run["tags"])
        assert run["status"] == ("FAILURE" if (channel, assets) == ("bf_3", ("h200_probe",)) else "SUCCESS"), (
            channel,
            assets,
        )

    # the per-channel status shows which channel failed at which stage
    probe = deployment.partition_status("h200_probe")
    assert "bf_3" in probe["failedPartitions"] and {"bf_1", "bf_2"} <= set(probe["materializedPartitions"])
    assert set(channels) <= set(deployment.partition_status("segments_npz")["materializedPartitions"])

    # resume: Re-execute from failure on the backfill page
    deployment.store.delete(FAIL_PREFIX + "bf_3")
    out = deployment.gql(
        """mutation($id: String!) { reexecutePartitionBackfill(reexecutionParams: {parentRunId: $id, strategy: FROM_FAILURE}) {
        __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }""",
        id=first,
    )["reexecutePartitionBackfill"]
    assert out["__typename"] == "LaunchBackfillSuccess", out
    assert deployment.wait_backfill(out["backfillId"]) in ("COMPLETED", "COMPLETED_SUCCESS")
    resumed = deployment.runs_with_tag("dagster/backfill", out["backfillId"])
    # only the failed channel's failed stage ran again, on its machine; nothing finished was redone
    assert [(partition(r), r["assets"], executed_on(r), r["status"]) for r in resumed] == [
        ("bf_3", ["h200_probe"], "h200", "SUCCESS")
    ]
    assert set(channels) <= set(deployment.partition_status("h200_probe")["materializedPartitions"])


def test_a_backfill_from_the_cli_runs_on_the_t4(deployment):
    channels = ["cli_1", "cli_2"]
    for c in channels:
        deployment.add_channel(c)
    import subprocess

    out = subprocess.run(
        [
            str(BIN / "dagster"),
            "job",
            "backfill",
            "-w",
            str(deployment.workspace),
            "-j",
            "stage1",
            "--partitions",
            ",".join(channels),
            "--noprompt",
        ],
        env=deployment.server_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    runs = wait_for(
        lambda: (
            (rs := [r for c in channels for r in deployment.runs_with_tag("dagster/partition", c)])
            and len(rs) == 2
            and all(r["status"] in TERMINAL for r in rs)
            and rs
        ),
        "the CLI backfill's runs",
        300,
    )
    assert all(r["status"] == "SUCCESS" and "dagster/backfill" in r["tags"] and executed_on(r) == "t4" for r in runs), (
        runs
    )


def test_h200_runs_one_at_a_time_while_the_t4_keeps_working(deployment):
    # five channels: one channel's runs wait for each other anyway (the per-channel limit), so only
    # the machine limit can hold runs of different channels to one at a time
    gpu_channels = [f"ch_c{i}" for i in range(5)]
    for channel in [*gpu_channels, "ch_t"]:
        deployment.add_channel(channel)
    slow = {"ops": {"h200_probe": {"config": {"sleep_s": 3.0}}}}
    gpu_runs = [deployment.launch(["h200_probe"], c, run_config=slow) for c in gpu_channels]
    cpu_run = deployment.launch(STAGE1, "ch_t")

    most_at_once, most_queued = 0, 0
    deadline = time.monotonic() + 420
    while True:
        states = [deployment.run(r)["status"] for r in gpu_runs]
        most_at_once = max(most_at_once, sum(s in ("STARTING", "STARTED") for s in states))
        most_queued = max(most_queued, states.count("QUEUED"))
        if all(s in TERMINAL for s in states):
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.5)
    assert most_at_once == 1 and most_queued >= 3
    runs = [deployment.run(r) for r in gpu_runs]
    assert all(r["status"] == "SUCCESS" and executed_on(r) == "h200" for r in runs)
    # the steps themselves, timed inside the worker, never overlapped
    steps = sorted(
        (m["step_started"], m["step_finished"])
        for c in gpu_channels
        for m in deployment.probe_metadata(c)
        if m["runId"] in gpu_runs
    )
    assert len(steps) == 5 and all(a[1] <= b[0] for a, b in zip(steps, steps[1:])), steps
    # the T4 run did not wait for the H200 queue
    cpu = deployment.wait(cpu_run)
    assert cpu["status"] == "SUCCESS" and executed_on(cpu) == "t4"
    assert cpu["endTime"] < max(r["endTime"] for r in runs)
