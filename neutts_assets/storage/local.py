"""A local folder as an object store: the embedded default, and the users' layout on disk."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from neutts_assets.storage.processes import pid_alive
from neutts_assets.storage.store import (
    PROBE_KEY,
    TEMP_MARK,
    ObjectChanged,
    ObjectInfo,
    ObjectStore,
    ObjectUnreadable,
    StoreCheckError,
    UnsafeKeyError,
    check_folder,
    check_key,
)


class LocalStore(ObjectStore):
    def __init__(self, root: str | os.PathLike, create: bool = True, file_identity: bool = False):
        # file_identity: versions also hold each file's inode and ctime (_file_version), for a source
        # folder that people write by hand. Our own store keeps mtime and size: its writes are atomic
        # renames, and a copy of it (rsync -a, a restore) must keep its versions, which stage 2's
        # markers and the dataset's build record name.
        self.file_identity = file_identity
        self.root = Path(root).expanduser().resolve()
        if create:
            self.root.mkdir(parents=True, exist_ok=True)

    def describe(self) -> str:
        return f"local folder {self.root}"

    def reopen(self) -> LocalStore:
        return type(self)(self.root, create=False, file_identity=self.file_identity)

    def _path(self, key: str, writing: bool = False) -> Path:
        check_key(key)
        if not writing:
            # Reading through a symlink the folder's owner made (audio kept on another disk) is
            # fine: check_key already stops a key from naming anything outside the root.
            return self.root / key
        path = (self.root / key).resolve()
        # Belt and braces for writes and deletes: a symlink inside the root must not lead them out of it.
        if path != self.root and self.root not in path.parents:
            raise UnsafeKeyError(f"object key {key!r} resolves outside {self.root}")
        return path

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Walk only the folder the prefix names (or its parent, for a partial last component).
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / folder if folder else self.root
        if not start.is_dir():
            return

        def unreadable_folder(exc: OSError) -> None:
            # os.walk hands us what os.scandir raised, and goes on without that folder. The start
            # folder unreadable would list as empty, which reads as "no audio": refused instead. A
            # nested one is skipped: its files would be refused as "in a sub-folder" anyway.
            if Path(exc.filename) != start or isinstance(exc, (FileNotFoundError, NotADirectoryError)):
                return  # nested, or the start folder went away since: nothing there
            if isinstance(exc, PermissionError):
                raise ObjectUnreadable(f"folder {start}", "permission denied") from exc
            raise exc

        for dirpath, dirnames, filenames in os.walk(start, onerror=unreadable_folder):
            dirnames.sort()
            for name in sorted(filenames):
                if TEMP_MARK in name:
                    continue
                full = Path(dirpath) / name
                key = full.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    st = _entry_stat(full)
                except PermissionError as exc:
                    # A folder whose names can be read but not its files' (r without x, `chmod -R 644`).
                    if Path(dirpath) != start:
                        continue  # nested: its files would be refused as in a sub-folder anyway
                    raise ObjectUnreadable(
                        f"folder {start}", "permission denied (its names can be read, not its files)"
                    ) from exc
                if st is None:
                    continue
                yield ObjectInfo(
                    key=key,
                    size=st.st_size,
                    version=_file_version(st, self.file_identity),
                    # With file identity the ctime too: a rewrite with its mtime put back is new to
                    # the sensor's watermark (source_watch), as it is to the version.
                    updated=datetime.fromtimestamp(
                        max(st.st_mtime, st.st_ctime) if self.file_identity else st.st_mtime, tz=timezone.utc
                    ),
                )

    def list_folders(self, prefix: str = "") -> list[str]:
        start = self.root / check_folder(prefix)
        try:
            with os.scandir(start) as entries:
                # is_dir() follows symbolic links: a link to a folder (audio kept on another disk) is one.
                return sorted(e.name for e in entries if _is_folder(e))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except PermissionError as exc:
            raise ObjectUnreadable(f"folder {start}", "permission denied") from exc

    def _open(self, key: str) -> BinaryIO:
        """The object opened for reading, as a binary file; raises ObjectUnreadable naming what it
        is when it is not a regular file, and FileNotFoundError when it is gone.

        Never blocks: a FIFO opened without O_NONBLOCK waits for a writer forever, and a device
        (a symbolic link to /dev/zero) would be read forever, so what was opened is checked before
        a byte is read. O_NONBLOCK changes nothing for a regular file, so it stays set. O_NOCTTY: a
        terminal opened here must not become the process's controlling terminal."""
        path = self._path(key)
        where = f"{key!r} in {self.describe()}"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except (FileNotFoundError, NotADirectoryError):
            if os.path.islink(path):
                raise ObjectUnreadable(where, f"dangling symbolic link (to {os.readlink(path)!r})") from None
            raise FileNotFoundError(f"no object {key!r} in {self.describe()}") from None
        except OSError as exc:
            reason = _OPEN_ERRORS.get(exc.errno)
            if reason is None:
                raise
            raise ObjectUnreadable(where, reason) from exc
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                kind = "a folder, not a file" if stat.S_ISDIR(mode) else f"not a regular file ({_kind(mode)})"
                raise ObjectUnreadable(where, kind)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def read_bytes(self, key: str) -> bytes:
        with self._open(key) as f:
            return f.read()

    def download(self, key: str, path: Path, version: str | None = None) -> int:
        with self._open(key) as src:
            try:
                # A file system has no conditional read. The version is checked on what was opened, before
                # the copy (replaced since the listing), and after it on what was opened (written in
                # place meanwhile) and on what the name now leads to (replaced meanwhile).
                if version is not None:
                    self._check_version(key, version, os.fstat(src.fileno()))
                with open(path, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                if version is not None:
                    self._check_version(key, version, os.fstat(src.fileno()))
                    self._check_version(key, version, self._path(key).stat())
            except BaseException:
                Path(path).unlink(missing_ok=True)
                raise
        return Path(path).stat().st_size

    def _check_version(self, key: str, version: str, st: os.stat_result) -> None:
        now = _file_version(st, self.file_identity)
        if now != version:
            raise ObjectChanged(
                f"{key!r} in {self.describe()} changed since it was listed (version {version}, now {now})"
            )

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key, writing=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _write_temporary(path, data)
        try:
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def upload(self, path: Path, key: str) -> int:
        target = self._path(key, writing=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=_temp_prefix(target))
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target.stat().st_size

    def delete(self, key: str) -> None:
        self._path(key, writing=True).unlink(missing_ok=True)

    # Conditional writes. The version is the content's hash (a lease's content is unique: it holds a
    # nonce and times), and check-then-replace runs under an exclusive flock on the object's folder,
    # which the kernel drops when its holder dies, so a killed process never leaves it locked.

    @contextmanager
    def _folder_locked(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    @staticmethod
    def _version(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return None
        return data, self._version(data)

    def create_if_absent(self, key: str, data: bytes) -> str | None:
        path = self._path(key, writing=True)
        with self._folder_locked(path):
            tmp = _write_temporary(path, data)
            try:
                os.link(tmp, path)  # fails if the name exists: the complete file appears at once, or not at all
            except FileExistsError:
                return None
            finally:
                Path(tmp).unlink(missing_ok=True)
        return self._version(data)

    def replace_if_version(self, key: str, data: bytes, version: str) -> str | None:
        path = self._path(key, writing=True)
        with self._folder_locked(path):
            current = self.read_versioned(key)
            if current is None or current[1] != version:
                return None
            self.write_bytes(key, data)
        return self._version(data)

    def check(self, write: bool = False) -> None:
        if not self.root.is_dir():
            raise StoreCheckError("bucket", f"folder {self.root} does not exist")
        if write:
            try:
                self.write_bytes(PROBE_KEY, b"ok")
                self.delete(PROBE_KEY)
            except OSError as exc:
                raise StoreCheckError("permissions", f"cannot write in {self.root}: {exc.strerror}") from None

    def remove_orphan_temporaries(self, prefix: str = "") -> int:
        """Deletes temporary files whose writer is gone (killed mid-write); returns how many.

        Other runs write beside this one (other channels, other assets, a second machine on a shared
        folder), so a temporary goes only when its writer is known dead: a process of this host that
        no longer exists. One from another host is left until it is ORPHAN_AGE_S old, since its
        process cannot be looked up from here."""
        removed = 0
        now = time.time()
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        for dirpath, _, filenames in os.walk(self.root / check_key(folder) if folder else self.root):
            for name in filenames:
                if TEMP_MARK not in name:
                    continue
                path = Path(dirpath) / name
                host, pid = _writer(name)
                if host == _HOST_TAG:
                    orphan = not _alive(pid)
                else:
                    try:
                        orphan = now - path.stat().st_mtime > ORPHAN_AGE_S
                    except FileNotFoundError:
                        continue  # its writer just finished
                if orphan:
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed


# Which host wrote a temporary file: a pid means something only on its own host.
_HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
ORPHAN_AGE_S = 24 * 3600  # no single write takes this long


def _temp_prefix(target: Path) -> str:
    # ".{name}.neutts-tmp-{host}.{pid}-": the writer, so a clean-up can tell a dead writer's debris from a live one's.
    return f".{target.name[:50]}{TEMP_MARK}{_HOST_TAG}.{os.getpid()}-"


def _writer(name: str) -> tuple[str, str]:
    """(host tag, pid) of a temporary file's writer; names from before the host tag count as this host's."""
    tag = name.split(TEMP_MARK, 1)[1].split("-", 1)[0]
    host, _, pid = tag.rpartition(".")
    return host or _HOST_TAG, pid


def _write_temporary(path: Path, data: bytes) -> str:
    """Writes `data` to a new temporary file beside `path` (os.replace and os.link must not cross
    file systems) and syncs it; returns its name. The name carries the writer's host and PID, so a
    later run can tell a dead writer's debris from a live one's."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def _file_version(st: os.stat_result, identity: bool) -> str:
    """What changes when a file's content does, read from its metadata alone: hashing the content
    would read every byte of a 200+ GB source on each inventory. The mtime and size alone miss a
    file rewritten in place with its mtime put back (os.utime), or another file of the same size and
    mtime renamed over it; with `identity` they are caught: the ctime changes on every write and on
    utime (to the kernel's clock tick, a few ms), and the inode on a rename over it. A chmod, chown
    or rename changes the ctime too, which costs only a re-cut whose identical segment files are
    kept byte for byte."""
    base = f"{st.st_mtime_ns}-{st.st_size}"
    return f"{base}-{st.st_ino}-{st.st_ctime_ns}" if identity else base


def _entry_stat(path: Path) -> os.stat_result | None:
    """A listed name's stat, or None if it vanished since the walk. A dangling symbolic link or a
    link loop is listed from the link itself (lstat), and a FIFO, socket or device from its stat: so
    that reading it reports it as the object's own failure, rather than it going missing."""
    try:
        return os.stat(path)
    except OSError:  # FileNotFoundError for a dangling link, ELOOP for a loop
        try:
            return os.lstat(path)
        except FileNotFoundError:
            return None


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a symbolic link loop, or a link into a folder we may not search: not a folder
        return False


# What opening an object can fail with that is the object's own (is_permanent's errnos).
_OPEN_ERRORS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ELOOP: "symbolic link loop",
    errno.ENXIO: "not a regular file (socket)",  # open() of a UNIX socket
    errno.EISDIR: "a folder, not a file",
}
_KINDS = {stat.S_IFIFO: "FIFO", stat.S_IFSOCK: "socket", stat.S_IFCHR: "character device", stat.S_IFBLK: "block device"}


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), f"file type {stat.S_IFMT(mode):#o}")


def _alive(pid: str) -> bool:
    try:
        return pid_alive(int(pid))
    except ValueError:
        return False
