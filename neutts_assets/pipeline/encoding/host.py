"""Stage 2's per-segment host work, in worker processes so that it scales with the host's cores.

Reading a stage-1 file, parsing the npz, decoding its FLAC, writing the stage-2 file and its
marker hold the GIL for most of their ~2.5 ms per segment: in threads of one process they
serialise (measured: 1.2x from 1 to 2 threads), and the device would wait for the host. So the run
forks `host_workers` processes; each does the whole per-segment host work, store I/O included,
with a few threads of its own so that store latency overlaps. The run process only batches the
decoded samples and drives the device.

    run process                          host worker (forked; clients of its own)
      fetch [(seq, item)] ──────────>    read stage-1 file, decode to int16, hold the file
                 <──────────── fetched   samples, or the reason; or "kept" (see below)
      publish [(seq, codes)] ───────>    stage-2 file = stage-1 file + codes (with_codes):
                 <────────── published   delete stale markers, write the file, write its marker
      forget [seq]                       drop a held file whose segment failed to encode

A stage-2 file left without its marker (a run killed between the two writes) is read while
fetching; when it holds this codec's codes for the current audio, its marker is written and the
segment is "kept" without encoding.

Publishing steps ask the run's lease first. The lease lives in the run process, which checks it
every LEASE_POLL_S and stores "valid until" in shared memory; a worker publishes only before that
time. The lease's own slack (it fails a check a quarter of its TTL before it can be taken over)
covers the poll interval many times over.

Workers are forked rather than spawned: they start in milliseconds, and they inherit the store
objects (a test's wrapped store too). They die with the run (PR_SET_PDEATHSIG), so a killed run
leaves no writer behind.
"""

from __future__ import annotations

import ctypes
import gc
import io
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from neutts_assets.pipeline.encoding.store import EncodeItem
from neutts_assets.pipeline.orchestration.lease import LeaseLost
from neutts_assets.pipeline.segments.segment_file import (
    read_audio,
    same_audio_and_text,
    same_members_but_codes,
    with_codes,
)
from neutts_assets.storage.store import ObjectStore, may_pass

LEASE_POLL_S = 0.2  # how often the run process checks its lease for the workers
LEASE_GRACE_S = 1.0  # how long one good check lets the workers publish


@dataclass
class Fetched:
    samples: np.ndarray | None = None  # int16, None for a failure or a kept segment
    error: str = ""
    store_failed: bool = False  # the error is the store's, not the file's: a rerun may pass
    kept: bool = False  # an unmarked stage-2 file already held this codec's codes; its marker is written
    lease_lost: str = ""
    nbytes: int = 0
    read_s: float = 0.0
    decode_s: float = 0.0
    write_s: float = 0.0


@dataclass
class Published:
    error: str = ""
    store_failed: bool = False
    lease_lost: str = ""
    nbytes: int = 0
    encode_file_s: float = 0.0  # building the stage-2 file's bytes
    write_s: float = 0.0


class _Worker:
    """One host worker's state: its store, the stage-1 files it holds until their codes come back."""

    def __init__(self, conn, store: ObjectStore, label: str, valid_until, io_threads: int):
        self.conn, self.store, self.label, self.valid_until = conn, store, label, valid_until
        self.held: dict[int, tuple[EncodeItem, bytes]] = {}
        self.send_lock, self.held_lock = threading.Lock(), threading.Lock()
        self.pool = ThreadPoolExecutor(io_threads, "neutts-host-io")

    def send(self, kind: str, payload) -> None:
        with self.send_lock:
            self.conn.send((kind, payload))

    def lease_ok(self) -> None:
        if time.time() > self.valid_until.value:
            raise LeaseLost("the run's lease check failed or stopped: nothing more is published")

    def run(self) -> None:
        while True:
            kind, payload = self.conn.recv()
            if kind == "fetch":
                self._each(payload, "fetched", self.fetch)
            elif kind == "publish":
                self._each(payload, "published", self.publish)
            elif kind == "forget":
                with self.held_lock:
                    for seq in payload:
                        self.held.pop(seq, None)
            elif kind == "stop":
                self.pool.shutdown(wait=True)
                self.send("stopped", self.store.retries)
                return

    def _each(self, work: list, kind: str, fn: Callable) -> None:
        """Runs fn(seq, arg) for every (seq, arg) on the io threads; one reply for the whole list, so
        the run process handles one message per chunk, not per segment."""
        results: list = []
        left = [len(work)]

        def one(seq, arg) -> None:
            try:
                result = fn(seq, arg)
            except BaseException:  # a bug, not a bad segment: the run fails with it
                self.send("crashed", f"{kind} of segment #{seq}: {traceback.format_exc()}")
                return
            with self.held_lock:
                results.append((seq, result))
                left[0] -= 1
                last = left[0] == 0
            if last:
                self.send(kind, results)

        for seq, arg in work:
            self.pool.submit(one, seq, arg)

    def fetch(self, seq: int, item: EncodeItem) -> Fetched:
        got, t0 = Fetched(), time.perf_counter()
        try:
            data = self.store.read_bytes(item.source_key)
            got.nbytes, t1 = len(data), time.perf_counter()
            got.read_s = t1 - t0
            samples = read_audio(data)
            got.decode_s = time.perf_counter() - t1
            if len(samples) != item.num_samples:
                raise ValueError(f"holds {len(samples)} samples, the manifest says {item.num_samples}")
            if item.unverified and self._keep(item, data, got):
                return got
            got.samples = samples
            with self.held_lock:
                self.held[seq] = (item, data)
        except LeaseLost as exc:
            got.lease_lost = str(exc)
        except FileNotFoundError:
            got.error, got.nbytes = "stage-1 segment file disappeared from the store", 0
        except Exception as exc:  # a corrupt file must not stop the channel
            got.error, got.nbytes = f"unreadable stage-1 segment file {item.source_key}: {type(exc).__name__}: {exc}", 0
            if may_pass(exc):
                got.error, got.store_failed = f"{type(exc).__name__}: {exc}", True
        return got

    def _keep(self, item: EncodeItem, source: bytes, got: Fetched) -> bool:
        """A stage-2 file without its marker: keep it (write the marker) when it holds this codec's
        codes for exactly the current stage-1 audio and text."""
        try:
            existing = self.store.read_bytes(item.target_key)
        except FileNotFoundError:
            return False
        got.nbytes += len(existing)
        try:
            with np.load(io.BytesIO(existing), allow_pickle=False) as npz:
                label = str(npz["codec"][()]) if "codec" in npz.files else ""
                codes = np.asarray(npz["codes"]) if "codes" in npz.files else np.zeros(0, np.int32)
            same = (
                label == self.label and len(codes) == item.num_samples // 320 and same_audio_and_text(existing, source)
            )
            # Same samples in another file format (a stage-1 file re-cut into the current format):
            # the file is rewritten around the codes it has, which costs no encoding.
            rewrite = same and not same_members_but_codes(existing, source)
        except Exception:  # unreadable: encode again, which rewrites it
            return False
        if not same:
            return False
        t0 = time.perf_counter()
        for stale in item.stale_markers:  # they vouch for other codes than the file holds
            self.lease_ok()
            self.store.delete(stale)
        if rewrite:
            self.lease_ok()
            self.store.write_bytes(item.target_key, with_codes(source, codes, self.label))
        self.lease_ok()
        self.store.write_bytes(item.marker_key, b"")
        got.kept, got.write_s = True, time.perf_counter() - t0
        return True

    def publish(self, seq: int, codes: np.ndarray) -> Published:
        with self.held_lock:
            item, source = self.held.pop(seq)
        done = Published()
        try:
            t0 = time.perf_counter()
            data = with_codes(source, codes, self.label)
            t1 = time.perf_counter()
            done.encode_file_s = t1 - t0
            for stale in item.stale_markers:  # first: no marker may vouch for the file while it changes
                self.lease_ok()
                self.store.delete(stale)
            self.lease_ok()
            self.store.write_bytes(item.target_key, data)  # atomic
            self.lease_ok()
            self.store.write_bytes(item.marker_key, b"")  # last: the file is finished
            done.nbytes, done.write_s = len(data), time.perf_counter() - t1
        except LeaseLost as exc:
            done.lease_lost = str(exc)
        except Exception as exc:
            done.error, done.store_failed = f"upload failed: {type(exc).__name__}: {exc}", may_pass(exc)
        return done


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when the thread that forked it (the run) ends, however it ends."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: workers still stop when their pipe closes
        pass
    if os.getppid() != parent:  # the run died before prctl took effect
        os._exit(1)


def _worker_main(conn, store: ObjectStore, label: str, valid_until, io_threads: int, parent: int) -> None:
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the run, which stops its workers
    try:
        worker = _Worker(conn, store.reopen(), label, valid_until, io_threads)
        worker.run()
    except (EOFError, OSError):  # the run is gone
        os._exit(1)
    except BaseException:
        try:
            conn.send(("crashed", traceback.format_exc()))
        finally:
            os._exit(1)


class HostWorkers:
    """The run process's side: starts the workers, sends them work, and hands every message they
    send to `on_message(worker, kind, payload)` from one receiving thread ("died" when one exits
    unasked)."""

    def __init__(
        self, n: int, store: ObjectStore, label: str, io_threads: int, on_message: Callable[[int, str, object], None]
    ):
        ctx = mp.get_context("fork")
        self.valid_until = ctx.Value("d", 0.0, lock=False)  # shared memory: a float, written only here
        self.on_message, self.stopping = on_message, False
        self.conns, self.procs, self._locks = [], [], []
        self._stopped: dict[int, dict] = {}
        # Objects that exist now are frozen out of the collector while forking: a worker's collections
        # would otherwise walk (and so copy, page by page) everything it inherited, the plan included.
        gc.freeze()
        try:
            self._start(ctx, n, store, label, io_threads)
        finally:
            gc.unfreeze()
        self._receiver = threading.Thread(target=self._receive, name="neutts-host-receiver", daemon=True)
        self._receiver.start()

    def _start(self, ctx, n: int, store: ObjectStore, label: str, io_threads: int) -> None:
        for i in range(n):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(
                target=_worker_main,
                name=f"neutts-host-{i}",
                daemon=True,
                args=(theirs, store, label, self.valid_until, io_threads, os.getpid()),
            )
            proc.start()
            theirs.close()
            self.conns.append(ours)
            self.procs.append(proc)
            self._locks.append(threading.Lock())

    def __len__(self) -> int:
        return len(self.procs)

    def allow_publishing_until(self, t: float) -> None:
        self.valid_until.value = t

    def send(self, worker: int, kind: str, payload) -> None:
        with self._locks[worker]:
            self.conns[worker].send((kind, payload))

    def _receive(self) -> None:
        live = {c: i for i, c in enumerate(self.conns)} | {p.sentinel: i for i, p in enumerate(self.procs)}
        while live:
            for ready in mp.connection.wait(list(live)):
                i = live[ready]
                if ready is self.procs[i].sentinel:
                    del live[ready]
                    if i not in self._stopped and not self.stopping:
                        self.procs[i].join(5)  # reaps it: its exit code is known only then
                        self.on_message(i, "died", self.procs[i].exitcode)
                    continue
                try:
                    kind, payload = ready.recv()
                except (EOFError, OSError):
                    del live[ready]
                    continue
                if kind == "stopped":
                    self._stopped[i] = payload
                self.on_message(i, kind, payload)

    def stop(self, timeout: float = 120.0) -> dict[str, int]:
        """Lets each worker finish what it has, then ends it; returns their stores' retries, summed."""
        for i in range(len(self)):
            self.send(i, "stop", None)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        self.stopping = True
        self.kill()
        retries: dict[str, int] = {}
        for counts in self._stopped.values():
            for k, v in counts.items():
                retries[k] = retries.get(k, 0) + v
        return retries

    def kill(self) -> None:
        """Ends every worker now: nothing more is published (used when the run fails)."""
        self.stopping = True
        self.valid_until.value = 0.0
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
        for proc in self.procs:
            proc.join(10)
        self._receiver.join(10)
        for conn in self.conns:
            conn.close()
