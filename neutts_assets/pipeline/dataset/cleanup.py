"""The old workflow's "delete after success", as an opt-in step: a channel's stage-1 and stage-2
segment objects are deleted only once its published dataset is verified against them: every
shard reads back whole, the row count equals the segment count, and the rows are exactly those
segments. Anything short of that deletes nothing and says why.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from neutts_assets.pipeline.dataset.store import DATASET_PREFIX
from neutts_assets.pipeline.dataset.writer import read_record, segment_objects
from neutts_assets.pipeline.encoding.store import Stage2Layout
from neutts_assets.pipeline.segments.store import channel_prefix
from neutts_assets.storage.store import ObjectStore


@dataclass
class Verification:
    channel: str
    problems: list[str] = field(default_factory=list)
    rows: int = 0
    shards_read: int = 0
    stage1_segments: int = 0
    stage2_segments: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def _segment_id(key: str) -> str:
    return os.path.basename(key)[: -len(".npz")]


def verify_channel(store: ObjectStore, channel: str, workdir: Path, encoded_prefix: str | None = None) -> Verification:
    """`encoded_prefix`: the channel's stage-2 folder when not the default stage2_with_codes/{channel}/."""
    v = Verification(channel)
    record = read_record(store, channel)
    if record is None:
        v.problems.append(f"no published hf_dataset for channel {channel!r}: materialize hf_dataset first")
        return v
    ids: set[str] = set()
    for shard in record["shards"]:
        local = Path(workdir) / os.path.basename(shard["path"])
        try:
            store.download(DATASET_PREFIX + shard["path"], local)
            pf = pq.ParquetFile(local)
            for i in range(pf.num_row_groups):  # every column of every row group: decompressed and checked
                table = pf.read_row_group(i)
                v.rows += table.num_rows
                ids.update(table.column("audio_id").to_pylist())
            v.shards_read += 1
        except Exception as exc:
            v.problems.append(f"shard {shard['path']} is unreadable: {type(exc).__name__}: {exc}")
        finally:
            local.unlink(missing_ok=True)
    if v.rows != record["stats"]["rows"] and not v.problems:
        v.problems.append(f"the shards hold {v.rows} rows, the build recorded {record['stats']['rows']}")
    stage1 = {_segment_id(k) for k in segment_objects(store, channel_prefix(channel))}
    stage2 = {_segment_id(k) for k in segment_objects(store, encoded_prefix or Stage2Layout(channel).channel_prefix)}
    v.stage1_segments, v.stage2_segments = len(stage1), len(stage2)
    for name, segs in (("stage-1", stage1), ("stage-2", stage2)):
        if segs and len(segs) != v.rows:
            v.problems.append(
                f"{v.rows} rows but {len(segs)} {name} segments: the dataset does not hold every segment "
                "(filtered out, failed, or added since the build)"
            )
        elif segs and segs != ids:
            v.problems.append(
                f"the rows are not the {name} segments ({len(segs - ids)} segments missing from the dataset)"
            )
    return v


@dataclass
class CleanupReport:
    verification: Verification
    deleted: int = 0
    bytes_freed: int = 0


def clean_channel(
    store: ObjectStore, channel: str, workdir: Path, encoded_prefix: str | None = None, workers: int = 8
) -> CleanupReport:
    report = CleanupReport(verify_channel(store, channel, workdir, encoded_prefix))
    if not report.verification.ok:
        return report
    # Everything under both folders goes: segment files, stage-1 indexes, stage-2 markers.
    prefixes = {channel_prefix(channel), encoded_prefix or Stage2Layout(channel).channel_prefix}
    doomed = [o for prefix in sorted(prefixes) for o in store.list(prefix)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda o: store.delete(o.key), doomed))
    report.deleted = len(doomed)
    report.bytes_freed = sum(o.size for o in doomed)
    return report
