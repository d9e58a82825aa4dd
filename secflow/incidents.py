"""Incidents: what a human must look at, how bad it is, and what is sent about it.

Shared by the incident workflow (workflows/incident.py), which decides *when* people are
told, and the alert activities (activities/alerts/), which decide *how* (channels,
grouping, caps, redaction). Everything here is plain data and pure functions, so the
workflow sandbox can import it.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DEFAULT_TIMERS",
    "AlertPlan",
    "AlertRequest",
    "AlertResult",
    "AnswerRecord",
    "AssessmentEnded",
    "Escalation",
    "IncidentAnswer",
    "IncidentEvent",
    "IncidentReason",
    "IncidentRef",
    "IncidentState",
    "IncidentStatus",
    "Notification",
    "OpenIncidentRequest",
    "OpenIncidentResult",
    "PlanRequest",
    "Recurrence",
    "Severity",
    "dedup_key_for",
    "default_plan",
    "delivery_summary",
    "incident_workflow_id",
    "settles_at_end",
    "severity_for",
]


class Severity(str, Enum):
    P1 = "P1"
    P2 = "P2"
    P3 = "P3"
    P4 = "P4"


class IncidentState(str, Enum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class IncidentEvent(str, Enum):
    """What a message is about (PagerDuty's event_action maps trigger/acknowledge/resolve)."""

    TRIGGER = "trigger"
    ESCALATE = "escalate"
    ACKNOWLEDGE = "acknowledge"
    RESOLVE = "resolve"
    SUMMARY = "summary"


# Why the incident exists: the situations the issue lists as needing a human.
IncidentReason = Literal[
    "intervention_wait",  # a stage waits for approval or for a decision after failing
    "required_stage_failed",
    "compensation_failed",
    "security_violation",
    "retries_exhausted",  # an optional stage gave up (degraded / skipped)
    "recovery_unverified",  # a stage recovered but its validation failed (secflow/recovery.py)
]


def severity_for(category: str, reason: IncidentReason, *, required: bool) -> Severity:
    """Security -> P1; a failed required stage -> P2; a degraded optional stage -> P3;
    anything else that merely waits on a human -> P4."""
    if category == "security" or reason == "security_violation":
        return Severity.P1
    if reason in ("required_stage_failed", "compensation_failed"):
        return Severity.P2
    if reason == "intervention_wait":
        return Severity.P2 if required else Severity.P3
    if reason == "retries_exhausted":
        return Severity.P2 if required else Severity.P3
    if reason == "recovery_unverified":
        return Severity.P3
    return Severity.P4


def dedup_key_for(assessment_id: str, stage_id: str, target: str, reason: str) -> str:
    """The same problem (assessment, stage, target, why) gets the same key, so a retry or a
    second failure of it adds an occurrence to the open incident instead of a new one."""
    raw = "\x1f".join((assessment_id, stage_id, target, reason))
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def incident_workflow_id(dedup_key: str) -> str:
    return f"incident-{dedup_key}"


class IncidentRef(BaseModel):
    """Everything a message about an incident may say. `message` is already redacted."""

    model_config = ConfigDict(extra="ignore")

    incident_id: str  # the incident workflow's id
    dedup_key: str
    severity: Severity
    reason: str
    title: str
    category: str
    message: str
    assessment_id: str
    workflow_id: str  # the assessment workflow (correlation id)
    run_id: str
    stage_id: str = ""
    target: str = ""
    trace_id: str = ""  # correlation id carried through logs and messages
    # Exact commands a person can run to answer (ack, resolve, retry the stage, ...).
    commands: list[str] = Field(default_factory=list)
    occurrences: int = 1
    opened_at: datetime | None = None
    # Names this sighting of the problem (the assessment's run id and a counter): a
    # retried `open_incident` activity re-sends it, and the incident counts it once.
    occurrence_id: str = ""


class IncidentAnswer(BaseModel):
    """Payload of the `ack` and `resolve` signals: `{"by": "alice", "note": "on it"}`."""

    model_config = ConfigDict(extra="forbid")

    by: str = Field(min_length=1, max_length=200)
    note: str = Field("", max_length=2000)


class PlanRequest(BaseModel):
    severity: Severity


class AlertPlan(BaseModel):
    """How one severity escalates, from the routing config (read by an activity, so the
    workflow sees the same plan on replay). Times are seconds; None means "never"."""

    severity: Severity
    ack_within: float | None = None  # escalate to the next tier if not acknowledged by then
    resolve_within: float | None = None  # escalate if not resolved by then
    tiers: list[list[str]] = Field(default_factory=list)  # channel names per tier, tier 1 first
    summary_only: bool = False  # P4: no page, only the daily summary
    summary_every: float = 86400.0


# The seeds' table: (ack_within, resolve_within) in seconds per severity; P4 is summary-only.
DEFAULT_TIMERS: dict[Severity, tuple[float | None, float | None]] = {
    Severity.P1: (15 * 60.0, 3600.0),
    Severity.P2: (3600.0, 4 * 3600.0),
    Severity.P3: (4 * 3600.0, None),
    Severity.P4: (None, None),
}


def default_plan(severity: Severity) -> AlertPlan:
    """The timers of the seeds' table with no channels (used when no plan can be read)."""
    ack, resolve = DEFAULT_TIMERS[severity]
    return AlertPlan(severity=severity, ack_within=ack, resolve_within=resolve, summary_only=severity == Severity.P4)


class AlertRequest(BaseModel):
    """One message to one channel."""

    incident: IncidentRef
    event: IncidentEvent
    channel: str
    tier: int = 1
    # The incident workflow numbers its messages; with the incident id, event, tier and
    # channel it names one delivery, so a retried activity recognises one it already made.
    sequence: int = 0
    by: str = ""
    note: str = ""


class AlertResult(BaseModel):
    channel: str
    # sent: delivered; merged: an identical alert went out within the cooldown (counted);
    # capped: the channel's hourly cap was reached (counted); skipped: nothing to send
    # for this event on this channel (e.g. Jira ignores P4).
    status: Literal["sent", "merged", "capped", "skipped"]
    merged_count: int = 0
    external_ref: str = ""


# --- the incident workflow's own record (its `incident` query and result) ---------------


class Recurrence(BaseModel):
    """Payload of the `recur` signal: the same problem happened again."""

    model_config = ConfigDict(extra="ignore")

    message: str = ""  # redacted by the sender
    run_id: str = ""  # the assessment run that saw it again
    occurrence_id: str = ""  # see IncidentRef.occurrence_id: a repeat of one is not counted twice


class Notification(BaseModel):
    """One message to one channel, as the incident workflow saw it end."""

    at: datetime
    event: IncidentEvent
    tier: int
    channel: str
    sequence: int
    # AlertResult's statuses, plus `failed`: the channel stayed down through the activity's
    # retries (recorded, never raised: a dead channel must not stop the others).
    status: Literal["sent", "merged", "capped", "skipped", "failed"]
    merged_count: int = 0
    external_ref: str = ""
    error: str = ""


class Escalation(BaseModel):
    at: datetime
    tier: int
    # ack_deadline: not acknowledged within ack_within; resolve_deadline: not resolved
    # within resolve_within (fires even when acknowledged).
    why: Literal["ack_deadline", "resolve_deadline"]


class AnswerRecord(BaseModel):
    """An ack/resolve/recur received, accepted or not (a bad payload changes nothing)."""

    action: Literal["ack", "resolve", "recur", "assessment_ended"]
    at: datetime
    via: Literal["signal", "update"] = "signal"
    by: str = ""
    note: str = ""
    accepted: bool = True
    problem: str = ""  # why it was not accepted


class IncidentStatus(BaseModel):
    """What the `incident` query answers and the workflow returns."""

    incident_id: str
    dedup_key: str
    severity: Severity
    state: IncidentState
    reason: str
    title: str
    category: str
    message: str
    assessment_id: str
    workflow_id: str
    stage_id: str = ""
    target: str = ""
    commands: list[str] = Field(default_factory=list)
    occurrences: int = 1
    opened_at: datetime | None = None
    tier: int = 0  # highest tier told so far (0: nobody yet)
    next_escalation_at: datetime | None = None
    acknowledged_by: str = ""
    acknowledged_at: datetime | None = None
    resolved_by: str = ""
    resolved_at: datetime | None = None
    resolution_note: str = ""
    # How the assessment that opened it ended ("" while it runs; see `settles_at_end`).
    assessment_outcome: str = ""
    plan: AlertPlan | None = None
    notifications: list[Notification] = Field(default_factory=list)
    escalations: list[Escalation] = Field(default_factory=list)
    answers: list[AnswerRecord] = Field(default_factory=list)


class OpenIncidentRequest(BaseModel):
    """Input of the `open_incident` activity: start the incident, or add an occurrence."""

    incident: IncidentRef
    task_queue: str


class OpenIncidentResult(BaseModel):
    incident_id: str
    opened: bool  # False: it was already open; a `recur` signal added an occurrence


# --- the end of the assessment that opened an incident -----------------------------------


class AssessmentEnded(BaseModel):
    """Payload of the `assessment_ended` signal: the assessment that opened the incident
    has ended. `commands` are the ones that work from now on (no `retry`: the assessment
    is gone; `dlq replay` re-runs a parked task as a new assessment)."""

    model_config = ConfigDict(extra="ignore")

    assessment_id: str
    outcome: str  # completed | completed_with_errors | failed | cancelled
    stage_state: str = ""  # the final state of the incident's stage ("" for none)
    reason: str = ""  # the assessment's one-line reason, redacted by the sender
    commands: list[str] = Field(default_factory=list)


# Outcomes in which the assessment did its work and reported what it could not do.
_FINISHED = ("completed", "completed_with_errors")


def settles_at_end(reason: str, severity: Severity, ended: AssessmentEnded) -> str:
    """Whether the end of its assessment resolves an incident; returns the resolution
    note, or "" when it stays open (README "Incidents and escalation", "When the
    assessment ends").

    The rule: an incident resolves itself when its cause was lived with, i.e.
    - it is a wait for a human (`intervention_wait`) and the assessment ended: there is
      nothing left to answer;
    - it is an optional stage that gave up (`retries_exhausted`, P3/P4) and the assessment
      still finished (completed or completed_with_errors): the report names the missing
      stage and its targets are in the dead-letter queue for a later `dlq replay`.
    Everything else stays open with commands that work after the end: a security
    violation, a failed required stage, a failed compensation, or any incident of an
    assessment that failed or was cancelled."""
    if reason == "intervention_wait":
        return f"the assessment ended ({ended.outcome}); the wait is over"
    if reason == "retries_exhausted" and severity in (Severity.P3, Severity.P4) and ended.outcome in _FINISHED:
        state = f"stage {ended.stage_state}" if ended.stage_state else "stage given up"
        return (
            f"lived with: the assessment ended {ended.outcome} without it ({state}); "
            "its failed targets are in the dead-letter queue"
        )
    return ""


def delivery_summary(s: IncidentStatus) -> str:
    """Who was told, said only when a channel accepted the message: "tier 1 notified
    (slack-secops)", "no channel configured", "delivery failed (...)", ...."""
    plan = s.plan
    if plan is None:
        return "nobody notified yet (reading the alert plan)"
    if not any(plan.tiers):
        return "nobody notified: no channel configured"
    if s.tier == 0:
        return "nobody notified yet"
    channels = plan.tiers[s.tier - 1] if s.tier <= len(plan.tiers) else []
    if not channels:
        return f"nobody notified: no channel configured for tier {s.tier}"
    pages = [n for n in s.notifications if n.tier == s.tier and n.event in (IncidentEvent.TRIGGER, IncidentEvent.ESCALATE)]
    accepted = sorted({n.channel for n in pages if n.status in ("sent", "merged")})
    if accepted:
        return f"tier {s.tier} notified ({', '.join(accepted)})"
    if len({n.channel for n in pages}) < len(channels):
        return f"notifying tier {s.tier}"
    failed = [n for n in pages if n.status == "failed"]
    if failed:
        return f"tier {s.tier} delivery failed ({'; '.join(f'{n.channel}: {n.error}' for n in failed)[:300]})"
    return f"tier {s.tier} not notified ({', '.join(f'{n.channel}: {n.status}' for n in pages)})"
