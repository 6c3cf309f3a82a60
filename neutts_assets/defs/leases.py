"""The store lease (pipeline/orchestration/lease.py) as asset bodies take it: a second run of the same asset and
channel fails at once with a Failure naming the run that holds it; a taken-over stale lease is
logged and shown in the materialization's metadata."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dagster import AssetExecutionContext, Failure

from neutts_assets.defs.resources import SegmentStore
from neutts_assets.pipeline.orchestration.lease import DEFAULT_TTL_S, Lease, LeaseHeld, acquire

# The renewals' and the release's own client settings: a renewal must fail fast enough to be tried
# again before the expiry (renewals come every TTL/6; a failed one is simply tried at the next). One call then lasts at most about 3 x (3 s + 5 s) plus two
# short backoffs, under TTL/3, where the data's settings (10 x 60 s) would outlast the lease.
LEASE_CLIENT_SETTINGS = dict(
    max_attempts=3,
    connect_timeout_s=3.0,
    read_timeout_s=5.0,
    retry_deadline_s=DEFAULT_TTL_S / 4,
    initial_backoff_s=0.5,
    max_backoff_s=2.0,
)


@contextmanager
def channel_lease(context: AssetExecutionContext, store: SegmentStore, asset: str) -> Iterator[Lease]:
    """Held while inside; `lease.check` raises LeaseLost once this run may no longer write (call it
    right before each publishing step)."""
    renew_store = store.model_copy(update=LEASE_CLIENT_SETTINGS).open()
    try:
        lease = acquire(
            store.open(),
            asset,
            context.partition_key,
            context.run.run_id,
            log=context.log.warning,
            renew_store=renew_store,
        )
    except LeaseHeld as exc:
        raise Failure(
            description=str(exc),
            metadata={
                "holding_run": exc.holder.run_id,
                "holding_host": exc.holder.host,
                "holding_pid": exc.holder.pid,
            },
        ) from None
    taken = lease.taken_over_from
    if taken:
        context.log.warning(
            f"{asset} {context.partition_key!r}: took over the lease of run {taken['run_id']}: {taken['reason']}"
        )
    # One key per asset: the clean-up job holds three leases, each shown.
    context.add_output_metadata(
        {f"lease_taken_over_from_{asset}": f"run {taken['run_id']} ({taken['reason']})" if taken else "none"}
    )
    with lease:
        yield lease
