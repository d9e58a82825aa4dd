"""Inputs, outputs and status of the assessment workflow and its activities.

Every workflow/activity takes ONE pydantic model and returns one, so fields can be
added later without breaking running histories. Payloads are counts and ids: findings
themselves live in the store.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from secflow.retries import RetryPlan
from secflow.spec import Spec

# --- workflow input / result -------------------------------------------------------------


class AssessmentInput(BaseModel):
    spec: Spec
    requested_by: str = ""


AssessmentOutcome = Literal["completed", "completed_with_errors", "failed", "cancelled"]

StageState = Literal[
    "pending",
    "awaiting_approval",  # gate: waits for approve/reject before running
    "running",
    "awaiting_intervention",  # failed after retries; waits for retry/skip/reject
    "succeeded",
    "partial",  # some targets failed within tolerated_failure_percent, or a fallback ran
    "failed",
    "skipped",
    "cancelled",
]

TERMINAL_STAGE_STATES: frozenset[str] = frozenset({"succeeded", "partial", "failed", "skipped", "cancelled"})


class ErrorInfo(BaseModel):
    category: str
    message: str
    attempts: int = 0


class Progress(BaseModel):
    done: int = 0
    total: int = 0


class TargetStatus(BaseModel):
    state: Literal["pending", "running", "succeeded", "failed", "skipped", "cancelled"] = "pending"
    attempts: int = 0
    findings: int = 0
    tool: str = ""
    error: ErrorInfo | None = None


class StageStatus(BaseModel):
    state: StageState = "pending"
    kind: str = ""
    tool: str = ""
    attempts: int = 0
    progress: Progress = Field(default_factory=Progress)
    error: ErrorInfo | None = None
    reason: str = ""  # why skipped / cancelled / partial, in one sentence
    degraded: bool = False
    targets: dict[str, TargetStatus] = Field(default_factory=dict)
    findings: int = 0
    outputs: dict[str, str] = Field(default_factory=dict)  # e.g. report paths


class Intervention(BaseModel):
    action: str
    stage: str | None = None
    by: str = ""
    reason: str = ""
    at: datetime
    via: Literal["signal", "update", "timeout"] = "signal"
    accepted: bool = True
    note: str = ""  # why a signal was ignored, or what it did


class CompensationRecord(BaseModel):
    name: str
    state: Literal["registered", "running", "done", "failed"] = "registered"
    attempts: int = 0
    error: ErrorInfo | None = None


class FindingCounts(BaseModel):
    total: int = 0
    by_severity: dict[str, int] = Field(default_factory=dict)


class AssessmentStatus(BaseModel):
    """What `status` answers and the result carries."""

    workflow_id: str
    name: str
    status: str  # running | paused | awaiting_intervention | waiting_for_lock | compensating | <outcome>
    outcome: AssessmentOutcome | None = None
    reason: str = ""
    stages: dict[str, StageStatus] = Field(default_factory=dict)
    awaiting: list[str] = Field(default_factory=list)
    interventions: list[Intervention] = Field(default_factory=list)
    compensations: list[CompensationRecord] = Field(default_factory=list)
    findings: FindingCounts = Field(default_factory=FindingCounts)
    workspace: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # Incident workflow ids this assessment opened (`python -m starter incidents show ID`).
    incidents: list[str] = Field(default_factory=list)


# --- signals and updates -----------------------------------------------------------------


class Decision(BaseModel):
    """Payload of every intervention signal/update.

    Unknown keys are kept (not dropped by decoding) so that an update can refuse them by
    name and a signal can record them: a typo like `stagee` must not pass silently.
    """

    model_config = ConfigDict(extra="allow")

    stage: str | None = None
    by: str = ""
    reason: str = ""


# --- activities --------------------------------------------------------------------------


class StageTaskInput(BaseModel):
    """One tool run on one target (or once, for tools without targets)."""

    assessment_id: str
    stage_id: str
    kind: str
    tool: str
    target: str = ""
    target_kind: str = ""
    options: dict[str, Any] = Field(default_factory=dict)
    scope: list[str] = Field(default_factory=list)
    workspace: str = ""
    retry: RetryPlan
    # The report tool gets the assessment's status so far; other tools get None.
    snapshot: AssessmentStatus | None = None
    # The spec's `chaos:` section (HTTP fault injection per dependency); honoured by the
    # activity only when its worker runs with SECFLOW_CHAOS=1.
    chaos: dict[str, Any] = Field(default_factory=dict)


class StageTaskResult(BaseModel):
    target: str = ""
    tool: str = ""
    attempt: int = 1
    findings: int = 0
    inserted: int = 0
    by_severity: dict[str, int] = Field(default_factory=dict)
    items_done: int = 0
    items_total: int = 0
    outputs: dict[str, str] = Field(default_factory=dict)
    # Set when the tool finished but with less than it should have (e.g. an enrichment
    # service stayed down): the stage is marked degraded with this reason.
    degraded_reason: str = ""


class WorkspaceRequest(BaseModel):
    assessment_id: str


class WorkspaceInfo(BaseModel):
    path: str


class LockRequest(BaseModel):
    target: str
    holder: str


class LockOutcome(BaseModel):
    acquired: bool
    holder: str
    released: bool = False


class FinalizeRequest(BaseModel):
    assessment_id: str
    # stage id -> final state, to mark the errors met in each as recovered/failed/skipped
    stage_outcomes: dict[str, str] = Field(default_factory=dict)
