"""Stage 2's encoder, ours against the old method, side by side on the same segments.

    .venv/bin/python bench/encode.py                      # CPU: 24 segments, full-size random-weight NeuCodec
    .venv/bin/python bench/encode.py --segments 2000      # on a GPU (device auto-detected)
    .venv/bin/python bench/encode.py --dtype bfloat16     # reduced precision: agreement with float32 reported
    .venv/bin/python bench/encode.py --weights pretrained # the real weights, where the Hub or HF_HOME has them

Segments: speech cut from the demo channel at a realistic length mix (1-15 s, mean about 5.5 s).
Old: one `encode_code` call per segment on a [1, 1, T] float32 tensor, the full model (all 24
w2v-BERT layers), `torch.cuda.empty_cache()` after each on a GPU.
Ours: `Codec.encode_batch` as encoded_segments calls it: w2v-BERT trimmed to the 16 layers
encode_code reads, segments sorted by length and batched by code count (inputs of one length:
the single-clip codes) up to --batch-seconds of audio per call; the feature extraction is
timed inline here, although the asset runs it in its download threads.
Both use the same weights (one model; old runs with the trimmed layers swapped back in) and take
turns batch by batch, so a shared machine's load falls on both alike. Timing is encoding only,
after one warm-up clip each; store I/O is not in it (the asset overlaps it).

Human-readable lines first; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neutts_assets.core.audio import SAMPLE_RATE, decode_pcm16  # noqa: E402
from neutts_assets.core.codec import (  # noqa: E402
    Codec, CodecSettings, _load_pretrained, batch_key, build_random_neucodec, pad_batch, random_label,
)
from neutts_assets.demo import DEMO_CHANNEL, DEMO_CHANNEL_MAPPING, DEMO_SOURCE  # noqa: E402


def demo_speech() -> np.ndarray:
    folder = DEMO_SOURCE / DEMO_CHANNEL_MAPPING[DEMO_CHANNEL] / "audio"
    return np.concatenate([decode_pcm16(p) for p in sorted(folder.iterdir())])


def length_mix(n: int, rng) -> np.ndarray:
    """Seconds, 1-15 s, mean about 5.5 s (a gamma body with the old pair builder's 15 s cap).
    Evenly spaced quantiles, shuffled: even 24 segments have the distribution's mean."""
    pool = np.sort(np.clip(1.0 + rng.gamma(2.0, 2.3, size=200_000), 1.0, 15.0))
    return rng.permutation(pool[((np.arange(n) + 0.5) / n * len(pool)).astype(int)])


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--segments", type=int, default=None, help="default: 24 on CPU, 2000 on a GPU")
    p.add_argument("--device", default="auto")
    p.add_argument("--weights", default="random-full", choices=["random-full", "random", "pretrained"])
    p.add_argument("--dtype", default="float32", choices=["float32", "tf32", "bfloat16", "float16"])
    p.add_argument("--batch-seconds", type=float, default=None, help="default: 60 on CPU, 600 on a GPU")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    gpu = device.startswith("cuda")
    n = args.segments or (2000 if gpu else 24)
    batch_seconds = args.batch_seconds or (600.0 if gpu else 60.0)
    rng = np.random.default_rng(args.seed)
    speech = demo_speech()
    lengths = (length_mix(n, rng) * SAMPLE_RATE).astype(int)
    starts = rng.integers(0, len(speech) - lengths.max(), size=n)
    clips = [speech[s:s + L] for s, L in zip(starts, lengths)]
    audio_s = lengths.sum() / SAMPLE_RATE
    print(f"{n} segments, {audio_s:.0f} s of audio, mean {lengths.mean() / SAMPLE_RATE:.2f} s "
          f"(min {lengths.min() / SAMPLE_RATE:.1f}, max {lengths.max() / SAMPLE_RATE:.1f}); device {device}, "
          f"weights {args.weights}, ours in {args.dtype}; {torch.get_num_threads()} CPU threads", flush=True)

    t0 = time.perf_counter()
    settings = CodecSettings(weights=args.weights, device=device, dtype=args.dtype, seed=args.seed)
    if args.weights == "pretrained":
        model, label = _load_pretrained(settings, None)
    else:
        model = build_random_neucodec(args.weights, args.seed)
        label = random_label(settings)
    model.to(device)
    if gpu:  # the old method's reference is plain float32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    print(f"model {label} built in {time.perf_counter() - t0:.1f} s", flush=True)

    def sync():
        if gpu:
            torch.cuda.synchronize()

    # Ours and old take turns, batch by batch, so a shared machine's changing load falls on both
    # alike. One model serves both: ours runs with w2v-BERT trimmed to 16 layers, old with all of
    # them (the same layer modules, swapped back in for each old call).
    full_layers = model.semantic_model.encoder.layers
    codec = Codec(model, label, settings)
    trimmed_layers = model.semantic_model.encoder.layers

    def old_one(clip):
        model.semantic_model.encoder.layers = full_layers
        try:
            with torch.no_grad():
                codes = model.encode_code(torch.from_numpy(pad_batch([clip])))[0, 0].cpu().numpy()
        finally:
            model.semantic_model.encoder.layers = trimmed_layers
        if gpu:
            torch.cuda.empty_cache()
        return codes

    def ours_batch(group):
        # features inline here (the asset computes them in its download threads, beside the GPU)
        return codec.encode_batch(group, [codec.features(c) for c in group])

    old_one(clips[0][: SAMPLE_RATE])  # warm-ups
    ours_batch([clips[0][: SAMPLE_RATE]])
    order = sorted(range(n), key=lambda i: (len(clips[i]), i))
    batches, current = [], []
    for i in order:
        if current and (batch_key(len(clips[i])) != batch_key(len(clips[current[0]]))
                        or sum(len(clips[j]) for j in current) + len(clips[i]) > batch_seconds * SAMPLE_RATE):
            batches.append(current)
            current = []
        current.append(i)
    batches.append(current)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    old: list = [None] * n
    ours: list = [None] * n
    old_t, ours_t = np.zeros(2), np.zeros(2)  # (wall, CPU) seconds
    def timed(fn):
        """(wall seconds, CPU seconds of this process) of fn(): on a shared CPU the wall time
        counts other people's work too; the CPU time does not."""
        sync()
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync()
        return np.array([time.perf_counter() - w0, time.process_time() - c0])

    def run_ours(batch):
        def go():
            for i, codes in zip(batch, ours_batch([clips[i] for i in batch])):
                ours[i] = codes
        return timed(go)

    def run_old(batch):
        def go():
            for i in batch:
                old[i] = old_one(clips[i])
        return timed(go)

    # Who goes first alternates: the first to meet a new input length pays for it (kernel and
    # oneDNN primitive caches are keyed by shape), and the other gets it warm.
    for k, batch in enumerate(batches):
        if k % 2 == 0:
            ours_t += run_ours(batch)
            old_t += run_old(batch)
        else:
            old_t += run_old(batch)
            ours_t += run_ours(batch)
    old_s, ours_s = old_t[0], ours_t[0]
    print(f"old:  {old_s:8.1f} s wall {old_t[1]:8.1f} s CPU  {audio_s / old_s:8.2f} audio-s/s  "
          f"({n} calls, {len(full_layers)} w2v-BERT layers)", flush=True)
    print(f"ours: {ours_s:8.1f} s wall {ours_t[1]:8.1f} s CPU  {audio_s / ours_s:8.2f} audio-s/s  ({len(batches)} batches, "
          f"mean {n / len(batches):.1f} segments; {codec.layers_trimmed} w2v-BERT layers trimmed)", flush=True)
    # On a GPU the wall time is the measure. On a CPU shared with other work it is not (it counts
    # their work too), so there the speedup is the ratio of CPU time; the wall ratio is reported beside it.
    wall_speedup, cpu_speedup = old_s / ours_s, old_t[1] / ours_t[1]

    per = [float(np.mean(a == b)) for a, b in zip(ours, old)]
    equal = float(np.mean(np.concatenate([a == b for a, b in zip(ours, old)])))
    codes = np.concatenate(old)
    result = {
        "speedup_vs_old": round(wall_speedup if gpu else cpu_speedup, 3),
        "speedup_basis": "wall time" if gpu else "CPU time of the process",
        "wall_speedup_vs_old": round(wall_speedup, 3),
        "cpu_time_speedup_vs_old": round(cpu_speedup, 3),
        "codes_equal_fraction": round(equal, 6),
        "min_segment_agreement": round(min(per), 6),
        "audio_seconds_per_second": round(audio_s / ours_s, 2),
        "old_audio_seconds_per_second": round(audio_s / old_s, 2),
        "device": torch.cuda.get_device_name() if gpu else f"cpu ({torch.get_num_threads()} threads)",
        "dtype": args.dtype,
        "weights": args.weights,
        "codec": label,
        "segments": n,
        "audio_seconds": round(float(audio_s), 1),
        "batches": len(batches),
        "batch_seconds": batch_seconds,
        "distinct_code_fraction": round(len(np.unique(codes)) / len(codes), 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    if gpu:
        result["peak_gpu_mb_ours"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(f"speedup {result['speedup_vs_old']}x, codes equal {equal:.4%} (worst segment {min(per):.2%}), "
          f"distinct codes {result['distinct_code_fraction']:.1%}, peak RSS {result['peak_rss_mb']:.0f} MB")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
