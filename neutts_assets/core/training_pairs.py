"""Voice-cloning training pairs (ref, target) from a channel's published dataset, as the users'
pair builder makes them (seed/SOURCE_LAYOUT.md), in memory bounded by the channel's rows, not
by the number of pairs.

The rules:

- rows of the channel's published dataset with min_duration_sec <= duration_sec <= max_duration_sec
  (both bounds inclusive; 0.5 and 15 s by default) and at least one code;
- grouped by (recording, speaker_id), where the recording is the audio_id's part before its last
  "_seg_" (speaker ids are only unique within one recording); within a group, rows keep the
  dataset's order (its shards in record order, their rows in order);
- groups with fewer than min_segments_per_speaker (2) rows are dropped;
- groups in sorted (recording, speaker_id) order; a group of n rows has n*(n-1) ordered pairs,
  numbered m = 0 .. n*(n-1)-1 in (i, j) order, i != j: i = m // (n-1), r = m % (n-1),
  j = r + (r >= i). Without max_pairs_per_speaker, every pair, in m order;
- with max_pairs_per_speaker = k < n*(n-1): the group's pairs are
  `numpy.random.default_rng([seed, crc32(f"{recording}\\t{speaker_id}")]).choice(n*(n-1), k, replace=False)`,
  in the order choice returns them (a seeded shuffle, truncated). The generator is seeded per
  group, so adding a recording to the channel does not change another speaker's pairs. numpy
  draws those k with Floyd's algorithm (O(k) memory) unless k > n*(n-1)/50, when it shuffles an
  arange of n*(n-1) (8 bytes a pair, for that one group, while it draws).

The pairs are planned as fixed-size chunks of row numbers (`pair_chunks`, a generator), and
each chunk becomes an Arrow batch with `Table.take` on the channel's index (its rows' non-audio
columns; the audio too with include_audio): no Python object per pair.

Layout in the store (`datasets.load_from_disk(<store>/training_pairs/{channel})` opens a channel):

    training_pairs/{channel}/state.json, dataset_info.json   written by `save_to_disk`, state.json
                                                             naming {build}/data-*.arrow
    training_pairs/{channel}/{build}/data-*.arrow            the pairs
    training_pairs/{channel}/{build}/pairs_index.parquet     ref_audio_id, target_audio_id of each
                                                             pair, in the pairs' order (lineage)
    training_pairs_builds/{channel}.json                     the published build's record

The Arrow files go first, then dataset_info.json, then state.json (the switch), then the record,
then the previous build's files are removed and the dataset card rewritten with the pairs section.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
import zlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from neutts_assets.core.audio import SAMPLE_RATE
from neutts_assets.core.dataset_writer import CARD_KEY, fetch_shards, publish_card, read_record
from neutts_assets.storage.local import LocalStore
from neutts_assets.storage.store import ObjectStore

PAIRS_PREFIX = "training_pairs/"
PAIRS_BUILDS_PREFIX = "training_pairs_builds/"
STATE, INFO = "state.json", "dataset_info.json"
INDEX_FILE = "pairs_index.parquet"
BATCH_PAIRS = 20_000  # pairs per Arrow batch without audio: at most 2 x 20,000 x 750 codes, 120 MB
AUDIO_BATCH_PAIRS = 500  # with audio: 1,000 clips of at most 15 s of FLAC, well under Arrow's 2 GB binary limit
MAX_SHARD_SIZE = "500MB"
TOP_SPEAKERS = 50

# The non-audio columns of the dataset, as the index reads them from its Parquet shards.
INDEX_COLUMNS = ("codes", "text", "speaker_id", "channel", "gender", "dialect", "tone", "audio_id", "duration_sec")
# Each side's columns, in the users' order: ref_text, ref_codes, ref_speaker_id, ..., ref_duration_sec.
SIDE_COLUMNS = ("text", "codes", "speaker_id", "gender", "dialect", "tone", "duration_sec")


def pairs_features(include_audio: bool = False):
    """The pairs' features, exactly the users' pair builder's (ref_audio / target_audio only with audio)."""
    from datasets import Audio, Features, Sequence, Value

    def side(prefix: str) -> dict:
        return {
            f"{prefix}_text": Value("string"),
            f"{prefix}_codes": Sequence(Value("int32")),
            **{f"{prefix}_{key}": Value("string") for key in ("speaker_id", "gender", "dialect", "tone")},
            f"{prefix}_duration_sec": Value("float32"),
        }

    audio = {"ref_audio": Audio(sampling_rate=SAMPLE_RATE), "target_audio": Audio(sampling_rate=SAMPLE_RATE)} if include_audio else {}
    return Features({**audio, **side("ref"), **side("target"), "channel": Value("string")})


@dataclass(frozen=True)
class PairSettings:
    min_duration_sec: float = 0.5
    max_duration_sec: float = 15.0
    min_segments_per_speaker: int = 2
    max_pairs_per_speaker: int | None = None
    random_seed: int = 42
    include_audio: bool = False

    def __post_init__(self):
        if self.max_pairs_per_speaker is not None and self.max_pairs_per_speaker < 0:
            raise ValueError("max_pairs_per_speaker must be >= 0 (or None for every pair)")
        if self.random_seed < 0:
            raise ValueError("random_seed must be >= 0")

    def to_dict(self) -> dict:
        return asdict(self)


# ---- planning: pure numpy, no Arrow -----------------------------------------------------------


@dataclass
class Group:
    recording: str
    speaker_id: str
    rows: np.ndarray  # int64 row numbers in the index, in the dataset's order

    @property
    def n(self) -> int:
        return len(self.rows)

    def num_pairs(self, max_pairs: int | None) -> int:
        total = self.n * (self.n - 1)
        return total if max_pairs is None else min(total, max_pairs)


def recording_of(audio_id: str) -> str:
    """The audio_id's part before its last "_seg_" (the whole id when there is none)."""
    return audio_id.rsplit("_seg_", 1)[0]


def eligible_mask(durations: np.ndarray, code_lengths: np.ndarray, settings: PairSettings) -> np.ndarray:
    durations = np.asarray(durations, dtype=np.float32)
    return ((durations >= np.float32(settings.min_duration_sec)) & (durations <= np.float32(settings.max_duration_sec))
            & (np.asarray(code_lengths) > 0))


def group_rows(audio_ids: list[str], speaker_ids: list[str], keep: np.ndarray) -> list[Group]:
    """Every (recording, speaker_id) group of the kept rows, in sorted order (before the size rule)."""
    members: dict[tuple[str, str], list[int]] = {}
    for row in np.flatnonzero(keep).tolist():
        members.setdefault((recording_of(audio_ids[row]), speaker_ids[row]), []).append(row)
    return [Group(rec, spk, np.asarray(rows, dtype=np.int64)) for (rec, spk), rows in sorted(members.items())]


def pair_of(m: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pair number m of a group of n -> (i, j), i != j; m in 0..n*(n-1)-1 runs over (i, j) order."""
    m = np.asarray(m, dtype=np.int64)
    i, r = np.divmod(m, n - 1)
    return i, r + (r >= i)


def group_seed(settings_seed: int, group: Group) -> list[int]:
    return [settings_seed, zlib.crc32(f"{group.recording}\t{group.speaker_id}".encode("utf-8"))]


def sampled_pair_numbers(group: Group, max_pairs: int, seed: int) -> np.ndarray:
    """The k = max_pairs pair numbers of a group with more pairs than that (see the module's rule)."""
    total = group.n * (group.n - 1)
    return np.random.default_rng(group_seed(seed, group)).choice(total, max_pairs, replace=False).astype(np.int64)


def pair_chunks(groups: Iterable[Group], max_pairs: int | None = None, seed: int = 42,
                chunk: int = BATCH_PAIRS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ref rows, target rows): the pairs of `groups` (each of >= 2 rows), in order, as int64
    arrays of `chunk` pairs each (the last may be shorter). Lazy: one chunk (plus a capped group's
    k pair numbers) in memory at a time."""
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    refs: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    filled = 0
    for group in groups:
        n = group.n
        if n < 2:
            continue
        total = n * (n - 1)
        sampled = sampled_pair_numbers(group, max_pairs, seed) if max_pairs is not None and max_pairs < total else None
        count = total if sampled is None else len(sampled)
        start = 0
        while start < count:
            take = min(chunk - filled, count - start)
            m = np.arange(start, start + take, dtype=np.int64) if sampled is None else sampled[start:start + take]
            i, j = pair_of(m, n)
            refs.append(group.rows[i])
            targets.append(group.rows[j])
            filled += take
            start += take
            if filled == chunk:
                yield np.concatenate(refs), np.concatenate(targets)
                refs, targets, filled = [], [], 0
    if filled:
        yield np.concatenate(refs), np.concatenate(targets)


# ---- the channel's index: Arrow ----------------------------------------------------------------


def _large_audio(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """The audio struct with 64-bit offsets, so a channel's audio over 2 GB combines into one array."""
    target = pa.struct([("bytes", pa.large_binary()), ("path", pa.large_string())])
    return column.cast(target)


def read_index(parquet_files: Iterable[Path], include_audio: bool = False) -> pa.Table:
    """The dataset rows' columns the pairs need, read from the channel's Parquet shards (in record
    order) with column projection: the audio column only with `include_audio`."""
    columns = list(INDEX_COLUMNS) + (["audio"] if include_audio else [])
    tables = []
    for path in parquet_files:
        table = pq.ParquetFile(str(path)).read(columns=columns)
        tables.append(table.replace_schema_metadata(None))
    if not tables:
        fields = [pa.field("codes", pa.list_(pa.int32()))] + [pa.field(c, pa.string()) for c in INDEX_COLUMNS[1:-1]]
        fields += [pa.field("duration_sec", pa.float32())]
        if include_audio:
            fields.append(pa.field("audio", pa.struct([("bytes", pa.binary()), ("path", pa.string())])))
        return pa.schema(fields).empty_table()
    table = pa.concat_tables(tables)
    if include_audio:
        table = table.set_column(table.schema.get_field_index("audio"), "audio", _large_audio(table["audio"]))
    # One chunk per column: `take` then reads each column once per batch, not once per chunk.
    return table.combine_chunks()


@dataclass
class Plan:
    groups: list[Group]  # the groups that make pairs (>= min_segments_per_speaker rows)
    dropped_groups: int  # groups with fewer rows
    rows_in_dataset: int
    rows_eligible: int  # within the duration bounds, with codes
    settings: PairSettings

    @property
    def rows_used(self) -> int:
        return int(sum(g.n for g in self.groups))

    def pairs_per_group(self) -> list[int]:
        return [g.num_pairs(self.settings.max_pairs_per_speaker) for g in self.groups]

    @property
    def pairs(self) -> int:
        return int(sum(self.pairs_per_group()))

    def chunks(self, chunk: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        chunk = chunk or (AUDIO_BATCH_PAIRS if self.settings.include_audio else BATCH_PAIRS)
        return pair_chunks(self.groups, self.settings.max_pairs_per_speaker, self.settings.random_seed, chunk)

    def counts(self) -> dict:
        per = self.pairs_per_group()
        return {
            "speakers": len(self.groups),
            "speakers_dropped": self.dropped_groups,
            "pairs": int(sum(per)),
            "pairs_per_speaker": {"min": int(min(per)) if per else 0, "median": float(np.median(per)) if per else 0.0,
                                  "max": int(max(per)) if per else 0},
            "rows_in_dataset": self.rows_in_dataset,
            "rows_eligible": self.rows_eligible,
            "rows_used": self.rows_used,
        }

    def top_speakers(self, limit: int = TOP_SPEAKERS) -> list[dict]:
        per = self.pairs_per_group()
        order = sorted(range(len(self.groups)), key=lambda g: (-per[g], self.groups[g].recording, self.groups[g].speaker_id))
        return [{"recording": self.groups[g].recording, "speaker_id": self.groups[g].speaker_id,
                 "segments": self.groups[g].n, "pairs": per[g]} for g in order[:limit]]


def plan_pairs(index: pa.Table, settings: PairSettings) -> Plan:
    code_lengths = pc.fill_null(pc.list_value_length(index["codes"]), 0).to_numpy()
    keep = eligible_mask(index["duration_sec"].to_numpy(zero_copy_only=False), code_lengths, settings)
    groups = group_rows(index["audio_id"].to_pylist(), index["speaker_id"].to_pylist(), keep)
    big = [g for g in groups if g.n >= max(2, settings.min_segments_per_speaker)]
    return Plan(big, len(groups) - len(big), index.num_rows, int(keep.sum()), settings)


def pairs_batch(index: pa.Table, ref: np.ndarray, target: np.ndarray, schema: pa.Schema) -> pa.Table:
    """One Arrow batch of pairs: the rows `ref` and `target` of the index, side by side."""
    ref_rows = index.take(pa.array(ref, pa.int64()))
    target_rows = index.take(pa.array(target, pa.int64()))
    columns = {}
    if "ref_audio" in schema.names:
        audio_type = schema.field("ref_audio").type
        columns["ref_audio"] = ref_rows["audio"].cast(audio_type)
        columns["target_audio"] = target_rows["audio"].cast(audio_type)
    for prefix, rows in (("ref", ref_rows), ("target", target_rows)):
        for key in SIDE_COLUMNS:
            columns[f"{prefix}_{key}"] = rows[key]
    columns["channel"] = ref_rows["channel"]
    return pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema)


# ---- writing and publishing --------------------------------------------------------------------


def folder(channel: str) -> str:
    return f"{PAIRS_PREFIX}{channel}/"


def record_key(channel: str) -> str:
    return f"{PAIRS_BUILDS_PREFIX}{channel}.json"


def read_pair_record(store: ObjectStore, channel: str) -> dict | None:
    blob = store.read_bytes_or_none(record_key(channel))
    return json.loads(blob) if blob is not None else None


def read_pair_records(store: ObjectStore) -> dict[str, dict]:
    records = {}
    for o in store.list(PAIRS_BUILDS_PREFIX):
        if o.key.endswith(".json"):
            blob = store.read_bytes_or_none(o.key)
            if blob is not None:
                rec = json.loads(blob)
                records[rec["channel"]] = rec
    return records


@dataclass
class PairsBuild:
    record: dict
    plan: Plan
    removed: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0
    arrow_files: int = 0


def write_pairs(index: pa.Table, plan: Plan, channel: str, workdir: Path) -> tuple[Path, Path, int]:
    """The pairs as one local Arrow stream (schema carrying the features) and their row references
    as Parquet; returns both paths and the number of pairs written."""
    features = pairs_features(plan.settings.include_audio)
    schema = features.arrow_schema
    arrow_path, index_path = Path(workdir) / "pairs.arrow", Path(workdir) / INDEX_FILE
    ids = index["audio_id"]
    ref_schema = pa.schema([("ref_audio_id", pa.string()), ("target_audio_id", pa.string())])
    written = 0
    with pa.OSFile(str(arrow_path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer, \
            pq.ParquetWriter(str(index_path), ref_schema, compression="zstd") as refs:
        for ref, target in plan.chunks():
            writer.write_table(pairs_batch(index, ref, target, schema))
            refs.write_table(pa.Table.from_arrays([ids.take(pa.array(ref)), ids.take(pa.array(target))], schema=ref_schema))
            written += len(ref)
        if written == 0:
            refs.write_table(ref_schema.empty_table())
    return arrow_path, index_path, written


def save_pairs_to_disk(arrow_path: Path, out: Path, cache: Path) -> dict:
    """`datasets` turns the Arrow stream into a `save_to_disk` folder (memory-mapped, not loaded)."""
    from datasets import Dataset

    ds = Dataset.from_file(str(arrow_path))
    # An empty dataset still needs one Arrow file: load_from_disk cannot concatenate none.
    ds.save_to_disk(str(out), **({"max_shard_size": MAX_SHARD_SIZE} if len(ds) else {"num_shards": 1}))
    del ds
    return json.loads((Path(out) / STATE).read_text())


def remove_other_builds(store: ObjectStore, channel: str, build_id: str) -> list[str]:
    """Everything under the channel's folder in a build folder other than `build_id`'s."""
    prefix = folder(channel)
    removed = [o.key for o in store.list(prefix)
               if "/" in o.key[len(prefix):] and not o.key.startswith(f"{prefix}{build_id}/")]
    for key in removed:
        store.delete(key)
    return removed


def new_build_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def build_and_publish(store: ObjectStore, channel: str, settings: PairSettings, workdir: Path, title: str,
                      guard: Callable[[], None] | None = None, log: Callable[[str], None] | None = None) -> PairsBuild:
    """Reads the channel's published dataset, writes its pairs and publishes them (see the module)."""
    guard = guard or (lambda: None)
    log = log or (lambda _msg: None)
    started = time.perf_counter()
    dataset = read_record(store, channel)
    if dataset is None:
        raise LookupError(f"channel {channel!r} has no published dataset: materialize hf_dataset first")
    workdir = Path(workdir)
    shards_dir = workdir / "shards"
    shards_dir.mkdir(parents=True, exist_ok=True)
    tables = []
    for shard in dataset["shards"]:  # one shard on local disk at a time; its projected columns kept
        local = fetch_shards(store, dataset, shards_dir, only=[shard["path"]])[shard["path"]]
        tables.append(read_index([local], settings.include_audio))
        local.unlink(missing_ok=True)
    index = pa.concat_tables(tables).combine_chunks() if tables else read_index([], settings.include_audio)
    del tables
    plan = plan_pairs(index, settings)
    log(f"{channel}: {plan.pairs} pairs of {len(plan.groups)} speakers from {plan.rows_used} of {index.num_rows} rows")

    build_id = new_build_id()
    arrow_path, index_path, written = write_pairs(index, plan, channel, workdir)
    del index
    assert written == plan.pairs, (written, plan.pairs)
    out = workdir / "save_to_disk"
    state = save_pairs_to_disk(arrow_path, out, workdir / "hf_cache")
    arrow_path.unlink(missing_ok=True)

    prefix = folder(channel)
    uploaded = 0
    for data_file in state["_data_files"]:
        guard()
        uploaded += store.upload(out / data_file["filename"], f"{prefix}{build_id}/{data_file['filename']}")
        data_file["filename"] = f"{build_id}/{data_file['filename']}"
    index_bytes = store.upload(index_path, f"{prefix}{build_id}/{INDEX_FILE}")
    guard()
    store.write_bytes(prefix + INFO, (out / INFO).read_bytes())
    store.write_bytes(prefix + STATE, json.dumps(state, indent=2).encode())  # the switch to the new build
    record = {
        "channel": channel,
        "build_id": build_id,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset_build_id": dataset["build_id"],
        "settings": settings.to_dict(),
        "folder": prefix,
        "arrow_files": [f["filename"] for f in state["_data_files"]],
        "index_file": f"{build_id}/{INDEX_FILE}",
        "counts": plan.counts(),
        "bytes": uploaded,
        "index_bytes": index_bytes,
        "top_speakers": plan.top_speakers(),
    }
    store.write_bytes(record_key(channel), json.dumps(record, ensure_ascii=False, sort_keys=True).encode())
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(workdir / "hf_cache", ignore_errors=True)
    build = PairsBuild(record, plan, arrow_files=len(state["_data_files"]))
    build.removed = finish_publishing(store, record, title, guard)
    build.wall_seconds = time.perf_counter() - started
    return build


def is_current(store: ObjectStore, record: dict | None, dataset_build_id: str | None, settings: PairSettings) -> bool:
    """Whether the published pairs were made from this dataset build with these settings, and
    their state.json still names that build."""
    if record is None or dataset_build_id is None:
        return False
    if record.get("dataset_build_id") != dataset_build_id or record.get("settings") != settings.to_dict():
        return False
    blob = store.read_bytes_or_none(folder(record["channel"]) + STATE)
    if blob is None:
        return False
    files = json.loads(blob)["_data_files"]
    return bool(files) and all(f["filename"].startswith(record["build_id"] + "/") for f in files)


def finish_publishing(store: ObjectStore, record: dict, title: str, guard: Callable[[], None] | None = None) -> list[str]:
    """After the record: the previous build's files removed, the card rewritten if it does not
    name this build. Also what an unchanged rerun does, for a run killed after the record."""
    guard = guard or (lambda: None)
    guard()
    removed = remove_other_builds(store, record["channel"], record["build_id"])
    card = store.read_bytes_or_none(CARD_KEY)
    if card is None or record["build_id"] not in card.decode():
        guard()
        publish_card(store, title)
    return removed


def local_path(store: ObjectStore, channel: str) -> str | None:
    """The folder to hand to `load_from_disk`, for a store that is a local folder."""
    return str(store.root / folder(channel)) if isinstance(store, LocalStore) else None
