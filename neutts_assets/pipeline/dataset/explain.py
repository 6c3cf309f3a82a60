"""A published row's lineage, looked up by its id: `neutts-assets explain CHANNEL/AUDIO_ID`.

A row id is `{channel}/{audio_id}` (audio_id is `{ID}_seg_{i}`, unique within a channel); an
audio_id alone is looked for in every channel. The published build record says which shard holds
the row (its members); the row is read from that shard alone, without its audio.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from neutts_assets.pipeline.dataset.annotations import LINEAGE_COLUMNS
from neutts_assets.pipeline.dataset.store import DATASET_PREFIX
from neutts_assets.pipeline.dataset.writer import fetch_shards, read_records
from neutts_assets.pipeline.quality.scores import ALL_SCORE_NAMES
from neutts_assets.storage.store import ObjectStore


class RowNotFound(LookupError):
    """No published row has that id; the message says where it looked."""


def find_row(records: dict[str, dict], row_id: str) -> tuple[dict, dict]:
    """(record, shard entry) of the published row `row_id`."""
    channel, _, audio_id = row_id.rpartition("/")
    wanted = f"{audio_id}.npz"
    if channel and channel not in records:
        raise RowNotFound(f"channel {channel!r} has no published hf_dataset build (channels: {sorted(records)})")
    for record in [records[channel]] if channel else records.values():
        for shard in record["shards"]:
            if any(m[0] == wanted for m in shard.get("members", [])):
                return record, shard
    where = f"channel {channel!r}" if channel else f"{len(records)} channel(s)"
    raise RowNotFound(f"no published row {audio_id!r} in {where} (excluded rows are in the build record's 'excluded')")


def explain(store: ObjectStore, row_id: str) -> dict:
    """The row's lineage, split, scores and where it lies, as one flat document."""
    records = read_records(store)
    record, shard = find_row(records, row_id)
    audio_id = row_id.rpartition("/")[2]
    with tempfile.TemporaryDirectory(prefix="neutts-explain-") as tmp:
        local = fetch_shards(store, record, Path(tmp), only=[shard["path"]])[shard["path"]]
        columns = [
            "audio_id",
            "text",
            "speaker_id",
            "duration_sec",
            "codes",
            "split",
            *ALL_SCORE_NAMES,
            *LINEAGE_COLUMNS,
        ]
        table = pq.read_table(str(local), columns=columns)
    row = table.filter(pc.equal(table["audio_id"], audio_id)).to_pylist()
    if not row:
        raise RowNotFound(f"{row_id}: the build record lists it in {shard['path']}, but the shard does not hold it")
    row = row[0]
    codes = row.pop("codes") or []
    return {
        "row_id": f"{record['channel']}/{audio_id}",
        "channel": record["channel"],
        **row,
        "codes": len(codes),
        "shard": DATASET_PREFIX + shard["path"],
        "published_build": record["build_id"],
        "built_at": record["built_at"],
    }


def render(doc: dict) -> str:
    """The document as aligned `name: value` lines, lineage first."""
    order = [
        "row_id",
        "split",
        *LINEAGE_COLUMNS,
        "published_build",
        "shard",
        "text",
        "speaker_id",
        "duration_sec",
        "codes",
        *ALL_SCORE_NAMES,
    ]
    names = order + [k for k in doc if k not in order]
    width = max(len(n) for n in names)
    return "\n".join(f"{n.ljust(width)}  {_printable(doc[n])}" for n in names if n in doc)


def _printable(value) -> str:
    """Transcript text and labels are untrusted: control characters (a terminal's escape
    sequences) are shown as escapes, never sent to the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))
