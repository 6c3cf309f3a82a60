"""Routes every run to its machine class at submission, whoever launched it.

Runs launched from the UI or by a backfill run Dagster's implicit `__ASSET_JOB`, so tags on a job
definition never reach them. Every launch (UI, backfill, sensor, schedule, CLI) goes through the
instance's run coordinator, though, so that is where the tags are set: before the run is queued, so
the queue's per-machine limits and dagster-celery's run launcher (which picks the Celery queue from
the run tag) both see them. The rules are in neutts_assets.pipeline.orchestration.routing.

dagster.yaml:
    run_coordinator:
      module: neutts_assets.defs.orchestration.run_coordinator
      class: MachineRoutingRunCoordinator
      config:
        machine_limits: {h200: 1, t4: 2}   # concurrent runs per machine class (h200 defaults to 1)
        tag_concurrency_limits:            # one run at a time per channel (the tag this class sets)
          - {key: neutts/channel, value: {applyLimitPerUniqueValue: true}, limit: 1}
        ...every QueuedRunCoordinator option...
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from dagster import AssetKey, Field, IntSource, Permissive, StringSource
from dagster._core.run_coordinator import QueuedRunCoordinator, SubmitRunContext
from dagster._core.storage.dagster_run import DagsterRun

from neutts_assets.pipeline.orchestration.routing import (
    CHANNEL_TAG,
    DEFAULT_MACHINE,
    MACHINE_RANK,
    MACHINE_TAG,
    UnknownMachineError,
    channel_of,
    check_machine,
    routing_tags,
)

log = logging.getLogger(__name__)
DEFAULT_MACHINE_LIMITS = {"h200": 1}


def selected_asset_keys(run: DagsterRun, asset_graph) -> set[AssetKey]:
    keys = set(run.asset_selection or ())
    keys |= {check.asset_key for check in (run.asset_check_selection or ())}
    if not keys and run.job_name:
        # a whole asset job launched without a subset
        keys = set(asset_graph.asset_keys_for_job(run.job_name))
    return keys


def machine_classes(keys, asset_graph) -> set[str]:
    return {tag for key in keys if asset_graph.has(key) and (tag := asset_graph.get(key).tags.get(MACHINE_TAG))}


class MachineRoutingRunCoordinator(QueuedRunCoordinator):
    def __init__(
        self, machine_limits: Mapping[str, int] | None = None, default_machine: str = DEFAULT_MACHINE, **kwargs: Any
    ):
        # One encoding run owns the GPU unless the configuration says otherwise.
        limits_by_machine = {**DEFAULT_MACHINE_LIMITS, **(machine_limits or {})}
        self._machine_limits = {check_machine(m, "machine_limits"): int(n) for m, n in limits_by_machine.items()}
        self._default_machine = check_machine(default_machine, "default_machine")
        limits = list(kwargs.pop("tag_concurrency_limits", None) or [])
        limits += [{"key": MACHINE_TAG, "value": m, "limit": n} for m, n in self._machine_limits.items()]
        super().__init__(tag_concurrency_limits=limits, **kwargs)

    @classmethod
    def config_type(cls):
        return {
            **QueuedRunCoordinator.config_type(),
            "machine_limits": Field(
                Permissive({m: Field(IntSource, is_required=False) for m in MACHINE_RANK}),
                is_required=False,
                description="Concurrent runs per machine class, e.g. {h200: 1, t4: 2}. Defaults: h200 1, t4 no limit of its own.",
            ),
            "default_machine": Field(
                StringSource,
                is_required=False,
                default_value=DEFAULT_MACHINE,
                description="Where a run that selects no tagged asset goes.",
            ),
        }

    @classmethod
    def from_config_value(cls, inst_data, config_value: Mapping[str, Any]):
        config = dict(config_value)
        return cls(
            inst_data=inst_data,
            machine_limits=config.pop("machine_limits", None),
            default_machine=config.pop("default_machine", DEFAULT_MACHINE),
            **{k: v for k, v in config.items() if v is not None},
        )

    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        run = context.dagster_run
        try:
            graph = context.workspace.asset_graph
            classes = machine_classes(selected_asset_keys(run, graph), graph)
            tags = routing_tags(run.tags, classes, self._default_machine)
            # The channel in a tag of its own, whichever partition tag the launcher used: the queue's
            # per-channel limit (dagster.yaml: tag_concurrency_limits on neutts/channel) reads it.
            channel = channel_of(run.tags)
            if channel and run.tags.get(CHANNEL_TAG) != channel:
                tags[CHANNEL_TAG] = channel
        except UnknownMachineError as exc:
            # Failing loudly beats guessing a machine: the run page shows why.
            self._instance.report_run_failed(run, f"Cannot route this run: {exc}")
            return self._instance.get_run_by_id(run.run_id)
        if tags:
            self._instance.add_run_tags(run.run_id, tags)
            run = self._instance.get_run_by_id(run.run_id)
        log.info(
            "run %s -> machine %s (%s)",
            run.run_id,
            run.tags.get(MACHINE_TAG),
            ", ".join(sorted(classes)) or "no tagged asset",
        )
        return super().submit_run(SubmitRunContext(run, context.workspace))
