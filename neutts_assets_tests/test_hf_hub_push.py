"""Pushing to the Hub: a local HTTP server that implements the calls huggingface_hub makes
(HF_ENDPOINT, HF_HUB_DISABLE_XET=1). We assert on the commits it received and on the Parquet
it stored."""

from __future__ import annotations

import io
import shutil

import pyarrow.parquet as pq
import pytest
import yaml
from dagster import DagsterInstance

from neutts_assets.defs.resources import HuggingFaceHub
from neutts_assets.storage.local import LocalStore
from neutts_assets_tests.fake_hub import FakeHub
from neutts_assets_tests.helpers import asset_metadata, encode_stage2, make_resources, run_dataset
from neutts_assets_tests.test_hf_dataset import A, B, stage1_template  # noqa: F401  (the shared stage-1 fixture)

TOKEN = "hf_sentinelTOKEN_q8Zr2"
REPO = "neutts/arabic-voice-cloning-dataset"


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_DISABLE_XET", True)
    with FakeHub(TOKEN) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


@pytest.fixture
def env(stage1_template, tmp_path, hub, monkeypatch):  # noqa: F811
    shutil.copytree(stage1_template / "store", tmp_path / "store")
    store = LocalStore(tmp_path / "store")
    encode_stage2(store, A)
    encode_stage2(store, B)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    from dagster import EnvVar

    resources = make_resources(str(stage1_template / "source"), str(tmp_path / "store"))
    resources["hub"] = HuggingFaceHub(hf_repo=REPO, token=EnvVar("HF_TOKEN"), endpoint=hub.url)
    return resources, DagsterInstance.ephemeral(), store


def _hub_card(hub) -> dict:
    text = hub.file_bytes(REPO, "README.md").decode()
    return yaml.safe_load(text.split("---")[1])


def _configs(hub) -> dict:
    return {c["config_name"]: c["data_files"][0]["path"] for c in _hub_card(hub)["configs"]}


def test_each_channel_is_one_commit_and_never_deletes_another(env, hub):
    resources, instance, store = env
    run_dataset(instance, resources, A)
    run_dataset(instance, resources, B)
    repo = hub.repos[REPO]
    assert repo.private  # private by default
    assert len(repo.commits) == 2
    a_commit, b_commit = repo.commits
    assert A in a_commit["summary"] and B in b_commit["summary"]
    assert all(p.startswith(f"data/{A}/") for p in a_commit["lfs_added"]) and a_commit["added"] == ["README.md"]
    assert all(p.startswith(f"data/{B}/") for p in b_commit["lfs_added"]) and not b_commit["deleted"]
    assert set(_configs(hub)) == {"all", "text_codes", A, B}

    # What the Hub stored is our Parquet, byte for byte, and reads back with the features.
    for path in a_commit["lfs_added"]:
        stored = hub.file_bytes(REPO, path)
        assert stored == store.read_bytes(f"hf_dataset/{path}")
        table = pq.read_table(io.BytesIO(stored))
        assert table.num_rows > 0 and set(table.column("channel").to_pylist()) == {A}
        assert b"huggingface" in table.schema.metadata

    # Rebuild A with fewer segments: one commit that replaces A's shards and only A's.
    b_files = {p: f["oid"] for p, f in repo.files.items() if p.startswith(f"data/{B}/")}
    store.delete(sorted(o.key for o in store.list(f"stage2_with_codes/{A}/"))[0])
    result = run_dataset(instance, resources, A)
    meta = asset_metadata(result, "hf_dataset")
    third = repo.commits[2]
    assert len(repo.commits) == 3 and third["deleted"] == a_commit["lfs_added"]
    assert all(p.startswith(f"data/{A}/") for p in third["deleted"] + third["lfs_added"])
    assert {p: f["oid"] for p, f in repo.files.items() if p.startswith(f"data/{B}/")} == b_files
    assert meta["hub_files_deleted"] == len(a_commit["lfs_added"]) and meta["hub_repo"] == REPO
    configs = _configs(hub)
    assert set(configs[A]) == set(third["lfs_added"]) and set(configs[B]) == set(b_files)
    assert set(configs["all"]) == set(configs[A]) | set(configs[B])
    assert sum(pq.read_table(io.BytesIO(hub.file_bytes(REPO, p))).num_rows for p in configs[A]) == 6

    # The token reached the server in the Authorization header and nowhere in Dagster's records.
    assert TOKEN not in repr(resources["hub"])  # an EnvVar reference, not the value
    events = instance.all_logs(result.run_id)
    assert events and not [e for e in events if TOKEN in str(e)]


def test_failed_push_leaves_the_dataset_intact_and_a_retry_pushes_what_is_missing(env, hub, tmp_path):
    resources, instance, store = env
    hub.fail_commits = 3  # every attempt of this run fails at the commit, after the LFS uploads
    result = run_dataset(instance, resources, A, raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = str(failure.event_specific_data.error)
    assert REPO in message and "failed after 3 attempt(s)" in message and "push what is missing" in message
    assert TOKEN not in message
    assert hub.failed_commit_calls == 3 and not hub.repos[REPO].commits
    uploaded_once = list(hub.lfs_puts)
    assert uploaded_once and len(set(uploaded_once)) == len(uploaded_once)  # retries did not upload again

    # The local dataset is published and loads.
    from datasets import load_dataset

    ds = load_dataset(str(tmp_path / "store" / "hf_dataset"), A, split="train", cache_dir=str(tmp_path / "c"))
    assert len(ds) == 7

    # A retry: nothing rebuilt, one commit, no shard uploaded twice.
    meta = asset_metadata(run_dataset(instance, resources, A), "hf_dataset")
    assert meta["rebuilt"] is False and meta["hub_files_added"] == len(uploaded_once)
    assert len(hub.repos[REPO].commits) == 1 and hub.lfs_puts == uploaded_once
    assert set(_configs(hub)[A]) == set(hub.repos[REPO].commits[0]["lfs_added"])

    # Pushing again with nothing missing sends no shard (at most a regenerated card).
    meta = asset_metadata(run_dataset(instance, resources, A), "hf_dataset")
    assert meta["hub_files_added"] == 0 and meta["hub_files_already_there"] == len(uploaded_once)
    assert all(c["lfs_added"] == [] for c in hub.repos[REPO].commits[1:]) and hub.lfs_puts == uploaded_once


def test_a_wrong_token_is_a_clear_error_without_the_token(env, hub, monkeypatch):
    resources, instance, store = env
    resources["hub"] = HuggingFaceHub(hf_repo=REPO, token="hf_wrongTOKEN_x1", endpoint=hub.url)
    result = run_dataset(instance, resources, A, raise_on_error=False)
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = str(failure.event_specific_data.error)
    assert "401" in message and REPO in message and "hf_wrongTOKEN_x1" not in message


def test_the_loopback_hub_also_takes_upload_folder(hub, tmp_path):
    """The server is faithful to the client, not only to our code: huggingface_hub's own upload_folder works."""
    from huggingface_hub import HfApi

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.parquet").write_bytes(b"PAR1" * 1000)
    (tmp_path / "README.md").write_text("---\npretty_name: t\n---\n# t\n")
    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo("o/folder", repo_type="dataset")
    api.upload_folder(folder_path=str(tmp_path), repo_id="o/folder", repo_type="dataset")
    (commit,) = hub.repos["o/folder"].commits
    assert commit["lfs_added"] == ["data/x.parquet"] and commit["added"] == ["README.md"]
    assert hub.file_bytes("o/folder", "data/x.parquet") == b"PAR1" * 1000
    assert not hub.repos["o/folder"].private


def test_a_channel_pushed_from_another_store_keeps_its_config(env, hub, stage1_template, tmp_path):  # noqa: F811
    resources, instance, store = env
    run_dataset(instance, resources, A)
    # A second deployment with its own store pushes B to the same repo; it has no record of A.
    shutil.copytree(stage1_template / "store", tmp_path / "store2")
    encode_stage2(LocalStore(tmp_path / "store2"), B)
    other = make_resources(str(stage1_template / "source"), str(tmp_path / "store2"))
    other["hub"] = resources["hub"]
    meta = asset_metadata(run_dataset(DagsterInstance.ephemeral(), other, B), "hf_dataset")
    assert meta["hub_files_deleted"] == 0
    repo = hub.repos[REPO]
    configs = _configs(hub)
    a_files = [p for p in repo.files if p.startswith(f"data/{A}/")]
    assert set(configs[A]) == set(a_files) and set(configs["all"]) == set(a_files) | set(configs[B])
    infos = {i["config_name"]: i["splits"][0]["num_examples"] for i in _hub_card(hub)["dataset_info"]}
    assert infos[A] == 7 and infos["all"] == 7 + infos[B]
    assert "pushed from another store" in hub.file_bytes(REPO, "README.md").decode()


def test_two_channels_pushed_at_once_both_stay_on_the_hub_card(env, hub):
    """Each push's card lists the channels whose shards it saw on the Hub. Two pushes at once each
    saw only their own: the commit that lands second must not be based on the older view."""
    import threading

    resources, _, store = env
    for round_ in range(3):
        hub.repos.pop(REPO, None)  # each round pushes both channels to a fresh repo
        results, barrier = {}, threading.Barrier(2)

        def push(channel, barrier=barrier, results=results):
            barrier.wait()
            results[channel] = run_dataset(DagsterInstance.ephemeral(), resources, channel, raise_on_error=False)

        threads = [threading.Thread(target=push, args=(c,)) for c in (A, B)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert all(r.success for r in results.values()), round_
        configs = _configs(hub)
        assert set(configs) == {"all", "text_codes", A, B}, (round_, hub.repos[REPO].commits)
        files = set(hub.repos[REPO].files)
        assert set(configs["all"]) == set(configs[A]) | set(configs[B]) and set(configs["all"]) <= files
