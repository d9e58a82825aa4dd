"""`open_incident`: start an incident workflow for a problem, or add an occurrence to it.

Why an activity and not a child workflow: an incident must outlive its assessment and
must not hold it. Tried as a child with ParentClosePolicy.ABANDON (2026-11-23), the
time-skipping dev server (Temporal CLI 1.9.1, server 1.32.0) stopped skipping for the
parent: tests/test_deadlines.py's 1 h gate did not end within 60 s. A minimal parent
with an abandoned child did skip, but the child's virtual clock ran ahead of its
parent's (its 5 h of timers were over, the child gone, when the parent reached 1 h), so
parent/child time on that server is not one clock, and the SecFlow hang was not
isolated further. Started from here, the incident is a workflow of its
own, keyed by the dedup key (id `incident-<key>`), on the same task queue; the Web UI
loses the parent/child link (the memo and the assessment's status name each other).

Idempotent: a second start of the same id fails with "already started" and becomes a
`recur` signal carrying the request's occurrence id, which the incident counts once.
"""

from __future__ import annotations

from temporalio import activity
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from activities.runner import classified
from secflow.incidents import IncidentRef, OpenIncidentRequest, OpenIncidentResult, Recurrence
from secflow.logging import get_logger


@activity.defn(name="open_incident")
@classified
async def open_incident(req: OpenIncidentRequest) -> OpenIncidentResult:
    ref = req.incident
    client = activity.client()
    log = get_logger(component="incidents", incident=ref.incident_id, workflow_id=ref.workflow_id, stage=ref.stage_id)
    try:
        await client.start_workflow(
            "IncidentWorkflow",
            ref,
            id=ref.incident_id,
            task_queue=req.task_queue,
            # A resolved incident has ended: the same problem again is a new incident run.
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            # What `starter incidents list` shows without asking a worker.
            # What the Web UI's list and header say (Temporal user metadata); the title
            # and message were redacted by the desk.
            static_summary=f"{ref.severity.value} incident: {ref.title}"[:400],
            static_details=incident_details(ref),
            memo={
                "title": ref.title,
                "assessment_id": ref.assessment_id,
                "stage_id": ref.stage_id,
                "reason": ref.reason,
                "severity": ref.severity.value,
            },
        )
    except WorkflowAlreadyStartedError:
        await client.get_workflow_handle(ref.incident_id).signal(
            "recur", Recurrence(message=ref.message, run_id=ref.run_id, occurrence_id=ref.occurrence_id)
        )
        log.info("incident already open: occurrence added", severity=ref.severity.value)
        return OpenIncidentResult(incident_id=ref.incident_id, opened=False)
    log.warning("incident opened", severity=ref.severity.value, reason=ref.reason)
    return OpenIncidentResult(incident_id=ref.incident_id, opened=True)


def incident_details(ref: IncidentRef) -> str:
    """The incident's static details in the Web UI (Markdown): what, where, how bad."""
    where = f"assessment `{ref.assessment_id}`" + (f", stage `{ref.stage_id}`" if ref.stage_id else "")
    return "\n".join(
        [
            f"**{ref.severity.value}** {ref.reason} ({ref.category}) in {where}",
            ref.message[:1000],
        ]
    )
