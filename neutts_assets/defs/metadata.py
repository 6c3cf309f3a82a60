"""Small helpers that shape materialization metadata so it reads at a glance in the UI."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from dagster import MetadataValue

MAX_TABLE_ROWS = 200  # a channel with thousands of failures still renders; the count says how many more


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")[:300]


def md_table(headers: Sequence[str], rows: Iterable[Sequence[object]], empty: str = "none") -> MetadataValue:
    rows = list(rows)
    if not rows:
        return MetadataValue.md(f"_{empty}_")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows[:MAX_TABLE_ROWS]]
    if len(rows) > MAX_TABLE_ROWS:
        lines.append(f"\n… and {len(rows) - MAX_TABLE_ROWS} more")
    return MetadataValue.md("\n".join(lines))


def reason_counts(reasons: Iterable[str]) -> MetadataValue:
    counts = Counter(reasons)
    return md_table(["reason", "segments"], counts.most_common(), empty="nothing skipped")


def retry_metadata(**stores) -> dict:
    """The storage clients' retries during the materialization, e.g. retry_metadata(source=src, store=dst):
    a total and a table by store, operation and reason (a 503 SlowDown, a read timeout, ...)."""
    rows = [(name, what, n) for name, store in stores.items() for what, n in sorted(store.retries.items())]
    return {
        "storage_retries": sum(n for _, _, n in rows),
        "storage_retries_by_reason": md_table(["store", "operation: reason", "retries"], rows, empty="no retries"),
    }
