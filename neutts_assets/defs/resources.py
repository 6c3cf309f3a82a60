"""Where data lives, as ConfigurableResources, and how the deployment picks them from the environment.

One URL per store chooses the backend:
    gs://bucket[/prefix]   Google Cloud Storage, client from dagster-gcp's GCSResource
    s3://bucket[/prefix]   S3-compatible, boto3 client with botocore's retries and timeouts (endpoint_url for on-prem)
    /any/local/folder      a local folder (the embedded default)
Credentials never appear in configuration: they come from EnvVar or the clients' default chains.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Optional

import boto3
from botocore.config import Config as BotoConfig
from dagster import ConfigurableResource, EnvVar
from dagster_gcp import GCSResource
from pydantic import Field

from neutts_assets.defs.encoding.codec import codec_from_env
from neutts_assets.demo import DEMO_CHANNEL_MAPPING, DEMO_SOURCE
from neutts_assets.pipeline.inventory.source_layout import ChannelLayout
from neutts_assets.storage.gcs import GCSStore
from neutts_assets.storage.local import LocalStore
from neutts_assets.storage.retries import RetrySettings
from neutts_assets.storage.s3 import S3Store
from neutts_assets.storage.store import ObjectStore


def _split_bucket_url(url: str, scheme: str) -> tuple[str, str]:
    bucket, _, prefix = url[len(scheme) :].partition("/")
    if not bucket:
        raise ValueError(f"store URL {url!r} names no bucket")
    return bucket, prefix


class _ClientRetries(ConfigurableResource):
    """How hard the storage clients try: the clients' own retries (botocore's retry mode, google-api-core's
    Retry) with these attempts and timeouts. Every write is safe to repeat (same key, same bytes)."""

    max_attempts: int = Field(default=10, description="tries per request, the first included, before the run fails")
    connect_timeout_s: float = Field(default=10.0, description="seconds to wait for a connection")
    read_timeout_s: float = Field(default=60.0, description="seconds to wait for the next bytes of a response")
    retry_deadline_s: float = Field(default=600.0, description="GCS: most seconds one call spends retrying")
    initial_backoff_s: float = Field(
        default=1.0, description="GCS (and an interrupted S3 body): first backoff; it doubles"
    )
    max_backoff_s: float = Field(default=20.0, description="longest backoff between two tries")
    s3_retry_mode: str = Field(default="standard", description="botocore retry mode: standard or adaptive")

    def retry_settings(self) -> RetrySettings:
        return RetrySettings(
            self.max_attempts,
            self.connect_timeout_s,
            self.read_timeout_s,
            self.retry_deadline_s,
            self.initial_backoff_s,
            self.max_backoff_s,
            self.s3_retry_mode,
        )

    def _gcs(self, url: str, project: Optional[str]) -> GCSStore:
        bucket, prefix = _split_bucket_url(url, "gs://")
        make_client = GCSResource(project=project).get_client
        return GCSStore(make_client(), bucket, prefix, self.retry_settings(), client_factory=make_client)


class SourceBucket(_ClientRetries):
    """The broadcaster's recordings and transcripts, in the users' layout (read only)."""

    url: str = Field(description="gs://bucket[/prefix] or a local folder in the users' layout")
    gcp_project: Optional[str] = Field(default=None, description="GCP project for the GCS client")

    def open(self) -> ObjectStore:
        if self.url.startswith("gs://"):
            return self._gcs(self.url, self.gcp_project)
        if self.url.startswith("s3://"):
            raise ValueError("the source bucket is GCS or a local folder; s3:// is for the segment store")
        return LocalStore(self.url.removeprefix("file://"), create=False)


class SegmentStore(_ClientRetries):
    """Where segments, codes and manifests are written: the on-prem S3 store, GCS or a local folder."""

    url: str = Field(description="s3://bucket[/prefix], gs://bucket[/prefix] or a local folder")
    endpoint_url: Optional[str] = Field(default=None, description="S3 endpoint, e.g. the on-prem NAS")
    access_key: Optional[str] = Field(default=None, description="set from EnvVar('S3_ACCESS_KEY')")
    secret_key: Optional[str] = Field(default=None, description="set from EnvVar('S3_SECRET_KEY')")
    region: Optional[str] = None
    verify_tls: Optional[bool] = Field(default=None, description="False for an on-prem endpoint with a private CA")
    gcp_project: Optional[str] = None

    def open(self) -> ObjectStore:
        if self.url.startswith("s3://"):
            bucket, prefix = _split_bucket_url(self.url, "s3://")
            settings = self.retry_settings()
            # boto3 directly, not dagster-aws's S3Resource: that one sets max_attempts only, and
            # neither the retry mode nor the timeouts the client needs to give up on a stalled server.
            make_client = functools.partial(
                boto3.session.Session().client,
                "s3",
                endpoint_url=self.endpoint_url,
                aws_access_key_id=self.access_key,
                aws_secret_access_key=self.secret_key,
                region_name=self.region,
                verify=self.verify_tls,
                config=BotoConfig(
                    retries={
                        "mode": settings.mode,
                        "total_max_attempts": settings.max_attempts,
                    },  # "max_attempts" would mean retries
                    connect_timeout=settings.connect_timeout_s,
                    read_timeout=settings.read_timeout_s,
                ),
            )
            return S3Store(make_client(), bucket, prefix, settings, client_factory=make_client)
        if self.url.startswith("gs://"):
            return self._gcs(self.url, self.gcp_project)
        return LocalStore(self.url.removeprefix("file://"))


class ChannelSettings(ConfigurableResource):
    """The old workflow's --channel_mapping: channel name -> audio folder name in the source bucket."""

    channel_mapping: dict[str, str] = Field(default_factory=dict)

    def layout(self, channel: str) -> ChannelLayout:
        return ChannelLayout.for_channel(channel, self.channel_mapping)


class HuggingFaceHub(ConfigurableResource):
    """Where hf_dataset pushes (the old --push_to_hub / --hf_repo). No repo: nothing is pushed."""

    hf_repo: Optional[str] = Field(
        default=None, description="(the old --hf_repo) Hub dataset repo, e.g. org/arabic-voice-cloning-dataset"
    )
    token: Optional[str] = Field(default=None, description="set from EnvVar('HF_TOKEN'); never shown or logged")
    private: bool = Field(default=True, description="create the repo private (only applies when it does not exist yet)")
    endpoint: Optional[str] = Field(default=None, description="Hub endpoint; unset: HF_ENDPOINT or huggingface.co")
    title: str = Field(default="NeuTTS voice-cloning dataset", description="the dataset card's title")


def _env_or_none(name: str):
    # EnvVar keeps the value out of the UI's resource config; unset variables leave the field
    # empty so the client's own default chain (instance roles, ~/.aws) still works.
    return EnvVar(name) if os.environ.get(name) else None


_RETRY_ENV = {  # field -> variable, for both stores; unset: the field's default
    "max_attempts": ("NEUTTS_STORAGE_MAX_ATTEMPTS", int),
    "connect_timeout_s": ("NEUTTS_STORAGE_CONNECT_TIMEOUT_S", float),
    "read_timeout_s": ("NEUTTS_STORAGE_READ_TIMEOUT_S", float),
    "retry_deadline_s": ("NEUTTS_STORAGE_RETRY_DEADLINE_S", float),
}


def _client_retries_from_env() -> dict:
    return {field: kind(os.environ[name]) for field, (name, kind) in _RETRY_ENV.items() if os.environ.get(name)}


def default_store_url() -> str:
    home = os.environ.get("DAGSTER_HOME")
    return str(Path(home) / "neutts_store") if home else str(Path.cwd() / ".neutts" / "store")


def resources_from_env() -> dict[str, ConfigurableResource]:
    """The deployment's resources. With no variables set: the shipped demo channel on local folders."""
    mapping = dict(DEMO_CHANNEL_MAPPING)
    if os.environ.get("NEUTTS_CHANNEL_MAPPING"):
        mapping.update(json.loads(os.environ["NEUTTS_CHANNEL_MAPPING"]))
    return {
        "source": SourceBucket(
            url=os.environ.get("NEUTTS_SOURCE") or str(DEMO_SOURCE),
            gcp_project=os.environ.get("GOOGLE_CLOUD_PROJECT"),
            **_client_retries_from_env(),
        ),
        "store": SegmentStore(
            url=os.environ.get("NEUTTS_STORE") or default_store_url(),
            endpoint_url=os.environ.get("S3_ENDPOINT_URL") or None,
            access_key=_env_or_none("S3_ACCESS_KEY"),
            secret_key=_env_or_none("S3_SECRET_KEY"),
            region=os.environ.get("S3_REGION") or None,
            verify_tls=None
            if os.environ.get("S3_VERIFY_TLS", "") == ""
            else os.environ["S3_VERIFY_TLS"].lower() in ("1", "true", "yes"),
            gcp_project=os.environ.get("GOOGLE_CLOUD_PROJECT"),
            **_client_retries_from_env(),
        ),
        "channel_settings": ChannelSettings(channel_mapping=mapping),
        "hub": HuggingFaceHub(
            hf_repo=os.environ.get("NEUTTS_HF_REPO") or None,
            token=_env_or_none("HF_TOKEN"),
            private=os.environ.get("NEUTTS_HF_PRIVATE", "true").lower() not in ("0", "false", "no"),
            endpoint=os.environ.get("HF_ENDPOINT") or None,
        ),
        "codec": codec_from_env(),
    }
