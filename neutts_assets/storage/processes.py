"""Processes of this host, as the writers of temporaries and the holders of leases: whether one
still runs, and when it started (so a reused pid is not taken for the process that had it)."""

from __future__ import annotations

import os


def process_started(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or ''."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def pid_alive(pid: int) -> bool:
    """Whether a process of this host still runs. A zombie does not: a SIGKILLed grandchild whose
    parent died waits as one until something reaps it, which in a container may be never."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True  # no /proc to tell: it exists
