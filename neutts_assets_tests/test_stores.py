"""One contract, three backends: a local folder, moto's S3 server and fake-gcs-server."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import boto3
import pytest

from neutts_assets.storage.local import LocalStore
from neutts_assets.storage.s3 import S3Store
from neutts_assets.storage.store import ObjectChanged, StoreCheckError, UnsafeKeyError
from neutts_assets_tests.helpers import S3_ACCESS, S3_SECRET, clean_env


@pytest.fixture(params=["local", "s3", "gcs"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    return request.getfixturevalue(f"{request.param}_store")


def test_write_read_list_delete(store, tmp_path):
    store.write_bytes("stage1/Atheer - أثير/a_seg_0.npz", b"one")
    store.write_bytes("stage1/Atheer - أثير/a_seg_1.npz", b"two!")
    store.write_bytes("stage1/Atheer2/x.npz", b"other channel")
    store.write_bytes("stage1/Atheer - أثير/a_seg_0.npz", b"ONE")  # overwrite
    listed = {o.key: o.size for o in store.list("stage1/Atheer - أثير/")}
    assert listed == {"stage1/Atheer - أثير/a_seg_0.npz": 3, "stage1/Atheer - أثير/a_seg_1.npz": 4}
    assert {o.key for o in store.list("stage1/Atheer")} == set(listed) | {"stage1/Atheer2/x.npz"}  # partial prefix
    assert store.read_bytes("stage1/Atheer - أثير/a_seg_0.npz") == b"ONE"
    assert (
        store.download("stage1/Atheer - أثير/a_seg_1.npz", tmp_path / "dl") == 4
        and (tmp_path / "dl").read_bytes() == b"two!"
    )
    store.delete("stage1/Atheer - أثير/a_seg_0.npz")
    store.delete("stage1/Atheer - أثير/never-existed")
    assert store.read_bytes_or_none("stage1/Atheer - أثير/a_seg_0.npz") is None
    with pytest.raises(FileNotFoundError):
        store.read_bytes("nope")
    with pytest.raises(FileNotFoundError):
        store.download("nope", tmp_path / "dl2")


def test_upload_a_file_larger_than_one_multipart_chunk(store, tmp_path):
    # 9 MB: above boto3's 8 MB multipart threshold, so S3 goes through a multipart upload.
    src = tmp_path / "shard.parquet"
    src.write_bytes(os.urandom(9 * 1024 * 1024))
    assert store.upload(src, "hf_dataset/data/ch/a.parquet") == src.stat().st_size
    assert store.read_bytes("hf_dataset/data/ch/a.parquet") == src.read_bytes()
    assert [o.key for o in store.list("hf_dataset/")] == ["hf_dataset/data/ch/a.parquet"]
    with pytest.raises(UnsafeKeyError):
        store.upload(src, "../a.parquet")


def test_version_changes_on_overwrite(store):
    store.write_bytes("k", b"a")
    (v1,) = [o.version for o in store.list("k")]
    store.write_bytes("k", b"bb")
    (v2,) = [o.version for o in store.list("k")]
    assert v1 != v2


@pytest.mark.parametrize("key", ["../escape", "/abs", "a/../../b", "a//b", "a/./b", "new\nline", "a\\b", ""])
def test_unsafe_keys_are_refused(store, key):
    with pytest.raises(UnsafeKeyError):
        store.write_bytes(key, b"x")


def test_listing_pages_past_1000_objects(store):
    for i in range(1005):
        store.write_bytes(f"many/{i:05d}", b"")
    assert len(list(store.list("many/"))) == 1005


def test_local_writes_are_atomic(tmp_path):
    store = LocalStore(tmp_path)
    (tmp_path / "stage1").mkdir()
    # What a writer killed mid-write leaves: a temporary file. Never listed, and swept away.
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "stage1" / f".a_seg_0.npz.neutts-tmp-{dead.pid}-x1").write_bytes(b"half")
    (tmp_path / "stage1" / f".a_seg_1.npz.neutts-tmp-{os.getpid()}-x2").write_bytes(b"in progress")  # a live writer
    assert list(store.list("")) == []
    assert store.remove_orphan_temporaries() == 1
    store.write_bytes("stage1/a_seg_0.npz", b"whole")
    assert sorted(p.name for p in (tmp_path / "stage1").iterdir()) == [
        f".a_seg_1.npz.neutts-tmp-{os.getpid()}-x2",
        "a_seg_0.npz",
    ]


def test_local_store_refuses_symlinks_out_of_its_root(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(UnsafeKeyError):
        LocalStore(root).write_bytes("link/file", b"x")
    assert list(outside.iterdir()) == []


# connectivity checks ---------------------------------------------------------------------------


def test_checks_pass_on_reachable_stores(store):
    store.check(write=True)


def test_s3_check_names_the_bucket(s3_client):
    with pytest.raises(StoreCheckError) as err:
        S3Store(s3_client, "no-such-bucket").check()
    assert err.value.part == "bucket" and "no-such-bucket" in str(err.value)


def test_s3_check_names_the_endpoint():
    client = boto3.client(
        "s3",
        endpoint_url="http://127.0.0.1:9",
        aws_access_key_id="a",
        aws_secret_access_key="b",
        region_name="us-east-1",
        config=boto3.session.Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    with pytest.raises(StoreCheckError) as err:
        S3Store(client, "b").check()
    assert err.value.part == "endpoint" and "127.0.0.1:9" in str(err.value)


def test_gcs_check_names_the_bucket(gcs_client):
    from neutts_assets.storage.gcs import GCSStore

    with pytest.raises(StoreCheckError) as err:
        GCSStore(gcs_client, "no-such-bucket").check()
    assert err.value.part == "bucket"


def _cli(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "neutts_assets", "check-stores", "--write"],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_stores_cli(s3_endpoint, s3_bucket, gcs_bucket, gcs_endpoint, tmp_path):
    ok = _cli(
        {
            "NEUTTS_SOURCE": f"gs://{gcs_bucket}",
            "NEUTTS_STORE": f"s3://{s3_bucket}/neutts_segments",
            "S3_ENDPOINT_URL": s3_endpoint,
            "S3_ACCESS_KEY": S3_ACCESS,
            "S3_SECRET_KEY": S3_SECRET,
            "S3_REGION": "us-east-1",
            "STORAGE_EMULATOR_HOST": gcs_endpoint,
            "HOME": str(tmp_path),
        }
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "source: OK" in ok.stdout and "store: OK" in ok.stdout

    bad = _cli(
        {
            "NEUTTS_SOURCE": f"gs://missing-{gcs_bucket}",
            "NEUTTS_STORE": "s3://missing-bucket/x",
            "S3_ENDPOINT_URL": s3_endpoint,
            "S3_ACCESS_KEY": S3_ACCESS,
            "S3_SECRET_KEY": S3_SECRET,
            "S3_REGION": "us-east-1",
            "STORAGE_EMULATOR_HOST": gcs_endpoint,
            "HOME": str(tmp_path),
        }
    )
    assert bad.returncode == 1
    assert (
        "source: FAILED bucket" in bad.stdout
        and "store: FAILED bucket" in bad.stdout
        and "missing-bucket" in bad.stdout
    )

    down = _cli(
        {
            "NEUTTS_STORE": "s3://b/x",
            "S3_ENDPOINT_URL": "http://127.0.0.1:9",
            "S3_ACCESS_KEY": S3_ACCESS,
            "S3_SECRET_KEY": S3_SECRET,
            "S3_REGION": "us-east-1",
            "HOME": str(tmp_path),
        }
    )
    assert "store: FAILED endpoint" in down.stdout and "127.0.0.1:9" in down.stdout

    nocreds = _cli(
        {
            "NEUTTS_STORE": "s3://b/x",
            "S3_ENDPOINT_URL": s3_endpoint,
            "S3_REGION": "us-east-1",
            "HOME": str(tmp_path),
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    assert "store: FAILED credentials" in nocreds.stdout

    for run in (ok, bad, down, nocreds):  # the secret is never printed
        assert S3_SECRET not in run.stdout + run.stderr


def test_download_pinned_to_a_listed_version(store, tmp_path):
    """A download pinned to the version a listing saw refuses a replaced object (GCS generation,
    S3 ETag, a folder's mtime and size) and leaves no local file behind."""
    store.write_bytes("audio/a.wav", b"first version")
    (listed,) = list(store.list("audio/"))
    assert store.download("audio/a.wav", tmp_path / "a", version=listed.version) == len(b"first version")
    assert (tmp_path / "a").read_bytes() == b"first version"
    time.sleep(0.01)  # a folder's version is its mtime: make the rewrite's differ
    store.write_bytes("audio/a.wav", b"second, longer version")
    with pytest.raises(ObjectChanged, match="audio/a.wav"):
        store.download("audio/a.wav", tmp_path / "b", version=listed.version)
    assert not (tmp_path / "b").exists()
    (now,) = list(store.list("audio/"))
    assert store.download("audio/a.wav", tmp_path / "c", version=now.version) == len(b"second, longer version")


def test_gcs_errors_never_quote_an_upload_session():
    """A resumable upload's session URL is a write credential for that object: the transport
    error that quotes it reaches our message redacted, and is not chained into the run's error."""
    import requests

    from neutts_assets.storage.gcs import _store_error

    url = "http://127.0.0.1:1/upload/storage/v1/b/bkt/o?uploadType=resumable&upload_id=ADPycdsSECRETsession123&name=x"
    try:
        raise requests.exceptions.ConnectionError(f"HTTPConnectionPool: Max retries exceeded with url: {url}")
    except requests.exceptions.ConnectionError as exc:
        err = _store_error("cannot upload 'x' to gs://bkt/", exc)
    assert "SECRETsession123" not in str(err) and "upload_id=<redacted>" in str(err) and "cannot upload 'x'" in str(err)
    assert err.__cause__ is None and err.__suppress_context__
    plain = _store_error("cannot read 'x'", ValueError("503 Service Unavailable"))
    assert str(plain) == "cannot read 'x': 503 Service Unavailable" and isinstance(plain.__cause__, ValueError)
