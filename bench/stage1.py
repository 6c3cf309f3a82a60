"""Stage 1, ours against the old method, side by side on the same >= 30 minutes of speech.

    .venv/bin/python bench/stage1.py            # ~31 min of speech: wav 48 kHz, mp3, m4a (aac), webm (opus)
    .venv/bin/python bench/stage1.py --quick    # ~5 min, a smoke run

Ours: the real `cut_recording` path (ffmpeg decodes straight to 16 kHz int16, one npz per
segment, a recording index written last) between two local folders, the source in the users'
layout, once per segment-file format: `float32` (the default: `audio` is the waveform, deflated
by ISA-L) and `flac` (the option: FLAC bytes under `audio_flac`).
Old: `librosa.load(sr=16000)` per recording, `np.savez_compressed` of float32 per segment.
Decode-only: ffmpeg decoding each recording to nothing, no resampling, no cutting, no writing:
what any method that decodes with ffmpeg must spend. `cpu_vs_decode_only` is ours over it.

Each measurement runs in its own spawned child process, so its peak RSS is its own; its CPU
time counts the child and the children it waited for (ffmpeg, or audioread's ffmpeg).
Human-readable lines first; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import resource
import subprocess
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import soundfile as sf

CACHE = Path(__file__).resolve().parent / ".cache"  # git-ignored
CHANNEL = "bench"
SR = 16_000
# (extension, ffmpeg output arguments): the containers the channels really hold. The program is
# mono; pan copies it to both channels at full level (-ac 2 would upmix at -3 dB).
STEREO = ["-af", "pan=stereo|c0=c0|c1=c0"]
FORMATS = [
    ("wav", [*STEREO, "-ar", "48000", "-c:a", "pcm_s16le"]),
    ("mp3", [*STEREO, "-ar", "44100", "-c:a", "libmp3lame", "-b:a", "96k"]),
    ("m4a", [*STEREO, "-ar", "44100", "-c:a", "aac", "-b:a", "96k"]),
    ("webm", [*STEREO, "-ar", "48000", "-c:a", "libopus", "-b:a", "48k"]),
]
WARMUP_S = 10  # length of the warm-up recordings


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def build_program() -> tuple[Path, list[dict], float]:
    """Every demo recording decoded to 16 kHz mono and concatenated into one program (~78 s),
    with the demo transcripts' segments shifted to their place in it. Returns the program's
    wav, its segments and its length in ms."""
    from neutts_assets.demo import DEMO_CHANNEL, DEMO_CHANNEL_MAPPING, DEMO_SOURCE
    from neutts_assets.pipeline.inventory.source_layout import AUDIO_PREFIX, TRANSCRIPTS_PREFIX

    wav, meta = CACHE / "program.wav", CACHE / "program.json"
    if meta.exists():
        doc = json.loads(meta.read_text())
        return wav, doc["segments"], doc["length_ms"]
    CACHE.mkdir(parents=True, exist_ok=True)
    t_dir = DEMO_SOURCE / TRANSCRIPTS_PREFIX.format(channel=DEMO_CHANNEL)
    a_dir = DEMO_SOURCE / AUDIO_PREFIX.format(audio_folder=DEMO_CHANNEL_MAPPING[DEMO_CHANNEL])
    part, parts, segments, offset_ms = CACHE / "part.wav", [], [], 0.0
    for t in sorted(t_dir.glob("audio_*.json")):
        rec_id = t.name[len("audio_") : -len(".json")]
        (audio,) = a_dir.glob(f"{rec_id}.*")
        _ffmpeg("-i", str(audio), "-ac", "1", "-ar", str(SR), "-c:a", "pcm_s16le", str(part))
        pcm, _ = sf.read(part, dtype="int16")
        doc = json.loads(t.read_text())
        for seg in doc["segments"] if isinstance(doc, dict) else doc:
            segments.append({**seg, "start_ms": seg["start_ms"] + offset_ms, "end_ms": seg["end_ms"] + offset_ms})
        offset_ms += len(pcm) * 1000 / SR  # exact sample count, so later parts stay aligned
        parts.append(pcm)
    part.unlink()
    sf.write(wav, np.concatenate(parts), SR, subtype="PCM_16")
    meta.write_text(json.dumps({"segments": segments, "length_ms": offset_ms}))
    return wav, segments, offset_ms


def build_channel(name: str, n_recordings: int, loops: int, seconds: float | None = None) -> Path:
    """A source folder in the users' layout: `n_recordings` recordings cycling through FORMATS,
    each the program looped `loops` times (cut to `seconds` if given), with matching transcripts.
    Built once and cached."""
    from neutts_assets.pipeline.inventory.source_layout import AUDIO_PREFIX, TRANSCRIPTS_PREFIX

    src = CACHE / name
    if (src / "done").exists():
        return src
    program, segments, length_ms = build_program()
    t_dir = src / TRANSCRIPTS_PREFIX.format(channel=CHANNEL)
    a_dir = src / AUDIO_PREFIX.format(audio_folder=CHANNEL)
    t_dir.mkdir(parents=True, exist_ok=True)
    a_dir.mkdir(parents=True, exist_ok=True)
    cut = ["-t", str(seconds)] if seconds else []
    shifted = [
        {**s, "start_ms": s["start_ms"] + k * length_ms, "end_ms": s["end_ms"] + k * length_ms}
        for k in range(loops)
        for s in segments
    ]
    if seconds:
        shifted = [s for s in shifted if s["end_ms"] <= seconds * 1000]
    for i in range(n_recordings):
        ext, args = FORMATS[i % len(FORMATS)]
        rec_id = f"rec{i:03d}_{ext}"
        _ffmpeg("-stream_loop", str(loops - 1), "-i", str(program), *cut, *args, str(a_dir / f"{rec_id}.{ext}"))
        # Both transcript shapes the users have: {"segments": [...]} and a bare list.
        doc = {"segments": shifted} if i % 2 == 0 else shifted
        (t_dir / f"audio_{rec_id}.json").write_text(json.dumps(doc, ensure_ascii=False))
    (src / "done").touch()
    return src


def _cpu_s() -> float:
    """CPU seconds of this process and of the children it has waited for (ffmpeg)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _peak_rss_mb() -> float:
    # VmHWM is this process's own high-water mark since exec; ru_maxrss would also count the
    # parent's memory at fork time.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_ours(source: str, out: str, limit: int | None, workers: int = 1, audio_format: str = "float32") -> list[dict]:
    """The real stage-1 path, one recording at a time as one worker of the asset runs it, or
    `workers` at once as the asset does by default (then per-recording CPU cannot be told apart)."""
    from neutts_assets.pipeline.inventory.manifest import build_inventory
    from neutts_assets.pipeline.inventory.source_layout import ChannelLayout
    from neutts_assets.pipeline.segments.cutting import CutRules
    from neutts_assets.pipeline.segments.recordings import cut_recording
    from neutts_assets.storage.local import LocalStore

    src, dst = LocalStore(source, create=False), LocalStore(out)
    layout = ChannelLayout.for_channel(CHANNEL)
    inv = build_inventory(layout, src.list(layout.transcripts_prefix), src.list(layout.audio_prefix), src.read_bytes)

    def one(entry):
        cpu0 = _cpu_s()
        r = cut_recording(entry, CHANNEL, src, dst, CutRules(audio_format=audio_format), previous=None)
        if r.error:
            raise RuntimeError(f"{entry.recording_id}: {r.error}")
        return {
            "ext": entry.audio_ext.lstrip("."),
            "audio_s": r.index.audio_seconds,
            "segments": len(r.index.segments),
            "segment_s": sum(s.duration_sec for s in r.index.segments),
            "bytes": r.written_bytes,
            "cpu_s": _cpu_s() - cpu0 if workers == 1 else math.nan,
        }

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, inv.entries[:limit]))


def run_old(source: str, out: str, limit: int | None) -> list[dict]:
    """What the users' old scripts did per recording: librosa.load, then for each kept segment a
    float32 slice (times truncated to samples) saved with np.savez_compressed."""
    import librosa

    # The old scripts printed these for every m4a/webm (soundfile cannot open them, so librosa
    # falls back to audioread's ffmpeg); they are noise here.
    warnings.filterwarnings("ignore", "PySoundFile failed", UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="librosa")
    t_dir = Path(source) / f"processed_runs/processed_{CHANNEL}/transcripts"
    a_dir = Path(source) / CHANNEL / "audio"
    out_dir = Path(out) / CHANNEL
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for t in sorted(t_dir.glob("audio_*.json"))[:limit]:
        cpu0 = _cpu_s()
        rec_id = t.name[len("audio_") : -len(".json")]
        (path,) = a_dir.glob(f"{rec_id}.*")
        audio, sr = librosa.load(str(path), sr=SR, mono=True)
        doc = json.loads(t.read_text())
        row = {"ext": path.suffix.lstrip("."), "audio_s": len(audio) / sr, "segments": 0, "segment_s": 0.0, "bytes": 0}
        for i, seg in enumerate(doc["segments"] if isinstance(doc, dict) else doc):
            text = (seg.get("text") or "").strip()
            if not text or (seg["end_ms"] - seg["start_ms"]) / 1000 < 0.3:
                continue
            piece = audio[int(seg["start_ms"] / 1000 * sr) : int(seg["end_ms"] / 1000 * sr)]
            target = out_dir / f"{rec_id}_seg_{i}.npz"
            np.savez_compressed(
                target,
                audio=piece,
                codes=np.array([]),
                text=text,
                speaker_id=seg.get("speaker_id", "UNKNOWN"),
                channel=CHANNEL,
                gender=seg.get("gender", "unknown"),
                dialect=seg.get("dialect", "unknown"),
                tone=seg.get("tone", "neutral"),
                duration_sec=len(piece) / sr,
                audio_id=f"{rec_id}_seg_{i}",
            )
            row["segments"] += 1
            row["segment_s"] += len(piece) / sr
            row["bytes"] += target.stat().st_size
        row["cpu_s"] = _cpu_s() - cpu0
        rows.append(row)
    return rows


def measure(method, source: Path, warmup: Path, limit: int | None) -> dict:
    """Runs in a fresh child. The warm-up pass over a few 10-second recordings pays the one-time
    costs (librosa's lazy imports take ~2 CPU-s on first load) that a channel-long run amortises,
    so neither method is billed for them; it is too short to raise the peak RSS."""
    with tempfile.TemporaryDirectory(prefix="bench-stage1-") as out:
        method(str(warmup), out, None)
    with tempfile.TemporaryDirectory(prefix="bench-stage1-") as out:
        cpu0, wall0 = _cpu_s(), time.perf_counter()
        rows = method(str(source), out, limit)
        cpu, wall = _cpu_s() - cpu0, time.perf_counter() - wall0
    total = {k: sum(r[k] for r in rows) for k in ("audio_s", "segments", "segment_s", "bytes")}
    # The whole run's CPU (ours includes taking the inventory); per format, the per-recording sums.
    total.update(files=len(rows), cpu_s=cpu, wall_s=wall, peak_rss_mb=_peak_rss_mb())
    per_format = {}
    for r in rows:
        f = per_format.setdefault(r["ext"], {"audio_s": 0.0, "bytes": 0, "cpu_s": 0.0})
        for k in f:
            f[k] += r[k]
    for stats in (total, *per_format.values()):
        stats["realtime_per_core"] = stats["audio_s"] / stats["cpu_s"]  # nan per format for concurrent runs
        stats["bytes_per_audio_hour"] = stats["bytes"] / stats["audio_s"] * 3600
    total["per_format"] = per_format
    return total


def decode_floor(source: Path) -> dict[str, float]:
    """CPU seconds per container of ffmpeg only decoding each recording, at its own rate, to
    nothing: no resampling, no cutting, no writing. No method that decodes with ffmpeg can spend
    less, so old CPU / this is the ceiling of speedup_vs_old."""
    cpu: dict[str, float] = {}
    for path in sorted(p for p in source.rglob("*") if p.suffix[1:] in dict(FORMATS)):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(
            ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", "-f", "null", "-"], check=True
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        spent = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        cpu[path.suffix[1:]] = cpu.get(path.suffix[1:], 0.0) + spent
    return cpu


def in_child(method, source: Path, warmup: Path, limit: int | None = None) -> dict:
    """`measure` in a fresh spawned process (not forked: nothing of this one's memory is inherited)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(measure, method, source, warmup, limit).result()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=32.0, help="about how much speech to cut (default 32)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: one ~78 s recording per container")
    args = parser.parse_args()

    _, _, program_ms = build_program()
    minutes, recording_s = (5.0, 60.0) if args.quick else (args.minutes, 240.0)
    loops = max(1, round(recording_s * 1000 / program_ms))
    # Whole rounds of FORMATS, so every container carries the same share of the audio.
    n_files = len(FORMATS) * max(1, round(minutes * 60_000 / (loops * program_ms * len(FORMATS))))
    source = build_channel(f"source-{n_files}x{loops}", n_files, loops)
    warmup = build_channel("warmup", len(FORMATS), 1, WARMUP_S)
    for p in (*source.rglob("*"), *warmup.rglob("*")):  # warm the page cache: neither method pays the first read
        if p.is_file():
            p.read_bytes()

    from neutts_assets.pipeline.segments.segment_file import AUDIO_FORMATS, DEFAULT_AUDIO_FORMAT

    runs = {fmt: in_child(partial(run_ours, audio_format=fmt), source, warmup) for fmt in AUDIO_FORMATS}
    ours = runs[DEFAULT_AUDIO_FORMAT]
    old = in_child(run_old, source, warmup)
    quarter = in_child(run_ours, source, warmup, max(1, n_files // 4))
    concurrent = in_child(partial(run_ours, workers=4), source, warmup)  # the asset's default
    floor = decode_floor(source)
    floor_cpu = sum(floor.values())

    named = [(f"ours, {fmt}", r) for fmt, r in runs.items()]
    for name, r in (*named, ("old", old), ("ours, 1/4 of the files", quarter), ("ours, 4 workers", concurrent)):
        print(
            f"{name:>22}: {r['files']} files, {r['audio_s'] / 60:.1f} audio-min, {r['segments']} segments "
            f"({r['segment_s'] / 60:.1f} min), {r['cpu_s']:.2f} CPU-s = {r['realtime_per_core']:.0f}x realtime per core, "
            f"wall {r['wall_s']:.2f} s, {r['bytes_per_audio_hour'] / 2**20:.1f} MiB per audio hour, peak RSS {r['peak_rss_mb']:.0f} MB"
        )
    print(f"{'ffmpeg decode-only':>22}: {floor_cpu:.2f} CPU-s = {ours['audio_s'] / floor_cpu:.0f}x realtime per core")
    # Per segment-file format: what the issue asks of each (bytes and CPU against old and decode-only).
    formats = {}
    for fmt, r in runs.items():
        formats[fmt] = {
            "mib_per_audio_hour": round(r["bytes_per_audio_hour"] / 2**20, 1),
            "bytes_ratio_vs_old": round(r["bytes_per_audio_hour"] / old["bytes_per_audio_hour"], 3),
            "cpu_ms_per_audio_s": round(1000 * r["cpu_s"] / r["audio_s"], 3),
            "cpu_ratio_vs_old": round(r["cpu_s"] / old["cpu_s"], 3),
            "speedup_vs_old": round(r["realtime_per_core"] / old["realtime_per_core"], 2),
            "cpu_vs_decode_only": round(r["cpu_s"] / floor_cpu, 2),
            "realtime_per_core": round(r["realtime_per_core"], 1),
        }
        f = formats[fmt]
        print(
            f"{fmt:>22}: {f['mib_per_audio_hour']} MiB/audio-h ({f['bytes_ratio_vs_old']}x old), "
            f"{f['cpu_ms_per_audio_s']} CPU-ms/audio-s ({f['cpu_ratio_vs_old']}x old, {f['cpu_vs_decode_only']}x decode-only)"
        )
    per_format = {}
    for ext, o in ours["per_format"].items():
        d = old["per_format"][ext]
        per_format[ext] = {
            "audio_minutes": round(o["audio_s"] / 60, 1),
            "speedup_vs_old": round(o["realtime_per_core"] / d["realtime_per_core"], 2),
            "bytes_ratio_vs_old": round(o["bytes_per_audio_hour"] / d["bytes_per_audio_hour"], 3),
            "realtime_per_core_ours": round(o["realtime_per_core"]),
            "realtime_per_core_old": round(d["realtime_per_core"]),
            "realtime_per_core_ffmpeg_decode_only": round(o["audio_s"] / floor[ext]),
            "cpu_vs_decode_only": round(o["cpu_s"] / floor[ext], 2),
            "speedup_ceiling_vs_old": round(d["cpu_s"] / floor[ext], 2),
        }
        print(
            f"{ext:>22}: {o['realtime_per_core']:.0f}x vs {d['realtime_per_core']:.0f}x realtime per core "
            f"(speedup {per_format[ext]['speedup_vs_old']}), bytes ratio {per_format[ext]['bytes_ratio_vs_old']}; "
            f"ffmpeg decoding alone {per_format[ext]['realtime_per_core_ffmpeg_decode_only']}x "
            f"(ours {per_format[ext]['cpu_vs_decode_only']}x its CPU; speedup ceiling {per_format[ext]['speedup_ceiling_vs_old']})"
        )
    # Same transcripts, same skip rules: a different count would mean the comparison is unfair.
    if any(r["segments"] != old["segments"] for r in runs.values()):
        raise SystemExit(
            f"ours cut {[r['segments'] for r in runs.values()]} segments, old {old['segments']}: not the same work"
        )

    result = {
        "default_format": DEFAULT_AUDIO_FORMAT,
        "speedup_vs_old": round(ours["realtime_per_core"] / old["realtime_per_core"], 2),
        "cpu_vs_decode_only": round(ours["cpu_s"] / floor_cpu, 2),
        # What ours would reach if everything but ffmpeg's decoding cost nothing.
        "speedup_ceiling_vs_old": round(old["cpu_s"] / floor_cpu, 2),
        "wall_speedup_vs_old": round(old["wall_s"] / ours["wall_s"], 2),
        "wall_speedup_vs_old_4_workers": round(old["wall_s"] / concurrent["wall_s"], 2),
        "bytes_ratio_vs_old": round(ours["bytes_per_audio_hour"] / old["bytes_per_audio_hour"], 3),
        "peak_rss_mb": round(ours["peak_rss_mb"], 1),
        "peak_rss_mb_ours_quarter": round(quarter["peak_rss_mb"], 1),
        "peak_rss_mb_old": round(old["peak_rss_mb"], 1),
        "audio_minutes": round(ours["audio_s"] / 60, 1),
        "files": ours["files"],
        "files_quarter": quarter["files"],
        "segments": ours["segments"],
        "realtime_per_core_ours": round(ours["realtime_per_core"], 1),
        "realtime_per_core_old": round(old["realtime_per_core"], 1),
        "realtime_per_core_decode_only": round(ours["audio_s"] / floor_cpu, 1),
        "cpu_s_ours": round(ours["cpu_s"], 2),
        "cpu_s_old": round(old["cpu_s"], 2),
        "cpu_s_decode_only": round(floor_cpu, 2),
        "mib_per_audio_hour_ours": round(ours["bytes_per_audio_hour"] / 2**20, 1),
        "mib_per_audio_hour_old": round(old["bytes_per_audio_hour"] / 2**20, 1),
        "segment_formats": formats,
        "per_container": per_format,
    }
    for field, target, met in (
        ("speedup_vs_old", ">= 5", result["speedup_vs_old"] >= 5),
        ("cpu_vs_decode_only", "<= 1.5", result["cpu_vs_decode_only"] <= 1.5),
    ):
        print(f"{'target':>22}: {field} {result[field]} {target}: {'met' if met else 'NOT met'}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
