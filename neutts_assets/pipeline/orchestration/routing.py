"""Which machine class a run needs, from the machine classes of the assets it selects.

Every asset carries the tag `machine` (t4 or h200). A run gets the run tag `machine` and the
Celery queue tag that dagster-celery's run launcher reads; a worker on each machine serves the
queue of its class. Rules, in order:
1. A `machine` tag the user (or a sensor, schedule or job) set on the run wins.
2. Otherwise the run needs every class its assets need, and goes to the most capable one among
   them (MACHINE_RANK): a run selecting segments_npz and encoded_segments goes to the H200, which
   can cut audio too, so GPU work never lands on the T4. Such runs are tagged `neutts/mixed-machines`.
   To keep the H200 free for encoding, launch the stages separately (the per-machine jobs do).
3. A run selecting no tagged asset goes to the default class (the T4).
The queue tag always follows the machine tag: set `machine`, never the queue tag, to move a run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

MACHINE_TAG = "machine"
QUEUE_TAG = "dagster-celery/queue"  # read by dagster_celery's CeleryRunLauncher
MIXED_TAG = "neutts/mixed-machines"
ROUTED_BY_TAG = "neutts/machine-from"  # "selection", "run tag" or "default": why the run went where it did
# Least to most capable: a machine can run the work of every class before it.
MACHINE_RANK = ("t4", "h200")
DEFAULT_MACHINE = "t4"


class UnknownMachineError(ValueError):
    pass


def check_machine(machine: str, what: str) -> str:
    if machine not in MACHINE_RANK:
        raise UnknownMachineError(f"{what} names machine class {machine!r}; known classes: {', '.join(MACHINE_RANK)}")
    return machine


def machine_for(classes: Iterable[str], default: str = DEFAULT_MACHINE) -> str:
    """The most capable class among `classes`, or `default` when there is none."""
    found = {check_machine(c, "an asset") for c in classes}
    return max(found, key=MACHINE_RANK.index) if found else default


def routing_tags(
    run_tags: Mapping[str, str], asset_classes: Iterable[str], default: str = DEFAULT_MACHINE
) -> dict[str, str]:
    """The tags to set on a run: never changes its `machine` tag, always makes the queue follow it."""
    classes = sorted(set(asset_classes), key=MACHINE_RANK.index)
    added: dict[str, str] = {}
    if MACHINE_TAG in run_tags:
        machine = check_machine(run_tags[MACHINE_TAG], f"the run tag {MACHINE_TAG}")
        added[ROUTED_BY_TAG] = "run tag"
    else:
        machine = machine_for(classes, default)
        added[MACHINE_TAG] = machine
        added[ROUTED_BY_TAG] = "selection" if classes else "default"
    if len(classes) > 1:
        added[MIXED_TAG] = ",".join(classes)
    added[QUEUE_TAG] = machine
    return {k: v for k, v in added.items() if run_tags.get(k) != v}


# Which channel a run writes, for the run queue's one-run-per-channel limit. A run launched for one
# partition carries `dagster/partition`; a backfill run of an asset with a backfill policy (the
# H200 assets: one channel per run) carries a partition range instead, start == end.
CHANNEL_TAG = "neutts/channel"
PARTITION_TAG = "dagster/partition"
RANGE_TAGS = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")


def channel_of(run_tags: Mapping[str, str]) -> str | None:
    """The one channel a run is for, or None (unpartitioned, or a range of several channels)."""
    if run_tags.get(PARTITION_TAG):
        return run_tags[PARTITION_TAG]
    start, end = (run_tags.get(t) for t in RANGE_TAGS)
    return start if start and start == end else None


def job_tags(asset_classes: Iterable[str]) -> dict[str, str]:
    """Tags for a job or a sensor's run request that selects assets of these classes. Only the
    machine tag: a user's own `machine` tag in the launchpad replaces it, and the queue follows."""
    return {MACHINE_TAG: machine_for(asset_classes)}
