"""training_pairs, ours against the old method, side by side on the same published dataset.

    .venv/bin/python bench/training_pairs.py                          # ~0.2M, ~2M and ~20M pairs (a size whose output cannot fit on the disk is skipped, and said)
    .venv/bin/python bench/training_pairs.py --quick                  # ~0.2M pairs only, a smoke run (well under a minute)
    .venv/bin/python bench/training_pairs.py --sizes 200000,2000000   # other pair counts
    .venv/bin/python bench/training_pairs.py --durations 1,2          # shorter segments: fewer bytes per pair, so ~20M pairs fit on a smaller disk
    .venv/bin/python bench/training_pairs.py --audio                  # also ours with include_audio=True at the smallest size (on by default without --quick)

Input, per size: one synthetic channel built the real way and cached in bench/.cache/ (git-ignored):
stage-2 segment files (`segment_file.encode_segment(Segment(...), "flac")`) of RECORDINGS recordings
with SPEAKERS speakers each, n segments per speaker, n chosen so that RECORDINGS x SPEAKERS x n(n-1)
is about the asked pair count; durations uniform in --durations (1-10 s), codes 50 per second of
random int32 values in 0..65535; the audio is 0.5 s of quiet noise (made once, reused) followed by
silence, so the FLAC bytes are small but decode to the segment's true length. Those files go through
`dataset_writer.build_channel` + `publish_channel` into a `LocalStore` (Parquet shards under
hf_dataset/data/bench/, the record under hf_dataset_builds/bench.json, the card); the segment files
are then deleted and only that store is kept.

Ours: `training_pairs.build_and_publish(store, "bench", PairSettings(), workdir, "bench")`, the
asset's path (default settings: no audio): the shards' non-audio columns read into an index, pairs
planned in chunks and taken from it into an Arrow stream, `save_to_disk`, uploaded to the store.
Old: the users' pair builder (seed/SOURCE_LAYOUT.md), given the same published Parquet shards: the
rows' non-audio columns read with pyarrow into Python dicts (a head start: the users' script decodes
the audio too), grouped by (recording, speaker_id) with the same 0.5-15 s and codes rules, one dict
per ordered pair (ref != target) in a Python list, `Dataset.from_list(pairs, features)` with the
pairs' features without the audio columns (the same columns as ours), `save_to_disk`. It runs only
where it fits: up to --old-max-pairs pairs, and while its memory projected from its previous run
(MB per pair over the imports) stays under --old-cap-gb and the machine's available memory; each
skip is printed with its reason and named in the JSON.

Each measurement runs in its own spawned child process, so its peak RSS (VmHWM: anonymous and
file-backed pages, which counts the memory-mapped Arrow files `datasets` reads) is its own; a
thread in the child also samples RssAnon every 20 ms (the heap alone). CPU time is the child's.
Before each run of ours, the disk it would need (2.2 x the Arrow bytes: the Arrow stream and its
`save_to_disk` copy, then that copy and the store's) is checked against the free space of --workdir.
Human-readable lines first; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import resource
import shutil
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
CACHE = BENCH / ".cache"  # git-ignored
CHANNEL = "bench"
SR = 16_000
RECORDINGS, SPEAKERS = 2, 2  # groups: RECORDINGS x SPEAKERS, each of n segments
DEFAULT_SIZES = (200_000, 2_000_000, 20_000_000)
CODES_PER_S = 50
DISK_FACTOR = 2.2  # peak disk of ours / its Arrow bytes: stream + save_to_disk copy, then copy + store's copy
DISK_MARGIN = 2 * 2**30  # left free for the others on the machine


# ---- input ---------------------------------------------------------------------------------------


def segments_per_speaker(pairs: int) -> int:
    """n with RECORDINGS x SPEAKERS x n(n-1) closest to `pairs`."""
    per_group = pairs / (RECORDINGS * SPEAKERS)
    return max(2, round((1 + math.sqrt(1 + 4 * per_group)) / 2))


def build_input(pairs: int, durations: tuple[float, float]) -> Path:
    """The published synthetic channel for about `pairs` pairs (see the module), cached."""
    from neutts_assets.pipeline.dataset.rows import RowFilter
    from neutts_assets.pipeline.dataset.writer import (
        WRITER_VERSION,
        build_channel,
        publish_channel,
        segment_objects,
    )
    from neutts_assets.pipeline.encoding.store import Stage2Layout
    from neutts_assets.pipeline.segments.segment_file import FORMAT_VERSION, Segment, encode_segment
    from neutts_assets.storage.local import LocalStore

    n = segments_per_speaker(pairs)
    lo, hi = durations
    root = CACHE / f"training_pairs_{RECORDINGS}x{SPEAKERS}x{n}_{lo:g}-{hi:g}s_f{FORMAT_VERSION}w{WRITER_VERSION}"
    if (root / "done").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    store = LocalStore(root / "store")
    rng = np.random.default_rng(n)
    noise = np.round(rng.normal(0, 30, SR // 2)).astype(np.int16)  # 0.5 s, made once, reused
    speakers = [(f"SPEAKER_{s:02d}", ("male", "female")[s % 2]) for s in range(SPEAKERS)]
    i = 0
    for rec in range(RECORDINGS):
        for k in range(n * SPEAKERS):  # the speakers take turns, as in a conversation
            speaker, gender = speakers[k % SPEAKERS]
            samples = int(rng.uniform(lo, hi) * SR) // 320 * 320
            pcm = np.zeros(samples, np.int16)
            pcm[: len(noise)] = noise[:samples]
            codes = rng.integers(0, 65536, size=samples // 320, dtype=np.int32)
            audio_id = f"rec{rec:03d}_seg_{k}"
            seg = Segment(
                audio_id=audio_id,
                channel=CHANNEL,
                text=f"نص تجريبي رقم {i}",
                speaker_id=speaker,
                gender=gender,
                dialect="gulf",
                tone="neutral",
                pcm16=pcm,
                codes=codes,
                codec="bench random codes",
            )
            store.write_bytes(f"{Stage2Layout(CHANNEL).channel_prefix}{audio_id}.npz", encode_segment(seg, "flac"))
            i += 1
    work = root / "work"
    work.mkdir()
    objects = list(segment_objects(store, Stage2Layout(CHANNEL).channel_prefix).values())
    build = build_channel(store, CHANNEL, objects, RowFilter(), work, "bench synthetic")
    publish_channel(store, build.record, "bench")
    shutil.rmtree(work)
    shutil.rmtree(store.root / Stage2Layout(CHANNEL).channel_prefix)  # only the published dataset is kept
    (root / "done").write_text(json.dumps({"rows": build.record["stats"]["rows"], "segments_per_speaker": n}))
    print(
        f"input: {i} rows ({n} per speaker, {RECORDINGS * SPEAKERS} speakers) built in {root} "
        f"in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    return root


# ---- measuring -----------------------------------------------------------------------------------


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _peak_rss_mb() -> float:
    return _status_kb("VmHWM") / 1024  # this process's own high-water mark since exec


def _cpu_s() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


class AnonSampler(threading.Thread):
    """The peak of RssAnon (the heap, without memory-mapped files), sampled every 20 ms."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_kb, self._done = 0, threading.Event()

    def run(self):
        while not self._done.is_set():
            self.peak_kb = max(self.peak_kb, _status_kb("RssAnon"))
            self._done.wait(0.02)

    def stop(self) -> float:
        self._done.set()
        self.join()
        return max(self.peak_kb, _status_kb("RssAnon")) / 1024


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # --workdir on another filesystem
        shutil.copy2(src, dst)


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_ours(store_root: Path, tmp: Path, include_audio: bool) -> dict:
    from neutts_assets.pipeline.pairs.training_pairs import PairSettings, build_and_publish
    from neutts_assets.storage.local import LocalStore

    store, work = LocalStore(store_root), tmp / "work"
    work.mkdir()
    build = build_and_publish(store, CHANNEL, PairSettings(include_audio=include_audio), work, "bench")
    counts = build.record["counts"]
    published = (
        store.root / "training_pairs" / CHANNEL
    )  # the Arrow files, their pairs index, state.json, dataset_info.json
    return {
        "pairs": counts["pairs"],
        "speakers": counts["speakers"],
        "rows": counts["rows_used"],
        "bytes_out": build.record["bytes"],
        "bytes_total": _folder_bytes(published),
        "arrow_files": len(build.record["arrow_files"]),
    }


def run_old(store_root: Path, tmp: Path, include_audio: bool) -> dict:
    """The users' pair builder on the published Parquet (see the module)."""
    import pyarrow.parquet as pq
    from datasets import Dataset

    from neutts_assets.pipeline.dataset.store import DATASET_PREFIX
    from neutts_assets.pipeline.dataset.writer import read_record
    from neutts_assets.pipeline.pairs.training_pairs import INDEX_COLUMNS, pairs_features
    from neutts_assets.storage.local import LocalStore

    assert not include_audio
    record = read_record(LocalStore(store_root, create=False), CHANNEL)
    rows: list[dict] = []
    for shard in record["shards"]:
        rows += pq.read_table(store_root / DATASET_PREFIX / shard["path"], columns=list(INDEX_COLUMNS)).to_pylist()
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        if 0.5 <= row["duration_sec"] <= 15.0 and row["codes"]:
            groups.setdefault((row["audio_id"].rsplit("_seg_", 1)[0], row["speaker_id"]), []).append(row)
    pairs = []
    used = 0
    for key in sorted(groups):
        segments = groups[key]
        if len(segments) < 2:
            continue
        used += len(segments)
        for i, ref in enumerate(segments):
            for j, target in enumerate(segments):
                if i == j:
                    continue
                pairs.append(
                    {
                        "ref_text": ref["text"],
                        "ref_codes": ref["codes"],
                        "ref_speaker_id": ref["speaker_id"],
                        "ref_gender": ref["gender"],
                        "ref_dialect": ref["dialect"],
                        "ref_tone": ref["tone"],
                        "ref_duration_sec": ref["duration_sec"],
                        "target_text": target["text"],
                        "target_codes": target["codes"],
                        "target_speaker_id": target["speaker_id"],
                        "target_gender": target["gender"],
                        "target_dialect": target["dialect"],
                        "target_tone": target["tone"],
                        "target_duration_sec": target["duration_sec"],
                        "channel": ref["channel"],
                        "split": ref["split"],  # ours adds it (a pair never crosses splits); same work either way
                    }
                )
    ds = Dataset.from_list(pairs, features=pairs_features(False))
    out = tmp / "pairs"
    ds.save_to_disk(str(out))
    return {
        "pairs": len(ds),
        "speakers": sum(1 for g in groups.values() if len(g) >= 2),
        "rows": used,
        "bytes_out": sum(p.stat().st_size for p in out.glob("*.arrow")),
        "bytes_total": _folder_bytes(out),
        "arrow_files": len(list(out.glob("*.arrow"))),
    }


def _measure(method: str, store_root: str, workdir: str, include_audio: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-pairs-{method}-", dir=workdir) as tmp:
        os.environ["HF_DATASETS_CACHE"] = str(Path(tmp) / "hf_cache")
        import datasets

        from neutts_assets.pipeline.pairs.training_pairs import pairs_features

        datasets.disable_progress_bars()  # save_to_disk's bars would bury the figures
        pairs_features(include_audio)  # imports `datasets` and pyarrow before the clock starts, for both
        # Both read a copy of the cached store (hard links where they can be: LocalStore replaces a
        # file on every write, never changes one), so the cache stays as built.
        shutil.copytree(store_root, Path(tmp) / "store", copy_function=_link_or_copy)
        baseline = _peak_rss_mb()
        sampler = AnonSampler()
        sampler.start()
        t0, c0 = time.perf_counter(), _cpu_s()
        result = (run_ours if method == "ours" else run_old)(Path(tmp) / "store", Path(tmp), include_audio)
        wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
        result.update(
            wall_s=wall,
            cpu_s=cpu,
            peak_rss_mb=_peak_rss_mb(),
            peak_anon_mb=sampler.stop(),
            rss_after_imports_mb=baseline,
        )
    result["bytes_per_pair"] = result["bytes_out"] / result["pairs"] if result["pairs"] else math.nan
    return result


def measure(method: str, store_root: Path, workdir: Path, include_audio: bool = False) -> dict:
    """`_measure` in a fresh spawned process (not forked: nothing of this one's memory is inherited)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(_measure, method, str(store_root), str(workdir), include_audio).result()


def _mem_available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return math.inf


def _fmt_pairs(p: int) -> str:
    return f"{p / 1e6:.2f}M" if p >= 1e6 else f"{p / 1e3:.0f}k"


def _line(name: str, r: dict) -> str:
    return (
        f"{name:>24}: {r['pairs']} pairs ({r['speakers']} speakers, {r['rows']} rows), wall {r['wall_s']:.1f} s, "
        f"CPU {r['cpu_s']:.1f} s, {r['pairs'] / r['wall_s'] / 1e3:.0f}k pairs/s, peak RSS {r['peak_rss_mb']:.0f} MB "
        f"(heap {r['peak_anon_mb']:.0f} MB; {r['rss_after_imports_mb']:.0f} MB after imports), "
        f"output {r['bytes_out'] / 1e6:.0f} MB = {r['bytes_per_pair']:.0f} B/pair"
    )


def _rounded(r: dict) -> dict:
    keys = (
        "pairs",
        "speakers",
        "rows",
        "wall_s",
        "cpu_s",
        "peak_rss_mb",
        "peak_anon_mb",
        "rss_after_imports_mb",
        "bytes_out",
        "bytes_total",
        "bytes_per_pair",
        "arrow_files",
    )
    return {k: (round(r[k], 2) if isinstance(r[k], float) else r[k]) for k in keys}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the smallest size only (~0.2M pairs), a smoke run")
    parser.add_argument("--sizes", default=None, help="comma-separated pair counts (default 200000,2000000,20000000)")
    parser.add_argument("--durations", default="1,10", help="segment durations, seconds: LO,HI (default 1,10)")
    parser.add_argument(
        "--audio", action="store_true", default=None, help="also ours with include_audio=True at the smallest size"
    )
    parser.add_argument("--no-audio", dest="audio", action="store_false", help="not the include_audio run")
    parser.add_argument(
        "--old-max-pairs", type=int, default=2_100_000, help="the old method is skipped above this (default 2.1M)"
    )
    parser.add_argument(
        "--old-cap-gb", type=float, default=8.0, help="nor where its projected peak RSS exceeds this (default 8)"
    )
    parser.add_argument(
        "--workdir", default=tempfile.gettempdir(), help="where the runs write (default the temp folder)"
    )
    args = parser.parse_args()

    if args.sizes:
        sizes = [int(float(s)) for s in args.sizes.split(",") if s.strip()]
    else:
        sizes = list(DEFAULT_SIZES[:1] if args.quick else DEFAULT_SIZES)
    sizes = sorted(set(sizes))
    durations = tuple(float(x) for x in args.durations.split(","))
    if len(durations) != 2 or not 0.5 <= durations[0] <= durations[1] <= 15.0:
        raise SystemExit("--durations: LO,HI within the pair builder's 0.5-15 s")
    audio_run = (not args.quick) if args.audio is None else args.audio
    workdir = Path(args.workdir)

    inputs: dict[int, Path] = {}  # built when their size is run
    # Bytes per pair before any run: both sides' codes (4 B each) and about 110 B of strings and offsets.
    est_bpp = 2 * CODES_PER_S * 4 * sum(durations) / 2 + 110
    results, skipped_ours, skipped_old = [], {}, {}
    old_per_pair_mb, old_base_mb = None, None
    for asked in sizes:
        n = segments_per_speaker(asked)
        pairs = RECORDINGS * SPEAKERS * n * (n - 1)
        label = f"{_fmt_pairs(pairs)} pairs"
        need = DISK_FACTOR * est_bpp * pairs
        free = shutil.disk_usage(workdir).free - DISK_MARGIN
        if need > free:
            skipped_ours[str(pairs)] = (
                f"needs ~{need / 2**30:.0f} GiB of disk in {workdir} "
                f"({est_bpp:.0f} B/pair x {DISK_FACTOR}), {max(free, 0) / 2**30:.0f} GiB free"
            )
            print(f"{'ours, ' + label:>24}: skipped: {skipped_ours[str(pairs)]}", flush=True)
            continue
        root = inputs[asked] = build_input(asked, durations)
        for p in (root / "store").rglob("*.parquet"):  # warm the page cache: neither method pays the first read
            p.read_bytes()
        ours = measure("ours", root / "store", workdir)
        est_bpp = ours["bytes_per_pair"] + 16  # the measured figure (and the pairs index) from now on
        print(_line(f"ours, {label}", ours), flush=True)
        entry = {"pairs": pairs, "rows": ours["rows"], "ours": _rounded(ours), "old": None}

        reason = None
        projected = old_base_mb + old_per_pair_mb * pairs if old_per_pair_mb is not None else None
        if pairs > args.old_max_pairs:
            reason = f"over --old-max-pairs {args.old_max_pairs}"
        elif projected is not None and projected > args.old_cap_gb * 1024:
            reason = f"projected peak RSS {projected / 1024:.1f} GB over --old-cap-gb {args.old_cap_gb:g}"
        elif projected is not None and projected > 0.8 * _mem_available_mb():
            reason = f"projected peak RSS {projected / 1024:.1f} GB over 80% of the available {_mem_available_mb() / 1024:.1f} GB"
        elif 2 * ours["bytes_out"] + DISK_MARGIN > shutil.disk_usage(workdir).free:
            reason = "not enough disk for its save_to_disk"
        if reason:
            skipped_old[str(pairs)] = reason + (
                f" (projected {projected / 1024:.1f} GB)" if projected and "projected" not in reason else ""
            )
            print(f"{'old, ' + label:>24}: skipped: {skipped_old[str(pairs)]}", flush=True)
        else:
            old = measure("old", root / "store", workdir)
            print(_line(f"old, {label}", old), flush=True)
            if old["pairs"] != ours["pairs"]:
                raise SystemExit(
                    f"pair counts differ at {label}: ours {ours['pairs']}, old {old['pairs']}: not the same work"
                )
            old_base_mb = old["rss_after_imports_mb"]
            old_per_pair_mb = (old["peak_rss_mb"] - old_base_mb) / old["pairs"]
            entry["old"] = _rounded(old)
            entry["ratios"] = {
                "peak_rss_ours_vs_old": round(ours["peak_rss_mb"] / old["peak_rss_mb"], 4),
                "wall_ours_vs_old": round(ours["wall_s"] / old["wall_s"], 4),
                "cpu_ours_vs_old": round(ours["cpu_s"] / old["cpu_s"], 4),
                "bytes_ours_vs_old": round(ours["bytes_out"] / old["bytes_out"], 4),
            }
            r = entry["ratios"]
            print(
                f"{'ours / old, ' + label:>24}: peak RSS x{r['peak_rss_ours_vs_old']}, wall x{r['wall_ours_vs_old']}, "
                f"CPU x{r['cpu_ours_vs_old']}, bytes x{r['bytes_ours_vs_old']} (old's memory: "
                f"{old_per_pair_mb * 1024:.2f} KB per pair over its imports)",
                flush=True,
            )
        results.append(entry)

    if not results:
        raise SystemExit("no size was measured")
    audio = None
    if audio_run:
        smallest = results[0]
        store = inputs[min(inputs)] / "store"
        shards = sum(
            p.stat().st_size for p in store.rglob("*.parquet")
        )  # about the rows' FLAC bytes: each pair has two
        need = DISK_FACTOR * smallest["pairs"] * (smallest["ours"]["bytes_per_pair"] + 2 * shards / smallest["rows"])
        free = shutil.disk_usage(workdir).free - DISK_MARGIN
        if need > free:
            audio = {
                "skipped": f"needs ~{need / 2**30:.0f} GiB of disk in {workdir}, {max(free, 0) / 2**30:.0f} GiB free"
            }
            print(f"{'ours + audio':>24}: skipped: {audio['skipped']}", flush=True)
        else:
            a = measure("ours", store, workdir, include_audio=True)
            print(_line(f"ours + audio, {_fmt_pairs(a['pairs'])} pairs", a), flush=True)
            audio = {
                **_rounded(a),
                "peak_rss_vs_no_audio": round(a["peak_rss_mb"] / smallest["ours"]["peak_rss_mb"], 4),
                "wall_vs_no_audio": round(a["wall_s"] / smallest["ours"]["wall_s"], 4),
            }

    first, last = results[0]["ours"], results[-1]["ours"]
    result = {
        "durations_s": list(durations),
        "groups": RECORDINGS * SPEAKERS,
        "sizes": results,
        "pairs_min": first["pairs"],
        "pairs_max": last["pairs"],
        "pairs_growth": round(last["pairs"] / first["pairs"], 2),
        "peak_rss_mb_ours_min_pairs": first["peak_rss_mb"],
        "peak_rss_mb_ours_max_pairs": last["peak_rss_mb"],
        "rss_growth_ours": round(last["peak_rss_mb"] / first["peak_rss_mb"], 3),
        "heap_growth_ours": round(last["peak_anon_mb"] / first["peak_anon_mb"], 3),
        "bytes_per_pair_ours": last["bytes_per_pair"],
        "ours_skipped": skipped_ours,
        "old_skipped": skipped_old,
        "audio_run": audio,
    }
    common = [e for e in results if e["old"]]
    if common:
        result["peak_rss_ours_vs_old"] = {str(e["pairs"]): e["ratios"]["peak_rss_ours_vs_old"] for e in common}
        result["wall_ours_vs_old"] = {str(e["pairs"]): e["ratios"]["wall_ours_vs_old"] for e in common}
    if len(results) > 1:
        print(
            f"ours' peak RSS from {_fmt_pairs(first['pairs'])} to {_fmt_pairs(last['pairs'])} pairs "
            f"(x{result['pairs_growth']}): {first['peak_rss_mb']:.0f} -> {last['peak_rss_mb']:.0f} MB, x{result['rss_growth_ours']}; "
            f"heap {first['peak_anon_mb']:.0f} -> {last['peak_anon_mb']:.0f} MB, x{result['heap_growth_ours']}"
        )
    else:
        print("one size measured: no growth to show (rss_growth_ours is 1 by construction)")
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
