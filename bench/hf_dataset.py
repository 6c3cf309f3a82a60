"""hf_dataset, ours against the old method, side by side on the same segment files.

    .venv/bin/python bench/hf_dataset.py                   # 5,000 segments of ~5.5 s (~7.6 h of speech)
    .venv/bin/python bench/hf_dataset.py --segments 20000  # more
    .venv/bin/python bench/hf_dataset.py --quick           # 500 segments, a smoke run

Input: stage-2 segment files (our format: FLAC bytes + codes, 50 per second) cut from the demo
channel's speech at varied offsets, 4.5-6.5 s long, in a local folder (built once, cached in
bench/.cache/, git-ignored).
Ours: `core.dataset_writer.build_channel`, the asset's path: segment files streamed through a
read-ahead window into Parquet shards with the final features, uploaded to a LocalStore.
Old: the old create_hf_dataset_from_npz: every `.npz` loaded into a list (float waveform, codes as
a list, strings), `Dataset.from_list(rows, features)`, `save_to_disk`.

Each measurement runs in its own spawned child process, so its peak RSS (VmHWM) is its own; CPU
time is the child's. Human-readable lines first; the last line is one JSON object.
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


def make_segments(n: int) -> Path:
    """n stage-2 segment files cut from the demo speech (bench/stage1.py's program), cached."""
    sys.path.insert(0, str(BENCH))
    import soundfile as sf
    from stage1 import build_program  # the demo recordings decoded and concatenated (~78 s)

    from neutts_assets.core.segment_file import Segment, encode_segment
    from neutts_assets.storage.local import LocalStore

    root = CACHE / f"hf_dataset_{n}"
    if (root / "done").exists():
        return root
    program, _, _ = build_program()
    pcm, _ = sf.read(program, dtype="int16")
    rng = np.random.default_rng(0)
    store = LocalStore(root)
    for i in range(n):
        length = int(rng.uniform(4.5, 6.5) * SR)
        start = int(rng.integers(0, len(pcm) - length))
        audio_id = f"rec{i // 20:05d}_seg_{i % 20}"
        seed = zlib.crc32(audio_id.encode())
        codes = ((np.arange(length // 320, dtype=np.int64) * 7919 + seed) % 65536).astype(np.int32)
        seg = Segment(audio_id=audio_id, channel=CHANNEL, text=f"نص تجريبي رقم {i}", speaker_id=f"SPEAKER_{i % 3:02d}",
                      gender=("male", "female")[i % 2], dialect="gulf", tone="neutral", pcm16=pcm[start:start + length],
                      codes=codes, codec="bench deterministic codes")
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
    from neutts_assets.core.dataset_writer import segment_objects
    from neutts_assets.storage.local import LocalStore

    objects = segment_objects(LocalStore(root, create=False), f"stage2_with_codes/{CHANNEL}/")
    return sorted(objects.values(), key=lambda o: o.key)[:limit]


def run_ours(root: str, limit: int, out: str) -> dict:
    from neutts_assets.core.dataset_rows import RowFilter, dataset_features
    from neutts_assets.core.dataset_writer import build_channel
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
    return {"rows": build.record["stats"]["rows"], "hours": build.record["stats"]["hours"], "wall_s": time.perf_counter() - t0, "cpu_s": _cpu_s() - c0,
            "peak_rss_mb": _peak_rss_mb(), "rss_after_imports_mb": baseline,
            "bytes_out": sum(s["bytes"] for s in build.record["shards"])}


def run_old(root: str, limit: int, out: str) -> dict:
    from datasets import Audio, Dataset, Features, Sequence, Value

    from neutts_assets.core.segment_file import read_segment

    objects = _inputs(root, limit)
    baseline = _peak_rss_mb()
    t0, c0 = time.perf_counter(), _cpu_s()
    rows = []
    for o in objects:  # the old script: every segment loaded into one list
        seg = read_segment(Path(root) / o.key)
        rows.append({"audio": {"array": seg.audio, "sampling_rate": SR}, "codes": seg.codes.tolist(), "text": seg.text,
                     "speaker_id": seg.speaker_id, "channel": seg.channel, "gender": seg.gender, "dialect": seg.dialect,
                     "tone": seg.tone, "audio_id": seg.audio_id, "duration_sec": seg.duration_sec})
    features = Features({"audio": Audio(sampling_rate=SR), "codes": Sequence(Value("int32")), "text": Value("string"),
                         "speaker_id": Value("string"), "channel": Value("string"), "gender": Value("string"),
                         "dialect": Value("string"), "tone": Value("string"), "audio_id": Value("string"),
                         "duration_sec": Value("float32")})
    ds = Dataset.from_list(rows, features=features)
    ds.save_to_disk(str(Path(out) / "old"))
    n = len(ds)
    bytes_out = sum(p.stat().st_size for p in (Path(out) / "old").glob("*.arrow"))
    return {"rows": n, "wall_s": time.perf_counter() - t0, "cpu_s": _cpu_s() - c0, "peak_rss_mb": _peak_rss_mb(),
            "rss_after_imports_mb": baseline, "bytes_out": bytes_out}


def _measure(method: str, root: str, limit: int) -> dict:
    import os

    os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="bench-hf-cache-"))
    with tempfile.TemporaryDirectory(prefix=f"bench-{method}-") as out:
        return (run_ours if method == "ours" else run_old)(root, limit, out)


def measure(method: str, root: Path, limit: int) -> dict:
    """In a fresh spawned process: nothing of this one's memory is inherited."""
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(_measure, method, str(root), limit).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=5000)
    parser.add_argument("--quick", action="store_true", help="500 segments")
    args = parser.parse_args()
    n = 500 if args.quick else args.segments
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
        print(f"{name:>14}: {r['rows']} rows, wall {r['wall_s']:.1f} s, CPU {r['cpu_s']:.1f} s, "
              f"{r['rows'] / r['wall_s']:.0f} rows/s, peak RSS {r['peak_rss_mb']:.0f} MB "
              f"({r['rss_after_imports_mb']:.0f} MB after imports), output {r['bytes_out'] / 1e6:.0f} MB")
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
    print(f"targets: speedup_vs_old >= 5: {result['speedup_vs_old']} | rss_growth_ours <= 1.2: {result['rss_growth_ours']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
