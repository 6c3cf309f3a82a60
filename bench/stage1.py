"""Stage 1, ours against the old method, side by side on the same >= 30 minutes of speech.

    .venv/bin/python bench/stage1.py            # ~32 min of speech in wav 48k, mp3, m4a, webm/opus
    .venv/bin/python bench/stage1.py --quick    # ~4 min, a smoke run

Ours: the real `cut_recording` path (ffmpeg decode straight to 16 kHz int16, FLAC bytes in
an npz, recording index), over a local source folder in the users' layout.
Old: `librosa.load(sr=16000)` per recording, `np.savez_compressed` of float32 per segment.

Each method runs in its own spawned child process, so peak RSS is its own; CPU time counts
the child and its own children (ffmpeg, or audioread's ffmpeg). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CACHE = ROOT / "bench" / ".cache"
CHANNEL = "bench"
# (extension, ffmpeg encoder arguments): the containers the channels really hold
FORMATS = [
    ("wav", ["-ar", "48000", "-ac", "2", "-c:a", "pcm_s16le"]),
    ("mp3", ["-ar", "44100", "-ac", "2", "-c:a", "libmp3lame", "-b:a", "96k"]),
    ("m4a", ["-ar", "44100", "-ac", "2", "-c:a", "aac", "-b:a", "96k"]),
    ("webm", ["-ar", "48000", "-ac", "2", "-c:a", "libopus", "-b:a", "48k"]),
]


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def build_corpus(minutes: float) -> Path:
    """The demo channel's speech, concatenated into one program and looped into recordings of
    about four minutes, two per format, with transcripts shifted to match."""
    from neutts_assets.core.layout import AUDIO_PREFIX, TRANSCRIPTS_PREFIX
    from neutts_assets.core.transcripts import parse_transcript
    from neutts_assets.demo import DEMO_CHANNEL, DEMO_CHANNEL_MAPPING, DEMO_SOURCE

    src = CACHE / f"source-{minutes:g}min"
    if (src / "done").exists():
        return src
    shutil.rmtree(src, ignore_errors=True)
    work = CACHE / "work"
    work.mkdir(parents=True, exist_ok=True)

    demo_t = DEMO_SOURCE / TRANSCRIPTS_PREFIX.format(channel=DEMO_CHANNEL)
    demo_a = DEMO_SOURCE / AUDIO_PREFIX.format(audio_folder=DEMO_CHANNEL_MAPPING[DEMO_CHANNEL])
    parts, program, offset_ms = [], [], 0.0
    for t in sorted(demo_t.glob("audio_*.json")):
        rec_id = t.name[len("audio_"):-len(".json")]
        (audio,) = demo_a.glob(f"{rec_id}.*")
        wav = work / f"{rec_id}.wav"
        _ffmpeg("-i", str(audio), "-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le", str(wav))
        samples = (wav.stat().st_size - 44) // 2
        segments, _ = parse_transcript(t.read_bytes(), t.name)
        program += [{"start_ms": s.start_ms + offset_ms, "end_ms": s.end_ms + offset_ms, "text": s.text,
                     "speaker_id": s.speaker_id, "gender": s.gender, "dialect": s.dialect, "tone": s.tone} for s in segments]
        offset_ms += samples / 16.0
        parts.append(wav)
    (work / "list.txt").write_text("".join(f"file '{p}'\n" for p in parts))
    _ffmpeg("-f", "concat", "-safe", "0", "-i", str(work / "list.txt"), "-c", "copy", str(work / "program.wav"))

    per_recording_s = 240.0
    loops = max(1, round(per_recording_s / (offset_ms / 1000)))
    n_recordings = max(len(FORMATS), round(minutes * 60 / (loops * offset_ms / 1000)))
    t_dir = src / TRANSCRIPTS_PREFIX.format(channel=CHANNEL)
    a_dir = src / AUDIO_PREFIX.format(audio_folder=CHANNEL)
    t_dir.mkdir(parents=True)
    a_dir.mkdir(parents=True)
    for i in range(n_recordings):
        ext, args = FORMATS[i % len(FORMATS)]
        rec_id = f"rec{i:03d}_{ext}"
        _ffmpeg("-stream_loop", str(loops - 1), "-i", str(work / "program.wav"), *args, str(a_dir / f"{rec_id}.{ext}"))
        segments = [{**s, "start_ms": s["start_ms"] + k * offset_ms, "end_ms": s["end_ms"] + k * offset_ms}
                    for k in range(loops) for s in program]
        (t_dir / f"audio_{rec_id}.json").write_text(json.dumps({"segments": segments}))
    (src / "done").touch()
    return src


def _usage() -> tuple[float, float]:
    """CPU seconds of this process and its waited-for children, and wall time."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime, time.perf_counter()


def run_ours(source: str, out: str, limit: int | None, queue, workers: int = 1) -> None:
    from neutts_assets.core.cutting import CutRules
    from neutts_assets.core.inventory import build_inventory
    from neutts_assets.core.layout import ChannelLayout
    from neutts_assets.core.stage1 import cut_recording
    from neutts_assets.storage.local import LocalStore

    cpu0, wall0 = _usage()
    src, dst = LocalStore(source, create=False), LocalStore(out)
    layout = ChannelLayout.for_channel(CHANNEL)
    inv = build_inventory(layout, src.list(layout.transcripts_prefix), src.list(layout.audio_prefix), src.read_bytes)
    entries = inv.entries[:limit]
    audio_s = segments = written = 0
    # workers > 1 is what the segments_npz asset does: recordings cut concurrently, ffmpeg in child processes.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda e: cut_recording(e, CHANNEL, src, dst, CutRules(), previous=None), entries))
    for r in results:
        assert not r.error, r.error
        audio_s += r.index.audio_seconds
        segments += len(r.index.segments)
        written += r.written_bytes
    cpu1, wall1 = _usage()
    queue.put(_report(len(entries), audio_s, segments, written, cpu1 - cpu0, wall1 - wall0))


def run_old(source: str, out: str, limit: int | None, queue) -> None:
    """What the old build_dataset_robust.py did per recording, to the letter of SOURCE_LAYOUT.md."""
    import librosa
    import numpy as np

    cpu0, wall0 = _usage()
    t_dir = Path(source) / f"processed_runs/processed_{CHANNEL}/transcripts"
    a_dir = Path(source) / CHANNEL / "audio"
    out_dir = Path(out) / CHANNEL
    out_dir.mkdir(parents=True, exist_ok=True)
    audio_s = segments = written = 0
    transcripts = sorted(t_dir.glob("audio_*.json"))[:limit]
    for t in transcripts:
        rec_id = t.name[len("audio_"):-len(".json")]
        (path,) = a_dir.glob(f"{rec_id}.*")
        audio, sr = librosa.load(str(path), sr=16000, mono=True)
        audio_s += len(audio) / sr
        for i, seg in enumerate(json.loads(t.read_text())["segments"]):
            text = (seg.get("text") or "").strip()
            if not text or (seg["end_ms"] - seg["start_ms"]) / 1000 < 0.3:
                continue
            piece = audio[int(seg["start_ms"] / 1000 * sr):int(seg["end_ms"] / 1000 * sr)]
            target = out_dir / f"{rec_id}_seg_{i}.npz"
            np.savez_compressed(target, audio=piece, codes=np.array([]), text=text, speaker_id=seg.get("speaker_id", "UNKNOWN"),
                                channel=CHANNEL, gender=seg.get("gender", "unknown"), dialect=seg.get("dialect", "unknown"),
                                tone=seg.get("tone", "neutral"), duration_sec=len(piece) / sr, audio_id=f"{rec_id}_seg_{i}")
            segments += 1
            written += target.stat().st_size
    cpu1, wall1 = _usage()
    queue.put(_report(len(transcripts), audio_s, segments, written, cpu1 - cpu0, wall1 - wall0))


def _peak_rss_mb() -> float:
    # VmHWM is this process's own high-water mark since exec; ru_maxrss would also count the
    # parent's memory at fork time.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _report(files, audio_s, segments, written, cpu, wall) -> dict:
    peak = _peak_rss_mb()
    return {"files": files, "audio_s": audio_s, "segments": segments, "bytes": written, "cpu_s": cpu, "wall_s": wall,
            "peak_rss_mb": round(peak, 1), "audio_s_per_cpu_s": audio_s / cpu, "bytes_per_audio_hour": written / audio_s * 3600}


def in_child(fn, source: Path, limit: int | None = None, *extra) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="bench-stage1-") as out:
        proc = ctx.Process(target=fn, args=(str(source), out, limit, queue, *extra))
        proc.start()
        result = queue.get()
        proc.join()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=32.0)
    parser.add_argument("--quick", action="store_true", help="the smallest corpus: one recording per container")
    args = parser.parse_args()
    minutes = 4.0 if args.quick else args.minutes

    source = build_corpus(minutes)
    n_files = len(list(source.glob("*/audio/*")))
    for p in source.rglob("*"):  # warm the page cache so neither method pays the first read
        if p.is_file():
            p.read_bytes()

    ours = in_child(run_ours, source)
    old = in_child(run_old, source)
    quarter = in_child(run_ours, source, max(1, n_files // 4))
    parallel = in_child(run_ours, source, None, 4)
    for name, r in (("ours", ours), ("old", old), ("ours, 1/4 of the files", quarter), ("ours, 4 workers", parallel)):
        print(f"{name:>24}: {r['files']} files, {r['audio_s'] / 60:.1f} audio-min, {r['segments']} segments, "
              f"{r['cpu_s']:.1f} CPU-s ({r['audio_s_per_cpu_s']:.0f}x realtime per core), wall {r['wall_s']:.1f} s, "
              f"{r['bytes_per_audio_hour'] / 2**20:.1f} MiB per audio hour, peak RSS {r['peak_rss_mb']:.0f} MB")
    assert ours["segments"] == old["segments"], "both methods must cut the same segments"
    result = {
        "speedup_vs_old": round(ours["audio_s_per_cpu_s"] / old["audio_s_per_cpu_s"], 2),
        "wall_speedup_vs_old": round(old["wall_s"] / ours["wall_s"], 2),
        "wall_speedup_vs_old_4_workers": round(old["wall_s"] / parallel["wall_s"], 2),
        "bytes_ratio_vs_old": round(ours["bytes_per_audio_hour"] / old["bytes_per_audio_hour"], 3),
        "peak_rss_mb": ours["peak_rss_mb"],
        "peak_rss_mb_quarter_files": quarter["peak_rss_mb"],
        "peak_rss_mb_old": old["peak_rss_mb"],
        "audio_minutes": round(ours["audio_s"] / 60, 1),
        "files": ours["files"],
        "segments": ours["segments"],
        "realtime_per_core_ours": round(ours["audio_s_per_cpu_s"], 1),
        "realtime_per_core_old": round(old["audio_s_per_cpu_s"], 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
