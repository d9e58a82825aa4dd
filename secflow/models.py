"""Inputs, outputs and status of the assessment workflow and its activities.

Every workflow/activity takes ONE pydantic model and returns one, so fields can be
added later without breaking running histories. Payloads are counts and ids: findings
themselves live in the store.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from secflow.approvals import ApprovalPolicy
from secflow.retries import RetryPlan
from secflow.spec import LockPolicy, Spec, Stage

# --- workflow input / result -------------------------------------------------------------


class AssessmentInput(BaseModel):
    """Input of the legacy `AssessmentWorkflow` (the whole spec inline); kept while its runs drain."""

    spec: Spec
    requested_by: str = ""


# A workflow run continues as new once its history passes this many events: well under
# Temporal's 10,240-event warning and 51,200-event limit.
DEFAULT_EVENT_BUDGET = 8_000


class AssessmentRequest(BaseModel):
    """Input of the `Assessment` workflow: the spec travels by reference, stored once."""

    spec_ref: str  # "sha256:<hex>" of the spec stored in the findings store
    # The spec's stages and counts, computed by the starter; without it the workflow
    # reads them from the stored spec first (one more round trip).
    summary: SpecSummary | None = None
    requested_by: str = ""
    event_budget: int = DEFAULT_EVENT_BUDGET  # the assessment's own history
    shard_event_budget: int = DEFAULT_EVENT_BUDGET  # each stage shard's history
    carried: AssessmentCarry | None = None  # state handed over by continue-as-new


# A round of at most this many targets runs in the assessment itself (a child workflow
# costs more than it saves for a handful of targets, and this many cannot crowd the
# assessment's history); the summary then carries those targets (at most SMALL_TEXT of
# their text) so the round needs no batch to be loaded.
INLINE_TARGETS = 100
SMALL_TEXT = 16 * 1024


class SpecSummary(BaseModel):
    """What the workflow needs of a stored spec: its stages and counts, and the targets of
    the tools that have only a few (never a large list)."""

    name: str
    stages: list[Stage]
    locks: LockPolicy
    lock_keys: int = 0  # hosts to lock (path targets need none)
    targets_by_tool: dict[str, int] = Field(default_factory=dict)
    few_targets: dict[str, list[TargetRef]] = Field(default_factory=dict)  # tool -> its targets, when few
    approvals: ApprovalPolicy | None = None  # who may answer (signed decisions); None: anyone


class SpecRef(BaseModel):
    spec_ref: str


AssessmentOutcome = Literal["completed", "completed_with_errors", "failed", "cancelled"]

StageState = Literal[
    "pending",
    "awaiting_approval",  # gate: waits for approve/reject before running
    "running",
    "awaiting_intervention",  # failed after retries; waits for retry/skip/reject
    "succeeded",
    "partial",  # some targets failed within tolerated_failure_percent, or a fallback ran
    "unverified",  # recovered, but the recovery's validation failed (docs/recovery.md)
    "failed",
    "skipped",
    "cancelled",
]

TERMINAL_STAGE_STATES: frozenset[str] = frozenset({"succeeded", "partial", "unverified", "failed", "skipped", "cancelled"})


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


class TargetFailure(BaseModel):
    """One target that failed, as shown among a stage's most recent failures."""

    target: str
    tool: str = ""
    category: str
    message: str
    attempts: int = 0


# A stage shows this many of its latest target failures; the rest are in the store
# (`starter status ID --targets --state failed`).
RECENT_FAILURES = 5


class LadderStep(BaseModel):
    """One rung of the recovery ladder a stage went through (secflow/ladder.py)."""

    rung: str  # retry | fallback | human | dead_letter | fail | skip
    outcome: str  # recovered | failed | skipped | parked | cancelled | degraded
    note: str = ""


class RecoveryCheck(BaseModel):
    """The validation that ran after a stage recovered (activities/validation.py)."""

    passed: bool
    after: str = ""  # the rung that recovered it: retry | fallback | human | resume
    problems: list[str] = Field(default_factory=list)


class RecoveryInProgress(BaseModel):
    """What `status` shows of a stage recovering right now (read from the store)."""

    lost_attempt: int  # the latest attempt that failed or was lost
    target: str = ""
    category: str
    message: str
    rung: str  # the rung now handling it: retry | fallback | human
    open_errors: int = 1  # errors of the stage not settled yet
    findings_kept: int = 0  # findings of the stage already in the store


class StageStatus(BaseModel):
    state: StageState = "pending"
    kind: str = ""
    tool: str = ""
    # the most attempts one target needed, added up over the stage's rounds (1: no retry)
    attempts: int = 0
    # attempts beyond each target's first, over all its targets and rounds (a target re-run
    # by a retry or fallback round counts one more): 0 means nothing was retried
    retries: int = 0
    progress: Progress = Field(default_factory=Progress)
    error: ErrorInfo | None = None
    reason: str = ""  # why skipped / cancelled / partial, in one sentence
    degraded: bool = False
    # Target states -> how many targets are in each (this stage's latest run of each
    # target); per-target detail lives in the store, not here, so the status stays small.
    counts: dict[str, int] = Field(default_factory=dict)
    recent_failures: list[TargetFailure] = Field(default_factory=list)
    rounds: int = 0  # how many times the stage's targets were run (retries, fallback)
    # Legacy AssessmentWorkflow only: a per-target map (grows with the targets).
    targets: dict[str, TargetStatus] = Field(default_factory=dict)
    findings: int = 0
    outputs: dict[str, str] = Field(default_factory=dict)  # e.g. report paths
    # A gate that needs several approvers (spec `approvals.required`): who approved so
    # far, and how many it needs ("1 of 2 approvals"). Empty for a gate of one.
    approvals: list[str] = Field(default_factory=list)
    approvals_required: int = 0
    # `retry: {adaptive: true}`: the latest round's plan and why (secflow/adaptive.py)
    adaptive: str = ""
    # The recovery ladder as walked so far (rung, outcome), the rung now handling the
    # stage's failures ("" when none), and the check of the last recovery.
    ladder: list[LadderStep] = Field(default_factory=list)
    rung: str = ""
    validation: RecoveryCheck | None = None
    # A recovery in progress as the store shows it: filled by `starter status` from the
    # error ledger and the findings table, never by the workflow (it cannot see them).
    recovering: RecoveryInProgress | None = None


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


# Longest values a decision may carry; longer is refused with the field's name.
DECISION_LIMITS = {"stage": 64, "by": 200, "reason": 2000}
DECISION_SHAPE = '{"stage": "<id>", "by": "<name>", "reason": "<why>"}'


class Decision(BaseModel):
    """Payload of every intervention signal/update.

    Unknown keys are kept (not dropped by decoding) so that an update can refuse them by
    name and a signal can record them: a typo like `stagee` must not pass silently.
    """

    model_config = ConfigDict(extra="allow")

    stage: str | None = Field(None, max_length=DECISION_LIMITS["stage"])
    by: str = Field("", max_length=DECISION_LIMITS["by"])
    reason: str = Field("", max_length=DECISION_LIMITS["reason"])
    # A signed decision (spec `approvals:`; secflow/approvals.py): when it was issued
    # (ISO-8601 UTC, as signed), a one-time nonce, and the base64 Ed25519 signature.
    issued_at: str | None = Field(None, max_length=64)
    nonce: str | None = Field(None, max_length=128)
    signature: str | None = Field(None, max_length=256)
    # What was wrong with the payload as sent ("field: reason"), kept instead of raised:
    # a payload that fails to decode would make the SDK drop a signal without a trace
    # and refuse an update with a converter error. `payload_problem()` reports it.
    _problems: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_problems(cls, data: Any, handler: ModelWrapValidatorHandler[Decision]) -> Decision:
        if not isinstance(data, (dict, Decision)):
            decision = handler({})
            decision._problems = [f"payload: expected a JSON object {DECISION_SHAPE}, got {_json_type(data)}"]
            return decision
        try:
            decision = handler(data)
        except ValidationError as err:
            decision = handler({})
            decision._problems = [_decision_error(e) for e in err.errors()]
            return decision
        for name, value in (("stage", decision.stage), ("by", decision.by), ("reason", decision.reason)):
            if value and _not_text(value):
                decision._problems.append(f"{name}: contains a lone surrogate or NUL, which is not text")
        for key in list(decision.model_extra or {}):
            if _not_text(key) or len(key) > 64:
                # Unknown fields are refused by name; a name that is not printable text is
                # refused here and dropped, so the record of the refusal stays serialisable.
                assert decision.model_extra is not None
                del decision.model_extra[key]
                decision._problems.append("payload: a field name is not text (or longer than 64 characters)")
        if decision._problems:
            decision.stage, decision.by, decision.reason = None, "", ""
        return decision

    def payload_problem(self) -> str | None:
        """Why the payload as sent is not a valid decision (field paths), or None. Code that
        builds a Decision itself checks this too: construction never raises (a custom
        __init__ would take part in decoding as well), it keeps the problems."""
        return "; ".join(self._problems[:5]) if self._problems else None


def _json_type(value: Any) -> str:
    return {str: "a string", list: "an array", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def _not_text(value: str) -> bool:
    return "\x00" in value or any("\ud800" <= ch <= "\udfff" for ch in value)


def _decision_error(error: Any) -> str:
    field = ".".join(str(p)[:64] for p in error["loc"]) or "payload"
    return f"{field.encode('utf-8', 'backslashreplace').decode('utf-8')}: {error['msg']}"


# --- activities --------------------------------------------------------------------------


class StageTaskInput(BaseModel):
    """One tool run on one target (or once, for tools without targets).

    With `spec_ref` set the activity reads the scope and the chaos section from the stored
    spec, and `scope`/`chaos` stay empty: nothing of the spec is copied per activity."""

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
    spec_ref: str = ""
    # The ladder rung this run belongs to (retry | fallback | human): the error ledger
    # records it, and a success settles the target's earlier errors as recovered by it.
    rung: str = "retry"


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
    resumed: bool = False  # the attempt resumed from a checkpoint


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


# --- stage shards (child workflows) and their activities -----------------------------------


class ShardProgress(BaseModel):
    """What a stage shard has done so far: counts and a few failures, never a per-target map."""

    counts: dict[str, int] = Field(default_factory=dict)  # target state -> targets
    processed: int = 0
    findings: int = 0
    attempts: int = 0  # the most attempts any one target needed
    retries: int = 0  # attempts beyond the first, summed over the round's targets
    recent_failures: list[TargetFailure] = Field(default_factory=list)
    first_error: ErrorInfo | None = None
    security_error: ErrorInfo | None = None
    outputs: dict[str, str] = Field(default_factory=dict)
    degraded_reason: str = ""
    runs: int = 1  # workflow runs of the shard (continue-as-new adds one)
    resumed: int = 0  # targets whose successful attempt resumed from a checkpoint

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0) + self.counts.get("cancelled", 0)


class StageShardInput(BaseModel):
    """One round of one stage over its targets, run by a `StageTargets` child workflow."""

    assessment_id: str
    stage: Stage
    tool: str
    spec_ref: str
    workspace: str = ""
    round: int = 0
    only_failed: bool = False  # a retry or fallback round runs the targets that failed
    concurrency: int = 200
    batch_size: int = 1000
    event_budget: int = DEFAULT_EVENT_BUDGET
    cursor: int = 0  # index into the stage tool's targets in the spec
    progress: ShardProgress = Field(default_factory=ShardProgress)
    paused: bool = False
    rung: str = "retry"  # the ladder rung this round runs for (StageTaskInput.rung)
    # The report tool (run in the assessment itself, never as a shard) gets the status.
    snapshot: AssessmentStatus | None = None
    # The round's plan when the stage's retries are adaptive (chosen from the recovery
    # record by an activity, so it is in history); None: the stage's table plan.
    retry_plan: RetryPlan | None = None


class ShardReport(BaseModel):
    """A stage shard's progress after a batch, signalled to its assessment."""

    stage_id: str
    round: int
    only_failed: bool = False
    progress: ShardProgress


class TargetRef(BaseModel):
    value: str
    kind: str


class TargetBatchRequest(BaseModel):
    spec_ref: str
    assessment_id: str
    stage_id: str
    tool: str
    cursor: int
    limit: int
    only_failed: bool = False


class TargetBatch(BaseModel):
    targets: list[TargetRef] = Field(default_factory=list)
    next_cursor: int = 0
    exhausted: bool = True


# The store's target key of a tool without targets (enrich, report): its one run.
WHOLE_STAGE = "*"


class TargetResult(BaseModel):
    """One target's outcome in one round, as written to the store."""

    target: str
    tool: str = ""
    state: Literal["succeeded", "failed", "cancelled", "skipped"]
    attempts: int = 0
    findings: int = 0
    category: str = ""
    message: str = ""


class TargetResults(BaseModel):
    assessment_id: str
    stage_id: str
    results: list[TargetResult] = Field(default_factory=list)


class StageRef(BaseModel):
    assessment_id: str
    stage_id: str


class ParkStageFailures(BaseModel):
    """Park every failed target of a stage (read from the store) in the dead-letter queue."""

    assessment_id: str
    run_id: str
    stage_id: str
    spec_ref: str
    reason: Literal["retries_exhausted", "security_violation"]
    task_queue: str = ""
    categories: list[str] = Field(default_factory=list)  # only these categories; empty: all but user_abort


class ParkResult(BaseModel):
    parked: int = 0


class AssessmentCarry(BaseModel):
    """The assessment's state handed to its next run by continue-as-new."""

    status: AssessmentStatus
    summary: SpecSummary
    compensations: list[dict[str, Any]] = Field(default_factory=list)  # (name, activity, input) not yet run
    waits: dict[str, str] = Field(default_factory=dict)
    # When each carried wait began, so its wait_timeout runs on from there.
    wait_since: dict[str, datetime] = Field(default_factory=dict)
    paused: bool = False
    open_incidents: dict[str, dict[str, str]] = Field(default_factory=dict)
    occurrence_seq: int = 0
    # Nonces of signed decisions already used (nonce -> issue time), so a replay is
    # refused after continue-as-new too; pruned once past their maximum age.
    nonces: dict[str, datetime] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _older_names(cls, data: Any) -> Any:
        """The first recorded histories carry `wait_since` under its first name."""
        if isinstance(data, dict) and "wait_deadlines" in data and "wait_since" not in data:
            data = {**data, "wait_since": data["wait_deadlines"]}
            del data["wait_deadlines"]
        return data


AssessmentRequest.model_rebuild()
SpecSummary.model_rebuild()
