"""Stage 2 for one channel: stream stage-1 segments from the store through decoding, batching,
the codec and upload, with downloads and uploads overlapped with encoding.

    download threads ──> ordered window ──> batches of one code count ──> codec ──> upload threads

The work list is sorted by length, so segments of one code count arrive together and each batch is
formed from consecutive segments: no pool of waiting clips. Memory is bounded by a byte budget
held from the moment a download is started until its upload is done; nothing is staged on disk
(the old workflow put 24 GB batches in /tmp).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from neutts_assets.core.audio import SAMPLE_RATE
from neutts_assets.core.codec import Codec, batch_key
from neutts_assets.core.lease import LeaseLost
from neutts_assets.core.segment_file import Segment, encode_segment, read_segment
from neutts_assets.core.stage2_store import EncodeItem
from neutts_assets.storage.store import ObjectStore, may_pass


@dataclass
class StreamSettings:
    batch_seconds: float = 120.0  # audio per codec call
    budget_bytes: int = 2 * 1024**3  # segment bytes held between download start and upload end
    download_workers: int = 8
    upload_workers: int = 8


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
    download_seconds: float = 0.0  # summed over download threads
    encode_seconds: float = 0.0
    upload_seconds: float = 0.0  # summed over upload threads
    bytes_downloaded: int = 0
    bytes_uploaded: int = 0
    peak_inflight_bytes: int = 0
    wall_seconds: float = 0.0


class ByteBudget:
    """Bytes in flight. One item always fits when nothing is held, so a single large segment
    cannot stall the stream."""

    def __init__(self, limit: int):
        self.limit, self.held, self.peak = limit, 0, 0
        self._cond = threading.Condition()

    def try_take(self, n: int) -> bool:
        with self._cond:
            if self.held and self.held + n > self.limit:
                return False
            self.held += n
            self.peak = max(self.peak, self.held)
            return True

    def release(self, n: int) -> None:
        with self._cond:
            self.held -= n
            self._cond.notify_all()

    def wait_for_room(self, n: int, timeout: float = 5.0) -> None:
        with self._cond:
            self._cond.wait_for(lambda: not self.held or self.held + n <= self.limit, timeout)


def item_cost(item: EncodeItem) -> int:
    # the stage-1 file and the stage-2 file (about the same size), the int16 samples, and the
    # codec's input features (160 float32 per 320 samples: 2 bytes a sample)
    return 2 * item.source_bytes + 4 * item.num_samples


@dataclass
class _Fetched:
    item: EncodeItem
    segment: Segment | None = None
    features: object = None  # the codec's input features, computed here rather than on the encoding thread
    error: str = ""
    store_failed: bool = False  # the error is the store's, not the file's
    kept: bool = False  # the stage-2 file already holds this codec's codes for this audio


def encode_stream(
    items: list[EncodeItem],
    codec: Codec,
    store: ObjectStore,
    settings: StreamSettings = StreamSettings(),
    log: Callable[[str], None] = lambda _: None,
    on_batch: Callable[[int, float], None] = lambda n, s: None,
    guard: Callable[[], None] | None = None,
) -> EncodeTally:
    """`guard` is called before each batch and right before each marker write (a marker publishes
    its file); what it raises (the run's lease lost) stops the stream and propagates."""
    guard = guard or (lambda: None)
    tally, lock = EncodeTally(), threading.Lock()
    budget = ByteBudget(settings.budget_bytes)
    todo = deque(sorted(items, key=lambda i: (i.num_samples, i.audio_id)))
    started = time.perf_counter()

    def fetch(item: EncodeItem) -> _Fetched:
        t0 = time.perf_counter()
        got = _Fetched(item)
        try:
            data = store.read_bytes(item.source_key)
            got.segment = read_segment(data)
            nbytes = len(data)
            if item.unverified:
                got.kept, extra = _holds_current_codes(store, item, got.segment, codec.label)
                nbytes += extra
            if len(got.segment.pcm16) != item.num_samples:
                raise ValueError(f"holds {len(got.segment.pcm16)} samples, the manifest says {item.num_samples}")
            if not got.kept:
                got.features = codec.features(got.segment.pcm16)
        except FileNotFoundError:
            got.error, nbytes = "stage-1 segment file disappeared from the store", 0
        except Exception as exc:  # a corrupt file must not stop the channel
            got.error, nbytes = f"unreadable stage-1 segment file {item.source_key}: {type(exc).__name__}: {exc}", 0
            if may_pass(exc):
                got.error, got.store_failed = f"{type(exc).__name__}: {exc}", True
        with lock:
            tally.download_seconds += time.perf_counter() - t0
            tally.bytes_downloaded += nbytes
        return got

    def upload(got: _Fetched, codes: np.ndarray) -> None:
        t0 = time.perf_counter()
        item, seg = got.item, got.segment
        try:
            for stale in item.stale_markers:  # first: no marker may vouch for the file while it changes
                store.delete(stale)
            seg.codes, seg.codec = codes, codec.label
            data = encode_segment(seg)
            store.write_bytes(item.target_key, data)  # atomic
            guard()
            store.write_bytes(item.marker_key, b"")  # last: the file is finished
            with lock:
                tally.encoded.append((item, len(codes)))
                tally.audio_seconds += item.num_samples / SAMPLE_RATE
                tally.bytes_uploaded += len(data)
        except LeaseLost:
            raise
        except Exception as exc:
            with lock:
                (tally.store_failed if may_pass(exc) else tally.failed).append(
                    (item.audio_id, f"upload failed: {type(exc).__name__}: {exc}"))
        finally:
            with lock:
                tally.upload_seconds += time.perf_counter() - t0
            budget.release(item_cost(item))

    def keep(got: _Fetched) -> None:
        try:
            for stale in got.item.stale_markers:  # they vouch for other codes than the file now holds
                store.delete(stale)
            guard()
            store.write_bytes(got.item.marker_key, b"")
            with lock:
                tally.kept.append(got.item)
        finally:
            budget.release(item_cost(got.item))

    with ThreadPoolExecutor(settings.download_workers, "neutts-dl") as downloads, \
            ThreadPoolExecutor(settings.upload_workers, "neutts-ul") as uploads:
        window: deque[Future] = deque()
        batch: list[_Fetched] = []
        pending_uploads: list[Future] = []

        def fill() -> None:
            while todo and budget.try_take(item_cost(todo[0])):
                window.append(downloads.submit(fetch, todo.popleft()))

        def flush() -> None:
            if not batch:
                return
            guard()  # a run that lost its lease encodes no further
            clips = [g.segment.pcm16 for g in batch]
            t0 = time.perf_counter()
            results = _encode_or_split(codec, clips, [g.features for g in batch])
            dt = time.perf_counter() - t0
            tally.encode_seconds += dt
            tally.batch_sizes.append(len(batch))
            seconds = sum(len(c) for c in clips) / SAMPLE_RATE
            tally.batch_seconds.append(seconds)
            on_batch(len(batch), seconds)
            for got, result in zip(batch, results):
                if isinstance(result, str):
                    with lock:
                        tally.failed.append((got.item.audio_id, result))
                    budget.release(item_cost(got.item))
                else:
                    pending_uploads.append(uploads.submit(upload, got, result))
            batch.clear()

        while todo or window:
            fill()
            if not window:  # the budget is held by the open batch and by uploads in progress
                flush()
                budget.wait_for_room(item_cost(todo[0]))
                continue
            got = window.popleft().result()
            if got.error:
                (tally.store_failed if got.store_failed else tally.failed).append((got.item.audio_id, got.error))
                budget.release(item_cost(got.item))
                continue
            if got.kept:
                pending_uploads.append(uploads.submit(keep, got))
                continue
            if batch and (batch_key(got.item.num_samples) != batch_key(batch[0].item.num_samples)
                          or sum(g.item.num_samples for g in batch) + got.item.num_samples > settings.batch_seconds * SAMPLE_RATE):
                flush()
            batch.append(got)
        flush()
        for f in pending_uploads:
            f.result()
    tally.peak_inflight_bytes = budget.peak
    tally.wall_seconds = time.perf_counter() - started
    return tally


def _encode_or_split(codec: Codec, clips: list[np.ndarray], features: list) -> list:
    """Codes per clip, or a reason string for a clip that could not be encoded. A failing batch
    (out of memory, a bad clip) is split in halves down to single clips, so one bad clip fails alone."""
    try:
        return codec.encode_batch(clips, features)
    except Exception as exc:
        if len(clips) == 1:
            return [f"encoding failed: {type(exc).__name__}: {str(exc)[:300]}"]
        _free_device_memory()
        mid = len(clips) // 2
        return (_encode_or_split(codec, clips[:mid], features[:mid])
                + _encode_or_split(codec, clips[mid:], features[mid:]))


def _free_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _holds_current_codes(store: ObjectStore, item: EncodeItem, source: Segment, label: str) -> tuple[bool, int]:
    """A stage-2 file without its marker (a run killed between the two writes): keep it when it
    holds this codec's codes for exactly the current stage-1 audio."""
    try:
        data = store.read_bytes(item.target_key)
        existing = read_segment(data)
    except FileNotFoundError:
        return False, 0
    except Exception:  # unreadable: encode again, which rewrites it
        return False, 0
    same = (existing.codec == label and len(existing.codes) == item.num_samples // 320
            and np.array_equal(existing.pcm16, source.pcm16) and existing.text == source.text)
    return same, len(data)
