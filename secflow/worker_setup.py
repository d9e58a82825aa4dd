"""Building a SecFlow worker: used by `python worker.py` and by the tests."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.worker import Worker

from activities.registry import ALL_ACTIVITIES
from secflow.settings import Settings
from workflows.assessment import AssessmentWorkflow
from workflows.incident import IncidentWorkflow

WORKFLOWS = [AssessmentWorkflow, IncidentWorkflow]


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
