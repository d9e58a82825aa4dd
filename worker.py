"""python worker.py: connect to Temporal and run SecFlow's workflows and activities.

This is where workflows and activities meet (`WORKFLOWS`, `build_worker`); `secflow/` below
knows neither.

Environment: TEMPORAL_ADDRESS (localhost:7233), TEMPORAL_NAMESPACE (default),
SECFLOW_TASK_QUEUE (secflow), SECFLOW_DATA_DIR (.secflow), SECFLOW_DB_URL,
SECFLOW_SHUTDOWN_GRACE (10s), SECFLOW_MAX_CONCURRENT_ACTIVITIES (50), SECFLOW_LOG_LEVEL,
SECFLOW_METRICS_ADDR (host:port of a Prometheus /metrics endpoint; unset = none).
SECFLOW_ALERTS_CONFIG (alert routing YAML; a bad one stops the worker before it connects).
SECFLOW_REAPER_INTERVAL (600, seconds or a duration such as 10m): the reaper runs when the
worker starts and then this often, removing workspaces and releasing scan locks of
assessments that are no longer running (terminated runs skip their compensations).
SECFLOW_CODEC (on; off is unsafe) and SECFLOW_CODEC_KEYS_FILE: payload encryption
(secflow/codec.py). Temporal connection security (API key, TLS, mTLS, profiles) through
temporalio.envconfig: TEMPORAL_CONFIG_FILE, TEMPORAL_PROFILE, TEMPORAL_API_KEY, TEMPORAL_TLS_*.
SIGTERM or Ctrl-C: stop polling, let running activities finish or hand them back, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

from temporalio.client import Client
from temporalio.worker import Worker

from activities.registry import ALL_ACTIVITIES
from secflow.alerting.config import AlertConfigError, load_alerts_config
from secflow.codec import KeyRingError
from secflow.exit import exit_now
from secflow.logging import configure_logging, get_logger
from secflow.metrics import configure_metrics
from secflow.reaper import run_reaper
from secflow.settings import Settings, SettingsError, ensure_private_dir, load_settings, restrict_new_files
from secflow.temporal_client import connect, ensure_search_attributes
from workflows.assessment.targets import StageTargetsWorkflow
from workflows.assessment.workflow import AssessmentWorkflow
from workflows.incident import IncidentWorkflow
from workflows.legacy.assessment_v1 import AssessmentWorkflow as AssessmentWorkflowV1

# AssessmentWorkflowV1 (type "AssessmentWorkflow") serves runs started before the
# sharded "Assessment" existed, until they drain (README, "Upgrading").
WORKFLOWS = [AssessmentWorkflow, StageTargetsWorkflow, IncidentWorkflow, AssessmentWorkflowV1]


def build_worker(client: Client, settings: Settings) -> Worker:
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=WORKFLOWS,
        activities=ALL_ACTIVITIES,
        # On SIGTERM, running activities get this long to finish; after it they are
        # cancelled and hand their attempt back (see activities/runner.py).
        graceful_shutdown_timeout=settings.shutdown_grace,
        max_concurrent_activities=settings.max_concurrent_activities,
    )


async def main() -> int:
    configure_logging()
    log = get_logger(component="worker")
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"worker: bad configuration: {exc}", file=sys.stderr)
        return 2
    try:
        load_alerts_config()  # the alert routing file: refuse to start on a bad one
    except AlertConfigError as exc:
        print(f"worker: bad alerts configuration: {exc}", file=sys.stderr)
        return 2
    try:
        # Before connecting: the client reports through the runtime that is the default now.
        configure_metrics(settings.metrics_addr)
    except RuntimeError as exc:
        print(f"worker: bad configuration: {exc}", file=sys.stderr)
        return 2
    # The data directory and all the worker writes (store, key ring, workspaces, scanner
    # output, reports) are private to its user: 0700 directories, 0600 files.
    restrict_new_files()
    ensure_private_dir(settings.data_dir)
    try:
        client = await connect(settings)
    except KeyRingError as exc:
        print(f"worker: bad codec key ring: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # reported with the address, the usual cause
        print(f"worker: cannot connect to Temporal at {settings.temporal_address}: {exc}", file=sys.stderr)
        return 1
    added = await ensure_search_attributes(client, settings.namespace)
    if added:
        log.info("registered search attributes", names=added)

    worker = build_worker(client, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    log.info("worker started", task_queue=settings.task_queue, address=settings.temporal_address)
    async with worker:
        # Reclaim what terminated assessments left: once now, then periodically.
        reaper = asyncio.create_task(run_reaper(client, settings, settings.reaper_interval), name="secflow-reaper")
        try:
            await stop.wait()
        finally:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
        log.info("worker stopping: finishing or handing back running activities")
    log.info("worker stopped")
    return 0


if __name__ == "__main__":
    exit_now(asyncio.run(main()))
