"""The load_from_disk folders' format, pinned to `datasets`' own (pipeline/dataset/disk.py).

The disk copy writes state.json by hand (save_to_disk would rewrite every Arrow file on each
build), a format pinned for datasets >=5.2,<6. These tests compare what it writes with what
`Dataset.save_to_disk` writes for a tiny dataset, key by key and type by type, and open ours with
`load_from_disk`: a `datasets` release that changes the format fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Dataset, Features, List, Value, load_from_disk

from neutts_assets.pipeline.dataset.disk import (
    ARROW_FILE,
    INFO,
    STATE,
    dataset_info,
    features_info,
    publish_all_channels,
    publish_state,
    save_channel_to_disk,
)
from neutts_assets.pipeline.dataset.rows import dataset_features
from neutts_assets.pipeline.dataset.store import DISK_PREFIX, disk_folder
from neutts_assets.storage.local import LocalStore

FEATURES = Features({"audio_id": Value("string"), "codes": List(Value("int32")), "duration_sec": Value("float32")})
# channel -> its shards, each shard's rows: every shard one save_to_disk(num_shards=1) folder
CHANNELS = {
    "chan_b": [
        {"audio_id": ["b_seg_0", "b_seg_1"], "codes": [[1, 2], [3]], "duration_sec": [0.5, 0.25]},
        {"audio_id": ["b_seg_2"], "codes": [[4, 5, 6]], "duration_sec": [1.0]},
    ],
    "chan_a": [{"audio_id": ["a_seg_0"], "codes": [[7]], "duration_sec": [0.75]}],
}


def _save(rows: dict, features: Features, folder: Path) -> Path:
    """`rows` saved by `datasets` itself, as the reference folder."""
    Dataset.from_dict(rows, features=features).save_to_disk(str(folder), num_shards=1)
    return folder


def _read(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text())


def _shape(value: object) -> object:
    """A JSON value's shape: its type, and for dicts and lists the shapes of what they hold."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value[:1]]
    return type(value).__name__


def _assert_same_state_format(ours: dict, reference: dict) -> None:
    assert set(ours) == set(reference), set(ours) ^ set(reference)
    assert _shape(ours) == _shape(reference)
    assert len(ours["_fingerprint"]) == len(reference["_fingerprint"])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Each channel's shards written by save_to_disk; their states and infos by our writer."""
    tmp = tmp_path_factory.mktemp("disk_format")
    store = LocalStore(tmp / "store")
    for channel, shards in CHANNELS.items():
        names = []
        for i, rows in enumerate(shards):
            ref = _save(rows, FEATURES, tmp / "ref" / channel / f"shard{i}")
            names.append(f"shard{i}/{ARROW_FILE}")
            store.upload(ref / ARROW_FILE, disk_folder(channel) + names[-1])
        publish_state(store, disk_folder(channel), names, features_info(FEATURES))
    assert publish_all_channels(store) == sorted(CHANNELS)
    return store.root / DISK_PREFIX, tmp / "ref"


def test_state_json_has_the_keys_and_types_save_to_disk_writes(folders):
    ours, ref = folders
    reference = _read(ref / "chan_b" / "shard0", STATE)
    for folder in (ours / "chan_b", ours / "chan_a", ours):
        _assert_same_state_format(_read(folder, STATE), reference)
    assert [f["filename"] for f in _read(ours, STATE)["_data_files"]] == [
        f"chan_a/shard0/{ARROW_FILE}",
        f"chan_b/shard0/{ARROW_FILE}",
        f"chan_b/shard1/{ARROW_FILE}",
    ]


def test_dataset_info_json_is_what_save_to_disk_writes(folders):
    ours, ref = folders
    reference = _read(ref / "chan_b" / "shard0", INFO)
    for folder in (ours / "chan_b", ours / "chan_a", ours):
        assert _read(folder, INFO) == reference  # the same keys, and the same values
    # the dataset's own features (rows.py), as save_to_disk writes them
    empty = {name: [] for name in dataset_features()}
    assert dataset_info() == _read(_save(empty, dataset_features(), ref / "dataset_features"), INFO)


def test_load_from_disk_opens_ours(folders):
    ours, _ = folders
    for channel, shards in CHANNELS.items():
        ds = load_from_disk(str(ours / channel))
        assert ds.features == FEATURES and ds.split is None and ds.format["type"] is None
        assert ds["audio_id"] == [a for rows in shards for a in rows["audio_id"]]
        assert ds["codes"] == [c for rows in shards for c in rows["codes"]]
    everything = load_from_disk(str(ours))
    assert everything.features == FEATURES
    assert everything["audio_id"] == [a for ch in sorted(CHANNELS) for rows in CHANNELS[ch] for a in rows["audio_id"]]


def test_the_dataset_writer_itself_writes_that_format(tmp_path):
    """save_channel_to_disk, the entry point hf_dataset calls, for a channel with no rows."""
    store = LocalStore(tmp_path / "store")
    save_channel_to_disk(store, {"channel": "empty_chan", "shards": []}, tmp_path / "work")
    reference = _save({name: [] for name in dataset_features()}, dataset_features(), tmp_path / "ref")
    for folder in (store.root / disk_folder("empty_chan"), store.root / DISK_PREFIX):
        _assert_same_state_format(_read(folder, STATE), _read(reference, STATE))
        assert _read(folder, INFO) == _read(reference, INFO)
        ds = load_from_disk(str(folder))
        assert len(ds) == 0 and ds.features == dataset_features()
