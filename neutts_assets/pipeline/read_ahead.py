"""Items mapped through a thread pool and yielded in their order, a bounded window ahead: the
reads of the dataset builder and of the quality scorer, where fetching an object and inflating
it (ISA-L, libsndfile) release the GIL, so a few threads keep the cores busy while memory holds
only the window."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def in_order(fn: Callable[[T], R], items: Iterable[T], workers: int, window: int) -> Iterator[tuple[T, R]]:
    """(item, fn(item)) for each item, in the items' order, with at most `window` items in flight.
    `fn` should return its errors rather than raise them: what it raises propagates here."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque = deque()
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= max(1, window):
                item_, fut = pending.popleft()
                yield item_, fut.result()
        while pending:
            item_, fut = pending.popleft()
            yield item_, fut.result()
