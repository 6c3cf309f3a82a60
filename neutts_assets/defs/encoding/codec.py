"""The codec as a ConfigurableResource, and how the deployment picks it from the environment.

Its settings (NEUTTS_CODEC, NEUTTS_CODEC_MODEL, NEUTTS_CODEC_BATCH_SECONDS...) are declared once, with
their defaults, in neutts_assets/settings.py; docs/configuration.md lists them.
"""

from __future__ import annotations

from typing import Optional

from dagster import ConfigurableResource
from pydantic import Field

from neutts_assets import settings as S
from neutts_assets.pipeline.encoding.codec import Codec, CodecSettings, codec_label, load_codec
from neutts_assets.pipeline.encoding.stream import StreamSettings, default_host_workers


class NeuCodecResource(ConfigurableResource):
    model_id: str = S.CODEC_MODEL.pydantic_field()
    revision: Optional[str] = S.CODEC_REVISION.pydantic_field()
    weights: str = S.CODEC_WEIGHTS.pydantic_field()
    seed: int = S.CODEC_SEED.pydantic_field()
    device: str = S.CODEC_DEVICE.pydantic_field()
    dtype: str = S.CODEC_DTYPE.pydantic_field()
    batch_seconds: Optional[float] = S.CODEC_BATCH_SECONDS.pydantic_field()
    disk_budget_gb: float = S.CODEC_DISK_BUDGET_GB.pydantic_field()
    host_workers: Optional[int] = S.CODEC_HOST_WORKERS.pydantic_field()
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
    return NeuCodecResource(**S.values(S.CODEC))
