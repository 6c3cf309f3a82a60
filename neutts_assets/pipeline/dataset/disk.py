"""The `save_to_disk` copy that `datasets.load_from_disk` opens (the users' pair builder reads the
dataset that way), kept beside the Parquet dataset in the store:

    hf_dataset_disk/state.json, dataset_info.json           "all channels": lists every channel's Arrow files
    hf_dataset_disk/{channel}/state.json, dataset_info.json  one channel
    hf_dataset_disk/{channel}/{shard}/data-00000-of-00001.arrow
                                                             one per Parquet shard, named after it:
                                                             `Dataset.from_parquet(shard).save_to_disk(num_shards=1)`

It follows the Parquet shards' rule: a shard kept by an incremental build keeps its Arrow file
untouched; only new shards are converted. `load_from_disk` reads the Arrow files a state.json
names, relative to its folder, in that order: the channel's state.json lists its shards' files in
the record's order (the rows come in the order of the Parquet config), and the all-channels
state.json names `{channel}/{shard}/data-*.arrow`. The channel's state.json is the switch: it is
written after the new Arrow files, the files it no longer names are deleted after it, and then
the all-channels state.json is rewritten. A channel with no rows gets one empty Arrow file
(`_empty/`), as load_from_disk cannot concatenate none. A run killed halfway leaves the old
state.json in force and whole Arrow files the next run reuses or deletes.

The Arrow files and dataset_info.json are written by `datasets`' public API (`save_to_disk`,
`DatasetInfo.write_to_directory`). state.json is not: `save_to_disk` can only write a folder by
copying every row into it, which would rewrite every channel's Arrow files (audio included) on
each build and undo the incremental rule above, and `datasets` has no public way to write a state
that names Arrow files already there. So state.json is written here with the fields `save_to_disk`
writes, a format pinned for datasets >=5.2,<6 (pyproject's range; checked on 5.2.0):
neutts_assets_tests/test_disk_format.py compares it, key by key and type by type, with what
`save_to_disk` writes and opens ours with `load_from_disk`, so an upgrade that changes the format
fails there, not in the users' scripts.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from neutts_assets.pipeline.dataset.store import DISK_PREFIX
from neutts_assets.pipeline.dataset.store import disk_folder as channel_folder
from neutts_assets.storage.store import ObjectStore

STATE, INFO = "state.json", "dataset_info.json"
ARROW_FILE = "data-00000-of-00001.arrow"
EMPTY = "_empty"


def arrow_files(record: dict) -> list[str]:
    """The channel's Arrow files, relative to its folder, in record order: one per Parquet shard."""
    stems = [Path(s["path"]).stem for s in record["shards"]] or [EMPTY]
    return [f"{stem}/{ARROW_FILE}" for stem in stems]


def disk_copy_current(store: ObjectStore, record: dict) -> bool:
    """Whether the channel's save_to_disk copy lists exactly the record's shards, in its order."""
    blob = store.read_bytes_or_none(f"{channel_folder(record['channel'])}{STATE}")
    if blob is None:
        return False
    files = [f["filename"] for f in json.loads(blob)["_data_files"]]
    return files == arrow_files(record)


def features_info(features) -> dict:
    """dataset_info.json for a dataset of these `datasets.Features`, as `datasets` writes it
    (`DatasetInfo.write_to_directory`): what `save_to_disk` writes for a dataset made in memory,
    with no builder's names, splits or sizes (which would be one shard's)."""
    import tempfile

    from datasets import DatasetInfo

    with tempfile.TemporaryDirectory() as tmp:
        DatasetInfo(features=features).write_to_directory(tmp)
        return json.loads((Path(tmp) / INFO).read_text())


def dataset_info() -> dict:
    """The dataset's dataset_info.json: its features (pipeline/dataset/rows.py)."""
    from neutts_assets.pipeline.dataset.rows import dataset_features

    return features_info(dataset_features())


def _convert(source: Path | None, out: Path, cache: Path) -> Path:
    """One Parquet shard (None: no rows) as one Arrow file set, written by `datasets` itself."""
    from datasets import Dataset

    from neutts_assets.pipeline.dataset.rows import dataset_features

    features = dataset_features()
    if source is not None:
        ds = Dataset.from_parquet(str(source), features=features, cache_dir=str(cache))
    else:
        ds = Dataset.from_dict({name: [] for name in features}, features=features)
    ds.save_to_disk(str(out), num_shards=1)
    del ds
    shutil.rmtree(cache, ignore_errors=True)
    return out


def save_channel_to_disk(
    store: ObjectStore, record: dict, workdir: Path, local: dict[str, Path] | None = None, rewrite: bool = False
) -> dict:
    """Brings the channel's save_to_disk copy to the record: converts the shards whose Arrow file is
    not in the store yet (from `local` copies, path in the dataset folder -> file, or downloads),
    keeps the others (`rewrite`: converts them all again), switches the channel's state.json, deletes what it no longer names, and
    rewrites the all-channels state.json."""
    from neutts_assets.pipeline.dataset.writer import fetch_shards

    channel = record["channel"]
    folder = channel_folder(channel)
    workdir = Path(workdir)
    wanted = arrow_files(record)
    present = {o.key[len(folder) :]: o.size for o in store.list(folder)}
    by_file = dict(zip(wanted, record["shards"] or [None]))
    todo = [f for f in wanted if rewrite or not present.get(f)]
    for name in todo:
        shard = by_file[name]
        source = None
        if shard is not None:
            source = fetch_shards(store, record, workdir, have=local, only=[shard["path"]])[shard["path"]]
        out = _convert(source, workdir / "save_to_disk" / name.split("/")[0], workdir / "hf_cache")
        store.upload(out / ARROW_FILE, folder + name)
        shutil.rmtree(out, ignore_errors=True)
        if source is not None and (local is None or shard["path"] not in local):
            source.unlink(missing_ok=True)  # downloaded for this: not needed again
    publish_state(store, folder, wanted, dataset_info())  # the switch
    publish_all_channels(store)  # names this channel's new files: the old ones are unreferenced now
    keep = set(wanted)
    removed = [folder + rest for rest in present if "/" in rest and rest not in keep]
    for key in removed:
        store.delete(key)
    return {
        "folder": folder,
        "arrow_files": len(wanted),
        "converted": len(todo),
        "kept": len(wanted) - len(todo),
        "removed": len(removed),
    }


def publish_state(store: ObjectStore, folder: str, filenames: list[str], info: dict) -> None:
    """A load_from_disk folder made of Arrow files that separate `save_to_disk` calls wrote (one
    per shard, each `num_shards=1`): its dataset_info.json (`info`, from `features_info`), then its
    state.json naming `filenames` (relative to `folder`) in order, last: the switch. The state has
    the fields `save_to_disk` writes for a dataset with no split and no format set (datasets
    >=5.2,<6: see the module and test_disk_format)."""
    files = [{"filename": f} for f in filenames]
    state = {
        "_data_files": files,
        "_fingerprint": hashlib.sha256(json.dumps([folder, files]).encode()).hexdigest()[:16],
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    }
    store.write_bytes(folder + INFO, json.dumps(info, indent=2).encode())
    store.write_bytes(folder + STATE, json.dumps(state, indent=2).encode())


def publish_all_channels(store: ObjectStore) -> list[str]:
    """Rewrites the top-level state.json so `load_from_disk(hf_dataset_disk/)` reads every channel."""
    from datasets import Features

    states = {}
    for o in store.list(DISK_PREFIX):
        rest = o.key[len(DISK_PREFIX) :]
        if rest.count("/") == 1 and rest.endswith("/" + STATE):
            states[rest.split("/")[0]] = json.loads(store.read_bytes(o.key))
    if not states:
        return []
    channels = sorted(states)
    first = states[channels[0]]
    files = [{"filename": f"{c}/{f['filename']}"} for c in channels for f in states[c]["_data_files"]]
    state = {
        **first,
        "_data_files": files,
        "_split": None,
        "_fingerprint": hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16],
    }
    # The features of the files it names, which load_from_disk checks them against: the channels' own
    # when they agree; else (copies made before and after a new column, e.g. the split) today's
    # features, a superset of each, whose missing columns load_from_disk fills with nulls.
    features = {
        json.dumps(json.loads(store.read_bytes(f"{DISK_PREFIX}{c}/{INFO}"))["features"], sort_keys=True)
        for c in channels
    }
    if len(features) == 1:
        info = features_info(Features.from_dict(json.loads(features.pop())))
    else:
        from neutts_assets.pipeline.dataset.rows import dataset_features

        info = features_info(dataset_features())
    store.write_bytes(DISK_PREFIX + INFO, json.dumps(info, indent=2).encode())
    store.write_bytes(DISK_PREFIX + STATE, json.dumps(state, indent=2).encode())
    return channels
