"""The shipped demo channel: public-domain LibriVox speech in the users' bucket layout
(built by scripts/make_demo_data.py). Its audio folder name holds spaces and Arabic on purpose."""

from pathlib import Path

DEMO_SOURCE = Path(__file__).resolve().parent / "source"
DEMO_CHANNEL = "demo_librivox"
DEMO_CHANNEL_MAPPING = {DEMO_CHANNEL: "LibriVox demo - مثال"}
