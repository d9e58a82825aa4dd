"""The activities the assessment calls, by typed reference, each with its timeout and retry plan.

One place says how each bookkeeping activity is called; the workflow reads as the process.
Tool activities are the exception: which tool runs is the spec's choice, so they are
called by name (`run_tool_activity`).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from activities.adaptive import choose_retry_plan
    from activities.audit import record_decision
    from activities.dlq import park_dead_letter
    from activities.incidents import open_incident
    from activities.locks import acquire_scan_locks, release_scan_locks
    from activities.report import render_final_reports
    from activities.resources import create_workspace, finalize_assessment, remove_workspace
    from activities.stage_batches import (
        count_stage_targets,
        describe_spec,
        load_target_batch,
        park_stage_failures,
        record_target_results,
    )
    from activities.validation import settle_ladder_rung, validate_recovery
    from secflow.adaptive import AdaptiveChoice, AdaptiveRequest
    from secflow.approvals import DecisionRecord, DecisionRecorded
    from secflow.dead_letters import DeadLetterInput, DeadLetterResult
    from secflow.incidents import OpenIncidentRequest, OpenIncidentResult
    from secflow.locking import BulkLockOutcome, BulkLockRequest
    from secflow.models import (
        FinalizeRequest,
        FindingCounts,
        ParkResult,
        ParkStageFailures,
        SpecRef,
        SpecSummary,
        StageRef,
        StageTaskInput,
        StageTaskResult,
        TargetBatch,
        TargetBatchRequest,
        TargetResults,
        WorkspaceInfo,
        WorkspaceRequest,
    )
    from secflow.recovery import RecoveryValidationRequest, RecoveryValidationResult, RungSettlement
    from secflow.reports.final import FinalReportsRequest, FinalReportsResult
    from secflow.retries import BOOKKEEPING_FILESYSTEM_PLAN, STORE_PLAN, RetryPlan, plan_for, to_retry_policy
    from secflow.tools import RetryClass

# A killed worker stops heartbeating; Temporal notices after this long and retries the
# attempt elsewhere. Activities heartbeat every second, so 4 s tolerates hiccups while
# keeping detection under the 5 s the product promises.
HEARTBEAT_TIMEOUT = timedelta(seconds=4)
# The bookkeeping activities (`@classified`: workspace, locks, batches, finalize, reports,
# validation, audit ...) heartbeat in the background too (activities/runner.py), so a worker
# killed during one is noticed after this long, not after the 1- or 10-minute
# start-to-close timeout. A little looser than the tools': a busy store may stall the
# event loop for a moment, and a false timeout here only costs a rerun of idempotent work.
BOOKKEEPING_HEARTBEAT = timedelta(seconds=5)
SHORT = timedelta(minutes=1)
LONG = timedelta(minutes=10)  # parking thousands of dead letters, finalizing a large run

_STORE = to_retry_policy(STORE_PLAN)
# Bookkeeping on the filesystem: the FILESYSTEM class's quick retries, but enough attempts
# that a few worker kills (each a lost attempt, noticed by the heartbeat timeout) cannot
# fail the assessment; errors a retry will not fix are non-retryable by category anyway.
_FILESYSTEM = to_retry_policy(BOOKKEEPING_FILESYSTEM_PLAN)
_LOCKS = to_retry_policy(BOOKKEEPING_FILESYSTEM_PLAN)
_TEMPORAL = to_retry_policy(plan_for(RetryClass.HTTP_API))

INCIDENT_PLAN = plan_for(RetryClass.HTTP_API)


async def describe(spec_ref: str) -> SpecSummary:
    return await workflow.execute_activity(
        describe_spec,
        SpecRef(spec_ref=spec_ref),
        start_to_close_timeout=SHORT,
        heartbeat_timeout=BOOKKEEPING_HEARTBEAT,
        retry_policy=_STORE,
    )


async def make_workspace(req: WorkspaceRequest) -> WorkspaceInfo:
    return await workflow.execute_activity(
        create_workspace, req, start_to_close_timeout=SHORT, heartbeat_timeout=BOOKKEEPING_HEARTBEAT, retry_policy=_FILESYSTEM
    )


async def lock_batch(req: BulkLockRequest) -> BulkLockOutcome:
    return await workflow.execute_activity(
        acquire_scan_locks, req, start_to_close_timeout=SHORT, heartbeat_timeout=BOOKKEEPING_HEARTBEAT, retry_policy=_LOCKS
    )


async def target_batch(req: TargetBatchRequest) -> TargetBatch:
    return await workflow.execute_activity(
        load_target_batch, req, start_to_close_timeout=SHORT, heartbeat_timeout=BOOKKEEPING_HEARTBEAT, retry_policy=_STORE
    )


async def record_results(req: TargetResults) -> int:
    return await workflow.execute_activity(
        record_target_results, req, start_to_close_timeout=SHORT, heartbeat_timeout=BOOKKEEPING_HEARTBEAT, retry_policy=_STORE
    )


async def count_targets(req: StageRef) -> dict[str, int]:
    return await workflow.execute_activity(
        count_stage_targets, req, start_to_close_timeout=SHORT, heartbeat_timeout=BOOKKEEPING_HEARTBEAT, retry_policy=_STORE
    )


async def park_failures(req: ParkStageFailures) -> ParkResult:
    return await workflow.execute_activity(
        park_stage_failures,
        req,
        summary=f"dead-letter stage {req.stage_id} ({req.reason})",
        start_to_close_timeout=LONG,
        heartbeat_timeout=BOOKKEEPING_HEARTBEAT,
        retry_policy=_STORE,
    )


async def park_one(entry: DeadLetterInput) -> DeadLetterResult:
    return await workflow.execute_activity(
        park_dead_letter, entry, start_to_close_timeout=SHORT, heartbeat_timeout=BOOKKEEPING_HEARTBEAT, retry_policy=_STORE
    )


async def audit_decision(entry: DecisionRecord) -> DecisionRecorded:
    return await workflow.execute_activity(
        record_decision, entry, start_to_close_timeout=SHORT, heartbeat_timeout=BOOKKEEPING_HEARTBEAT, retry_policy=_STORE
    )


async def choose_plan(req: AdaptiveRequest) -> AdaptiveChoice:
    return await workflow.execute_activity(
        choose_retry_plan,
        req,
        summary=f"retry plan for {req.stage_id} ({req.tool}) from the recovery record",
        start_to_close_timeout=SHORT,
        heartbeat_timeout=BOOKKEEPING_HEARTBEAT,
        retry_policy=_STORE,
    )


async def start_incident(req: OpenIncidentRequest) -> OpenIncidentResult:
    ref = req.incident
    return await workflow.execute_activity(
        open_incident,
        req,
        start_to_close_timeout=SHORT,
        heartbeat_timeout=BOOKKEEPING_HEARTBEAT,
        retry_policy=to_retry_policy(INCIDENT_PLAN),
        summary=f"{ref.severity.value} incident: {ref.reason}" + (f" in stage {ref.stage_id}" if ref.stage_id else ""),
    )


async def finalize(req: FinalizeRequest) -> FindingCounts:
    return await workflow.execute_activity(
        finalize_assessment, req, start_to_close_timeout=LONG, heartbeat_timeout=BOOKKEEPING_HEARTBEAT, retry_policy=_STORE
    )


async def final_reports(req: FinalReportsRequest) -> FinalReportsResult:
    return await workflow.execute_activity(
        render_final_reports, req, start_to_close_timeout=LONG, heartbeat_timeout=BOOKKEEPING_HEARTBEAT, retry_policy=_FILESYSTEM
    )


async def settle_rung(req: RungSettlement) -> int:
    return await workflow.execute_activity(
        settle_ladder_rung,
        req,
        summary=f"ladder: stage {req.stage_id} {req.rung}: {req.outcome}",
        start_to_close_timeout=SHORT,
        heartbeat_timeout=BOOKKEEPING_HEARTBEAT,
        retry_policy=_STORE,
    )


async def validate(req: RecoveryValidationRequest) -> RecoveryValidationResult:
    return await workflow.execute_activity(
        validate_recovery,
        req,
        summary=f"validate stage {req.stage_id} after {req.after}",
        start_to_close_timeout=SHORT,
        heartbeat_timeout=BOOKKEEPING_HEARTBEAT,
        retry_policy=_STORE,
    )


async def run_tool_activity(
    tool: str, task: StageTaskInput, plan: RetryPlan, timeout: timedelta, *, summary: str | None = None
) -> StageTaskResult:
    """`summary` is what the Web UI's timeline shows for the call ("portscan 10.0.0.5")."""
    return await workflow.execute_activity(
        tool,
        task,
        summary=summary,
        result_type=StageTaskResult,
        start_to_close_timeout=timeout,
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
        retry_policy=to_retry_policy(plan),
        cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    )


# Compensations are registered by activity (typed reference) and input; they run in
# `Compensations.unwind` with their own plan.
RELEASE_LOCKS = release_scan_locks
REMOVE_WORKSPACE = remove_workspace
