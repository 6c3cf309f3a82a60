"""Where training_pairs keeps its output in the segment store.

training_pairs/{channel}/{build}/{k}/data-00000-of-00001.arrow   a pairs file (whole recordings)
training_pairs/{channel}/{build}/{k}/pairs_index.parquet         beside it: its row references
training_pairs/{channel}/state.json, dataset_info.json           the load_from_disk folder
training_pairs_builds/{channel}.json                             the channel's published pairs build
"""

from __future__ import annotations

PAIRS_PREFIX = "training_pairs/"
PAIRS_BUILDS_PREFIX = "training_pairs_builds/"


def folder(channel: str) -> str:
    return f"{PAIRS_PREFIX}{channel}/"


def record_key(channel: str) -> str:
    return f"{PAIRS_BUILDS_PREFIX}{channel}.json"
