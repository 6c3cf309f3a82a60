"""hf_dataset, ours against the old method, side by side on the same segment files.

    .venv/bin/python bench/hf_dataset.py                   # 5,000 segments of ~5.5 s (~7.6 h of speech)
    .venv/bin/python bench/hf_dataset.py --segments 20000  # more
    .venv/bin/python bench/hf_dataset.py --quick           # 500 segments, a smoke run
    .venv/bin/python bench/hf_dataset.py --incremental     # 20,000 segments: full build, +1 recording, force
    .venv/bin/python bench/hf_dataset.py --incremental --segments 500 --added 60   # its smoke run

Input: stage-2 segment files (the default format: the float32 waveform + codes, 50 per second;
so ours encodes each segment's FLAC for the audio column once) cut from the demo
channel's speech at varied offsets, 4.5-6.5 s long, in a local folder (built once, cached in
bench/.cache/, git-ignored).
Ours: `core.dataset_writer.build_channel`, the asset's path: segment files streamed through a
read-ahead window into Parquet shards with the final features, uploaded to a LocalStore.
Old: the old create_hf_dataset_from_npz: every `.npz` loaded into a list (float waveform, codes as
a list, strings), `Dataset.from_list(rows, features)`, `save_to_disk`.

Each measurement runs in its own spawned child process, so its peak RSS (VmHWM) is its own; CPU
time is the child's. Human-readable lines first; the last line is one JSON object.

--incremental (default 20,000 segments): in one process, what the asset does on a real channel
that grows. A full build of the channel, published; then one recording more (--added segments,
75 by default, cached like the others) and the incremental build (the published record's plan:
only new shards); then a forced full rebuild of that same final state. For each: segment files
read, shard bytes written, shards written / kept, wall time, peak RSS (VmHWM, reset between the
phases through /proc/self/clear_refs); and the incremental build's ratios to the forced one.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
CACHE = BENCH / ".cache"
CHANNEL = "bench"
SR = 16_000


def make_segments(n: int, first: int = 0, name: str | None = None, recording: int | None = None) -> Path:
    """n stage-2 segment files cut from the demo speech (bench/stage1.py's program), cached: recordings
    of 20 segments; or (`recording`) all n in that one recording, `first` seeding the cuts."""
    sys.path.insert(0, str(BENCH))
    import soundfile as sf
    from stage1 import build_program  # the demo recordings decoded and concatenated (~78 s)

    from neutts_assets.pipeline.segments.segment_file import FORMAT_VERSION, Segment, encode_segment
    from neutts_assets.storage.local import LocalStore

    root = CACHE / f"{name or f'hf_dataset_{n}'}_v{FORMAT_VERSION}"  # the segment-file format's own cache
    if (root / "done").exists():
        return root
    program, _, _ = build_program()
    pcm, _ = sf.read(program, dtype="int16")
    rng = np.random.default_rng(first)
    store = LocalStore(root)
    for i in range(first, first + n):
        length = int(rng.uniform(4.5, 6.5) * SR)
        start = int(rng.integers(0, len(pcm) - length))
        audio_id = f"rec{i // 20:05d}_seg_{i % 20}" if recording is None else f"rec{recording:05d}_seg_{i - first}"
        seed = zlib.crc32(audio_id.encode())
        codes = ((np.arange(length // 320, dtype=np.int64) * 7919 + seed) % 65536).astype(np.int32)
        seg = Segment(
            audio_id=audio_id,
            channel=CHANNEL,
            text=f"نص تجريبي رقم {i}",
            speaker_id=f"SPEAKER_{i % 3:02d}",
            gender=("male", "female")[i % 2],
            dialect="gulf",
            tone="neutral",
            pcm16=pcm[start : start + length],
            codes=codes,
            codec="bench deterministic codes",
        )
        store.write_bytes(f"stage2_with_codes/{CHANNEL}/{audio_id}.npz", encode_segment(seg))
    (root / "done").touch()
    return root


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _cpu_s() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def _inputs(root: str, limit: int) -> list:
    from neutts_assets.pipeline.dataset.writer import segment_objects
    from neutts_assets.storage.local import LocalStore

    objects = segment_objects(LocalStore(root, create=False), f"stage2_with_codes/{CHANNEL}/")
    return sorted(objects.values(), key=lambda o: o.key)[:limit]


def run_ours(root: str, limit: int, out: str) -> dict:
    from neutts_assets.pipeline.dataset.rows import RowFilter, dataset_features
    from neutts_assets.pipeline.dataset.writer import build_channel
    from neutts_assets.storage.local import LocalStore

    dataset_features()  # imports `datasets` before the clock starts, as the old method does
    objects = _inputs(root, limit)
    src = LocalStore(root, create=False)
    work = Path(out) / "work"
    work.mkdir(parents=True)
    baseline = _peak_rss_mb()
    t0, c0 = time.perf_counter(), _cpu_s()

    class Split(LocalStore):  # reads from the input store, uploads shards to the output store
        def read_bytes(self, key):
            return src.read_bytes(key)

    build = build_channel(Split(Path(out) / "store"), CHANNEL, objects, RowFilter(), work, "bench")
    return {
        "rows": build.record["stats"]["rows"],
        "hours": build.record["stats"]["hours"],
        "wall_s": time.perf_counter() - t0,
        "cpu_s": _cpu_s() - c0,
        "peak_rss_mb": _peak_rss_mb(),
        "rss_after_imports_mb": baseline,
        "bytes_out": sum(s["bytes"] for s in build.record["shards"]),
    }


def run_old(root: str, limit: int, out: str) -> dict:
    from datasets import Audio, Dataset, Features, Sequence, Value

    from neutts_assets.pipeline.segments.segment_file import read_segment

    objects = _inputs(root, limit)
    baseline = _peak_rss_mb()
    t0, c0 = time.perf_counter(), _cpu_s()
    rows = []
    for o in objects:  # the old script: every segment loaded into one list
        seg = read_segment(Path(root) / o.key)
        rows.append(
            {
                "audio": {"array": seg.audio, "sampling_rate": SR},
                "codes": seg.codes.tolist(),
                "text": seg.text,
                "speaker_id": seg.speaker_id,
                "channel": seg.channel,
                "gender": seg.gender,
                "dialect": seg.dialect,
                "tone": seg.tone,
                "audio_id": seg.audio_id,
                "duration_sec": seg.duration_sec,
            }
        )
    features = Features(
        {
            "audio": Audio(sampling_rate=SR),
            "codes": Sequence(Value("int32")),
            "text": Value("string"),
            "speaker_id": Value("string"),
            "channel": Value("string"),
            "gender": Value("string"),
            "dialect": Value("string"),
            "tone": Value("string"),
            "audio_id": Value("string"),
            "duration_sec": Value("float32"),
        }
    )
    ds = Dataset.from_list(rows, features=features)
    ds.save_to_disk(str(Path(out) / "old"))
    n = len(ds)
    bytes_out = sum(p.stat().st_size for p in (Path(out) / "old").glob("*.arrow"))
    return {
        "rows": n,
        "wall_s": time.perf_counter() - t0,
        "cpu_s": _cpu_s() - c0,
        "peak_rss_mb": _peak_rss_mb(),
        "rss_after_imports_mb": baseline,
        "bytes_out": bytes_out,
    }


def _measure(method: str, root: str, limit: int) -> dict:
    import os

    os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="bench-hf-cache-"))
    with tempfile.TemporaryDirectory(prefix=f"bench-{method}-") as out:
        return (run_ours if method == "ours" else run_old)(root, limit, out)


def measure(method: str, root: Path, limit: int) -> dict:
    """In a fresh spawned process: nothing of this one's memory is inherited."""
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(_measure, method, str(root), limit).result()


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux)


def run_incremental(n: int, added: int, shard_mb: float, workers: int) -> dict:
    """Full build, one recording added and built incrementally, then a forced rebuild: one process."""
    from neutts_assets.pipeline.dataset.rows import RowFilter, dataset_features
    from neutts_assets.pipeline.dataset.writer import build_channel, publish_channel, read_record, segment_objects
    from neutts_assets.storage.local import LocalStore

    base = make_segments(n)
    # One recording more: its segments are numbered after the channel's last recording.
    first = (n + 19) // 20 * 20
    extra = make_segments(added, first=first, name=f"hf_dataset_{n}_plus_{added}", recording=first // 20)
    prefix = f"stage2_with_codes/{CHANNEL}/"
    base_objects = list(segment_objects(LocalStore(base, create=False), prefix).values())
    extra_objects = list(segment_objects(LocalStore(extra, create=False), prefix).values())
    home = {o.key: base for o in base_objects} | {o.key: extra for o in extra_objects}
    for root in (base, extra):  # warm the page cache: every phase reads from memory, not the disk
        for p in (root / "stage2_with_codes" / CHANNEL).iterdir():
            p.read_bytes()
    dataset_features()

    class Split(LocalStore):  # segment files from the input folders, shards and records in the output store
        def read_bytes(self, key):
            if key in home:
                return (home[key] / key).read_bytes()
            return super().read_bytes(key)

    phases = {}
    with tempfile.TemporaryDirectory(prefix="bench-incremental-") as out:
        store = Split(Path(out) / "store")
        for phase, objects, force in (
            ("full", base_objects, False),
            ("incremental", base_objects + extra_objects, False),
            ("force", base_objects + extra_objects, True),
        ):
            work = Path(out) / f"work-{phase}"
            work.mkdir()
            _reset_peak_rss()
            t0, c0 = time.perf_counter(), _cpu_s()
            build = build_channel(
                store,
                CHANNEL,
                objects,
                RowFilter(),
                work,
                "bench",
                shard_bytes=int(shard_mb * 1e6),
                workers=workers,
                previous=read_record(store, CHANNEL),
                force=force,
            )
            publish_channel(store, build.record, "bench")
            wall = time.perf_counter() - t0
            phases[phase] = {
                "rows": build.record["stats"]["rows"],
                "full_rebuild": build.plan.full,
                "segments_read": build.segments_read,
                "bytes_written": build.bytes_written,
                "shards_written": build.shards_written,
                "shards_kept": len(build.plan.keep),
                "shards_total": len(build.record["shards"]),
                "wall_s": round(wall, 2),
                "cpu_s": round(_cpu_s() - c0, 2),
                "peak_rss_mb": round(_peak_rss_mb(), 1),
                "record_kb": round(len(json.dumps(build.record)) / 1e3, 1),
            }
            print(f"{phase:>12}: {phases[phase]}", flush=True)
    inc, force = phases["incremental"], phases["force"]
    if not (phases["full"]["rows"] == n and inc["rows"] == force["rows"] == n + added):
        raise SystemExit(f"row counts differ: {phases}")
    if inc["full_rebuild"] or inc["segments_read"] != added or inc["shards_kept"] != phases["full"]["shards_written"]:
        raise SystemExit(f"the incremental build was not incremental: {inc}")
    return {
        "mode": "incremental",
        "segments": n,
        "added": added,
        "shard_mb": shard_mb,
        **{k: v for k, v in phases.items()},
        "ratios_incremental_vs_force": {
            "segments_read": round(inc["segments_read"] / force["segments_read"], 5),
            "bytes_written": round(inc["bytes_written"] / force["bytes_written"], 5),
            "shards_written": round(inc["shards_written"] / force["shards_written"], 5),
            "wall_s": round(inc["wall_s"] / force["wall_s"], 5),
            "peak_rss_mb": round(inc["peak_rss_mb"] / force["peak_rss_mb"], 3),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=None, help="default 5000 (20000 with --incremental)")
    parser.add_argument("--quick", action="store_true", help="500 segments")
    parser.add_argument(
        "--incremental", action="store_true", help="full build, +1 recording incrementally, forced rebuild"
    )
    parser.add_argument("--added", type=int, default=75, help="--incremental: segments of the added recording")
    parser.add_argument("--shard-mb", type=float, default=500, help="--incremental: shard size (the asset's default)")
    parser.add_argument("--workers", type=int, default=8, help="--incremental: segment files read at once")
    args = parser.parse_args()
    if args.incremental:
        n = 500 if args.quick else (args.segments or 20000)
        t = time.perf_counter()
        result = run_incremental(n, args.added, args.shard_mb, args.workers)
        r = result["ratios_incremental_vs_force"]
        print(
            f"incremental vs forced rebuild: reads x{r['segments_read']}, bytes written x{r['bytes_written']}, "
            f"wall x{r['wall_s']} ({time.perf_counter() - t:.0f} s in all)"
        )
        print(json.dumps(result))
        return
    n = 500 if args.quick else (args.segments or 5000)
    t = time.perf_counter()
    root = make_segments(n)
    print(f"input: {n} segment files in {root} ({time.perf_counter() - t:.0f} s to prepare)", flush=True)
    # Warm the page cache so neither method pays for the first read from disk.
    for p in (root / "stage2_with_codes" / CHANNEL).iterdir():
        p.read_bytes()

    ours = measure("ours", root, n)
    ours_tenth = measure("ours", root, n // 10)
    old = measure("old", root, n)
    if not (ours["rows"] == old["rows"] == n and ours_tenth["rows"] == n // 10):
        raise SystemExit(f"row counts differ: ours {ours['rows']}, old {old['rows']}, ours/10 {ours_tenth['rows']}")
    for name, r in (("ours", ours), (f"ours ({n // 10})", ours_tenth), ("old", old)):
        print(
            f"{name:>14}: {r['rows']} rows, wall {r['wall_s']:.1f} s, CPU {r['cpu_s']:.1f} s, "
            f"{r['rows'] / r['wall_s']:.0f} rows/s, peak RSS {r['peak_rss_mb']:.0f} MB "
            f"({r['rss_after_imports_mb']:.0f} MB after imports), output {r['bytes_out'] / 1e6:.0f} MB"
        )
    result = {
        "segments": n,
        "audio_hours": ours["hours"],
        "speedup_vs_old": round(old["wall_s"] / ours["wall_s"], 2),
        "cpu_speedup_vs_old": round(old["cpu_s"] / ours["cpu_s"], 2),
        "peak_rss_mb_ours": round(ours["peak_rss_mb"], 1),
        "peak_rss_mb_ours_tenth": round(ours_tenth["peak_rss_mb"], 1),
        "peak_rss_mb_old": round(old["peak_rss_mb"], 1),
        "rss_growth_ours": round(ours["peak_rss_mb"] / ours_tenth["peak_rss_mb"], 3),
        "wall_s_ours": round(ours["wall_s"], 2),
        "wall_s_old": round(old["wall_s"], 2),
        "output_mb_ours": round(ours["bytes_out"] / 1e6, 1),
        "output_mb_old": round(old["bytes_out"] / 1e6, 1),
    }
    print(
        f"targets: speedup_vs_old >= 5: {result['speedup_vs_old']} | rss_growth_ours <= 1.2: {result['rss_growth_ours']}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
