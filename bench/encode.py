"""Stage 2's encoder, ours against the old method, side by side on the same segments, in one process.

    .venv/bin/python bench/encode.py                          # CPU: 24 segments, full-size random-weight NeuCodec
    .venv/bin/python bench/encode.py --gpu-suite              # on a GPU: float32, tf32, bfloat16 on 2,000 segments (<= 8 min on an H200)
    .venv/bin/python bench/encode.py --dtypes float32,bfloat16 # reduced precision: agreement with float32 single-clip codes
    .venv/bin/python bench/encode.py --null-codec             # the host ceiling: the real stream, a codec that costs nothing, 1 and 2 workers
    .venv/bin/python bench/encode.py --simulate-device 1000   # the stream against a device doing 1,000 audio-s/s: does it wait?
    .venv/bin/python bench/encode.py --memory                 # peak RSS of the stream at 2,000 and 20,000 segments
    .venv/bin/python bench/encode.py --weights pretrained     # the real weights, where the Hub or HF_HOME has them

Segments: speech cut from the demo channel at a realistic length mix (1-15 s, mean about 5.5 s).
Codec mode. Old: one `encode_code` call per segment on a [1, 1, T] float32 tensor, the full model (all
24 w2v-BERT layers), the numpy feature extractor, `torch.cuda.empty_cache()` after each on a GPU.
Ours: `Codec.prepare` + `Codec.encode_batch` as encoded_segments calls them: features in torch on the
device, w2v-BERT trimmed to 16 layers, segments sorted by length and batched by code count.
Both use the same weights and take turns batch by batch, so a shared machine's load falls on both.
Stream modes (--null-codec, --simulate-device, --memory): the real `encode_stream` over stage-1 files
in a local folder, against the old stream's host work (one process, 8 + 8 threads: read_segment, the
numpy extractor, encode_segment, write) on the same files.

Human-readable lines first; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neutts_assets.demo import DEMO_CHANNEL, DEMO_CHANNEL_MAPPING, DEMO_SOURCE  # noqa: E402
from neutts_assets.pipeline.encoding.codec import (  # noqa: E402
    MIN_SAMPLES,
    Codec,
    CodecSettings,
    _load_pretrained,
    batch_key,
    build_random_neucodec,
    codec_label,
    pad_batch,
)
from neutts_assets.pipeline.encoding.simulated_codec import SimulatedCodec  # noqa: E402
from neutts_assets.pipeline.encoding.store import Stage2Layout, plan_encoding  # noqa: E402
from neutts_assets.pipeline.encoding.stream import StreamSettings, encode_stream  # noqa: E402
from neutts_assets.pipeline.segments.audio import SAMPLE_RATE, decode_pcm16  # noqa: E402
from neutts_assets.pipeline.segments.manifest import SegmentsManifest  # noqa: E402
from neutts_assets.pipeline.segments.segment_file import (  # noqa: E402
    DEFAULT_AUDIO_FORMAT,
    FORMAT_VERSION,
    Segment,
    encode_segment,
    read_segment,
)
from neutts_assets.storage.local import LocalStore  # noqa: E402

# Dense peak TFLOP/s of one H100/H200 SXM by the dtype the matmuls run in.
PEAK_TFLOPS = {"float32": 67.0, "tf32": 495.0, "bfloat16": 989.0, "float16": 989.0}
CACHE = Path(__file__).resolve().parent / ".cache"  # --cache moves it (e.g. to /dev/shm: no disk in the figures)


def demo_speech() -> np.ndarray:
    folder = DEMO_SOURCE / DEMO_CHANNEL_MAPPING[DEMO_CHANNEL] / "audio"
    return np.concatenate([decode_pcm16(p) for p in sorted(folder.iterdir())])


def length_mix(n: int, rng) -> np.ndarray:
    """Seconds, 1-15 s, mean about 5.5 s (a gamma body with the old pair builder's 15 s cap).
    Evenly spaced quantiles, shuffled: even 24 segments have the distribution's mean."""
    pool = np.sort(np.clip(1.0 + rng.gamma(2.0, 2.3, size=200_000), 1.0, 15.0))
    return rng.permutation(pool[((np.arange(n) + 0.5) / n * len(pool)).astype(int)])


def corpus(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    speech = demo_speech()
    lengths = (length_mix(n, rng) * SAMPLE_RATE).astype(int)
    starts = rng.integers(0, len(speech) - lengths.max(), size=n)
    return [speech[s : s + L] for s, L in zip(starts, lengths)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """This process and its reaped children (the stream's host workers)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


# --- stream modes -------------------------------------------------------------------------------


def stage1_store(n: int, seed: int, audio_format: str = DEFAULT_AUDIO_FORMAT) -> tuple[LocalStore, dict, dict]:
    """N stage-1 segment files (as segments_npz writes them, in `audio_format`) in a cached local
    folder, their manifest and their listing."""
    root = (
        Path(os.environ.get("NEUTTS_BENCH_CACHE") or CACHE)
        / f"encode_stage1_{n}_{seed}_v{FORMAT_VERSION}_{audio_format}"
    )
    store = LocalStore(root)
    manifest_path = root / "manifest.json"
    if not manifest_path.exists():
        shutil.rmtree(root, ignore_errors=True)
        store = LocalStore(root)
        segments = []
        for i, clip in enumerate(corpus(n, seed)):
            audio_id = f"rec{i // 50:04d}_seg_{i % 50}"
            key = f"stage1/bench/{audio_id}.npz"
            store.write_bytes(
                key,
                encode_segment(Segment(audio_id, "bench", f"text {i}", "SPEAKER_00", "", "", "", clip), audio_format),
            )
            segments.append({"key": key, "audio_id": audio_id, "duration_sec": len(clip) / SAMPLE_RATE})
        manifest_path.write_text(
            json.dumps({"channel": "bench", "recordings": [{"recording_id": "rec", "segments": segments}]})
        )
    manifest = json.loads(manifest_path.read_text())
    sources = {o.key: (o.version, o.size) for o in store.list("stage1/bench/")}
    return store, manifest, sources


def warm_page_cache(store: LocalStore, sources: dict) -> None:
    for key in sources:
        store.read_bytes(key)


def run_stream(store, manifest, sources, codec, workers: int, io_threads: int = 4) -> dict:
    shutil.rmtree(store.root / "stage2_with_codes", ignore_errors=True)
    plan = plan_encoding(
        SegmentsManifest.from_dict(manifest), Stage2Layout("bench"), codec.label, sources, set(), MIN_SAMPLES
    )
    c0, w0 = cpu_seconds(), time.perf_counter()
    tally = encode_stream(plan.todo, codec, store, StreamSettings(host_workers=workers, io_threads=io_threads))
    wall, cpu = time.perf_counter() - w0, cpu_seconds() - c0
    assert len(tally.encoded) == len(plan.todo) and not tally.failed, (len(tally.encoded), tally.failed[:3])
    return {"audio_s": tally.audio_seconds, "wall": wall, "cpu": cpu, "tally": tally}


def run_old_stream(store, manifest, sources) -> dict:
    """The previous encoded_segments host side: 8 download threads (read_segment, the numpy extractor's
    features) and 8 upload threads (encode_segment, which compresses the audio again, write, marker) in
    one process; a codec that costs nothing."""
    import torch
    from transformers import SeamlessM4TFeatureExtractor

    from neutts_assets.pipeline.encoding.codec import model_input

    extractor = SeamlessM4TFeatureExtractor()
    shutil.rmtree(store.root / "stage2_old", ignore_errors=True)
    keys = [s["key"] for r in manifest["recordings"] for s in r["segments"]]

    def fetch(key):
        seg = read_segment(store.read_bytes(key))
        extractor(torch.from_numpy(model_input(seg.pcm16))[None], sampling_rate=SAMPLE_RATE, return_tensors="pt")
        return key, seg

    def upload(key, seg):
        seg.codes, seg.codec = np.zeros(len(seg.pcm16) // 320, np.int32), "null"
        store.write_bytes(key.replace("stage1/", "stage2_old/"), encode_segment(seg))
        store.write_bytes(key.replace("stage1/", "stage2_old/_encoded/"), b"")

    c0, w0 = cpu_seconds(), time.perf_counter()
    audio = 0.0
    with ThreadPoolExecutor(8) as downloads, ThreadPoolExecutor(8) as uploads:
        for key, seg in downloads.map(fetch, keys):
            audio += len(seg.pcm16) / SAMPLE_RATE
            uploads.submit(upload, key, seg)
    return {"audio_s": audio, "wall": time.perf_counter() - w0, "cpu": cpu_seconds() - c0}


def null_codec_mode(args) -> dict:
    store, manifest, sources = stage1_store(args.segments or 2000, args.seed)
    warm_page_cache(store, sources)
    audio = sum(s["duration_sec"] for r in manifest["recordings"] for s in r["segments"])
    print(
        f"{len(sources)} stage-1 segments, {audio:.0f} s of audio, in {store.root}; {os.cpu_count()} cores; "
        f"{args.io_threads} io thread(s) per worker",
        flush=True,
    )
    # The same clips as FLAC-option files: the host ceiling of each segment-file format, side by side.
    flac_store, flac_manifest, flac_sources = stage1_store(args.segments or 2000, args.seed, "flac")
    warm_page_cache(flac_store, flac_sources)
    runs: dict[str, list] = {"old": [], "1": [], "2": [], "2-flac": []}
    for rep in range(args.repeats):  # interleaved, so a shared machine's load falls on all alike
        runs["old"].append(run_old_stream(store, manifest, sources))
        for w in ("1", "2") if rep % 2 == 0 else ("2", "1"):
            runs[w].append(run_stream(store, manifest, sources, SimulatedCodec(None), int(w), args.io_threads))
        runs["2-flac"].append(
            run_stream(flac_store, flac_manifest, flac_sources, SimulatedCodec(None), 2, args.io_threads)
        )
    best = {k: max(v, key=lambda r: r["audio_s"] / r["wall"]) for k, v in runs.items()}
    for k, r in best.items():
        name = {"old": "old stream (threads)", "2-flac": "ours, 2, flac files"}.get(k, f"ours, {k} worker(s)")
        print(
            f"{name:22s} {r['audio_s'] / r['wall']:8.0f} audio-s/s wall  {r['audio_s'] / r['cpu']:8.0f} audio-s per CPU-s "
            f"(wall {r['wall']:.1f} s, CPU {r['cpu']:.1f} s)"
        )
    one, two, old = best["1"], best["2"], best["old"]
    t = two["tally"]
    print(
        f"host seconds per step (2 workers, summed over threads): read {t.read_seconds:.2f}, decode {t.decode_seconds:.2f}, "
        f"prepare {t.prepare_seconds:.2f}, stage-2 file {t.file_seconds:.2f}, write {t.write_seconds:.2f}"
    )
    return {
        "host_audio_seconds_per_cpu_second": round(max(one["audio_s"] / one["cpu"], two["audio_s"] / two["cpu"]), 1),
        "host_audio_seconds_per_cpu_second_1_worker": round(one["audio_s"] / one["cpu"], 1),
        "host_audio_seconds_per_cpu_second_2_workers": round(two["audio_s"] / two["cpu"], 1),
        "host_scaling_2_workers": round((two["audio_s"] / two["wall"]) / (one["audio_s"] / one["wall"]), 3),
        "host_audio_seconds_per_second_1_worker": round(one["audio_s"] / one["wall"], 1),
        "host_audio_seconds_per_second_2_workers": round(two["audio_s"] / two["wall"], 1),
        "segment_format": DEFAULT_AUDIO_FORMAT,
        "host_audio_seconds_per_cpu_second_flac_files_2_workers": round(
            best["2-flac"]["audio_s"] / best["2-flac"]["cpu"], 1
        ),
        "old_host_audio_seconds_per_cpu_second": round(old["audio_s"] / old["cpu"], 1),
        "old_host_audio_seconds_per_second": round(old["audio_s"] / old["wall"], 1),
        "host_cpu_speedup_vs_old": round(
            (old["cpu"] / old["audio_s"]) / (min(one["cpu"] / one["audio_s"], two["cpu"] / two["audio_s"])), 2
        ),
        "segments": len(sources),
        "audio_seconds": round(audio, 1),
        "repeats": args.repeats,
        "io_threads": args.io_threads,
        "store": str(store.root),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def simulate_device_mode(args) -> dict:
    store, manifest, sources = stage1_store(args.segments or 2000, args.seed)
    warm_page_cache(store, sources)
    speed = args.simulate_device
    results = []
    for _ in range(args.repeats):
        r = run_stream(store, manifest, sources, SimulatedCodec(speed), args.workers, args.io_threads)
        results.append(r)
        t = r["tally"]
        print(
            f"simulated device at {speed:.0f} audio-s/s: the stream carried {r['audio_s'] / r['wall']:.0f} audio-s/s "
            f"({r['audio_s'] / r['wall'] / speed:.1%}); device busy {t.device_busy_fraction:.1%}, idle {t.device_idle_seconds:.2f} s "
            f"over {len(t.batch_sizes)} batches",
            flush=True,
        )
    best = max(results, key=lambda r: r["audio_s"] / r["wall"])
    return {
        "pipeline_efficiency": round(best["audio_s"] / best["wall"] / speed, 3),
        "simulated_audio_seconds_per_second": speed,
        "audio_seconds_per_second": round(best["audio_s"] / best["wall"], 1),
        "device_busy_fraction": round(best["tally"].device_busy_fraction, 3),
        "host_workers": args.workers,
        "segments": len(sources),
        "repeats": args.repeats,
    }


def memory_mode(args) -> dict:
    """Peak RSS of a stream process at 2,000 and at 20,000 segments (each in a child of its own)."""
    out = {}
    for n in (2000, args.memory_segments):
        store, manifest, sources = stage1_store(n, args.seed)  # built here, outside the measured child
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--memory-child",
                str(n),
                "--seed",
                str(args.seed),
                "--codec",
                args.memory_codec,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(child.stdout.strip().splitlines()[-1])
        print(
            f"{n} segments ({args.memory_codec} codec): peak RSS {result['peak_rss_mb']:.0f} MB "
            f"(largest host worker {result['peak_rss_mb_worker']:.0f} MB), "
            f"{result['audio_seconds_per_second']:.0f} audio-s/s",
            flush=True,
        )
        out[n] = result
    big = out[args.memory_segments]
    return {
        "peak_rss_mb_2000": out[2000]["peak_rss_mb"],
        f"peak_rss_mb_{args.memory_segments}": big["peak_rss_mb"],
        "rss_growth": round(big["peak_rss_mb"] / out[2000]["peak_rss_mb"], 3),
        "worker_rss_growth": round(big["peak_rss_mb_worker"] / out[2000]["peak_rss_mb_worker"], 3),
        "memory_codec": args.memory_codec,
    }


def memory_child(n: int, seed: int, codec_name: str) -> None:
    store, manifest, sources = stage1_store(n, seed)
    codec = (
        SimulatedCodec(None)
        if codec_name == "null"
        else Codec(build_random_neucodec("random", 0), "small", CodecSettings(weights="random"))
    )
    r = run_stream(store, manifest, sources, codec, 2)
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest host worker
    print(
        json.dumps(
            {
                "peak_rss_mb": round(peak_rss_mb(), 1),
                "peak_rss_mb_worker": round(workers, 1),
                "audio_seconds_per_second": round(r["audio_s"] / r["wall"], 1),
            }
        )
    )


# --- codec mode ---------------------------------------------------------------------------------


def flops_per_audio_second(model, codec: Codec, seconds: float = 4.0) -> float:
    """The trimmed model's FLOPs for one clip, counted by torch's FlopCounterMode, per audio-second."""
    from torch.utils.flop_counter import FlopCounterMode

    clip = (np.sin(np.arange(int(seconds * SAMPLE_RATE)) / 7.0) * 8000).astype(np.int16)
    prepared = codec.prepare([clip])
    with FlopCounterMode(display=False) as counter:
        codec.encode_batch(prepared)
    return counter.get_total_flops() / seconds


def feature_max_abs_diff(codec: Codec, clips) -> float:
    """Our torch features against the numpy extractor (the reference), largest absolute difference."""
    import torch

    worst = 0.0
    for c in clips:
        ref = codec.features(c)
        prepared = codec.prepare([c])
        x = prepared.device.to(torch.float32) / 32768.0
        ours = codec._feature_extractor()(x).cpu()
        worst = max(worst, float((ours - ref).abs().max()))
    return worst


def codec_mode(args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    gpu = device.startswith("cuda")
    n = args.segments or (2000 if gpu else 24)
    dtypes = args.dtypes.split(",")
    clips = corpus(n, args.seed)
    lengths = np.array([len(c) for c in clips])
    audio_s = lengths.sum() / SAMPLE_RATE
    print(
        f"{n} segments, {audio_s:.0f} s of audio, mean {lengths.mean() / SAMPLE_RATE:.2f} s "
        f"(min {lengths.min() / SAMPLE_RATE:.1f}, max {lengths.max() / SAMPLE_RATE:.1f}); device {device}, "
        f"weights {args.weights}, ours in {', '.join(dtypes)}; {torch.get_num_threads()} CPU threads",
        flush=True,
    )

    t0 = time.perf_counter()
    settings = {d: CodecSettings(weights=args.weights, device=device, dtype=d, seed=args.seed) for d in dtypes}
    model = (
        _load_pretrained(settings[dtypes[0]], None)[0]
        if args.weights == "pretrained"
        else build_random_neucodec(args.weights, args.seed)
    )
    model.to(device)
    full_layers = model.semantic_model.encoder.layers
    codecs = {d: Codec(model, codec_label(settings[d]), settings[d]) for d in dtypes}  # one model, trimmed once
    trimmed_layers = model.semantic_model.encoder.layers
    print(f"model {codecs[dtypes[0]].label} built in {time.perf_counter() - t0:.1f} s", flush=True)
    batch_seconds = args.batch_seconds or (600.0 if gpu else 60.0)

    def sync():
        if gpu:
            torch.cuda.synchronize()

    def old_one(clip):
        """The old script: the full model's encode_code on one float32 clip, plain float32, then empty_cache."""
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        model.semantic_model.encoder.layers = full_layers
        try:
            with torch.no_grad():
                codes = model.encode_code(torch.from_numpy(pad_batch([clip])).to(device))[0, 0].cpu().numpy()
        finally:
            model.semantic_model.encoder.layers = trimmed_layers
        if gpu:
            torch.cuda.empty_cache()
        return codes

    order = sorted(range(n), key=lambda i: (len(clips[i]), i))
    batches, current = [], []
    for i in order:
        if current and (
            batch_key(len(clips[i])) != batch_key(len(clips[current[0]]))
            or sum(len(clips[j]) for j in current) + len(clips[i]) > batch_seconds * SAMPLE_RATE
        ):
            batches.append(current)
            current = []
        current.append(i)
    batches.append(current)

    old_one(clips[0][:SAMPLE_RATE])  # warm-ups
    for c in codecs.values():
        c.encode_batch([clips[0][:SAMPLE_RATE]])

    def timed(fn):
        """(wall, CPU) seconds of fn(): on a shared CPU the wall time counts other people's work too."""
        sync()
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync()
        return np.array([time.perf_counter() - w0, time.process_time() - c0])

    old: list = [None] * n
    ours = {d: [None] * n for d in dtypes}
    old_t, ours_t = np.zeros(2), {d: np.zeros(2) for d in dtypes}

    def run_ours(d, batch):
        def go():
            # prepared as the stream prepares it (pinned, copy started), then encoded
            for i, codes in zip(batch, codecs[d].encode_batch(codecs[d].prepare([clips[i] for i in batch]))):
                ours[d][i] = codes

        return timed(go)

    def run_old(batch):
        def go():
            for i in batch:
                old[i] = old_one(clips[i])

        return timed(go)

    if gpu:
        torch.cuda.reset_peak_memory_stats()
    # Who goes first alternates: the first to meet a new input length pays for it (kernel and
    # oneDNN primitive caches are keyed by shape), and the other gets it warm.
    for k, batch in enumerate(batches):
        if k % 2:
            old_t += run_old(batch)
        for d in dtypes:
            ours_t[d] += run_ours(d, batch)
        if not k % 2:
            old_t += run_old(batch)
    print(
        f"old:  {old_t[0]:8.1f} s wall {old_t[1]:8.1f} s CPU  {audio_s / old_t[0]:8.2f} audio-s/s  "
        f"({n} calls, {len(full_layers)} w2v-BERT layers)",
        flush=True,
    )
    flops = flops_per_audio_second(model, codecs[dtypes[0]])
    modes = {}
    for d in dtypes:
        wall, cpu = ours_t[d]
        per = [float(np.mean(a == b)) for a, b in zip(ours[d], old)]
        equal = float(np.mean(np.concatenate([a == b for a, b in zip(ours[d], old)])))
        achieved = flops * audio_s / wall / 1e12
        modes[d] = {
            "audio_seconds_per_second": round(audio_s / wall, 2),
            "speedup_vs_old": round(old_t[0] / wall if gpu else old_t[1] / cpu, 3),
            "wall_speedup_vs_old": round(old_t[0] / wall, 3),
            "cpu_time_speedup_vs_old": round(old_t[1] / cpu, 3),
            "codes_equal_fraction": round(equal, 6),
            "min_segment_agreement": round(min(per), 6),
            "achieved_tflops": round(achieved, 3),
        }
        if gpu:
            modes[d]["fraction_of_peak"] = round(achieved / PEAK_TFLOPS[d], 4)
        print(
            f"ours {d:8s}: {wall:8.1f} s wall {cpu:8.1f} s CPU  {audio_s / wall:8.2f} audio-s/s  {modes[d]['speedup_vs_old']:.2f}x old; "
            f"codes equal to float32 single-clip {equal:.4%} (worst segment {min(per):.2%}); {achieved:.2f} TFLOP/s",
            flush=True,
        )
    first = modes[dtypes[0]]
    feature_diff = feature_max_abs_diff(codecs[dtypes[0]], clips[: min(8, n)])
    codes = np.concatenate(old)
    result = {
        **first,
        "speedup_basis": "wall time" if gpu else "CPU time of the process",
        "old_audio_seconds_per_second": round(audio_s / old_t[0], 2),
        "modes": modes,
        "flops_per_audio_second": round(flops),
        "feature_max_abs_diff": feature_diff,
        "device": torch.cuda.get_device_name() if gpu else f"cpu ({torch.get_num_threads()} threads)",
        "dtype": dtypes[0],
        "weights": args.weights,
        "codec": codecs[dtypes[0]].label,
        "segments": n,
        "audio_seconds": round(float(audio_s), 1),
        "batches": len(batches),
        "batch_seconds": batch_seconds,
        "distinct_code_fraction": round(len(np.unique(codes)) / len(codes), 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    if gpu:
        result["peak_gpu_mb_ours"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(
        f"FLOPs per audio-second {flops / 1e9:.1f} G; features vs the numpy extractor: max abs diff {feature_diff:.2e}; "
        f"peak RSS {result['peak_rss_mb']:.0f} MB"
    )
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--segments", type=int, default=None, help="codec mode: 24 on CPU, 2000 on a GPU; stream modes: 2000"
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--weights", default="random-full", choices=["random-full", "random", "pretrained"])
    p.add_argument("--dtypes", "--dtype", default="float32", help="comma-separated: float32, tf32, bfloat16, float16")
    p.add_argument(
        "--gpu-suite",
        action="store_true",
        help="float32,tf32,bfloat16 on 2,000 segments (a GPU), then "
        "the host ceiling and the simulated-device overlap, all in one JSON line",
    )
    p.add_argument("--batch-seconds", type=float, default=None, help="default: 60 on CPU, 600 on a GPU")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--null-codec", action="store_true", help="the host ceiling of the stream, 1 and 2 workers")
    p.add_argument("--simulate-device", type=float, default=None, metavar="AUDIO_S_PER_S")
    p.add_argument("--workers", type=int, default=2, help="host workers for --simulate-device")
    p.add_argument(
        "--io-threads",
        type=int,
        default=4,
        help="stream modes: store calls in flight per worker (the asset's default: 4)",
    )
    p.add_argument("--repeats", type=int, default=3, help="stream modes: runs of each, the best reported")
    p.add_argument("--memory", action="store_true", help="peak RSS at 2,000 and --memory-segments segments")
    p.add_argument("--memory-segments", type=int, default=20000)
    p.add_argument("--memory-codec", default="null", choices=["null", "small"])
    p.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--codec", default="null", help=argparse.SUPPRESS)
    p.add_argument(
        "--cache",
        default=None,
        help="stream modes: the folder of the stage-1 files and the stage-2 output "
        "(default bench/.cache; /dev/shm leaves the disk's fsync waits out of the figures)",
    )
    args = p.parse_args()
    if args.cache:
        os.environ["NEUTTS_BENCH_CACHE"] = args.cache  # the --memory children read it too
    if args.memory_child:
        memory_child(args.memory_child, args.seed, args.codec)
        return
    if args.gpu_suite:
        args.dtypes, args.segments = "float32,tf32,bfloat16", args.segments or 2000
    if args.null_codec:
        result = null_codec_mode(args)
    elif args.simulate_device:
        result = simulate_device_mode(args)
    elif args.memory:
        result = memory_mode(args)
    else:
        result = codec_mode(args)
        if args.gpu_suite:  # one command, one JSON line: the codec modes, the host ceiling, the overlap
            args.repeats, args.segments, args.simulate_device = 1, 2000, 1000.0
            result.update({k: v for k, v in null_codec_mode(args).items() if k.startswith(("host_", "old_host_"))})
            result["pipeline_efficiency"] = simulate_device_mode(args)["pipeline_efficiency"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
