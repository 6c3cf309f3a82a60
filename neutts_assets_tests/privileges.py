"""Root without its power to read anything: so a test can give root a file it may not read.

The suite runs as root here and in CI, and root reads a chmod-000 file as if it were any other:
the kernel's CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH skip the permission check. Taking both out
of the effective set (keeping them permitted, so they can be put back) makes root meet the
permission bits like any other user.
"""

from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager
from pathlib import Path

_LINUX_CAPABILITY_VERSION_3 = 0x20080522  # 64-bit sets, as two 32-bit halves
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
_DROPPED = (1 << CAP_DAC_OVERRIDE) | (1 << CAP_DAC_READ_SEARCH)  # both in the low half


class _Header(ctypes.Structure):  # struct __user_cap_header_struct
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):  # struct __user_cap_data_struct
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)


def _capabilities(call, data) -> None:
    # pid 0: the calling thread, which is what capset may change (and all it changes).
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    if call(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def no_read_override():
    """Inside the block, root (this thread) gets PermissionError from a file its mode bits forbid.

    Capabilities belong to a thread in Linux, not to the process: only the calling thread loses
    them, and threads it starts inside the block inherit the reduced set (a thread started before
    it keeps root's). Use it around the code whose worker threads start inside it. Not root: the
    bits already apply, and it does nothing."""
    if os.geteuid() != 0:
        yield
        return
    data = (_Data * 2)()
    _capabilities(_libc.capget, data)
    saved = data[0].effective
    data[0].effective = saved & ~_DROPPED
    _capabilities(_libc.capset, data)
    try:
        yield
    finally:
        data[0].effective = saved
        _capabilities(_libc.capset, data)


def unreadable(path: str | os.PathLike) -> Path:
    """Makes `path` unreadable to its owner and everyone else (mode 000); returns it."""
    os.chmod(path, 0)
    return Path(path)
