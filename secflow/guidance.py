"""The commands SecFlow suggests to people, in one catalogue.

The assessment's current details (Web UI), incident texts, the starter's output and the
dead-letter queue all tell a person what to type next; they build it here, so a renamed
command or a new form changes in one place. Pure string building: safe in workflow code.
"""

from __future__ import annotations

import json
import shlex

# How the command lines are invoked, as printed: paths into the project's virtualenv, so
# they run as printed from the project folder after `make demo` without activating it
# (issue 11: `python -m starter` and `temporal` failed there: no temporalio, command not
# found). In the container image both are on PATH as `secflow` and `temporal`.
CLI = ".venv/bin/secflow"
TEMPORAL = ".venv/bin/temporal"
PYTHON = ".venv/bin/python"
DEFAULT_TASK_QUEUE = "secflow"


def _signal(workflow_id: str, name: str, payload: dict[str, str]) -> str:
    return f"{TEMPORAL} workflow signal --workflow-id {workflow_id} --name {name} --input '{json.dumps(payload)}'"


def worker_command(task_queue: str = DEFAULT_TASK_QUEUE) -> str:
    """How to start a worker polling `task_queue` (the environment names the server)."""
    queue = "" if task_queue == DEFAULT_TASK_QUEUE else f"SECFLOW_TASK_QUEUE={shlex.quote(task_queue)} "
    return f"{queue}{PYTHON} worker.py"


def approve_commands(workflow_id: str, stage_id: str) -> list[str]:
    """A gate waiting for approval."""
    return [
        f"{CLI} approve {workflow_id} {stage_id}",
        f"{CLI} reject {workflow_id} {stage_id}",
        _signal(workflow_id, "approve", {"stage": stage_id, "by": "you"}),
    ]


def failure_commands(workflow_id: str, stage_id: str) -> list[str]:
    """A stage that failed after its retries and waits for a decision."""
    return [
        f"{CLI} retry {workflow_id} {stage_id}",
        f"{CLI} skip {workflow_id} {stage_id}",
        f"{CLI} reject {workflow_id} {stage_id}",
        _signal(workflow_id, "retry_stage", {"stage": stage_id, "by": "you"}),
    ]


def rerun_commands(workflow_id: str, stage_id: str) -> list[str]:
    """A stage that ended failed or skipped while the assessment still runs."""
    return [
        f"{CLI} retry {workflow_id} {stage_id}",
        f"{CLI} status {workflow_id}",
        _signal(workflow_id, "retry_stage", {"stage": stage_id, "by": "you"}),
    ]


def status_command(workflow_id: str) -> str:
    return f"{CLI} status {workflow_id}"


def failed_targets_command(workflow_id: str, stage_id: str | None = None) -> str:
    stage = f" --stage {stage_id}" if stage_id else ""
    return f"{CLI} status {workflow_id} --targets --state failed{stage}"


def abort_command(workflow_id: str) -> str:
    return f"{CLI} abort {workflow_id}"


def resume_command(workflow_id: str) -> str:
    return f"{CLI} resume {workflow_id}"


def incident_commands(incident_id: str) -> list[str]:
    return [
        f"{CLI} incidents ack {incident_id} --by you",
        _signal(incident_id, "ack", {"by": "you"}),
        f"{CLI} incidents resolve {incident_id} --by you --note 'what was done'",
    ]


def incident_ack_command(incident_id: str) -> str:
    return f"{CLI} incidents ack {incident_id}"


def incident_show_command(incident_id: str = "ID") -> str:
    return f"{CLI} incidents show {incident_id}"


def dlq_replay_command(ref: str) -> str:
    return f"{CLI} dlq replay {ref} --wait"


def after_end_commands(
    workflow_id: str, replay_refs: list[str] | None = None, show_refs: list[str] | None = None, *, parked: bool = True
) -> list[str]:
    """What works once the assessment has ended (no `retry`: there is nothing to retry in):
    re-run a parked task as a new assessment (or look at an entry that has no replay, such
    as a failed compensation), see what is parked, read the final status and report."""
    return [
        *(dlq_replay_command(ref) for ref in (replay_refs or [])),
        *(dlq_show_command(ref) for ref in (show_refs or [])),
        *([f"{CLI} dlq list --workflow {workflow_id} --state parked"] if parked else []),
        status_command(workflow_id),
        f"{CLI} report {workflow_id} --format md",
    ]


def dlq_show_command(ref: str) -> str:
    return f"{CLI} dlq show {ref}"


def signed_signal_command(workflow_id: str, name: str, stage_id: str | None) -> str:
    """The signal form for an assessment whose spec names approvers (docs/approvals.md)."""
    stage = f" {stage_id}" if stage_id else ""
    return (
        f"{TEMPORAL} workflow signal --workflow-id {workflow_id} --name {name} "
        f'--input "$(SECFLOW_SIGNING_KEY=YOUR.key {CLI} sign {name} {workflow_id}{stage} --by YOUR_NAME)"'
    )
