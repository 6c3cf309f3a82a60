"""neutts-assets: channel audio + timed transcripts -> NeuTTS voice-cloning dataset.

The package root stays importable without Dagster: `from neutts_assets import read_segment`.
The Dagster code location is `neutts_assets.definitions`.
"""

from neutts_assets.pipeline.segments.segment_file import Segment, read_segment

__all__ = ["Segment", "read_segment"]
