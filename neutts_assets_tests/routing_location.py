"""The code location the routing tests serve: the project's definitions plus `h200_probe`, a
small H200-class asset downstream of segments_npz.

It stands in for encoded_segments in these tests (the real encoder needs the NeuCodec model, minutes
of CPU per channel here). Routing reads only the asset's `machine` tag, so what holds for the probe
holds for every H200 asset. The probe records where its step ran, sleeps on request (to hold the
H200 busy), and fails for a channel while the store holds `routing-test-failures/{channel}`.
"""

import os
import socket
import time

from dagster import (
    AssetExecutionContext,
    Config,
    Definitions,
    Failure,
    MaterializeResult,
    asset,
    define_asset_job,
    in_process_executor,
    multiprocess_executor,
)

import neutts_assets.definitions as project  # a module, not its `defs`: one Definitions object per module
from neutts_assets.defs.orchestration.backfills import split_backfills_by_machine
from neutts_assets.defs.partitions import channels
from neutts_assets.defs.resources import SegmentStore

FAIL_PREFIX = "routing-test-failures/"


class ProbeConfig(Config):
    sleep_s: float = 0.0


@asset(partitions_def=channels, deps=["segments_npz"], tags={"machine": "h200"})
def h200_probe(context: AssetExecutionContext, config: ProbeConfig, store: SegmentStore) -> MaterializeResult:
    started = time.time()
    if store.open().exists(FAIL_PREFIX + context.partition_key):
        raise Failure(f"{context.partition_key}: failure requested by the test")
    time.sleep(config.sleep_s)
    return MaterializeResult(
        metadata={
            "machine_env": os.environ.get("NEUTTS_MACHINE", ""),
            "host": socket.gethostname(),
            "dagster_home": os.environ.get("DAGSTER_HOME", ""),
            "step_started": started,
            "step_finished": time.time(),
        }
    )


# Steps run in the run's process here, which saves a Python start per step on this 2-core machine;
# this job keeps the project's process-per-step executor, to show the workers allow that too.
stage1_multiprocess = define_asset_job(
    "stage1_multiprocess", selection=["raw_audio", "segments_npz"], executor_def=multiprocess_executor
)

defs = Definitions.merge(
    project.defs,
    Definitions(
        assets=split_backfills_by_machine([h200_probe]), jobs=[stage1_multiprocess], executor=in_process_executor
    ),
)
