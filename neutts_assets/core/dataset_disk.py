"""The `save_to_disk` copy that `datasets.load_from_disk` opens (the users' pair builder reads the
dataset that way), kept beside the Parquet dataset in the store:

    hf_dataset_disk/state.json, dataset_info.json           "all channels": lists every channel's Arrow files
    hf_dataset_disk/{channel}/state.json, dataset_info.json  one channel
    hf_dataset_disk/{channel}/{build}/data-*.arrow           written by `Dataset.save_to_disk`

`load_from_disk` reads the Arrow files a state.json names, relative to its folder, so the
all-channels state.json names `{channel}/{build}/data-*.arrow`: adding or replacing a channel
rewrites two small JSON files and never the other channels' data. A channel's state.json is
published only after its new Arrow files, and the old build's files are removed after it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from neutts_assets.storage.store import ObjectStore

DISK_PREFIX = "hf_dataset_disk/"
STATE, INFO = "state.json", "dataset_info.json"


def disk_copy_current(store: ObjectStore, record: dict) -> bool:
    """Whether the channel's save_to_disk copy is already the one of this build."""
    blob = store.read_bytes_or_none(f"{DISK_PREFIX}{record['channel']}/{STATE}")
    if blob is None:
        return False
    files = json.loads(blob)["_data_files"]
    return bool(files) and all(f["filename"].startswith(record["build_id"] + "/") for f in files)


def save_channel_to_disk(store: ObjectStore, record: dict, shards: list[Path], workdir: Path) -> dict:
    """Converts the channel's shards (local Parquet files, in record order) with `datasets` itself:
    `Dataset.from_parquet` streams them into memory-mapped Arrow, `save_to_disk` writes the copy."""
    from datasets import Dataset

    from neutts_assets.core.dataset_rows import dataset_features

    channel, build = record["channel"], record["build_id"]
    workdir = Path(workdir)
    out = workdir / "save_to_disk"
    if shards:
        ds = Dataset.from_parquet([str(p) for p in shards], features=dataset_features(), cache_dir=str(workdir / "hf_cache"))
    else:
        features = dataset_features()
        ds = Dataset.from_dict({name: [] for name in features}, features=features)
    # An empty dataset still needs one Arrow file: load_from_disk cannot concatenate none.
    ds.save_to_disk(str(out), **({"max_shard_size": "500MB"} if len(ds) else {"num_shards": 1}))
    del ds

    state = json.loads((out / STATE).read_text())
    folder = f"{DISK_PREFIX}{channel}/"
    for data_file in state["_data_files"]:
        store.upload(out / data_file["filename"], f"{folder}{build}/{data_file['filename']}")
        data_file["filename"] = f"{build}/{data_file['filename']}"
    store.write_bytes(folder + INFO, (out / INFO).read_bytes())
    store.write_bytes(folder + STATE, json.dumps(state, indent=2).encode())  # the switch to the new build
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(workdir / "hf_cache", ignore_errors=True)

    removed = [o.key for o in store.list(folder) if "/" in o.key[len(folder):] and not o.key.startswith(f"{folder}{build}/")]
    for key in removed:
        store.delete(key)
    publish_all_channels(store)
    return {"folder": folder, "arrow_files": len(state["_data_files"]), "removed": len(removed)}


def publish_all_channels(store: ObjectStore) -> list[str]:
    """Rewrites the top-level state.json so `load_from_disk(hf_dataset_disk/)` reads every channel."""
    states = {}
    for o in store.list(DISK_PREFIX):
        rest = o.key[len(DISK_PREFIX):]
        if rest.count("/") == 1 and rest.endswith("/" + STATE):
            states[rest.split("/")[0]] = json.loads(store.read_bytes(o.key))
    if not states:
        return []
    channels = sorted(states)
    first = states[channels[0]]
    files = [{"filename": f"{c}/{f['filename']}"} for c in channels for f in states[c]["_data_files"]]
    state = {**first, "_data_files": files, "_split": None,
             "_fingerprint": hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]}
    info = json.loads(store.read_bytes(f"{DISK_PREFIX}{channels[0]}/{INFO}"))
    info.pop("splits", None)  # one channel's counts would be wrong for all of them
    info.pop("dataset_size", None)
    store.write_bytes(DISK_PREFIX + INFO, json.dumps(info, indent=2).encode())
    store.write_bytes(DISK_PREFIX + STATE, json.dumps(state, indent=2).encode())
    return channels
