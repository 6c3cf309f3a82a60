"""How hard the storage clients try before giving up, and a tally of the retries they made.

Retries and backoff are the clients' own (botocore's retry modes, google-api-core's Retry); the
stores pass these settings to them and count what they did, so a materialization can show it.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from neutts_assets import settings as S

T = TypeVar("T")


@dataclass(frozen=True)
class RetrySettings:
    """Per request: `max_attempts` tries (the first included), each waiting at most `read_timeout_s`
    for the next bytes. GCS calls also stop after `deadline_s` in all; botocore's backoff is its
    own (full jitter, base 1 s, at most 20 s), GCS's starts at `initial_backoff_s`."""

    # The defaults are the declared ones (neutts_assets/settings.py), written once.
    max_attempts: int = S.STORAGE_MAX_ATTEMPTS.default
    connect_timeout_s: float = S.STORAGE_CONNECT_TIMEOUT_S.default
    read_timeout_s: float = S.STORAGE_READ_TIMEOUT_S.default
    deadline_s: float = S.STORAGE_RETRY_DEADLINE_S.default
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 20.0
    mode: str = "standard"  # botocore retry mode: standard or adaptive (legacy retries fewer errors)

    def backoff(self, retry: int) -> float:
        """Full-jitter exponential backoff before retry number `retry` (1-based)."""
        return random.random() * min(self.max_backoff_s, self.initial_backoff_s * 2 ** (retry - 1))


class RetryCounter:
    """Retries by 'operation: reason', counted from the clients' threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter = Counter()

    def add(self, operation: str, reason: str) -> None:
        with self._lock:
            self._counts[f"{operation}: {reason}"] += 1

    def merge(self, counts: dict[str, int]) -> None:
        with self._lock:
            self._counts.update(counts)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def retry_call(
    call: Callable[[], T],
    retryable: tuple[type[BaseException], ...],
    settings: RetrySettings,
    counter: RetryCounter,
    operation: str,
) -> T:
    """For the few spots where a client does not retry by itself (an error while reading a response
    body whose headers already arrived): the whole call again, with the same backoff and attempts."""
    for attempt in range(1, settings.max_attempts + 1):
        try:
            return call()
        except retryable as exc:
            if attempt >= settings.max_attempts:
                raise
            counter.add(operation, type(exc.__cause__ or exc).__name__)
            time.sleep(settings.backoff(attempt))
    raise AssertionError("unreachable")
