"""The object-store interface every stage talks to, and the key rules all backends share."""

from __future__ import annotations

import abc
import errno
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


class StoreError(Exception):
    """An object could not be read or written; the message names the object."""


class StoreCheckError(StoreError):
    """The connectivity check failed. `part` says which: endpoint, credentials, bucket or permissions."""

    def __init__(self, part: str, message: str):
        super().__init__(f"{part}: {message}")
        self.part = part


class ObjectChanged(StoreError):
    """The object is no longer the version the caller pinned (it was replaced since it was listed)."""


class UnsafeKeyError(StoreError, ValueError):
    """A key would escape the store's root or is not a plain relative name."""


class ObjectUnreadable(StoreError):
    """The object exists but cannot be read as a file, for a reason of its own: not a regular file,
    permission denied, a dangling symbolic link, a symbolic-link loop, a folder. Permanent: a rerun
    fails the same way until the object changes. `what` names it (its key and store, or a folder)."""

    def __init__(self, what: str, reason: str):
        super().__init__(f"cannot read {what}: {reason}")
        self.what, self.reason = what, reason

    def __reduce__(self):  # pickled by its parts (the default would call __init__ with the message alone)
        return type(self), (self.what, self.reason)


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the store's root prefix
    size: int
    # What changes when the object is rewritten: the GCS generation, the S3 ETag, or a local
    # file's mtime and size (a source folder's also its inode and ctime). Compared for equality only.
    version: str
    updated: datetime | None = None


# What the object itself is (its mode, its name, what its permissions let us do); not the disk, the
# network or the server.
_PERMANENT_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.ELOOP, errno.ENAMETOOLONG, errno.ENXIO, errno.EISDIR, errno.ENOTDIR}
)


def is_permanent(exc: BaseException) -> bool:
    """Whether a failure to read or write an object is the object's own, so a rerun fails the same
    way until the object changes: it is marked bad (excluded, reported) rather than retried.

    Permanent: ObjectUnreadable, UnsafeKeyError, PermissionError, IsADirectoryError,
    NotADirectoryError, and any OSError whose errno is EACCES, EPERM, ELOOP, ENAMETOOLONG, ENXIO,
    EISDIR or ENOTDIR. Everything else is transient: timeouts, connection errors, ObjectChanged
    (listed again, it is read at its new version), any other StoreError (a store that failed after
    its client's retries), OSErrors of the machine (EIO, ENOSPC, EMFILE, ENOMEM, EAGAIN), and
    whatever is unknown, so that a doubt costs a retry, never an object wrongly marked bad.
    """
    if isinstance(exc, (ObjectUnreadable, UnsafeKeyError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return True
    return isinstance(exc, OSError) and exc.errno in _PERMANENT_ERRNOS


def may_pass(exc: BaseException) -> bool:
    """The store failed, after the client's own retries, rather than the object being bad: a rerun may
    pass, so the run fails and publishes nothing that would leave the object out."""
    return isinstance(exc, StoreError) and not is_permanent(exc)


# Marks a write in progress: listings hide such names and clean-up deletes them, so no real object
# may carry it.
TEMP_MARK = ".neutts-tmp-"


def check_key(key: str) -> str:
    """Rejects keys that could name something outside the store's root once joined to it."""
    if not key or key.startswith("/") or "\\" in key:
        raise UnsafeKeyError(f"unsafe object key {key!r}: must be a relative name")
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise UnsafeKeyError(f"unsafe object key {key!r}: contains control characters")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise UnsafeKeyError(f"unsafe object key {key!r}: empty, '.' or '..' path component")
    if TEMP_MARK in key:
        raise UnsafeKeyError(f"unsafe object key {key!r}: contains {TEMP_MARK!r}, reserved for temporary files")
    return key


def check_folder(prefix: str) -> str:
    """A folder's prefix: "" (the root) or a safe key ending in "/"."""
    if prefix:
        if not prefix.endswith("/"):
            raise UnsafeKeyError(f"folder prefix {prefix!r} must be empty or end with '/'")
        check_key(prefix[:-1])
    return prefix


class ObjectStore(abc.ABC):
    """A flat namespace of keys under one root (a folder, or a bucket plus prefix).

    Every write is atomic: a reader sees the old object, the new one, or none, never a part.
    """

    @abc.abstractmethod
    def describe(self) -> str:
        """Where this store points, for logs and metadata: never includes a credential."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, in no particular order."""

    @abc.abstractmethod
    def list_folders(self, prefix: str = "") -> list[str]:
        """The names (not keys) of the folders right under `prefix` ("" or ending in "/"), sorted;
        [] when there is none. Names the folders a channel might have meant when it finds nothing."""

    @abc.abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abc.abstractmethod
    def download(self, key: str, path: Path, version: str | None = None) -> int:
        """Copies an object to a local file and returns its size; streams, never loads it whole.

        With `version` (an ObjectInfo.version from a listing) the copy is pinned to it: raises
        ObjectChanged if the object was replaced since, so what is cut is what was listed."""

    @abc.abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None: ...

    def upload(self, path: Path, key: str) -> int:
        """Copies a local file to an object and returns its size. Backends stream it (multipart,
        resumable upload, file copy) so a shard of hundreds of MB never sits in memory; this
        fallback reads it whole."""
        data = Path(path).read_bytes()
        self.write_bytes(key, data)
        return len(data)

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Removes an object; a missing object is not an error."""

    @abc.abstractmethod
    def check(self, write: bool = False) -> None:
        """Raises StoreCheckError naming the endpoint, credentials or bucket when unreachable.

        With write=True it also writes and deletes a probe object, so permission to write is proven.
        """

    def reopen(self) -> ObjectStore:
        """The same store with clients of its own, for another process. Stage 2's host workers are
        forked from the run: an HTTP connection pool inherited from the parent would be shared by
        several processes (interleaved requests on one socket), so each worker opens its own."""
        raise NotImplementedError(f"{type(self).__name__} cannot be opened in another process")

    def remove_orphan_temporaries(self, prefix: str = "") -> int:
        """Removes what writers killed mid-write left behind (under `prefix`); returns how many.

        A folder keeps temporary files; S3 keeps the parts of a multipart upload never completed
        (invisible to listings, still stored); GCS drops an unfinished resumable upload itself.
        """
        return 0

    def add_retries(self, counts: dict[str, int]) -> None:
        """Counts retries made for this store by another process (a stage-2 host worker's reopened copy)."""
        counter = getattr(self, "retry_counter", None)
        if counter is not None:
            counter.merge(counts)

    @property
    def retries(self) -> dict[str, int]:
        """Retries the client made through this store, by 'operation: reason'; empty for a folder."""
        counter = getattr(self, "retry_counter", None)
        return counter.snapshot() if counter is not None else {}

    # Conditional writes: the one primitive each backend has for "only if nobody got there first"
    # (a link or a lock on a folder, S3 If-None-Match / If-Match, GCS generation preconditions).
    # Leases (pipeline/orchestration/lease.py) are built on them. A version here is opaque and only compared.

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and the version a conditional write compares against, or None if absent."""
        raise NotImplementedError(f"{type(self).__name__} has no conditional writes")

    def create_if_absent(self, key: str, data: bytes) -> str | None:
        """Writes the object only if no object has that key; its new version, or None if one exists."""
        raise NotImplementedError(f"{type(self).__name__} has no conditional writes")

    def replace_if_version(self, key: str, data: bytes, version: str) -> str | None:
        """Overwrites the object only if it is still at `version`; the new version, or None if it
        changed or is gone."""
        raise NotImplementedError(f"{type(self).__name__} has no conditional writes")

    def exists(self, key: str) -> bool:
        try:
            self.read_bytes(key)
            return True
        except FileNotFoundError:
            return False

    def read_bytes_or_none(self, key: str) -> bytes | None:
        try:
            return self.read_bytes(key)
        except FileNotFoundError:
            return None


PROBE_KEY = "_neutts_connectivity_probe"
