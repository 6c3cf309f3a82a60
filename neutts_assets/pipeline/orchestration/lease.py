"""One writer per (asset, channel): a lease object in the segment store.

Dagster's run queue keeps two runs of a channel apart (one run per `neutts/channel` tag), but
`dagster asset materialize` and the CLI execute in-process and never pass through the queue. So
every stage that writes a channel's objects first takes this lease, in the store it writes to:

    _leases/{asset}/{channel}.json   run id, host, boot, pid, heartbeat, expiry, a nonce

- Taking it is the backend's create-if-absent (a hard link in a folder; S3 If-None-Match: *; GCS
  if_generation_match=0), so of two runs started at once exactly one gets it. The other stops
  at once with LeaseHeld, naming the asset, the channel and the holding run: waiting would hold a
  machine idle only to find, once the first run is done, nothing left to do.
- A background thread renews the heartbeat. Release, on failure too, is a conditional write that
  marks the lease released (not a delete: the GCS emulator ignores preconditions on deletes, and
  some S3-compatible stores have no conditional delete); the next run takes a released lease over.
- A stale lease is taken over: its heartbeat expired (a run dead on another host), or it is from
  this host and boot and its process is gone (a SIGKILLed run: the restart need not wait). The
  take-over is a conditional replace on the version read, so of two takers only one wins.
- A holder that finds its lease gone or replaced (it stalled past the expiry and was taken over)
  knows it has lost: `check()` raises LeaseLost, and so does leaving the `with` block. `check()`
  also raises once the holder's own clock is within TTL/4 of the expiry its last successful renewal
  set: a renewal stuck on an unreachable store must not leave the run writing into a lease another
  run may take over. Writers call it right before each publishing step.
- A conditional write whose client raised may still have landed (its retries spent after the write
  happened). A record with this lease's run, host, pid and acquisition time is then ours: it is
  adopted (its version too) and the renewal or release written again over it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from neutts_assets.storage.processes import pid_alive, process_started

LEASE_PREFIX = "_leases/"
DEFAULT_TTL_S = 120.0  # a run dead on another host blocks its channel this long; renewals every TTL/6


def lease_key(asset: str, channel: str) -> str:
    return f"{LEASE_PREFIX}{asset}/{channel}.json"


class LeaseHeld(RuntimeError):
    """Another live run holds the lease: this one must not write."""

    def __init__(self, asset: str, channel: str, holder: LeaseRecord, now: float | None = None):
        now = time.time() if now is None else now
        self.asset, self.channel, self.holder = asset, channel, holder
        super().__init__(
            f"{asset} for channel {channel!r} is already being materialized by run {holder.run_id} "
            f"(host {holder.host}, pid {holder.pid}, since {_iso(holder.acquired_at)}, last heartbeat "
            f"{max(0.0, now - holder.heartbeat_at):.0f} s ago). This run stopped before writing anything. "
            f"Let that run finish; if it is dead, its lease is taken over once it expires at {_iso(holder.expires_at)} "
            f"(at once when it ran on this host)."
        )


class LeaseLost(RuntimeError):
    """This run's lease expired and another run took it over: what this run wrote may be overwritten."""


@dataclass
class LeaseRecord:
    asset: str
    channel: str
    run_id: str
    host: str
    boot_id: str
    pid: int
    pid_started: str  # the process's start time: a pid reused by another process is not the holder
    acquired_at: float
    heartbeat_at: float
    expires_at: float
    nonce: str
    taken_over_from: dict = field(default_factory=dict)
    released_at: float = 0.0  # set by a release: the lease is free

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> LeaseRecord:
        d = json.loads(data)
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="seconds")


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def stale_reason(holder: LeaseRecord, now: float | None = None) -> str | None:
    """Why the holder can be taken over, or None while it may still be running."""
    now = time.time() if now is None else now
    if holder.released_at:
        return "released"
    if now > holder.expires_at:
        return f"its heartbeat expired {now - holder.expires_at:.0f} s ago"
    if holder.host == socket.gethostname() and holder.boot_id == _boot_id():
        if not pid_alive(holder.pid):
            return f"its process {holder.pid} on this host is gone"
        started = process_started(holder.pid)
        if started and holder.pid_started and started != holder.pid_started:
            return f"its process {holder.pid} on this host is gone (the pid now belongs to another process)"
    return None


class Lease:
    """A held lease. Use as a context manager: renewed while inside, released on leaving."""

    def __init__(
        self,
        store,
        key: str,
        record: LeaseRecord,
        version: str,
        ttl_s: float,
        log: Callable[[str], None] = lambda _: None,
    ):
        self.store, self.key, self.record, self.version, self.ttl_s, self.log = store, key, record, version, ttl_s, log
        self.lost: str | None = None
        self.released = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def taken_over_from(self) -> dict:
        return self.record.taken_over_from

    def __enter__(self) -> Lease:
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease {self.key}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release()
        if exc_type is None:
            self.check()

    def check(self) -> None:
        """Raises LeaseLost if another run took this lease over, or, while held, if it is so close to
        its expiry (TTL/4 left since the last successful renewal) that another run may take it over
        before this one's next write lands."""
        lost = self.lost
        if not lost and not self.released:
            now, record = time.time(), self.record
            if now > record.expires_at - self.ttl_s / 4:
                lost = (
                    f"it was last renewed {now - record.heartbeat_at:.0f} s ago and expires at {_iso(record.expires_at)} "
                    f"(the store could not be reached to renew it)"
                )
        if lost:
            raise LeaseLost(
                f"{self.record.asset} for channel {self.record.channel!r}: run {self.record.run_id} lost its lease: "
                f"{lost}. Another run may have written the same objects; run it again."
            )

    def valid_until(self) -> float:
        """The time after which check() raises, as things stand (0 once lost): what a writer in
        another process compares its clock with before each publishing step."""
        if self.lost or self.released:
            return 0.0
        return self.record.expires_at - self.ttl_s / 4

    def _ours(self, record: LeaseRecord | None) -> bool:
        """The record is this lease's, written by one of our own calls (maybe one whose client raised)."""
        mine = self.record
        return record is not None and (record.run_id, record.host, record.pid, record.acquired_at) == (
            mine.run_id,
            mine.host,
            mine.pid,
            mine.acquired_at,
        )

    def renew(self) -> bool:
        with self._lock:
            if self.lost or self.released:
                return False
            now = time.time()
            fresh = LeaseRecord(
                **{
                    **asdict(self.record),
                    "heartbeat_at": now,
                    "expires_at": now + self.ttl_s,
                    "nonce": uuid.uuid4().hex,
                }
            )
            for _ in range(3):
                version = self.store.replace_if_version(self.key, fresh.to_json(), self.version)
                if version is not None:
                    break
                # A retried write whose first attempt landed looks the same: check whose it is.
                current = self.store.read_versioned(self.key)
                holder = _parse(current[0]) if current else None
                if holder is not None and holder.nonce == fresh.nonce:
                    version = current[1]
                    break
                if self._ours(holder) and not holder.released_at:
                    # An earlier renewal of ours landed though its call raised: our version is that one.
                    self.record, self.version = holder, current[1]
                    continue
                self.lost = f"the lease is now held by {holder.run_id if holder else 'nobody (deleted)'}"
                return False
            else:
                raise RuntimeError(f"lease {self.key}: the renewal kept meeting versions of its own; retrying")
            self.record, self.version = fresh, version
            return True

    def _renew_loop(self) -> None:
        interval = self.ttl_s / 6
        while not self._stop.wait(interval):
            try:
                if not self.renew():
                    if self.lost:
                        self.log(f"lease {self.key}: lost: {self.lost}")
                    return
            except Exception as exc:  # a store hiccup: the next renewal tries again, well before the expiry
                self.log(f"lease {self.key}: renewal failed ({type(exc).__name__}: {str(exc)[:200]}); retrying")
                if time.time() > self.record.expires_at:
                    self.lost = "it expired while the store could not be reached"
                    return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            if self.lost or self.released:
                return  # a lost lease is someone else's now: leave it
            self.released = True
            done = LeaseRecord(**{**asdict(self.record), "released_at": time.time(), "nonce": uuid.uuid4().hex})
            failure = None
            for _ in range(3):
                try:
                    if self.store.replace_if_version(self.key, done.to_json(), self.version) is not None:
                        return
                    current = self.store.read_versioned(self.key)
                    holder = _parse(current[0]) if current else None
                    if not self._ours(holder):
                        self.lost = "it was taken over before its release"
                        return
                    if holder.released_at:
                        return  # an earlier attempt of this release landed though its call raised
                    self.version = current[1]  # a renewal or release write of ours landed unseen: release over it
                except Exception as exc:  # maybe it landed: the next pass reads what is there
                    failure = exc
            # Left to expire: the next run takes it over.
            why = f"{type(failure).__name__}: {str(failure)[:200]}" if failure else "its record kept changing"
            self.log(f"lease {self.key}: release failed ({why}); it expires in {self.ttl_s:.0f} s")


def _parse(data: bytes) -> LeaseRecord | None:
    try:
        return LeaseRecord.from_json(data)
    except (ValueError, TypeError, KeyError):
        return None


def _nonce(data: bytes) -> str | None:
    record = _parse(data)
    return record.nonce if record else None


def acquire(
    store,
    asset: str,
    channel: str,
    run_id: str,
    ttl_s: float = DEFAULT_TTL_S,
    log: Callable[[str], None] = lambda _: None,
    renew_store=None,
) -> Lease:
    """Takes the (asset, channel) lease in `store`, or raises LeaseHeld naming the run that holds it.
    `renew_store`: the same store through a client that gives up sooner, for the renewals and the
    release (a call that outlasts the lease is worse than one that fails and is tried again); taking
    it may wait as long as any read, since nothing is held yet."""
    key = lease_key(asset, channel)
    for _ in range(10):  # each pass ends in a win, LeaseHeld, or a change by another run to look at again
        now = time.time()
        mine = _new_record(asset, channel, run_id, now, ttl_s)
        version = store.create_if_absent(key, mine.to_json())
        if version is not None:
            return Lease(renew_store or store, key, mine, version, ttl_s, log)
        current = store.read_versioned(key)
        if current is None:
            continue  # released in between: try to create it again
        data, current_version = current
        holder = _parse(data)
        if holder is not None and holder.nonce == mine.nonce:  # our create landed; its answer was lost
            return Lease(renew_store or store, key, mine, current_version, ttl_s, log)
        why = "it cannot be read" if holder is None else stale_reason(holder, now)
        if why is None:
            raise LeaseHeld(asset, channel, holder, now)
        version = _take_over(store, key, mine, holder, why, current_version)
        if version is not None:
            if mine.taken_over_from:
                log(f"lease {key}: taken over from run {mine.taken_over_from['run_id']} ({why})")
            return Lease(renew_store or store, key, mine, version, ttl_s, log)
        # another run took it over first, or it was released: look again
    raise RuntimeError(f"{asset} for channel {channel!r}: the lease {key} kept changing; try again")


def _new_record(asset: str, channel: str, run_id: str, now: float, ttl_s: float) -> LeaseRecord:
    """This process's record for the lease, with a fresh nonce: how it knows its own write in the store."""
    pid = os.getpid()
    return LeaseRecord(
        asset=asset,
        channel=channel,
        run_id=run_id,
        host=socket.gethostname(),
        boot_id=_boot_id(),
        pid=pid,
        pid_started=process_started(pid),
        acquired_at=now,
        heartbeat_at=now,
        expires_at=now + ttl_s,
        nonce=uuid.uuid4().hex,
    )


def _take_over(store, key: str, mine: LeaseRecord, holder: LeaseRecord | None, why: str, version: str) -> str | None:
    """Replaces a stale holder's record with `mine`, conditional on the version read, so of two takers only
    one wins. Returns the new version, or None when another run changed the record first."""
    if why != "released":
        mine.taken_over_from = {
            "run_id": holder.run_id if holder else "?",
            "host": holder.host if holder else "?",
            "pid": holder.pid if holder else 0,
            "reason": why,
        }
    new_version = store.replace_if_version(key, mine.to_json(), version)
    if new_version is None:
        # A retried replace whose first attempt landed fails its precondition: the nonce tells whose record it is.
        again = store.read_versioned(key)
        if again is not None and _nonce(again[0]) == mine.nonce:
            new_version = again[1]
    return new_version
