"""Where data lives, as ConfigurableResources, and how the deployment picks them from the environment.

One URL per store chooses the backend:
    gs://bucket[/prefix]   Google Cloud Storage, client from dagster-gcp's GCSResource
    s3://bucket[/prefix]   S3-compatible, client from dagster-aws's S3Resource (endpoint_url for on-prem)
    /any/local/folder      a local folder (the embedded default)
Credentials never appear in configuration: they come from EnvVar or the clients' default chains.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from dagster import ConfigurableResource, EnvVar
from dagster_aws.s3 import S3Resource
from dagster_gcp import GCSResource
from pydantic import Field

from neutts_assets.core.layout import ChannelLayout
from neutts_assets.defs.codec import codec_from_env
from neutts_assets.demo import DEMO_CHANNEL_MAPPING, DEMO_SOURCE
from neutts_assets.storage.gcs import GCSStore
from neutts_assets.storage.local import LocalStore
from neutts_assets.storage.s3 import S3Store
from neutts_assets.storage.store import ObjectStore



def _split_bucket_url(url: str, scheme: str) -> tuple[str, str]:
    bucket, _, prefix = url[len(scheme):].partition("/")
    if not bucket:
        raise ValueError(f"store URL {url!r} names no bucket")
    return bucket, prefix


class SourceBucket(ConfigurableResource):
    """The broadcaster's recordings and transcripts, in the users' layout (read only)."""

    url: str = Field(description="gs://bucket[/prefix] or a local folder in the users' layout")
    gcp_project: Optional[str] = Field(default=None, description="GCP project for the GCS client")

    def open(self) -> ObjectStore:
        if self.url.startswith("gs://"):
            bucket, prefix = _split_bucket_url(self.url, "gs://")
            return GCSStore(GCSResource(project=self.gcp_project).get_client(), bucket, prefix)
        if self.url.startswith("s3://"):
            raise ValueError("the source bucket is GCS or a local folder; s3:// is for the segment store")
        return LocalStore(self.url.removeprefix("file://"), create=False)


class SegmentStore(ConfigurableResource):
    """Where segments, codes and manifests are written: the on-prem S3 store, GCS or a local folder."""

    url: str = Field(description="s3://bucket[/prefix], gs://bucket[/prefix] or a local folder")
    endpoint_url: Optional[str] = Field(default=None, description="S3 endpoint, e.g. the on-prem NAS")
    access_key: Optional[str] = Field(default=None, description="set from EnvVar('S3_ACCESS_KEY')")
    secret_key: Optional[str] = Field(default=None, description="set from EnvVar('S3_SECRET_KEY')")
    region: Optional[str] = None
    verify_tls: Optional[bool] = Field(default=None, description="False for an on-prem endpoint with a private CA")
    max_attempts: int = Field(default=10, description="retries with backoff, by the S3 client itself")
    gcp_project: Optional[str] = None

    def open(self) -> ObjectStore:
        if self.url.startswith("s3://"):
            bucket, prefix = _split_bucket_url(self.url, "s3://")
            client = S3Resource(
                endpoint_url=self.endpoint_url,
                aws_access_key_id=self.access_key,
                aws_secret_access_key=self.secret_key,
                region_name=self.region,
                verify=self.verify_tls,
                max_attempts=self.max_attempts,
            ).get_client()
            return S3Store(client, bucket, prefix)
        if self.url.startswith("gs://"):
            bucket, prefix = _split_bucket_url(self.url, "gs://")
            return GCSStore(GCSResource(project=self.gcp_project).get_client(), bucket, prefix)
        return LocalStore(self.url.removeprefix("file://"))


class ChannelSettings(ConfigurableResource):
    """The old workflow's --channel_mapping: channel name -> audio folder name in the source bucket."""

    channel_mapping: dict[str, str] = Field(default_factory=dict)

    def layout(self, channel: str) -> ChannelLayout:
        return ChannelLayout.for_channel(channel, self.channel_mapping)


class HuggingFaceHub(ConfigurableResource):
    """Where hf_dataset pushes (the old --push_to_hub / --hf_repo). No repo: nothing is pushed."""

    hf_repo: Optional[str] = Field(default=None, description="(the old --hf_repo) Hub dataset repo, e.g. org/arabic-voice-cloning-dataset")
    token: Optional[str] = Field(default=None, description="set from EnvVar('HF_TOKEN'); never shown or logged")
    private: bool = Field(default=True, description="create the repo private (only applies when it does not exist yet)")
    endpoint: Optional[str] = Field(default=None, description="Hub endpoint; unset: HF_ENDPOINT or huggingface.co")
    title: str = Field(default="NeuTTS voice-cloning dataset", description="the dataset card's title")


def _env_or_none(name: str):
    # EnvVar keeps the value out of the UI's resource config; unset variables leave the field
    # empty so the client's own default chain (instance roles, ~/.aws) still works.
    return EnvVar(name) if os.environ.get(name) else None


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
        ),
        "store": SegmentStore(
            url=os.environ.get("NEUTTS_STORE") or default_store_url(),
            endpoint_url=os.environ.get("S3_ENDPOINT_URL") or None,
            access_key=_env_or_none("S3_ACCESS_KEY"),
            secret_key=_env_or_none("S3_SECRET_KEY"),
            region=os.environ.get("S3_REGION") or None,
            verify_tls=None if os.environ.get("S3_VERIFY_TLS", "") == "" else os.environ["S3_VERIFY_TLS"].lower() in ("1", "true", "yes"),
            gcp_project=os.environ.get("GOOGLE_CLOUD_PROJECT"),
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
