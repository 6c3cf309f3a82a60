"""Voice-cloning training pairs (ref, target) from a channel's published dataset, as the users'
pair builder makes them (seed/SOURCE_LAYOUT.md), in memory bounded by the channel's rows, not
by the number of pairs.

The rules:

- rows of the channel's published dataset with min_duration_sec <= duration_sec <= max_duration_sec
  (both bounds inclusive; 0.5 and 15 s by default) and at least one code;
- grouped by (recording, speaker_id), where the recording is the audio_id's part before its last
  "_seg_" (speaker ids are only unique within one recording); within a group, rows are in
  segment order (the i of `{ID}_seg_{i}`, as a number);
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

    training_pairs/{channel}/state.json, dataset_info.json   the load_from_disk folder: state.json
                                                             names the pairs files, in order
    training_pairs/{channel}/{build}/{k}/data-00000-of-00001.arrow
                                                             pairs of whole recordings (~500 MB), an
                                                             Arrow stream as save_to_disk writes it
    training_pairs/{channel}/{build}/{k}/pairs_index.parquet ref_audio_id, target_audio_id of each
                                                             pair, in the pairs' order (row references)
    training_pairs_builds/{channel}.json                     the published build's record

Files are kept across builds while their recordings' rows are unchanged (see "incremental
builds" below), so a folder holds files of several builds. The new files go first, then
dataset_info.json, then state.json (the switch), then the record; then the files no record names
are removed and the dataset card rewritten with the pairs section.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from neutts_assets.pipeline.dataset.disk import ARROW_FILE, STATE, features_info
from neutts_assets.pipeline.dataset.rows import USERS_COLUMNS
from neutts_assets.pipeline.dataset.store import CARD_KEY
from neutts_assets.pipeline.dataset.writer import fetch_shards, publish_card, read_record, read_records
from neutts_assets.pipeline.pairs.store import PAIRS_BUILDS_PREFIX, folder, record_key
from neutts_assets.pipeline.segments.audio import SAMPLE_RATE
from neutts_assets.storage.local import LocalStore
from neutts_assets.storage.store import ObjectStore

INDEX_FILE = "pairs_index.parquet"
BATCH_PAIRS = 20_000  # pairs per Arrow batch without audio: at most 2 x 20,000 x 750 codes, 120 MB
AUDIO_BATCH_PAIRS = 500  # with audio: 1,000 clips of at most 15 s of FLAC, well under Arrow's 2 GB binary limit
TOP_SPEAKERS = 50

# The non-audio columns of the dataset, as the index reads them from its Parquet shards.
# (read_index's empty table takes `codes` first, `duration_sec` last and strings between.)
INDEX_COLUMNS = (*(c for c in USERS_COLUMNS if c not in ("audio", "duration_sec")), "split", "duration_sec")
# Each side's columns, in the users' order: ref_text, ref_codes, ref_speaker_id, ..., ref_duration_sec.
SIDE_COLUMNS = ("text", "codes", "speaker_id", "gender", "dialect", "tone", "duration_sec")


def pairs_features(include_audio: bool = False):
    """The pairs' features: the users' pair builder's (ref_audio / target_audio only with audio), then the split."""
    from datasets import Audio, Features, Sequence, Value

    def side(prefix: str) -> dict:
        return {
            f"{prefix}_text": Value("string"),
            f"{prefix}_codes": Sequence(Value("int32")),
            **{f"{prefix}_{key}": Value("string") for key in ("speaker_id", "gender", "dialect", "tone")},
            f"{prefix}_duration_sec": Value("float32"),
        }

    audio = (
        {"ref_audio": Audio(sampling_rate=SAMPLE_RATE), "target_audio": Audio(sampling_rate=SAMPLE_RATE)}
        if include_audio
        else {}
    )
    # `split` last, after the users' columns: both sides' (a pair never crosses splits).
    return Features({**audio, **side("ref"), **side("target"), "channel": Value("string"), "split": Value("string")})


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
    rows: np.ndarray  # int64 row numbers in the index, in segment order

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
    return (
        (durations >= np.float32(settings.min_duration_sec))
        & (durations <= np.float32(settings.max_duration_sec))
        & (np.asarray(code_lengths) > 0)
    )


def group_rows(audio_ids: list[str], speaker_ids: list[str], keep: np.ndarray) -> list[Group]:
    """Every (recording, speaker_id) group of the kept rows, in sorted order (before the size rule)."""
    members: dict[tuple[str, str], list[int]] = {}
    for row in np.flatnonzero(keep).tolist():
        members.setdefault((recording_of(audio_ids[row]), speaker_ids[row]), []).append(row)
    # Rows in segment order (seg_2 before seg_10), not the dataset's: an incremental dataset build
    # moves rows between shards, and a recording's pairs must not change when its rows move.
    return [
        Group(rec, spk, np.asarray(sorted(rows, key=lambda r: segment_order(audio_ids[r])), dtype=np.int64))
        for (rec, spk), rows in sorted(members.items())
    ]


def segment_order(audio_id: str) -> tuple:
    """`{ID}_seg_{i}` sorts by i as a number; anything else after the ids that have one."""
    tail = audio_id.rsplit("_seg_", 1)[-1]
    return (0, int(tail), "") if tail.isdigit() else (1, 0, tail)


def pair_of(m: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pair number m of a group of n -> (i, j), i != j; m in 0..n*(n-1)-1 runs over (i, j) order."""
    m = np.asarray(m, dtype=np.int64)
    i, r = np.divmod(m, n - 1)
    return i, r + (r >= i)


def group_seed(settings_seed: int, group: Group) -> list[int]:
    return [settings_seed, zlib.crc32(f"{group.recording}\t{group.speaker_id}".encode())]


def sampled_pair_numbers(group: Group, max_pairs: int, seed: int) -> np.ndarray:
    """The k = max_pairs pair numbers of a group with more pairs than that (see the module's rule)."""
    total = group.n * (group.n - 1)
    return np.random.default_rng(group_seed(seed, group)).choice(total, max_pairs, replace=False).astype(np.int64)


def pair_chunks(
    groups: Iterable[Group], max_pairs: int | None = None, seed: int = 42, chunk: int = BATCH_PAIRS
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
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
            m = np.arange(start, start + take, dtype=np.int64) if sampled is None else sampled[start : start + take]
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
        if "split" not in table.column_names:  # a shard of a writer before splits: every row was train
            table = table.append_column("split", pa.array(["train"] * table.num_rows, pa.string()))
        tables.append(table.select(columns).replace_schema_metadata(None))
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
    recordings: dict[
        str, dict
    ]  # every recording of the index: {"eligible": rows within the rules, "dropped": small groups}
    settings: PairSettings

    @property
    def pairs(self) -> int:
        return int(sum(g.num_pairs(self.settings.max_pairs_per_speaker) for g in self.groups))


def plan_pairs(index: pa.Table, settings: PairSettings) -> Plan:
    code_lengths = pc.fill_null(pc.list_value_length(index["codes"]), 0).to_numpy()
    keep = eligible_mask(index["duration_sec"].to_numpy(zero_copy_only=False), code_lengths, settings)
    audio_ids = index["audio_id"].to_pylist()
    groups = group_rows(audio_ids, index["speaker_id"].to_pylist(), keep)
    recordings: dict[str, dict] = {}
    for audio_id, ok in zip(audio_ids, keep.tolist()):
        recordings.setdefault(recording_of(audio_id), {"eligible": 0, "dropped": 0})["eligible"] += int(ok)
    smallest = max(2, settings.min_segments_per_speaker)
    for g in groups:
        if g.n < smallest:
            recordings[g.recording]["dropped"] += 1
    return Plan([g for g in groups if g.n >= smallest], recordings, settings)


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
    columns["split"] = ref_rows["split"]
    return pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema)


# ---- writing and publishing --------------------------------------------------------------------


def read_pair_record(store: ObjectStore, channel: str) -> dict | None:
    blob = store.read_bytes_or_none(record_key(channel))
    return json.loads(blob) if blob is not None else None


def read_pair_records(store: ObjectStore) -> dict[str, dict]:
    return read_records(store, PAIRS_BUILDS_PREFIX)


@dataclass
class PairsBuild:
    record: dict
    plan: PairsPlan
    removed: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0
    files_written: int = 0
    shards_read: int = 0
    recordings_paired: int = 0


# ---- incremental builds -------------------------------------------------------------------------
#
# A recording's pairs depend only on its own rows (groups never cross recordings) and the settings.
# So the pairs are published as files that each hold whole recordings, and the record says which
# recordings each file holds, with a fingerprint of their rows (file name, version and size of each
# segment, from the dataset record's shard members). A new dataset build then rewrites only the
# files holding a recording whose rows changed (and pairs new recordings), reading only the
# dataset shards that hold those recordings' rows.

PAIRS_WRITER = 3  # 3: the split column
FILE_BYTES = 500 * 1000 * 1000  # a pairs file is closed at the first recording boundary past this


@dataclass(frozen=True)
class RecordingRows:
    fingerprint: str  # of its rows in the dataset: changes when any of them changes, comes or goes
    shards: tuple[str, ...]  # the dataset shards holding them


def recordings_in(dataset: dict) -> dict[str, RecordingRows] | None:
    """Each recording of the dataset record, from its shards' members; None for a record without
    members (an older writer's), which can only be paired whole."""
    if any("members" not in shard for shard in dataset["shards"]):
        return None
    lines: dict[str, list[str]] = {}
    shards: dict[str, set] = {}
    for shard in dataset["shards"]:
        for name, version, size, *digest in shard["members"]:
            rec = recording_of(name[:-4] if name.endswith(".npz") else name)
            lines.setdefault(rec, []).append("\t".join(map(str, (name, version, size, *digest))))
            shards.setdefault(rec, set()).add(shard["path"])
    return {
        rec: RecordingRows(hashlib.sha256("\n".join(sorted(ls)).encode()).hexdigest()[:20], tuple(sorted(shards[rec])))
        for rec, ls in lines.items()
    }


@dataclass
class PairsPlan:
    """What a build keeps and what it makes (pure: from the records, no store)."""

    keep: list[dict]  # the previous record's files, kept as they are
    regenerate: set[str] | None  # recordings paired now; None: every recording (a full build)
    shards: list[str]  # dataset shards to read, in record order
    idle: dict[str, dict]  # recordings without pairs, carried over unread
    current: dict[str, RecordingRows] = field(default_factory=dict)  # the dataset's recordings now (recordings_in)

    @property
    def full(self) -> bool:
        return self.regenerate is None


def plan_pairs_build(previous: dict | None, dataset: dict, settings: PairSettings, force: bool = False) -> PairsPlan:
    every_shard = [s["path"] for s in dataset["shards"]]
    current = recordings_in(dataset)
    if (
        force
        or current is None
        or previous is None
        or previous.get("writer") != PAIRS_WRITER
        or previous.get("settings") != settings.to_dict()
    ):
        return PairsPlan([], None, every_shard, {}, current or {})

    def unchanged(recordings: dict) -> bool:
        return all(r in current and current[r].fingerprint == v["fingerprint"] for r, v in recordings.items())

    keep = [f for f in previous["files"] if f["recordings"] and unchanged(f["recordings"])]
    idle = {r: v for r, v in previous.get("idle", {}).items() if unchanged({r: v})}
    covered = {r for f in keep for r in f["recordings"]} | set(idle)
    regenerate = set(current) - covered
    wanted = {shard for r in regenerate for shard in current[r].shards}
    return PairsPlan(keep, regenerate, [p for p in every_shard if p in wanted], idle, current)


def _pairs_file(
    index: pa.Table, groups: list[Group], settings: PairSettings, workdir: Path, name: str
) -> tuple[Path, Path, int]:
    """The pairs of `groups` as one Arrow stream file, the format `save_to_disk` writes (its schema
    carries the features, so `load_from_disk` reads it as it is), written batch by batch and never
    mapped back into memory; and their row references as Parquet."""
    schema = pairs_features(settings.include_audio).arrow_schema
    stream, refs_path = workdir / f"{name}.arrow", workdir / f"{name}.{INDEX_FILE}"
    ids = index["audio_id"]
    ref_schema = pa.schema([("ref_audio_id", pa.string()), ("target_audio_id", pa.string())])
    written = 0
    chunk = AUDIO_BATCH_PAIRS if settings.include_audio else BATCH_PAIRS
    with (
        pa.OSFile(str(stream), "wb") as sink,
        pa.ipc.new_stream(sink, schema) as writer,
        pq.ParquetWriter(str(refs_path), ref_schema, compression="zstd") as refs,
    ):
        for ref, target in pair_chunks(groups, settings.max_pairs_per_speaker, settings.random_seed, chunk):
            writer.write_table(pairs_batch(index, ref, target, schema))
            refs.write_table(
                pa.Table.from_arrays([ids.take(pa.array(ref)), ids.take(pa.array(target))], schema=ref_schema)
            )
            written += len(ref)
        if written == 0:
            refs.write_table(ref_schema.empty_table())
    return stream, refs_path, written


def pairs_info(settings: PairSettings) -> dict:
    """The folder's dataset_info.json, as `datasets` writes it for these features."""
    return features_info(pairs_features(settings.include_audio))


def _split_at_recordings(groups: list[Group], settings: PairSettings, index: pa.Table) -> Iterator[list[Group]]:
    """The groups (sorted: a recording's are together) in runs of whole recordings of about
    FILE_BYTES of pairs each (estimated from the codes and text they repeat)."""
    code_lengths = pc.fill_null(pc.list_value_length(index["codes"]), 0).to_numpy()
    text_lengths = pc.fill_null(pc.binary_length(index["text"]), 0).to_numpy()
    audio_lengths = (
        pc.fill_null(pc.binary_length(pc.struct_field(index["audio"], "bytes")), 0).to_numpy()
        if settings.include_audio
        else np.zeros(len(code_lengths), np.int64)
    )
    per_row = code_lengths * 4 + text_lengths + audio_lengths + 64
    run: list[Group] = []
    size = 0.0
    for k, group in enumerate(groups):
        run.append(group)
        # each row of a group appears in about 2 x pairs / n pairs
        size += float(per_row[group.rows].mean()) * 2 * group.num_pairs(settings.max_pairs_per_speaker)
        last_of_recording = k + 1 == len(groups) or groups[k + 1].recording != group.recording
        if last_of_recording and size >= FILE_BYTES:
            yield run
            run, size = [], 0.0
    if run:
        yield run


def _counts(files: list[dict], idle: dict[str, dict], rows_in_dataset: int) -> tuple[dict, list[dict]]:
    groups = [g for f in files for g in f["groups"]]  # [recording, speaker_id, segments, pairs]
    recordings = [v for f in files for v in f["recordings"].values()] + list(idle.values())
    per = [g[3] for g in groups]
    counts = {
        "speakers": len(groups),
        "speakers_dropped": sum(v["dropped"] for v in recordings),
        "pairs": int(sum(per)),
        "pairs_per_speaker": {
            "min": int(min(per)) if per else 0,
            "median": float(np.median(per)) if per else 0.0,
            "max": int(max(per)) if per else 0,
        },
        "rows_in_dataset": rows_in_dataset,
        "rows_eligible": sum(v["eligible"] for v in recordings),
        "rows_used": int(sum(g[2] for g in groups)),
    }
    top = sorted(groups, key=lambda g: (-g[3], g[0], g[1]))[:TOP_SPEAKERS]
    return counts, [{"recording": g[0], "speaker_id": g[1], "segments": g[2], "pairs": g[3]} for g in top]


def new_build_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def build_and_publish(
    store: ObjectStore,
    channel: str,
    settings: PairSettings,
    workdir: Path,
    title: str,
    guard: Callable[[], None] | None = None,
    log: Callable[[str], None] | None = None,
    force: bool = False,
) -> PairsBuild:
    """Reads what changed of the channel's published dataset, writes those recordings' pairs and
    publishes them beside the files kept (see the module and `plan_pairs_build`)."""
    from neutts_assets.pipeline.dataset.disk import publish_state

    guard = guard or (lambda: None)
    log = log or (lambda _msg: None)
    started = time.perf_counter()
    dataset = read_record(store, channel)
    if dataset is None:
        raise LookupError(f"channel {channel!r} has no published dataset: materialize hf_dataset first")
    plan = plan_pairs_build(read_pair_record(store, channel), dataset, settings, force)
    steps = _PairsBuildSteps(store, channel, settings, Path(workdir), plan)
    index = steps.read_rows(dataset)
    pairing = plan_pairs(index, settings)
    tallies = pairing.recordings
    log(
        f"{channel}: {len(plan.keep)} pairs file(s) kept; {pairing.pairs} pairs of {len(pairing.groups)} speakers "
        f"from {len(tallies)} recording(s) made, {len(plan.shards)} of {len(dataset['shards'])} dataset shard(s) read"
    )
    build_id = new_build_id()
    new_files, with_pairs = steps.write_files(build_id, index, pairing, guard)
    idle = {**plan.idle, **{r: steps.recording_entry(r, t) for r, t in tallies.items() if r not in with_pairs}}
    files = plan.keep + new_files
    if not files:  # load_from_disk cannot concatenate no file: one empty one, never kept
        files = [steps.write_empty_file(build_id, index)]
    del index
    guard()
    publish_state(store, steps.prefix, [f["arrow"] for f in files], pairs_info(settings))  # the switch
    record = steps.record(build_id, dataset, files, idle)
    store.write_bytes(record_key(channel), json.dumps(record, ensure_ascii=False, sort_keys=True).encode())
    build = PairsBuild(
        record,
        plan,
        files_written=len(files) - len(plan.keep),
        shards_read=len(plan.shards),
        recordings_paired=len(tallies),
    )
    build.removed = finish_publishing(store, record, title, guard)
    build.wall_seconds = time.perf_counter() - started
    return build


class _PairsBuildSteps:
    """The steps of build_and_publish that read the dataset and write the pairs files and the record."""

    def __init__(self, store: ObjectStore, channel: str, settings: PairSettings, workdir: Path, plan: PairsPlan):
        self.store, self.channel, self.settings, self.workdir, self.plan = store, channel, settings, workdir, plan
        self.prefix = folder(channel)

    def read_rows(self, dataset: dict) -> pa.Table:
        """The index of the rows this build pairs: every row of the dataset shards the plan reads,
        or, for an incremental build, only the rows of the recordings it regenerates."""
        (self.workdir / "shards").mkdir(parents=True, exist_ok=True)
        tables = []
        for path in self.plan.shards:  # one shard on local disk at a time; its projected columns kept
            local = fetch_shards(self.store, dataset, self.workdir / "shards", only=[path])[path]
            table = read_index([local], self.settings.include_audio)
            local.unlink(missing_ok=True)
            if not self.plan.full:
                recs = [recording_of(a) for a in table["audio_id"].to_pylist()]
                table = table.filter(pa.array([r in self.plan.regenerate for r in recs]))
            tables.append(table)
        return pa.concat_tables(tables).combine_chunks() if tables else read_index([], self.settings.include_audio)

    def recording_entry(self, recording: str, tally: dict) -> dict:
        """A recording as the record lists it: its rows' fingerprint and its tallies. The fingerprint
        is "" (never matching again) without shard members to take it from."""
        current = self.plan.current
        return {"fingerprint": current[recording].fingerprint if recording in current else "", **tally}

    def write_files(
        self, build_id: str, index: pa.Table, pairing: Plan, guard: Callable[[], None]
    ) -> tuple[list[dict], set[str]]:
        """The pairs files, in runs of whole recordings, each uploaded as soon as it is written and
        its local copies removed. Returns their record entries and the recordings that have pairs."""
        files = []
        with_pairs: set[str] = set()
        max_pairs = self.settings.max_pairs_per_speaker
        for k, groups in enumerate(_split_at_recordings(pairing.groups, self.settings, index)):
            arrow, refs, written = _pairs_file(index, groups, self.settings, self.workdir, f"{k:05d}")
            name = f"{build_id}/{k:05d}"
            guard()
            size = self._upload(name, arrow, refs)
            arrow.unlink(missing_ok=True)
            refs.unlink(missing_ok=True)
            recs = sorted({g.recording for g in groups})
            with_pairs |= set(recs)
            recordings = {r: self.recording_entry(r, pairing.recordings[r]) for r in recs}
            groups_listed = [[g.recording, g.speaker_id, g.n, g.num_pairs(max_pairs)] for g in groups]
            files.append(_file_entry(name, written, size, recordings, groups_listed))
        return files, with_pairs

    def write_empty_file(self, build_id: str, index: pa.Table) -> dict:
        arrow, refs, _ = _pairs_file(index, [], self.settings, self.workdir, "empty")
        name = f"{build_id}/empty"
        self._upload(name, arrow, refs)
        return _file_entry(name, 0, 0, {}, [])

    def _upload(self, name: str, arrow: Path, refs: Path) -> int:
        size = self.store.upload(arrow, f"{self.prefix}{name}/{ARROW_FILE}")
        self.store.upload(refs, f"{self.prefix}{name}/{INDEX_FILE}")
        return size

    def record(self, build_id: str, dataset: dict, files: list[dict], idle: dict[str, dict]) -> dict:
        counts, top = _counts(files, idle, dataset["stats"]["rows"])
        return {
            "channel": self.channel,
            "writer": PAIRS_WRITER,
            "build_id": build_id,
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "dataset_build_id": dataset["build_id"],
            "settings": self.settings.to_dict(),
            "folder": self.prefix,
            "files": files,
            "idle": idle,
            "arrow_files": [f["arrow"] for f in files],
            "index_files": [f["index"] for f in files],
            "counts": counts,
            "bytes": sum(f["bytes"] for f in files),
            "top_speakers": top,
        }


def _file_entry(name: str, pairs: int, size: int, recordings: dict[str, dict], groups: list[list]) -> dict:
    """A pairs file as the record lists it; `groups`: [recording, speaker_id, segments, pairs]."""
    return {
        "arrow": f"{name}/{ARROW_FILE}",
        "index": f"{name}/{INDEX_FILE}",
        "pairs": pairs,
        "bytes": size,
        "recordings": recordings,
        "groups": groups,
    }


def is_current(store: ObjectStore, record: dict | None, dataset_build_id: str | None, settings: PairSettings) -> bool:
    """Whether the published pairs were made from this dataset build with these settings, and
    their state.json names exactly the record's files."""
    if record is None or dataset_build_id is None:
        return False
    if record.get("dataset_build_id") != dataset_build_id or record.get("settings") != settings.to_dict():
        return False
    blob = store.read_bytes_or_none(folder(record["channel"]) + STATE)
    if blob is None:
        return False
    return [f["filename"] for f in json.loads(blob)["_data_files"]] == record.get("arrow_files")


def remove_unreferenced(store: ObjectStore, record: dict) -> list[str]:
    """Every file under the channel's folder that the record does not name (replaced files, and
    what a killed build left)."""
    prefix = folder(record["channel"])
    keep = {prefix + name for name in record.get("arrow_files", []) + record.get("index_files", [])}
    removed = [o.key for o in store.list(prefix) if "/" in o.key[len(prefix) :] and o.key not in keep]
    for key in removed:
        store.delete(key)
    return removed


def finish_publishing(
    store: ObjectStore, record: dict, title: str, guard: Callable[[], None] | None = None
) -> list[str]:
    """After the record: the files it no longer names removed, the card rewritten if it does not
    name this build. Also what an unchanged rerun does, for a run killed after the record."""
    guard = guard or (lambda: None)
    guard()
    removed = remove_unreferenced(store, record)
    card = store.read_bytes_or_none(CARD_KEY)
    if card is None or record["build_id"] not in card.decode():
        guard()
        publish_card(store, title)
    return removed


def local_path(store: ObjectStore, channel: str) -> str | None:
    """The folder to hand to `load_from_disk`, for a store that is a local folder."""
    return str(store.root / folder(channel)) if isinstance(store, LocalStore) else None
