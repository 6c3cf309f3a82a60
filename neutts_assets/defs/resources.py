"""Where data lives, as ConfigurableResources, and how the deployment picks them from the environment.

One URL per store chooses the backend:
    gs://bucket[/prefix]   Google Cloud Storage, client from dagster-gcp's GCSResource
    s3://bucket[/prefix]   S3-compatible, boto3 client with botocore's retries and timeouts (endpoint_url for on-prem)
    /any/local/folder      a local folder (the embedded default)
Credentials never appear in configuration: they come from EnvVar or the clients' default chains.
Each field read from the environment takes its default and description from its one declaration in
neutts_assets/settings.py (docs/configuration.md is generated from there).
"""

from __future__ import annotations

import functools
from typing import Optional

import boto3
from botocore.config import Config as BotoConfig
from dagster import ConfigurableResource, EnvVar
from dagster_gcp import GCSResource
from pydantic import Field

from neutts_assets import settings as S
from neutts_assets.defs.encoding.codec import codec_from_env
from neutts_assets.demo import DEMO_CHANNEL_MAPPING
from neutts_assets.pipeline.dataset.splits import SplitRule
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

    max_attempts: int = S.STORAGE_MAX_ATTEMPTS.pydantic_field()
    connect_timeout_s: float = S.STORAGE_CONNECT_TIMEOUT_S.pydantic_field()
    read_timeout_s: float = S.STORAGE_READ_TIMEOUT_S.pydantic_field()
    retry_deadline_s: float = S.STORAGE_RETRY_DEADLINE_S.pydantic_field()
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

    url: str = S.SOURCE_URL.pydantic_field()
    gcp_project: Optional[str] = S.GCP_PROJECT.pydantic_field()

    def open(self) -> ObjectStore:
        if self.url.startswith("gs://"):
            return self._gcs(self.url, self.gcp_project)
        if self.url.startswith("s3://"):
            raise ValueError("the source bucket is GCS or a local folder; s3:// is for the segment store")
        # Files written by hand: a rewrite that keeps the size and the mtime is still seen (local.py).
        return LocalStore(self.url.removeprefix("file://"), create=False, file_identity=True)


class SegmentStore(_ClientRetries):
    """Where segments, codes and manifests are written: the on-prem S3 store, GCS or a local folder."""

    url: str = S.STORE_URL.pydantic_field()
    endpoint_url: Optional[str] = S.S3_ENDPOINT_URL.pydantic_field()
    access_key: Optional[str] = S.S3_ACCESS_KEY.pydantic_field()
    secret_key: Optional[str] = S.S3_SECRET_KEY.pydantic_field()
    region: Optional[str] = S.S3_REGION.pydantic_field()
    verify_tls: Optional[bool] = S.S3_VERIFY_TLS.pydantic_field()
    gcp_project: Optional[str] = S.GCP_PROJECT.pydantic_field()

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

    channel_mapping: dict[str, str] = S.CHANNEL_MAPPING.pydantic_field()

    def layout(self, channel: str) -> ChannelLayout:
        return ChannelLayout.for_channel(channel, self.channel_mapping)


class HuggingFaceHub(ConfigurableResource):
    """Where hf_dataset pushes (the old --push_to_hub / --hf_repo). No repo: nothing is pushed."""

    hf_repo: Optional[str] = S.HUB_REPO.pydantic_field()
    token: Optional[str] = S.HUB_TOKEN.pydantic_field()
    private: bool = S.HUB_PRIVATE.pydantic_field()
    endpoint: Optional[str] = S.HUB_ENDPOINT.pydantic_field()
    title: str = Field(default="NeuTTS voice-cloning dataset", description="the dataset card's title")


class DatasetSplit(ConfigurableResource):
    """How hf_dataset splits the rows: speaker-disjoint, by a stable hash (pipeline/dataset/splits.py).
    A deployment setting rather than run config, so that every run, the sensor's too, splits alike."""

    validation_fraction: float = S.SPLIT_VALIDATION_FRACTION.pydantic_field()
    test_fraction: float = S.SPLIT_TEST_FRACTION.pydantic_field()
    global_speakers: str = S.SPLIT_GLOBAL_SPEAKERS.pydantic_field()

    def rule(self) -> SplitRule:
        return SplitRule(self.validation_fraction, self.test_fraction, self.global_speakers)


class QualityScoring(ConfigurableResource):
    """Which quality scores segment_quality makes, and where (pipeline/quality/scores.py)."""

    dnsmos: bool = S.QUALITY_DNSMOS.pydantic_field()
    device: str = S.QUALITY_DEVICE.pydantic_field()


def resources_from_env() -> dict[str, ConfigurableResource]:
    """The deployment's resources. With no variables set: the shipped demo channel on local folders.
    Credentials go in as EnvVar, which keeps their values out of the UI's resource config; unset, they
    leave the field empty so the client's own default chain (instance roles, ~/.aws) still works."""
    return {
        "source": SourceBucket(**S.values(S.SOURCE)),
        "dataset_split": DatasetSplit(**S.values(S.SPLIT)),
        "quality": QualityScoring(**S.values(S.QUALITY)),
        "store": SegmentStore(**S.values(S.STORE, secret=EnvVar)),
        "channel_settings": ChannelSettings(channel_mapping={**DEMO_CHANNEL_MAPPING, **S.CHANNEL_MAPPING.read()}),
        "hub": HuggingFaceHub(**S.values(S.HUB, secret=EnvVar)),
        "codec": codec_from_env(),
    }
