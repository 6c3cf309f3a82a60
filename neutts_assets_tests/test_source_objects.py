"""What the users' source folder may hold besides audio files, on real files: each is listed, and
reading it fails at once, permanently, saying what it is. Also the version a folder's listing
gives, the classification of errors, and the folders under a prefix on all three backends."""

from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
import socket
import threading
import time
import unicodedata
from pathlib import Path

import pytest

from neutts_assets.storage.local import LocalStore
from neutts_assets.storage.store import (
    ObjectChanged,
    ObjectUnreadable,
    StoreError,
    UnsafeKeyError,
    is_permanent,
    may_pass,
)
from neutts_assets_tests.privileges import no_read_override, unreadable

AUDIO = "ch/audio/"


@pytest.fixture
def source(tmp_path) -> LocalStore:
    store = LocalStore(tmp_path / "src", file_identity=True)  # as SourceBucket opens a folder
    store.write_bytes(AUDIO + "good.wav", b"RIFF audio")
    return store


def folder(store: LocalStore) -> Path:
    return store.root / AUDIO


def at_once(call):
    """`call()`, run in a thread that must finish within 5 s: a read that blocks (a FIFO's open,
    /dev/zero's endless bytes) fails the test instead of hanging it. What it raised is raised here.
    The thread starts here, so inside no_read_override it has the reduced capabilities too."""
    result = []

    def run():
        try:
            result.append((call(), None))
        except BaseException as exc:
            result.append((None, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "blocked for 5 s"
    value, exc = result[0]
    if exc is not None:
        raise exc
    return value


def reads(store: LocalStore, key: str, tmp_path: Path):
    """Both ways of reading an object, each to be run on its own."""
    return (lambda: store.read_bytes(key), lambda: store.download(key, tmp_path / "copy"))


def _unix_socket(path: Path) -> None:
    # Bound through the folder's descriptor: a socket's path is limited to 107 bytes, which a
    # pytest temporary folder may pass.
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        socket.socket(socket.AF_UNIX).bind(f"/proc/self/fd/{fd}/{path.name}")
    finally:
        os.close(fd)


ODD_ENTRIES = {
    "dangling symlink": (lambda p: os.symlink("gone.wav", p), "dangling symbolic link (to 'gone.wav')"),
    "symlink loop": (lambda p: os.symlink(p.name, p), "symbolic link loop"),
    "FIFO": (os.mkfifo, "not a regular file (FIFO)"),
    "UNIX socket": (_unix_socket, "not a regular file (socket)"),
    "symlink to /dev/zero": (lambda p: os.symlink("/dev/zero", p), "not a regular file (character device)"),
}


@pytest.mark.parametrize("kind", ODD_ENTRIES)
def test_an_odd_entry_is_listed_and_reading_it_fails_at_once_saying_what_it_is(source, tmp_path, kind):
    make, reason = ODD_ENTRIES[kind]
    make(folder(source) / "r1.wav")

    listed = at_once(lambda: {o.key for o in source.list(AUDIO)})
    assert listed == {AUDIO + "good.wav", AUDIO + "r1.wav"}

    for read in reads(source, AUDIO + "r1.wav", tmp_path):
        with pytest.raises(ObjectUnreadable, match=re.escape(f"'{AUDIO}r1.wav' in {source.describe()}: {reason}")):
            at_once(read)
        assert not (tmp_path / "copy").exists()


def test_a_folder_named_like_a_file_is_not_listed_and_reading_it_says_it_is_a_folder(source, tmp_path):
    (folder(source) / "r1.wav").mkdir()
    assert {o.key for o in source.list(AUDIO)} == {AUDIO + "good.wav"}
    for read in reads(source, AUDIO + "r1.wav", tmp_path):
        with pytest.raises(ObjectUnreadable, match=r"'ch/audio/r1.wav' in .*: a folder, not a file$"):
            at_once(read)


def test_a_missing_object_is_still_gone_not_unreadable(source, tmp_path):
    with pytest.raises(FileNotFoundError):
        source.read_bytes(AUDIO + "absent.wav")
    with pytest.raises(FileNotFoundError):
        source.download(AUDIO + "good.wav/absent.wav", tmp_path / "copy")  # under a file
    assert not (tmp_path / "copy").exists()


def test_a_file_root_may_not_read_is_listed_and_refused_as_permission_denied(source, tmp_path):
    unreadable(folder(source) / "good.wav")
    with no_read_override():
        assert {o.key for o in source.list(AUDIO)} == {AUDIO + "good.wav"}  # stat needs no read permission
        for read in reads(source, AUDIO + "good.wav", tmp_path):
            with pytest.raises(ObjectUnreadable, match=r"'ch/audio/good.wav' in .*: permission denied$") as caught:
                at_once(read)
            assert is_permanent(caught.value) and not may_pass(caught.value)
    assert not (tmp_path / "copy").exists()


def test_an_unreadable_start_folder_is_refused_and_an_unreadable_sub_folder_skipped(source):
    source.write_bytes("ch/top.wav", b"x")
    unreadable(folder(source))
    with no_read_override():
        with pytest.raises(ObjectUnreadable, match=re.escape(f"folder {folder(source)}: permission denied")):
            list(source.list(AUDIO))
        # Listing ch/: the audio folder is a sub-folder, whose files no channel would take.
        assert [o.key for o in source.list("ch/")] == ["ch/top.wav"]
        with pytest.raises(ObjectUnreadable, match="permission denied"):
            source.list_folders(AUDIO)


def test_no_read_override_takes_roots_read_permission_away_and_gives_it_back(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(b"x")
    unreadable(path)
    with no_read_override():
        with pytest.raises(PermissionError):
            path.read_bytes()
        # A thread started inside the block inherits the reduced set.
        with pytest.raises(PermissionError):
            at_once(path.read_bytes)
    if os.geteuid() == 0:
        assert path.read_bytes() == b"x"


def _same_size_and_mtime(path: Path, data: bytes, like: os.stat_result) -> None:
    assert len(data) == like.st_size
    os.utime(path, ns=(like.st_atime_ns, like.st_mtime_ns))


def _rewrite_in_place(path: Path, data: bytes) -> None:
    before = path.stat()
    with open(path, "r+b") as f:
        f.write(data)
    _same_size_and_mtime(path, data, before)


def _rename_over(path: Path, data: bytes) -> None:
    before = path.stat()
    other = path.with_name("other.tmp")
    other.write_bytes(data)
    _same_size_and_mtime(other, data, before)
    os.replace(other, path)


def test_our_own_store_keeps_its_versions_when_copied(tmp_path):
    """The segment store's versions are mtime and size (no file identity): a copy of it that keeps
    the mtimes (rsync -a, a restore) keeps every version that stage 2's markers name."""
    store = LocalStore(tmp_path / "store")
    store.write_bytes("stage1/ch/r_seg_0.npz", b"segment")
    shutil.copytree(tmp_path / "store", tmp_path / "copy")
    assert [o.version for o in LocalStore(tmp_path / "copy").list()] == [o.version for o in store.list()]
    source = LocalStore(tmp_path / "store", file_identity=True)
    assert [o.version for o in LocalStore(tmp_path / "copy", file_identity=True).list()] != [
        o.version for o in source.list()
    ]


@pytest.mark.parametrize("replace", [_rewrite_in_place, _rename_over], ids=["in place", "renamed over"])
def test_content_replaced_keeping_size_and_mtime_changes_the_version(source, tmp_path, replace):
    key = AUDIO + "good.wav"
    (listed,) = source.list(AUDIO)
    # The ctime has the kernel's clock tick (a few ms): a change within the tick of the last one
    # keeps it, so the replacement comes later, as a user's would.
    time.sleep(0.05)
    replace(folder(source) / "good.wav", b"RIFF AUDIO")

    (now,) = source.list(AUDIO)
    st = (folder(source) / "good.wav").stat()
    assert (now.size, st.st_mtime_ns) == (listed.size, int(listed.version.split("-")[0]))  # what the old version saw
    assert now.updated > listed.updated  # the ctime moved on: new to the sensor's watermark too
    assert now.version != listed.version
    with pytest.raises(ObjectChanged, match="good.wav"):
        source.download(key, tmp_path / "copy", version=listed.version)
    assert not (tmp_path / "copy").exists()
    assert source.download(key, tmp_path / "copy", version=now.version) == len(b"RIFF AUDIO")
    assert (tmp_path / "copy").read_bytes() == b"RIFF AUDIO"


@pytest.mark.parametrize(
    "exc, permanent",
    [
        (PermissionError(errno.EACCES, "denied"), True),
        (PermissionError(), True),
        (ObjectUnreadable("'a.wav'", "symbolic link loop"), True),
        (UnsafeKeyError("../a"), True),
        (OSError(errno.ELOOP, "loop"), True),
        (OSError(errno.ENXIO, "socket"), True),
        (OSError(errno.ENAMETOOLONG, "long"), True),
        (IsADirectoryError(), True),
        (NotADirectoryError(), True),
        (TimeoutError(), False),
        (TimeoutError(errno.ETIMEDOUT, "timed out"), False),  # a socket's (socket.timeout is TimeoutError)
        (ConnectionResetError(errno.ECONNRESET, "reset"), False),
        (ObjectChanged("replaced"), False),
        (StoreError("503 after retries"), False),
        (OSError(errno.EIO, "I/O error"), False),
        (OSError(errno.ENOSPC, "full"), False),
        (OSError(errno.EMFILE, "too many files"), False),
        (OSError(), False),
        (ValueError("unknown"), False),
    ],
    ids=repr,
)
def test_errors_are_permanent_by_what_they_are(exc, permanent):
    assert is_permanent(exc) is permanent
    # may_pass: a store's failure that a rerun may get past, never an object's own.
    assert may_pass(exc) is (isinstance(exc, StoreError) and not permanent)


def test_object_unreadable_survives_pickling_whole():
    exc = pickle.loads(pickle.dumps(ObjectUnreadable("'a.wav' in x", "permission denied")))
    assert (str(exc), exc.reason) == ("cannot read 'a.wav' in x: permission denied", "permission denied")


NFC = unicodedata.normalize("NFC", "Atheer - é")
NFD = unicodedata.normalize("NFD", "Atheer - é")


@pytest.fixture(params=["local", "s3", "gcs"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    return request.getfixturevalue(f"{request.param}_store")


def test_list_folders_names_the_folders_right_under_a_prefix(store):
    assert NFC != NFD
    for key in (f"{NFC}/audio/a.wav", f"{NFD}/audio/a.wav", "nested/deeper/b/c.wav", "file.wav", "nested/d.wav"):
        store.write_bytes(key, b"x")
    assert store.list_folders() == sorted([NFC, NFD, "nested"])
    assert store.list_folders("nested/") == ["deeper"]
    assert store.list_folders("nested/deeper/") == ["b"]
    assert store.list_folders(f"{NFD}/") == ["audio"]
    assert store.list_folders("nested/deeper/b/") == []
    assert store.list_folders("missing/") == []
    with pytest.raises(UnsafeKeyError):
        store.list_folders("nested")  # a prefix that is not a folder's


def test_local_list_folders_counts_links_to_folders_and_nothing_else(tmp_path):
    store = LocalStore(tmp_path / "store")
    store.write_bytes("a/x.wav", b"x")
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", store.root / "linked")
    os.symlink("gone", store.root / "dangling")
    os.symlink("loop", store.root / "loop")
    os.mkfifo(store.root / "fifo")
    assert store.list_folders() == ["a", "linked"]
    assert store.list_folders("a/x.wav/") == []  # a file, not a folder
