"""Small helpers that shape materialization metadata so it reads at a glance in the UI."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence

from dagster import MetadataValue, TableColumn, TableRecord, TableSchema

from neutts_assets.pipeline.inventory.source_layout import recording_of

MAX_TABLE_ROWS = 200  # a channel with thousands of failures still renders; the first column says how many more
MAX_CELL_CHARS = 300  # a 100 KB transcript in a reason stays out of the event log


def _column_type(values: list[object]) -> str:
    """The Dagster column type every non-empty value of a column fits: bool, int, float, else string."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return "bool"
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "int"
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "float"
    return "string"


def _cell(value: object, kind: str) -> str | int | float | bool | None:
    if value is None or kind in ("bool", "int"):
        return value
    if kind == "float":
        return float(value)
    return str(value)[:MAX_CELL_CHARS]


def metadata_table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], total: int | None = None, how: str = "first"
) -> MetadataValue:
    """`rows` (tuples in `headers`' order) as a Dagster table, each column typed from its values so the
    UI sorts and filters it. No rows gives a valid empty table; past MAX_TABLE_ROWS the rest are
    dropped and the first column's description says how many there were (`total`, when the caller
    already chose the rows, and `how` it chose them)."""
    rows = [tuple(r) for r in rows]
    shown = rows[:MAX_TABLE_ROWS]
    total = len(rows) if total is None else total
    kinds = [_column_type([r[i] for r in shown]) for i in range(len(headers))]
    more = f"{how} {len(shown)} of {total} rows" if total > len(shown) else None
    columns = [
        TableColumn(name, kind, description=more if i == 0 else None)
        for i, (name, kind) in enumerate(zip(headers, kinds))
    ]
    records = [TableRecord({h: _cell(v, k) for h, v, k in zip(headers, row, kinds)}) for row in shown]
    return MetadataValue.table(records=records, schema=TableSchema(columns=columns))


def recording_of_row(row: Sequence[object]) -> str:
    """The recording a row belongs to, by its first column: a segment ID or a segment file's key
    (`{ID}_seg_{i}`), or another object's name."""
    return recording_of(str(row[0]).rsplit("/", 1)[-1].removesuffix(".npz"))


def grouped_tables(
    name: str,
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    counted: str,
    group: Callable[[Sequence[object]], str] = recording_of_row,
    by: str = "recording",
    reason: Callable[[Sequence[object]], str] | None = None,
) -> dict[str, MetadataValue]:
    """Rows that belong to recordings (skipped segments, notes, failures) as two tables, in this
    order: `{name}_by_{by}`, one row per group with its count (headed `counted`; with `reason`,
    its reasons counted), the most first; then `name`, the rows themselves (`headers`; a row's
    further items are left out). Past MAX_TABLE_ROWS the detail keeps a share of every group's rows
    (round robin) rather than the first ones, so one recording's thousands of rows never hide
    another's reasons."""
    groups: dict[str, list[tuple]] = {}
    for row in rows:
        groups.setdefault(group(row), []).append(tuple(row)[: len(headers)])
    summary = [
        (g, len(rs), *([_counted(reason(r) for r in rs)] if reason else []))
        for g, rs in sorted(groups.items(), key=lambda g: (-len(g[1]), g[0]))
    ]
    total = sum(len(rs) for rs in groups.values())
    return {
        f"{name}_by_{by}": metadata_table([by, counted, *(["reasons"] if reason else [])], summary),
        name: metadata_table(headers, _shares(groups), total, how=f"a share of every {by}'s rows:"),
    }


def _counted(values: Iterable[str]) -> str:
    return ", ".join(f"{v} ×{n}" for v, n in Counter(values).most_common())


def _shares(groups: dict[str, list[tuple]]) -> list[tuple]:
    """At most MAX_TABLE_ROWS rows, taken round robin across the groups, then in the groups' order."""
    taken: dict[str, int] = dict.fromkeys(groups, 0)
    left = MAX_TABLE_ROWS
    while left and any(taken[g] < len(rs) for g, rs in groups.items()):
        for g, rs in groups.items():
            if left and taken[g] < len(rs):
                taken[g] += 1
                left -= 1
    return [row for g in sorted(groups) for row in groups[g][: taken[g]]]


def reason_counts(reasons: Iterable[str]) -> MetadataValue:
    """How many segments each reason skipped, the commonest first."""
    return metadata_table(["reason", "segments"], Counter(reasons).most_common())


def retry_metadata(**stores) -> dict:
    """The storage clients' retries during the materialization, e.g. retry_metadata(source=src, store=dst):
    a total and a table by store, operation and reason (a 503 SlowDown, a read timeout, ...)."""
    rows = [(name, what, n) for name, store in stores.items() for what, n in sorted(store.retries.items())]
    return {
        "storage_retries": sum(n for _, _, n in rows),
        "storage_retries_by_reason": metadata_table(["store", "operation: reason", "retries"], rows),
    }
