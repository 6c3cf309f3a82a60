"""Imported by each machine's Celery worker (`dagster-celery worker start -i <this module>`).

Before a run starts, the worker records on the run which worker and machine took it
(`neutts/worker`, `neutts/worker-machine`), so the UI shows where each run really executed. A run
whose `machine` tag names another class than the worker's (a worker started on the wrong queue)
gets a warning event on its page: it must not go unnoticed.
"""

from __future__ import annotations

import os
import socket

from celery import signals
from dagster import DagsterInstance
from dagster._grpc.types import ExecuteRunArgs, ResumeRunArgs
from dagster._serdes import unpack_value

from neutts_assets.pipeline.orchestration.routing import MACHINE_TAG

WORKER_TAG = "neutts/worker"
WORKER_MACHINE_TAG = "neutts/worker-machine"
WORKER_HOME_TAG = "neutts/worker-dagster-home"
MACHINE_ENV = "NEUTTS_MACHINE"  # this worker's machine class, set in the worker's environment


def _run_id(kwargs: dict) -> str | None:
    packed = kwargs.get("execute_job_args_packed")
    if packed is None:
        return None
    args = unpack_value(packed)
    return args.run_id if isinstance(args, (ExecuteRunArgs, ResumeRunArgs)) else None


@signals.task_prerun.connect
def record_worker(sender=None, task_id=None, task=None, args=None, kwargs=None, **_):
    run_id = _run_id(kwargs or {})
    if run_id is None:
        return
    machine = os.environ.get(MACHINE_ENV, "")
    with DagsterInstance.get() as instance:
        run = instance.get_run_by_id(run_id)
        if run is None:
            return
        wanted = run.tags.get(MACHINE_TAG)
        if machine and wanted and wanted != machine:
            # Celery ignores exceptions raised in signal handlers, so this cannot refuse the run.
            instance.report_engine_event(
                f"WARNING: worker {task.request.hostname} serves machine class {machine!r}, but this run needs {wanted!r}: "
                "check which queue each worker serves",
                run,
            )
        instance.add_run_tags(
            run_id,
            {
                WORKER_TAG: f"{task.request.hostname or socket.gethostname()}",
                WORKER_MACHINE_TAG: machine or "unset",
                WORKER_HOME_TAG: os.environ.get("DAGSTER_HOME", ""),
            },
        )
