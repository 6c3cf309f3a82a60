"""Telling a changed source file from an unchanged one: a folder's listing against a content hash.

    .venv/bin/python bench/source_versions.py                  # 50 files of 20 MiB (1 GB), a few seconds
    .venv/bin/python bench/source_versions.py --files 10 --mb 5   # a smoke run

Ours: `LocalStore.list`, the inventory's listing of a local source: one os.walk and one stat per
file, the version being its mtime, size, inode and ctime. Hash: the sha256 of every file's bytes,
what a content version would cost on every inventory. Both run in this process on the same
temporary folder, `--repeats` times each, interleaved; the best is reported. The files were just
written, so they are in the page cache: the hash's best case (from disk it reads at the disk's rate
instead). CPU time is `time.process_time`, peak RSS `ru_maxrss`.

The run stops if either method misses a file rewritten in place with its size and mtime put back
(the change an mtime-and-size version misses, shown as `mtime_size_detects_change`).
Human-readable lines first; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from neutts_assets.storage.local import LocalStore


def make_files(root: Path, files: int, mb: int) -> None:
    body = os.urandom(mb << 20)
    for i in range(files):
        with open(root / f"r{i:04d}.wav", "wb") as f:
            f.write(i.to_bytes(8, "little"))  # each file its own bytes, at the cost of one buffer
            f.write(body[8:])


def by_listing(store: LocalStore) -> dict[str, str]:
    return {o.key: o.version for o in store.list()}


def by_hash(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.iterdir()):
        with open(path, "rb") as f:
            out[path.name] = hashlib.file_digest(f, "sha256").hexdigest()
    return out


def by_mtime_size(root: Path) -> dict[str, str]:
    """The version before this one, for comparison: it misses the change."""
    return {p.name: f"{(st := p.stat()).st_mtime_ns}-{st.st_size}" for p in sorted(root.iterdir())}


def timed(call) -> tuple[float, float, dict[str, str]]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = call()
    return time.process_time() - cpu0, time.perf_counter() - wall0, result


def rewrite_in_place(path: Path) -> None:
    """One byte changed in the middle, the mtime put back: same size, same mtime."""
    before = path.stat()
    time.sleep(0.05)  # past the kernel's clock tick, as a user's later edit would be
    with open(path, "r+b") as f:
        f.seek(before.st_size // 2)
        byte = f.read(1)
        f.seek(before.st_size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=50, help="how many files (default 50)")
    parser.add_argument("--mb", type=int, default=20, help="MiB per file (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each method; the best counts (default 3)")
    parser.add_argument("--dir", default=None, help="where the temporary folder goes (default: the system's)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-versions-", dir=args.dir) as tmp:
        root = Path(tmp)
        make_files(root, args.files, args.mb)
        store = LocalStore(root, create=False, file_identity=True)
        gb = args.files * (args.mb << 20) / 1e9
        runs = {"list": [], "hash": []}
        for _ in range(args.repeats):
            runs["list"].append(timed(lambda: by_listing(store)))
            runs["hash"].append(timed(lambda: by_hash(root)))
        best = {name: min(r, key=lambda t: t[1]) for name, r in runs.items()}
        old_listing = by_mtime_size(root)

        target = root / "r0000.wav"
        rewrite_in_place(target)
        detected = {
            "ours": changed(best["list"][2], by_listing(store)),
            "hash": changed(best["hash"][2], by_hash(root)),
            "mtime_size": changed(old_listing, by_mtime_size(root)),
        }

    (lcpu, lwall, _), (hcpu, hwall, _) = best["list"], best["hash"]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "files": args.files,
        "mib_per_file": args.mb,
        "gb": round(gb, 3),
        "list_cpu_s": round(lcpu, 5),
        "list_wall_s": round(lwall, 5),
        "hash_cpu_s": round(hcpu, 3),
        "hash_wall_s": round(hwall, 3),
        "list_cpu_s_per_gb": round(lcpu / gb, 5),
        "list_wall_s_per_gb": round(lwall / gb, 5),
        "hash_cpu_s_per_gb": round(hcpu / gb, 3),
        "hash_wall_s_per_gb": round(hwall / gb, 3),
        "cpu_ratio_hash_vs_list": round(hcpu / lcpu, 1),
        "wall_ratio_hash_vs_list": round(hwall / lwall, 1),
        # A 200 GB source at the page cache's speed; its files' count sets the listing's cost instead.
        "hash_wall_s_at_200_gb": round(hwall / gb * 200, 1),
        "ours_detects_change": detected["ours"] == [target.name],
        "hash_detects_change": detected["hash"] == [target.name],
        "mtime_size_detects_change": detected["mtime_size"] == [target.name],
        "peak_rss_mb": round(peak_mb, 1),
    }
    print(f"{args.files} files of {args.mb} MiB ({gb:.2f} GB), best of {args.repeats}, page cache warm")
    print(f"  listing (stat version): {lcpu * 1000:.2f} CPU-ms, {lwall * 1000:.2f} ms wall")
    print(f"  sha256 of every file:   {hcpu:.2f} CPU-s, {hwall:.2f} s wall ({gb / hwall:.2f} GB/s)")
    print(
        f"  hash / listing: {result['cpu_ratio_hash_vs_list']}x the CPU, {result['wall_ratio_hash_vs_list']}x the wall"
    )
    print(f"  a file rewritten in place, size and mtime kept: seen by {[k for k, v in detected.items() if v]}")
    print(f"  peak RSS {peak_mb:.0f} MB")
    if not (result["ours_detects_change"] and result["hash_detects_change"]):
        raise SystemExit(f"a method missed the change: {detected}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
