"""Stage 2 for one channel: stream stage-1 segments from the store through the host workers,
batches of one code count and the codec, and back to the store.

    host workers ──> in-order window ──> batches of one code count ──> prepared ──> device ──> host workers
    (read, decode)     (run process)      (run process)                (pinned,    (features,   (stage-2 file,
                                                                         copying)    model)       marker)

The per-segment host work runs in forked worker processes (pipeline/encoding/host.py), so it scales with
the host's cores instead of serialising on the GIL. The run process batches and drives the device
from two threads: while the device thread runs one batch, the conductor lays out the next in
pinned memory and starts its copy, so the device never waits for the host.

The work list is sorted by length, so segments of one code count arrive together and each batch is
formed from consecutive segments, across recordings: no pool of waiting clips. Memory is bounded by
a byte budget held from the moment a segment is fetched until its stage-2 file is written; nothing
is staged on disk (the old workflow put 24 GB batches in /tmp).
"""

from __future__ import annotations

import ctypes
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from neutts_assets import settings as S
from neutts_assets.pipeline.encoding.codec import batch_key, default_batch_seconds, n_codes
from neutts_assets.pipeline.encoding.host import LEASE_GRACE_S, LEASE_POLL_S, Fetched, HostWorkers, Published
from neutts_assets.pipeline.encoding.store import EncodeItem
from neutts_assets.pipeline.orchestration.lease import LeaseLost
from neutts_assets.pipeline.segments.audio import SAMPLE_RATE
from neutts_assets.storage.store import ObjectStore


def default_host_workers() -> int:
    """One worker process per core, up to 8: about 2,000 audio-seconds per second each (FLAC decode
    and the npz make most of it), which is more than an H200 encodes in bfloat16."""
    return max(1, min(8, os.cpu_count() or 1))


@dataclass
class StreamSettings:
    batch_seconds: float | None = None  # audio per codec call; None: sized for the device (codec.default_batch_seconds)
    # segment bytes held between fetch and the stage-2 file's write (the declared default, in bytes)
    budget_bytes: int = int(S.CODEC_DISK_BUDGET_GB.default * 1024**3)
    host_workers: int = field(default_factory=default_host_workers)  # processes doing the per-segment host work
    io_threads: int = 4  # store calls in flight per host worker (they wait on the network)
    fetch_chunk: int = 8  # segments per message to a host worker


@dataclass
class EncodeTally:
    """What a stage-2 run did, for the materialization's metadata."""

    encoded: list[tuple[EncodeItem, int]] = field(default_factory=list)  # (item, number of codes)
    kept: list[EncodeItem] = field(default_factory=list)  # unmarked files found to hold this codec's codes
    failed: list[tuple[str, str]] = field(default_factory=list)  # (audio id, reason)
    # (audio id, reason): the store failed after the client's retries; the run fails, a rerun retries them
    store_failed: list[tuple[str, str]] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    batch_seconds: list[float] = field(default_factory=list)
    audio_seconds: float = 0.0
    # host seconds per step, summed over the workers' threads (they overlap each other and the device)
    read_seconds: float = 0.0
    decode_seconds: float = 0.0
    prepare_seconds: float = 0.0  # laying batches out in pinned memory and starting their copy (run process)
    file_seconds: float = 0.0  # building stage-2 files' bytes
    write_seconds: float = 0.0  # stage-2 files, markers and stale-marker deletes
    # device work: w2v-BERT's features and the model (CUDA-event time on a GPU)
    features_seconds: float = 0.0
    model_seconds: float = 0.0
    encode_seconds: float = 0.0  # wall time of the codec calls, as the device thread saw them
    device_idle_seconds: float = 0.0  # the device thread waiting for a prepared batch, after the first
    host_workers: int = 0
    batch_seconds_limit: float = 0.0  # the audio cap per codec call the run used (configured, or sized for the device)
    bytes_downloaded: int = 0
    bytes_uploaded: int = 0
    peak_inflight_bytes: int = 0
    wall_seconds: float = 0.0

    @property
    def download_seconds(self) -> float:
        return self.read_seconds + self.decode_seconds

    @property
    def upload_seconds(self) -> float:
        return self.file_seconds + self.write_seconds

    @property
    def device_busy_fraction(self) -> float:
        return min(1.0, self.encode_seconds / self.wall_seconds) if self.wall_seconds else 0.0


class ByteBudget:
    """Bytes in flight. One item always fits when nothing is held, so a single large segment
    cannot stall the stream."""

    def __init__(self, limit: int):
        self.limit, self.held, self.peak = limit, 0, 0
        self._lock = threading.Lock()

    def _admits(self, n: int) -> bool:
        return not self.held or self.held + n <= self.limit

    def try_take(self, n: int) -> bool:
        with self._lock:
            if not self._admits(n):
                return False
            self.held += n
            self.peak = max(self.peak, self.held)
            return True

    def fits(self, n: int) -> bool:
        with self._lock:
            return self._admits(n)

    def release(self, n: int) -> None:
        with self._lock:
            self.held -= n


def item_cost(item: EncodeItem) -> int:
    # the stage-1 file and the stage-2 file (about the same size), the int16 samples, and the
    # codec's input features (160 float32 per 320 samples: 2 bytes a sample)
    return 2 * item.source_bytes + 4 * item.num_samples


@dataclass
class _Ready:
    seq: int
    worker: int
    samples: np.ndarray


class EncodeStream:
    """One channel's encoding: `run()` returns the tally. Threads: the conductor (the caller's:
    dispatch, order, batch, prepare), the device thread (guard, codec, send codes), the receiver
    (messages from the workers into the inbox) and the lease poller. Only the conductor changes the
    tally and the budget's books, from the inbox; the device thread reports there too."""

    def __init__(
        self,
        items: list[EncodeItem],
        codec,
        store: ObjectStore,
        settings: StreamSettings,
        log: Callable[[str], None],
        on_batch: Callable[[int, float], None],
        guard: Callable[[], None],
        publish_deadline: Callable[[], float] | None = None,
    ):
        self.codec, self.store, self.settings, self.log, self.on_batch, self.guard = (
            codec,
            store,
            settings,
            log,
            on_batch,
            guard,
        )
        # when the lease stops allowing writes (Lease.valid_until); without one, each good check allows LEASE_GRACE_S
        self.publish_deadline = publish_deadline or (lambda: time.time() + LEASE_GRACE_S)
        self.items = sorted(items, key=lambda i: (i.num_samples, i.audio_id))
        limit = settings.batch_seconds or default_batch_seconds(str(codec.device))
        self.batch_samples = limit * SAMPLE_RATE
        self.tally = EncodeTally(host_workers=settings.host_workers, batch_seconds_limit=limit)
        self.budget = ByteBudget(settings.budget_bytes)
        self.inbox: queue.Queue = queue.Queue()
        self.device_q: queue.Queue = queue.Queue(maxsize=1)  # one prepared batch waits while one runs
        self.next_dispatch, self.next_worker = 0, 0  # next item to send, and to which worker
        # Read-ahead: samples sent to the workers and not yet in a batch. Two batches, plus four chunks
        # of long segments per worker to keep them busy: enough that the device never waits, and
        # independent of the channel's size (the byte budget alone would let fetched samples pile up
        # to 2 GiB in the run process whenever the workers outpace the device).
        self.ahead_samples = 0
        self.readahead_samples = (
            2 * self.batch_samples + 4 * settings.host_workers * settings.fetch_chunk * 15 * SAMPLE_RATE
        )
        self.next_in_order = 0  # next item the batcher takes
        self.fetched: dict[int, tuple[int, Fetched]] = {}  # arrived out of order
        self.open: list[_Ready] = []  # the batch being filled
        self.unfinished = 0  # items dispatched and not yet written, failed or kept
        self.failure: BaseException | None = None
        self.done = threading.Event()

    # --- the conductor ------------------------------------------------------------------------

    def run(self) -> EncodeTally:
        started = time.perf_counter()
        if not self.items:
            return self.tally
        device_counters = (getattr(self.codec, "feature_seconds", 0.0), getattr(self.codec, "model_seconds", 0.0))
        self.workers = HostWorkers(
            self.settings.host_workers,
            self.store,
            self.codec.label,
            self.settings.io_threads,
            lambda w, kind, payload: self.inbox.put((w, kind, payload)),
        )
        threads = [
            threading.Thread(target=self._device_loop, name="neutts-device", daemon=True),
            threading.Thread(target=self._poll_lease, name="neutts-lease-poll", daemon=True),
        ]
        try:
            self._allow_publishing()
            for t in threads:
                t.start()
            while self.next_in_order < len(self.items) or self.unfinished:
                self._dispatch()
                if self.next_in_order == self.next_dispatch and self.open and not self._room_for_next():
                    self._flush()  # the budget is held by the open batch: encode it to free it
                self._handle(*self._next_message())
                self._take_in_order()
                if self.next_in_order == len(self.items):
                    self._flush()
            self.device_q.put(None)
            threads[0].join()
            self._raise_failure()
            self.store.add_retries(self.workers.stop())
        except BaseException:
            self.workers.kill()  # nothing more is published by this run
            raise
        finally:
            self.done.set()
        self.tally.features_seconds = getattr(self.codec, "feature_seconds", 0.0) - device_counters[0]
        self.tally.model_seconds = getattr(self.codec, "model_seconds", 0.0) - device_counters[1]
        self.tally.peak_inflight_bytes = self.budget.peak
        self.tally.wall_seconds = time.perf_counter() - started
        return self.tally

    def _room_for_next(self) -> bool:
        return self.next_dispatch < len(self.items) and self.budget.fits(item_cost(self.items[self.next_dispatch]))

    def _dispatch(self) -> None:
        """Sends the next items to the workers, round robin in chunks of consecutive items, while the
        budget admits them."""
        chunk: list[tuple[int, EncodeItem]] = []
        while (
            self.next_dispatch < len(self.items)
            and self.ahead_samples < self.readahead_samples
            and self.budget.try_take(item_cost(self.items[self.next_dispatch]))
        ):
            chunk.append((self.next_dispatch, self.items[self.next_dispatch]))
            self.ahead_samples += self.items[self.next_dispatch].num_samples
            self.next_dispatch += 1
            self.unfinished += 1
            if len(chunk) == self.settings.fetch_chunk:
                self._send_fetch(chunk)
                chunk = []
        if chunk:
            self._send_fetch(chunk)

    def _send_fetch(self, chunk: list) -> None:
        self.workers.send(self.next_worker, "fetch", chunk)
        self.next_worker = (self.next_worker + 1) % len(self.workers)

    def _next_message(self) -> tuple:
        while True:
            self._raise_failure()
            try:
                return self.inbox.get(timeout=1.0)
            except queue.Empty:
                continue

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    def _handle(self, worker: int, kind: str, payload) -> None:
        t = self.tally
        if kind == "fetched":
            for seq, got in payload:
                t.read_seconds += got.read_s
                t.decode_seconds += got.decode_s
                t.write_seconds += got.write_s
                t.bytes_downloaded += got.nbytes
                self.fetched[seq] = (worker, got)
        elif kind == "published":
            for seq, done in payload:
                self._published(seq, done)
        elif kind == "encoded":  # from the device thread: one codec call
            clips, seconds, wall, failures = payload
            t.batch_sizes.append(clips)
            t.batch_seconds.append(seconds)
            t.encode_seconds += wall
            for seq, reason in failures:
                t.failed.append((self.items[seq].audio_id, reason))
                self._finished(seq)
            self.on_batch(clips, seconds)
        elif kind == "device_idle":
            t.device_idle_seconds += payload
        elif kind == "crashed":
            raise RuntimeError(f"stage-2 host worker {worker} failed: {payload}")
        elif kind == "died":
            raise RuntimeError(
                f"stage-2 host worker {worker} died (exit code {payload}); the run stops, a rerun resumes"
            )

    def _published(self, seq: int, done: Published) -> None:
        t, item = self.tally, self.items[seq]
        t.file_seconds += done.encode_file_s
        t.write_seconds += done.write_s
        if done.lease_lost:
            self.guard()  # raises the lease's own reason
            raise LeaseLost(done.lease_lost)
        if done.error:
            (t.store_failed if done.store_failed else t.failed).append((item.audio_id, done.error))
        else:
            t.encoded.append((item, n_codes(item.num_samples)))
            t.audio_seconds += item.num_samples / SAMPLE_RATE
            t.bytes_uploaded += done.nbytes
        self._finished(seq)

    def _finished(self, seq: int) -> None:
        self.budget.release(item_cost(self.items[seq]))
        self.unfinished -= 1

    def _take_in_order(self) -> None:
        """Items in sorted order into batches of one code count (and at most batch_seconds)."""
        while self.next_in_order in self.fetched:
            seq = self.next_in_order
            worker, got = self.fetched.pop(seq)
            self.next_in_order += 1
            item = self.items[seq]
            self.ahead_samples -= item.num_samples
            if got.lease_lost:
                self.guard()
                raise LeaseLost(got.lease_lost)
            if got.error or got.kept:
                if got.kept:
                    self.tally.kept.append(item)
                else:
                    (self.tally.store_failed if got.store_failed else self.tally.failed).append(
                        (item.audio_id, got.error)
                    )
                self._finished(seq)
                continue
            if self.open and (
                batch_key(item.num_samples) != batch_key(self.items[self.open[0].seq].num_samples)
                or sum(len(r.samples) for r in self.open) + item.num_samples > self.batch_samples
            ):
                self._flush()
            self.open.append(_Ready(seq, worker, got.samples))

    def _flush(self) -> None:
        """Lays the open batch out for the device and queues it (waiting while one is queued already)."""
        if not self.open:
            return
        batch, self.open = self.open, []
        t0 = time.perf_counter()
        prepared = self.codec.prepare([r.samples for r in batch])
        self.tally.prepare_seconds += time.perf_counter() - t0
        while True:
            self._raise_failure()
            try:
                self.device_q.put(([(r.seq, r.worker, r.samples) for r in batch], prepared), timeout=1.0)
                return
            except queue.Full:
                continue

    # --- the device thread ----------------------------------------------------------------------

    def _device_loop(self) -> None:
        try:
            first = True
            while True:
                t0 = time.perf_counter()
                job = self.device_q.get()
                if not first:
                    self.inbox.put((-1, "device_idle", time.perf_counter() - t0))
                first = False
                if job is None:
                    return
                batch, prepared = job
                self.guard()  # a run that lost its lease encodes no further
                t0 = time.perf_counter()
                results = _encode_or_split(self.codec, [s for _, _, s in batch], prepared)
                wall = time.perf_counter() - t0
                by_worker: dict[int, list] = {}
                failures = []
                for (seq, worker, _), result in zip(batch, results):
                    if isinstance(result, str):
                        failures.append((seq, result))
                        self.workers.send(worker, "forget", [seq])
                    else:
                        by_worker.setdefault(worker, []).append((seq, result))
                for worker, codes in by_worker.items():
                    self.workers.send(worker, "publish", codes)
                self.inbox.put((-1, "encoded", (len(batch), prepared.audio_seconds, wall, failures)))
                del batch, prepared, results, by_worker, job
                _return_free_memory()
        except BaseException as exc:  # LeaseLost, or the device failing outright
            self.workers.allow_publishing_until(0.0)
            self.failure = exc

    def _poll_lease(self) -> None:
        while not self.done.wait(LEASE_POLL_S):
            self._allow_publishing()

    def _allow_publishing(self) -> None:
        try:
            self.guard()
        except BaseException as exc:
            self.workers.allow_publishing_until(0.0)
            self.failure = self.failure or exc
            return
        if self.failure is None:
            self.workers.allow_publishing_until(self.publish_deadline())


def encode_stream(
    items: list[EncodeItem],
    codec,
    store: ObjectStore,
    settings: StreamSettings | None = None,
    log: Callable[[str], None] = lambda _: None,
    on_batch: Callable[[int, float], None] = lambda n, s: None,
    guard: Callable[[], None] | None = None,
    publish_deadline: Callable[[], float] | None = None,
) -> EncodeTally:
    """`guard` is called before each batch and, every LEASE_POLL_S, for the workers, which publish
    (stale-marker deletes, the file, its marker) only while the last good check allows it: until
    `publish_deadline()` (the lease's own limit), or LEASE_GRACE_S. What `guard` raises (the run's
    lease lost) stops the stream and propagates. `store` must support `reopen()`: each worker opens
    its own clients."""
    return EncodeStream(
        items, codec, store, settings or StreamSettings(), log, on_batch, guard or (lambda: None), publish_deadline
    ).run()


def _encode_or_split(codec, clips: list[np.ndarray], prepared=None) -> list:
    """Codes per clip, or a reason string for a clip that could not be encoded. A failing batch
    (out of memory, a bad clip) is split in halves down to single clips, so one bad clip fails alone."""
    try:
        return codec.encode_batch(prepared if prepared is not None else clips)
    except LeaseLost:
        raise
    except Exception as exc:
        if len(clips) == 1:
            return [f"encoding failed: {type(exc).__name__}: {str(exc)[:300]}"]
        _free_device_memory()
        mid = len(clips) // 2
        return _encode_or_split(codec, clips[:mid]) + _encode_or_split(codec, clips[mid:])


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return None


_LIBC = _libc()


_TRIM_EVERY_S = 1.0
_last_trim = [0.0]


def _return_free_memory() -> None:
    """Gives the heap's free pages back to the OS, at most once a second (each trim makes the next
    allocations fault their pages in again). Every code count is a new set of tensor sizes, and
    glibc keeps what they leave behind in its arenas: a channel's RSS then grows with its number of
    batches (measured on the CPU over 700 shapes: 1.1-1.5 GB of RSS for 255 MB in use; trimmed, it
    stays at the working set)."""
    now = time.monotonic()
    if _LIBC is not None and now - _last_trim[0] >= _TRIM_EVERY_S:
        _last_trim[0] = now
        _LIBC.malloc_trim(0)


def _free_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
