"""The store lease (core/lease.py) as asset bodies take it: a second run of the same asset and
channel fails at once with a Failure naming the run that holds it; a taken-over stale lease is
logged and shown in the materialization's metadata."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from dagster import AssetExecutionContext, Failure

from neutts_assets.core.lease import Lease, LeaseHeld, acquire
from neutts_assets.storage.store import ObjectStore


@contextmanager
def channel_lease(context: AssetExecutionContext, store: ObjectStore, asset: str) -> Iterator[Lease]:
    try:
        lease = acquire(store, asset, context.partition_key, context.run.run_id, log=context.log.warning)
    except LeaseHeld as exc:
        raise Failure(description=str(exc), metadata={
            "holding_run": exc.holder.run_id, "holding_host": exc.holder.host, "holding_pid": exc.holder.pid,
        }) from None
    taken = lease.taken_over_from
    if taken:
        context.log.warning(f"{asset} {context.partition_key!r}: took over the lease of run {taken['run_id']}: {taken['reason']}")
    context.add_output_metadata({"lease_taken_over_from": f"run {taken['run_id']} ({taken['reason']})" if taken else "none"})
    with lease:
        yield lease
