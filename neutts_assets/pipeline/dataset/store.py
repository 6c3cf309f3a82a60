"""Where the dataset stage keeps its output in the segment store: every key of the published
dataset, its build records and the `save_to_disk` copy is made here, and nowhere else.

    hf_dataset/README.md                          the card: features, figures, one config per channel + "all"
    hf_dataset/data/{channel}/{split}/{build}-{i}.parquet
                                                  the channel's shards of each split (~500 MB each by default)
    hf_dataset_builds/{channel}.json              the channel's published build: its shards and figures
    hf_dataset_progress/{channel}.json            a build in progress: its shards so far, where it is
    hf_dataset_disk/{channel}/...                 the save_to_disk copy (load_from_disk), one Arrow file per shard
    hf_dataset_disk/state.json, dataset_info.json  the all-channels load_from_disk folder
"""

from __future__ import annotations

DATASET_PREFIX = "hf_dataset/"
BUILDS_PREFIX = "hf_dataset_builds/"
PROGRESS_PREFIX = "hf_dataset_progress/"
DISK_PREFIX = "hf_dataset_disk/"
CARD_KEY = f"{DATASET_PREFIX}README.md"


def data_folder(channel: str) -> str:
    """The channel's shard folder, relative to the dataset folder (as the card and the Hub name it)."""
    return f"data/{channel}/"


def split_folder(channel: str, split: str) -> str:
    """A split's shard folder, relative to the dataset folder (one `data_files` entry of the card)."""
    return f"{data_folder(channel)}{split}/"


def shard_prefix(channel: str) -> str:
    return DATASET_PREFIX + data_folder(channel)


def shard_key(path_in_dataset: str) -> str:
    """A shard's key from its path in the dataset folder (as the build record lists it)."""
    return DATASET_PREFIX + path_in_dataset


def record_key(channel: str) -> str:
    return f"{BUILDS_PREFIX}{channel}.json"


def progress_key(channel: str) -> str:
    return f"{PROGRESS_PREFIX}{channel}.json"


def disk_folder(channel: str) -> str:
    """The channel's load_from_disk folder."""
    return f"{DISK_PREFIX}{channel}/"
