"""Workers and routing files for the incident tests.

The worker registers what `python worker.py` registers (WORKFLOWS, ALL_ACTIVITIES): the
real alert activities (activities/alerts: `plan_alerts`, `send_alert`) deliver to the
stand-ins of tests/alert_standins.py named in a routing file (SECFLOW_ALERTS_CONFIG),
exactly as a deployment would.
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timezone
from pathlib import Path

from temporalio.client import Client
from temporalio.worker import Worker

from activities.registry import ALL_ACTIVITIES
from secflow.incidents import IncidentRef, Severity, dedup_key_for, incident_workflow_id
from worker import WORKFLOWS


def incident_worker(client: Client, task_queue: str) -> Worker:
    """What `python worker.py` runs: every workflow and activity, alerts and DLQ included."""
    return Worker(client, task_queue=task_queue, workflows=WORKFLOWS, activities=ALL_ACTIVITIES)


def write_routing(path: Path, channels: dict[str, str], routing: dict[str, list[list[str]]]) -> Path:
    """A routing file of Slack channels (name -> webhook URL); cooldown off so each
    message of the test is its own delivery, and the hourly cap far above what a test sends:
    the cap counts a channel's deliveries in the session's one store, and the suite's many
    incident tests share the names tier1..tier3 (30 an hour, the default, was reached)."""
    lines = ["channels:"]
    for name, url in channels.items():
        lines += [f"  {name}:", "    type: slack", f"    url: {url}", "    cooldown: 0s", "    timeout: 2s", "    max_per_hour: 100000"]
    lines.append("routing:")
    for severity, tiers in routing.items():
        lines.append(f"  {severity}:")
        lines.append("    tiers:")
        for tier in tiers:
            lines.append(f"      - [{', '.join(tier)}]")
    path.write_text("\n".join(lines) + "\n")
    return path


def make_ref(severity: Severity, *, message: str = "scanner crashed", stage: str = "headers") -> IncidentRef:
    """An incident as an assessment would open it (for tests that start one directly)."""
    assessment = f"a-{uuid.uuid4().hex[:8]}"
    key = dedup_key_for(assessment, stage, "", "required_stage_failed")
    return IncidentRef(
        incident_id=incident_workflow_id(key),
        dedup_key=key,
        severity=severity,
        reason="required_stage_failed",
        title=f"stage {stage} failed after its retries",
        category="external_tool",
        message=message,
        assessment_id=assessment,
        workflow_id=assessment,
        run_id="r-1",
        stage_id=stage,
        commands=[f"python -m starter retry {assessment} {stage}"],
        opened_at=datetime.now(timezone.utc),
    )


def env_with(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}
