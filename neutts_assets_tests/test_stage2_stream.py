"""The stage-2 stream's host side and its overlap with the device, with codecs that cost nothing or
sleep like a GPU (pipeline/encoding/simulated_codec.py): every segment gets its own codes from worker processes,
the next batch is prepared while the device works, the lease stops publishing, a dead worker stops
the run, a killed run leaves no worker behind. Behaviour only; the speeds are in bench/encode.py."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import pytest

from neutts_assets.pipeline.encoding.codec import (
    HOP,
    MIN_SAMPLES,
    batch_key,
    batch_seconds_for_memory,
    default_batch_seconds,
)
from neutts_assets.pipeline.encoding.simulated_codec import SimulatedCodec, simulated_codes
from neutts_assets.pipeline.encoding.store import Stage2Layout, plan_encoding
from neutts_assets.pipeline.encoding.stream import StreamSettings, encode_stream, item_cost
from neutts_assets.pipeline.orchestration.lease import LeaseLost
from neutts_assets.pipeline.segments.manifest import SegmentsManifest
from neutts_assets.pipeline.segments.segment_file import Segment, encode_segment, read_segment
from neutts_assets.storage.local import LocalStore
from neutts_assets_tests.codec_corpus import demo_speech

CHANNEL = "ch"


def stage1(store: LocalStore, n: int, seed: int = 0, corrupt: set[int] = frozenset()) -> dict:
    """n stage-1 files of 0.1-3 s (many code counts, several clips per count), as segments_npz writes them."""
    rng = np.random.default_rng(seed)
    speech, segments = demo_speech(), []
    for i in range(n):
        length = int(rng.integers(2, 40)) * HOP * 4 + int(rng.integers(0, HOP))
        start = int(rng.integers(0, len(speech) - length))
        audio_id, key = f"rec{i % 3}_seg_{i}", f"stage1/{CHANNEL}/rec{i % 3}_seg_{i}.npz"
        data = encode_segment(
            Segment(audio_id, CHANNEL, f"text {i}", "SPEAKER_00", "f", "d", "t", speech[start : start + length])
        )
        store.write_bytes(key, data[: len(data) // 2] if i in corrupt else data)
        segments.append({"key": key, "audio_id": audio_id, "duration_sec": length / 16000})
    return {"channel": CHANNEL, "recordings": [{"recording_id": "rec", "segments": segments}]}


def plan_for(store: LocalStore, manifest: dict, codec) -> list:
    sources = {o.key: (o.version, o.size) for o in store.list("stage1/")}
    stage2 = {o.key for o in store.list(Stage2Layout(CHANNEL).channel_prefix)}
    plan = plan_encoding(
        SegmentsManifest.from_dict(manifest), Stage2Layout(CHANNEL), codec.label, sources, stage2, MIN_SAMPLES
    )
    return plan.todo


def entries(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {name: z.read(name) for name in z.namelist()}


@pytest.mark.parametrize("workers", [1, 2])
def test_worker_processes_give_every_segment_its_own_codes_within_the_budget(tmp_path, workers):
    store = LocalStore(tmp_path)
    manifest = stage1(store, 60, corrupt={7})
    codec = SimulatedCodec(None)
    todo = plan_for(store, manifest, codec)
    budget = 400_000  # a handful of segments at a time: dispatch waits for writes
    tally = encode_stream(
        todo,
        codec,
        store,
        StreamSettings(batch_seconds=2.0, budget_bytes=budget, host_workers=workers, io_threads=2, fetch_chunk=3),
    )
    assert tally.host_workers == workers
    assert [a for a, _ in tally.failed] == ["rec1_seg_7"] and "unreadable stage-1 segment file" in tally.failed[0][1]
    assert len(tally.encoded) == 59 and not tally.store_failed
    assert tally.peak_inflight_bytes <= budget + max(item_cost(i) for i in todo)
    assert all(s <= 2.0 or n == 1 for n, s in zip(tally.batch_sizes, tally.batch_seconds))
    assert max(tally.batch_sizes) > 1  # batches do fill (several clips per code count)
    assert tally.read_seconds > 0 and tally.decode_seconds > 0 and tally.write_seconds > 0 and tally.file_seconds > 0
    layout = Stage2Layout(CHANNEL)
    for item in todo:
        if item.audio_id == "rec1_seg_7":
            assert not store.exists(item.target_key) and not store.exists(item.marker_key)
            continue
        source, target = store.read_bytes(item.source_key), store.read_bytes(item.target_key)
        seg = read_segment(target)
        assert np.array_equal(seg.codes, simulated_codes(seg.pcm16)) and seg.codec == codec.label  # its own codes
        # the stage-1 file plus codes: every other entry byte for byte (the FLAC is not compressed again)
        s, t = entries(source), entries(target)
        assert {k: v for k, v in s.items() if k not in ("codes.npy", "codec.npy")} == {
            k: v for k, v in t.items() if k not in ("codes.npy", "codec.npy")
        }
        assert store.exists(item.marker_key)
    assert len(list(store.list(layout.marker_prefix))) == 59
    assert not [p for p in tmp_path.rglob("*") if ".neutts-tmp-" in p.name]


def test_files_left_without_marker_are_kept_by_the_workers(tmp_path):
    store = LocalStore(tmp_path)
    manifest = stage1(store, 12)
    codec = SimulatedCodec(None)
    encode_stream(plan_for(store, manifest, codec), codec, store, StreamSettings(host_workers=2))
    layout = Stage2Layout(CHANNEL)
    markers = sorted(o.key for o in store.list(layout.marker_prefix))
    for key in markers[:3]:
        store.delete(key)
    # one file's codes overwritten by another codec's: encoded again, not kept
    victim = layout.segment_key("rec0_seg_0")
    seg = read_segment(store.read_bytes(victim))
    store.write_bytes(victim, encode_segment(Segment(**{**seg.__dict__, "codec": "someone-else"})))
    store.delete(next(m for m in markers if "/rec0_seg_0@" in m))
    todo = plan_for(store, manifest, codec)
    assert sum(i.unverified for i in todo) == len(todo) >= 3
    tally = encode_stream(todo, codec, store, StreamSettings(host_workers=2))
    assert "rec0_seg_0" in {i.audio_id for i, _ in tally.encoded}
    assert len(tally.kept) == len(todo) - 1 and len(list(store.list(layout.marker_prefix))) == 12


def test_a_stage1_recut_into_another_format_keeps_the_codes_and_rewrites_the_stage2_file(tmp_path):
    """Stage 1 re-cut into the current file format (same samples, new objects): stage 2 encodes
    nothing again; each stage-2 file is rewritten around the codes it holds, so no file of the old
    format (FLAC where old readers expect the waveform) is left under stage2_with_codes/."""
    store = LocalStore(tmp_path)
    manifest = stage1(store, 9)
    segs = {s["key"]: read_segment(store.read_bytes(s["key"])) for r in manifest["recordings"] for s in r["segments"]}
    for key, seg in segs.items():  # the same segments in the FLAC option's format first
        store.write_bytes(key, encode_segment(seg, "flac"))

    class Counting(SimulatedCodec):
        calls = 0

        def encode_batch(self, *a, **k):
            Counting.calls += 1
            return super().encode_batch(*a, **k)

    codec = Counting(None)
    encode_stream(plan_for(store, manifest, codec), codec, store, StreamSettings(host_workers=2))
    encoded_calls = Counting.calls
    assert encoded_calls > 0
    layout = Stage2Layout(CHANNEL)
    before = {k: read_segment(store.read_bytes(layout.segment_key(seg.audio_id))).codes for k, seg in segs.items()}
    for key, seg in segs.items():  # the re-cut: float32 files, new versions
        store.write_bytes(key, encode_segment(seg))
    todo = plan_for(store, manifest, codec)
    assert len(todo) == 9 and all(i.unverified for i in todo)
    tally = encode_stream(todo, codec, store, StreamSettings(host_workers=2))
    assert Counting.calls == encoded_calls and len(tally.kept) == 9 and not tally.encoded  # nothing encoded again
    for key, seg in segs.items():
        target = store.read_bytes(layout.segment_key(seg.audio_id))
        with np.load(io.BytesIO(target)) as npz:  # the old reader's view: the waveform, and the same codes
            assert np.array_equal(npz["audio"], seg.pcm16.astype(np.float32) / 32768)
            assert np.array_equal(npz["codes"], before[key]) and str(npz["codec"]) == codec.label
    assert not plan_for(store, manifest, codec)  # all marked


class PrepareWatchingCodec(SimulatedCodec):
    """A device that, in its call for batch k, waits until batch k+1 has been prepared: a stream that
    prepares only after the device returns stalls here and the test fails."""

    def __init__(self, batches: int):
        super().__init__(None)
        self.prepared, self.batches = 0, batches
        self.cond = threading.Condition()
        self.saw_next_prepared: list[bool] = []

    def prepare(self, clips):
        batch = super().prepare(clips)
        with self.cond:
            self.prepared += 1
            self.cond.notify_all()
        return batch

    def model_call(self, batch) -> None:
        k = self.calls  # this call's batch number, from 0
        if k + 1 < self.batches:
            with self.cond:
                self.saw_next_prepared.append(self.cond.wait_for(lambda: self.prepared >= k + 2, timeout=30))


def test_the_next_batch_is_prepared_while_the_device_works(tmp_path):
    store = LocalStore(tmp_path)
    manifest = stage1(store, 40, seed=3)
    todo = plan_for(store, manifest, SimulatedCodec(None))
    batches = len({batch_key(i.num_samples) for i in todo})  # batch_seconds large: one batch per code count
    codec = PrepareWatchingCodec(batches)
    tally = encode_stream(todo, codec, store, StreamSettings(batch_seconds=1000.0, host_workers=2))
    assert len(tally.batch_sizes) == batches > 5 and len(tally.encoded) == 40
    assert codec.saw_next_prepared == [True] * (batches - 1)


def test_a_lost_lease_stops_publishing(tmp_path):
    store = LocalStore(tmp_path)
    manifest = stage1(store, 30, seed=4)
    codec = SimulatedCodec(None)
    todo = plan_for(store, manifest, codec)
    # the lease's limit already passed: the workers publish nothing, and the run stops with LeaseLost
    with pytest.raises(LeaseLost):
        encode_stream(todo, codec, store, StreamSettings(host_workers=2), publish_deadline=lambda: time.time() - 1)
    assert not list(store.list(Stage2Layout(CHANNEL).channel_prefix))

    calls = []

    def guard():
        calls.append(1)
        if len(calls) > 6:
            raise LeaseLost("taken over")

    with pytest.raises(LeaseLost, match="taken over"):
        encode_stream(todo, codec, store, StreamSettings(batch_seconds=0.5, host_workers=2), guard=guard)
    after = len(list(store.list(Stage2Layout(CHANNEL).marker_prefix)))
    time.sleep(1.0)  # no worker is left to publish later
    assert len(list(store.list(Stage2Layout(CHANNEL).marker_prefix))) == after < 30


class DyingStore(LocalStore):
    """A store whose stage-2 writes kill the host worker that makes them."""

    def write_bytes(self, key, data):
        if key.startswith("stage2_with_codes/") and os.getpid() != PARENT:
            os._exit(3)
        super().write_bytes(key, data)


PARENT = os.getpid()


def test_a_dead_worker_fails_the_run_with_its_exit_code(tmp_path):
    store = DyingStore(tmp_path)
    manifest = stage1(store, 10, seed=5)
    codec = SimulatedCodec(None)
    with pytest.raises(RuntimeError, match="host worker . died \\(exit code 3\\)"):
        encode_stream(plan_for(store, manifest, codec), codec, store, StreamSettings(host_workers=2))


KILLED_RUN = """
import sys, time
from neutts_assets.pipeline.encoding.simulated_codec import SimulatedCodec
from neutts_assets.pipeline.encoding.stream import StreamSettings, encode_stream
from neutts_assets.storage.local import LocalStore
from neutts_assets_tests.test_stage2_stream import plan_for, stage1
store = LocalStore(sys.argv[1])
manifest = stage1(store, 40, seed=6)
codec = SimulatedCodec(20.0)  # slow: the run is killed mid-way
encode_stream(plan_for(store, manifest, codec), codec, store, StreamSettings(host_workers=2))
"""


def test_workers_die_with_a_killed_run(tmp_path):
    """SIGKILL of the run's process alone (not its group): its workers go too, so no writer outlives it."""
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(tmp_path)], start_new_session=True)
    deadline = time.monotonic() + 120
    children: list[int] = []
    while not children:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
        children = [int(p) for p in open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()]
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for pid in children:
        for _ in range(100):
            if not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z":
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"host worker {pid} outlived its run")


def test_batch_size_follows_the_device_memory():
    assert default_batch_seconds("cpu") == 60.0
    h200, h100, t4 = (batch_seconds_for_memory(gb * 10**9) for gb in (141, 80, 16))
    assert 1000 <= h200 <= 2400 and 600 <= h100 < h200 and t4 >= 120
    assert h200 > 10 * 120  # the old fixed 120 s was far too small for it


def test_a_stage2_file_is_the_same_bytes_whenever_it_is_written(tmp_path, monkeypatch):
    """A rerun that rewrites a file (after a kill) writes what the first run wrote: no timestamps."""
    from neutts_assets.pipeline.segments.segment_file import with_codes

    store = LocalStore(tmp_path)
    stage1(store, 1)
    (key,) = [o.key for o in store.list("stage1/")]
    source, codes = store.read_bytes(key), np.arange(10, dtype=np.int32)
    first = with_codes(source, codes, "lbl")
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 86_400 * 400)
    assert with_codes(source, codes, "lbl") == first
