"""Shared test plumbing: source buckets in the users' layout, and Dagster materializations."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

import os
import socket
import subprocess
from pathlib import Path

from dagster import DagsterInstance, TableMetadataValue, materialize

from neutts_assets.defs.inventory.raw_audio import raw_audio
from neutts_assets.defs.io_managers import ManifestIOManager
from neutts_assets.defs.resources import (
    ChannelSettings,
    DatasetSplit,
    HuggingFaceHub,
    QualityScoring,
    SegmentStore,
    SourceBucket,
)
from neutts_assets.defs.segments.segments_npz import segments_npz
from neutts_assets.demo import DEMO_CHANNEL, DEMO_CHANNEL_MAPPING, DEMO_SOURCE
from neutts_assets.pipeline.inventory.source_layout import AUDIO_PREFIX, TRANSCRIPTS_PREFIX
from neutts_assets.storage.store import ObjectStore

# Credentials the suite hands to the S3 client. Sentinel values, so a test can grep for leaks.
S3_ACCESS = "AKIATESTSENTINELACCESS"
S3_SECRET = "sentinel-secret-Zq9xW3vT7"
DEMO_FOLDER = DEMO_CHANNEL_MAPPING[DEMO_CHANNEL]
DEMO_TRANSCRIPTS = DEMO_SOURCE / TRANSCRIPTS_PREFIX.format(channel=DEMO_CHANNEL)
DEMO_AUDIO = DEMO_SOURCE / AUDIO_PREFIX.format(audio_folder=DEMO_FOLDER)
DEMO_IDS = sorted(p.name[len("audio_") : -len(".json")] for p in DEMO_TRANSCRIPTS.glob("audio_*.json"))


def clean_env(**extra: str) -> dict:
    """This process's environment without the project's settings, plus `extra`: a child process
    then sees only the configuration a test gives it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEUTTS_", "S3_", "DAGSTER_", "AWS_"))}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_audio(rec_id: str) -> Path:
    (path,) = DEMO_AUDIO.glob(f"{rec_id}.*")
    return path


def transcript_key(channel: str, rec_id: str) -> str:
    return f"{TRANSCRIPTS_PREFIX.format(channel=channel)}audio_{rec_id}.json"


def audio_key(folder: str, name: str) -> str:
    return f"{AUDIO_PREFIX.format(audio_folder=folder)}{name}"


def populate_source(store: ObjectStore, channel: str = DEMO_CHANNEL, folder: str | None = None, ids=None) -> None:
    """Copies demo recordings into `store` in the users' layout, under any channel / folder name."""
    folder = folder or channel
    for rec_id in ids or DEMO_IDS:
        store.write_bytes(transcript_key(channel, rec_id), (DEMO_TRANSCRIPTS / f"audio_{rec_id}.json").read_bytes())
        audio = demo_audio(rec_id)
        store.write_bytes(audio_key(folder, audio.name), audio.read_bytes())


def convert(src: Path, dst: Path, *args: str) -> Path:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), *args, str(dst)], check=True)
    return dst


def make_resources(
    source_url: str, store_url: str, s3_endpoint: str | None = None, mapping: dict | None = None
) -> dict:
    store = SegmentStore(
        url=store_url,
        endpoint_url=s3_endpoint,
        access_key=S3_ACCESS if s3_endpoint else None,
        secret_key=S3_SECRET if s3_endpoint else None,
        region="us-east-1" if s3_endpoint else None,
    )
    return {
        "source": SourceBucket(url=source_url),
        "store": store,
        "channel_settings": ChannelSettings(channel_mapping=mapping or {}),
        "manifest_io_manager": ManifestIOManager(store=store),
        "hub": HuggingFaceHub(),  # no repo: hf_dataset pushes nothing unless a test says where
        # Every row in train unless a test says otherwise (test_splits.py splits); scores on the CPU.
        "dataset_split": DatasetSplit(validation_fraction=0.0),
        "quality": QualityScoring(device="cpu"),
    }


def run_partition(
    assets: list,
    configured: str,
    instance: DagsterInstance,
    resources: dict,
    channel: str,
    config: dict | None = None,
    raise_on_error: bool = True,
):
    """Materializes `assets` for the channel partition (added if new), `config` going to the asset
    named `configured`."""
    if channel not in instance.get_dynamic_partitions("channels"):
        instance.add_dynamic_partitions("channels", [channel])
    run_config = {"ops": {configured: {"config": config}}} if config else None
    return materialize(
        assets,
        partition_key=channel,
        instance=instance,
        resources=resources,
        run_config=run_config,
        raise_on_error=raise_on_error,
    )


def run_stage1(
    instance: DagsterInstance, resources: dict, channel: str, config: dict | None = None, raise_on_error: bool = True
):
    return run_partition(
        [raw_audio, segments_npz], "segments_npz", instance, resources, channel, config, raise_on_error
    )


def plain(value):
    """A metadata value as a plain one: a table as its rows (dicts by column name), anything else its .value."""
    if isinstance(value, TableMetadataValue):
        return [dict(r.data) for r in value.records]
    return getattr(value, "value", value)


def asset_metadata(result, asset: str) -> dict:
    """The metadata of `asset`'s materialization in a materialize() result, as plain values."""
    (mat,) = [m for m in result.asset_materializations_for_node(asset)]
    return {k: plain(v) for k, v in mat.metadata.items()}


TEST_CODEC = "test-fixture deterministic codes (random-weights stand-in)"


def fake_codes(audio_id: str, num_samples: int) -> np.ndarray:
    """Deterministic stand-in codes, 50 per second, that differ per segment (test data, not a codec)."""
    import zlib

    import numpy as np

    seed = zlib.crc32(audio_id.encode())
    return ((np.arange(num_samples // 320, dtype=np.int64) * 7919 + seed) % 65536).astype(np.int32)


def encode_stage2(store: ObjectStore, channel: str, only=None) -> list[str]:
    """Writes stage-2 objects (codes filled) for a channel's stage-1 segments: the encoded_segments
    contract's layout, made here until that asset runs in these tests. Returns the stage-2 keys."""
    from neutts_assets.pipeline.segments.segment_file import encode_segment, read_segment

    keys = []
    for o in sorted(store.list(f"stage1/{channel}/"), key=lambda o: o.key):
        name = o.key.rsplit("/", 1)[1]
        if not name.endswith(".npz") or o.key.count("/") != 2 or (only is not None and name[:-4] not in only):
            continue
        seg = read_segment(store.read_bytes(o.key))
        seg.codes, seg.codec = fake_codes(seg.audio_id, len(seg.pcm16)), TEST_CODEC
        keys.append(f"stage2_with_codes/{channel}/{name}")
        store.write_bytes(keys[-1], encode_segment(seg))
    return keys


def run_dataset(
    instance: DagsterInstance, resources: dict, channel: str, config: dict | None = None, raise_on_error: bool = True
):
    from neutts_assets.defs.dataset.hf_dataset import hf_dataset

    return run_partition([hf_dataset], "hf_dataset", instance, resources, channel, config, raise_on_error)


def run_pairs(
    instance: DagsterInstance, resources: dict, channel: str, config: dict | None = None, raise_on_error: bool = True
):
    from neutts_assets.defs.pairs.training_pairs import training_pairs

    return run_partition([training_pairs], "training_pairs", instance, resources, channel, config, raise_on_error)
