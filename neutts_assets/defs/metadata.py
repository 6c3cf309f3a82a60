"""Small helpers that shape materialization metadata so it reads at a glance in the UI."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from dagster import MetadataValue, TableColumn, TableRecord, TableSchema

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


def metadata_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> MetadataValue:
    """`rows` (tuples in `headers`' order) as a Dagster table, each column typed from its values so the
    UI sorts and filters it. No rows gives a valid empty table; past MAX_TABLE_ROWS the rest are
    dropped and the first column's description says how many there were."""
    rows = [tuple(r) for r in rows]
    shown = rows[:MAX_TABLE_ROWS]
    kinds = [_column_type([r[i] for r in shown]) for i in range(len(headers))]
    more = f"first {MAX_TABLE_ROWS} of {len(rows)} rows" if len(rows) > MAX_TABLE_ROWS else None
    columns = [
        TableColumn(name, kind, description=more if i == 0 else None)
        for i, (name, kind) in enumerate(zip(headers, kinds))
    ]
    records = [TableRecord({h: _cell(v, k) for h, v, k in zip(headers, row, kinds)}) for row in shown]
    return MetadataValue.table(records=records, schema=TableSchema(columns=columns))


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
