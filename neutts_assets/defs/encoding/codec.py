"""The codec as a ConfigurableResource, and how the deployment picks it from the environment.

NEUTTS_CODEC            pretrained (default) | random | random-full   (random: test-only codes)
NEUTTS_CODEC_MODEL      neuphonic/neucodec (default) | neuphonic/distill-neucodec
NEUTTS_CODEC_REVISION   a Hub branch, tag or commit (default: main)
NEUTTS_CODEC_DEVICE     auto (default: cuda when present) | cuda | cpu
NEUTTS_CODEC_DTYPE      float32 (default) | tf32 | bfloat16 | float16
NEUTTS_CODEC_BATCH_SECONDS   audio seconds per codec call (default: sized for the device's memory)
NEUTTS_CODEC_HOST_WORKERS    processes doing stage 2's per-segment host work (default: one per core, up to 8)
NEUTTS_CODEC_DISK_BUDGET_GB, NEUTTS_CODEC_SEED (random weights)
"""

from __future__ import annotations

import os
from typing import Optional

from dagster import ConfigurableResource
from pydantic import Field

from neutts_assets.pipeline.encoding.codec import Codec, CodecSettings, codec_label, load_codec
from neutts_assets.pipeline.encoding.stream import StreamSettings, default_host_workers


class NeuCodecResource(ConfigurableResource):
    model_id: str = Field(default="neuphonic/neucodec", description="neuphonic/neucodec or neuphonic/distill-neucodec")
    revision: Optional[str] = Field(default=None, description="Hub branch, tag or commit of the weights; None = main")
    weights: str = Field(
        default="pretrained",
        description="pretrained (from_pretrained: Hub or HF_HOME cache), or random / random-full: the real "
        "architecture with seeded random weights, built offline; their codes are labelled test-only",
    )
    seed: int = Field(default=0, description="seed of the random weights (random / random-full only)")
    device: str = Field(default="auto", description="cuda, cpu, or auto (cuda when present)")
    dtype: str = Field(default="float32", description="float32; tf32, bfloat16 or float16 trade exact codes for speed")
    batch_seconds: Optional[float] = Field(
        default=None,
        description="audio seconds per codec call (segments of one code count); unset: sized for the device's memory "
        "(about 1,400 s on an H200, 60 s on the CPU; pipeline/encoding/codec.py default_batch_seconds)",
    )
    disk_budget_gb: float = Field(
        default=2.0,
        description="most segment bytes held locally between download and upload. Nothing is staged on disk "
        "(segments stream through memory), so this bounds memory too",
    )
    host_workers: Optional[int] = Field(
        default=None,
        description="processes doing the per-segment host work (read, decode, stage-2 file, write); unset: one per core, up to 8",
    )
    io_threads: int = Field(default=4, description="store calls in flight per host worker")

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def settings(self) -> CodecSettings:
        return CodecSettings(self.model_id, self.revision, self.weights, self.resolved_device(), self.dtype, self.seed)

    def load(self) -> Codec:
        # The weights come from HF_HOME's cache (NeuCodec's own loader reads w2v-BERT from there too).
        return load_codec(self.settings())

    def label(self) -> str:
        """The loaded codec's label, without loading it (a run with nothing to encode never does)."""
        return codec_label(self.settings())

    def stream_settings(self) -> StreamSettings:
        return StreamSettings(
            batch_seconds=self.batch_seconds,
            budget_bytes=int(self.disk_budget_gb * 1024**3),
            host_workers=self.host_workers or default_host_workers(),
            io_threads=self.io_threads,
        )


def codec_from_env() -> NeuCodecResource:
    env = os.environ.get
    return NeuCodecResource(
        model_id=env("NEUTTS_CODEC_MODEL") or "neuphonic/neucodec",
        revision=env("NEUTTS_CODEC_REVISION") or None,
        weights=env("NEUTTS_CODEC") or "pretrained",
        seed=int(env("NEUTTS_CODEC_SEED") or 0),
        device=env("NEUTTS_CODEC_DEVICE") or "auto",
        dtype=env("NEUTTS_CODEC_DTYPE") or "float32",
        batch_seconds=float(env("NEUTTS_CODEC_BATCH_SECONDS")) if env("NEUTTS_CODEC_BATCH_SECONDS") else None,
        host_workers=int(env("NEUTTS_CODEC_HOST_WORKERS")) if env("NEUTTS_CODEC_HOST_WORKERS") else None,
        disk_budget_gb=float(env("NEUTTS_CODEC_DISK_BUDGET_GB") or 2.0),
    )
