"""AssessmentWorkflow (legacy, v1): kept unchanged so runs started before `Assessment` drain.

New assessments start the sharded `Assessment` workflow (workflows/assessment/). This
type stays registered until no run of it is open: `temporal workflow list --query
"WorkflowType='AssessmentWorkflow' AND ExecutionStatus='Running'"` says when (README,
"Upgrading"). Its recorded histories in tests/histories still replay against it. Do not
change its logic: every change here could break a running history.

The process, as the code below reads:
1. acquire what the assessment needs (a workspace, a scan lock per target host),
   registering each compensation before acquiring;
2. run the stage DAG: a stage starts when its dependencies are done, independent stages
   run concurrently, each stage fans out over its targets; gates wait for a human;
   failures go through the stage's `on_failure` policy after Temporal's retries;
3. `always` stages run whatever happened (the report);
4. count findings from the store, release/compensate LIFO, and end as completed,
   completed_with_errors, failed or cancelled.

Deterministic: no I/O here. Everything that touches the world is an activity, called by
name so this module never imports scanner code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

from temporalio import workflow
from temporalio.common import SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError, FailureError
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

    from secflow.dead_letters import DeadLetterInput, DeadLetterReason, DeadLetterResult, ReplayRecipe, dead_letter_task_id
    from secflow.errors import Category
    from secflow.incidents import (
        IncidentAnswer,
        IncidentReason,
        IncidentRef,
        OpenIncidentRequest,
        OpenIncidentResult,
        dedup_key_for,
        incident_workflow_id,
        severity_for,
    )
    from secflow.models import (
        TERMINAL_STAGE_STATES,
        AssessmentInput,
        AssessmentOutcome,
        AssessmentStatus,
        Decision,
        ErrorInfo,
        FinalizeRequest,
        FindingCounts,
        Intervention,
        LockOutcome,
        LockRequest,
        StageState,
        StageStatus,
        StageTaskInput,
        StageTaskResult,
        TargetStatus,
        WorkspaceInfo,
        WorkspaceRequest,
    )
    from secflow.redaction import redact
    from secflow.retries import plan_for, to_retry_policy
    from secflow.spec import Spec, Stage, Target
    from secflow.tools import TOOLS, RetryClass
    from workflows.compensations import Compensations
    from workflows.failures import error_from_activity

SA_STATUS = SearchAttributeKey.for_keyword("SecflowStatus")
SA_AWAITING = SearchAttributeKey.for_keyword_list("SecflowAwaiting")

# A killed worker stops heartbeating; Temporal notices after this long and retries the
# attempt elsewhere. Activities heartbeat every second, so 4 s tolerates hiccups while
# keeping detection under the 5 s the product promises.
HEARTBEAT_TIMEOUT = timedelta(seconds=4)
LOCK_POLL_INTERVAL = timedelta(seconds=5)
SHORT_ACTIVITY_TIMEOUT = timedelta(minutes=1)

ACTIONS = ("approve", "reject", "retry_stage", "skip_stage", "abort", "pause", "resume")

# Everything about incidents and dead letters is new behaviour: runs recorded before it
# replay without it (see tests/test_replay.py).
INCIDENTS_PATCH = "incidents-v1"


class _AssessmentStopped(Exception):
    """Raised inside run() when acquisition fails; carries the error to report."""

    def __init__(self, error: ErrorInfo) -> None:
        super().__init__(error.message)
        self.error = error


@workflow.defn(name="AssessmentWorkflow")
class AssessmentWorkflow:
    @workflow.init
    def __init__(self, inp: AssessmentInput) -> None:
        self._spec: Spec = inp.spec
        self._stages: dict[str, Stage] = {s.id: s for s in inp.spec.stages}
        info = workflow.info()
        self._status = AssessmentStatus(
            workflow_id=info.workflow_id,
            name=inp.spec.name,
            status="running",
            stages={s.id: StageStatus(kind=s.kind, tool=s.tool_name) for s in inp.spec.stages},
        )
        self._saga = Compensations(self._status.compensations)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._waits: dict[str, str] = {}  # stage id -> "approval" | "failure"
        self._answers: dict[str, str] = {}  # stage id -> action answering its wait
        self._paused = False
        self._stop_reason: str | None = None
        self._stop_outcome: AssessmentOutcome | None = None
        self._stop_error: ErrorInfo | None = None
        self._lock_wait: str | None = None
        self._compensating = False
        self._version = 0
        self._published: tuple[str, tuple[str, ...]] | None = None
        self._running = False  # nothing is published to the UI before run() starts
        # incidents-v1: incident children and dead letters, sent from side tasks so that a
        # stage cancelled by a stop never loses them; drained before compensating.
        self._incidents_on = False
        self._side_tasks: list[asyncio.Task[None]] = []
        self._incident_ops: dict[str, asyncio.Task[None]] = {}  # dedup key -> last op, ops run in order
        self._open_incidents: dict[str, dict[str, str]] = {}  # stage id -> {dedup key: incident id}
        self._failure_times: dict[tuple[str, str], tuple[datetime, datetime]] = {}
        self._occurrence_seq = 0
        for stage in inp.spec.stages:
            self._reset_targets(stage, stage.tool_name)

    # ------------------------------------------------------------------ main process

    @workflow.run
    async def run(self, inp: AssessmentInput) -> AssessmentStatus:
        self._status.started_at = workflow.now()
        self._incidents_on = workflow.patched(INCIDENTS_PATCH)
        self._running = True
        self._publish()
        cancelled_by_temporal = False
        try:
            await self._acquire_resources()
            await self._run_stages()
        except _AssessmentStopped as stopped:
            self._stop(stopped.error.message, "failed", stopped.error)
            self._skip_unstarted(stopped.error.message)
        except asyncio.CancelledError:
            cancelled_by_temporal = True
            self._stop("cancelled through Temporal (workflow cancel request)", "cancelled")
            await self._cancel_running_stages()
            self._skip_unstarted(self._stop_reason or "cancelled")

        if not cancelled_by_temporal:
            try:
                await self._finalize()
            except asyncio.CancelledError:
                cancelled_by_temporal = True
                self._stop("cancelled through Temporal (workflow cancel request)", "cancelled")
        outcome = self._decide_outcome()
        if self._incidents_on:
            await self._drain_side_tasks()
        self._compensating = True
        self._publish()
        await self._saga.unwind()
        self._compensating = False
        if self._incidents_on and self._saga.failed_steps:
            self._compensations_failed()
            await self._drain_side_tasks()

        self._status.outcome = outcome
        self._status.finished_at = workflow.now()
        self._publish()

        failed_compensations = self._saga.failed
        if failed_compensations:
            first = failed_compensations[0]
            raise ApplicationError(
                f"compensation {first.name!r} failed and needs manual cleanup: "
                f"{first.error.message if first.error else 'unknown error'}",
                self._status,
                type=first.error.category if first.error else Category.INTERNAL.value,
                non_retryable=True,
            )
        if cancelled_by_temporal:
            raise asyncio.CancelledError(self._status.reason)
        if outcome == "failed":
            error = self._stop_error or ErrorInfo(category=Category.INTERNAL.value, message=self._status.reason)
            raise ApplicationError(
                f"assessment failed: {self._status.reason}",
                self._status,
                type=error.category,
                non_retryable=True,
            )
        return self._status

    async def _acquire_resources(self) -> None:
        workspace_req = WorkspaceRequest(assessment_id=self._status.workflow_id)
        self._saga.register("remove workspace", "remove_workspace", workspace_req)
        ws = await workflow.execute_activity(
            "create_workspace",
            workspace_req,
            result_type=WorkspaceInfo,
            start_to_close_timeout=SHORT_ACTIVITY_TIMEOUT,
            retry_policy=to_retry_policy(plan_for(RetryClass.FILESYSTEM)),
        )
        self._status.workspace = ws.path

        # Sorted, so two assessments wanting the same hosts never deadlock each other.
        for key in sorted({_lock_key(t) for t in self._spec.targets}):
            request = LockRequest(target=key, holder=self._status.workflow_id)
            self._saga.register(f"release scan lock {key}", "release_scan_lock", request)
            await self._acquire_lock(request)
            if self._stop_reason:
                return

    async def _acquire_lock(self, request: LockRequest) -> None:
        policy = self._spec.locks
        deadline = workflow.now() + policy.wait_timeout
        while True:
            outcome = await workflow.execute_activity(
                "acquire_scan_lock",
                request,
                result_type=LockOutcome,
                start_to_close_timeout=SHORT_ACTIVITY_TIMEOUT,
                retry_policy=to_retry_policy(plan_for(RetryClass.FILESYSTEM, max_attempts=5)),
            )
            if outcome.acquired:
                self._lock_wait = None
                self._publish()
                return
            busy = f"target {request.target} is being scanned by assessment {outcome.holder}"
            if policy.on_conflict == "refuse":
                raise _AssessmentStopped(
                    ErrorInfo(category=Category.RESOURCE.value, message=f"{busy} (locks.on_conflict: refuse)")
                )
            if workflow.now() >= deadline:
                raise _AssessmentStopped(
                    ErrorInfo(
                        category=Category.RESOURCE.value,
                        message=f"{busy}; gave up after locks.wait_timeout",
                    )
                )
            self._lock_wait = busy
            self._publish()
            try:
                await workflow.wait_condition(lambda: self._stop_reason is not None, timeout=LOCK_POLL_INTERVAL)
                return  # aborted while waiting
            except TimeoutError:
                continue

    # ------------------------------------------------------------------ the stage DAG

    async def _run_stages(self) -> None:
        if self._stop_reason:
            self._skip_unstarted(self._stop_reason)
            return
        while True:
            self._start_ready_stages()
            if not self._tasks and all(self._status.stages[sid].state in TERMINAL_STAGE_STATES for sid in self._stages):
                return
            seen = self._version
            await workflow.wait_condition(lambda: self._version != seen)  # noqa: B023 - awaited in this iteration
            for sid, task in list(self._tasks.items()):
                if task.done():
                    del self._tasks[sid]
                    if not task.cancelled():
                        task.result()  # a bug in stage code fails the workflow task, visibly

    def _start_ready_stages(self) -> None:
        for sid, stage in self._stages.items():
            st = self._status.stages[sid]
            if st.state != "pending" or sid in self._tasks or not self._dependencies_done(stage):
                continue
            if self._stop_reason and not stage.always:
                self._finish(st, "skipped", f"not started: {self._stop_reason}")
                continue
            if self._paused and not self._stop_reason:
                continue
            blocker = self._failed_required_dependency(stage)
            if blocker and not stage.always:
                self._finish(st, "skipped", f"required dependency {blocker!r} failed")
                continue
            st.state = "running"
            self._tasks[sid] = asyncio.create_task(self._execute_stage(stage))
            self._changed()

    def _dependencies_done(self, stage: Stage) -> bool:
        deps = set(stage.depends_on)
        if stage.always:
            # A `finally` stage waits for everything that is not itself a finally stage.
            deps |= {s.id for s in self._spec.stages if not s.always}
        return all(self._status.stages[d].state in TERMINAL_STAGE_STATES for d in deps)

    def _failed_required_dependency(self, stage: Stage) -> str | None:
        for dep in stage.depends_on:
            if self._status.stages[dep].state == "failed" and self._stages[dep].criticality == "required":
                return dep
        return None

    async def _execute_stage(self, stage: Stage) -> None:
        st = self._status.stages[stage.id]
        started = False
        try:
            if stage.requires_approval:
                answer = await self._wait_for_human(stage, "approval")
                if answer in ("reject", "skip"):
                    self._finish(st, "skipped", self._answer_note(stage.id, answer))
                    return
                if answer == "fail":
                    self._stage_failed(
                        stage, ErrorInfo(category=Category.USER_ABORT.value, message=self._answer_note(stage.id, answer))
                    )
                    return
                if answer == "abort":
                    self._finish(st, "skipped", f"not started: {self._stop_reason}")
                    return
            started = True
            await self._run_with_failure_policy(stage)
        except asyncio.CancelledError:
            if started:
                self._finish(st, "cancelled", self._stop_reason or "cancelled")
            else:
                self._finish(st, "skipped", f"not started: {self._stop_reason or 'cancelled'}")
            raise

    async def _run_with_failure_policy(self, stage: Stage) -> None:
        st = self._status.stages[stage.id]
        tool = stage.tool_name
        targets = self._targets_for(stage, tool)
        fallback_used = False
        while True:
            st.state = "running"
            self._changed()
            failures = await self._run_targets(stage, tool, targets)
            if (
                failures
                and self._stop_reason
                and not stage.always
                and all(e.category == Category.USER_ABORT.value for _, e in failures)
            ):
                self._finish(st, "cancelled", self._stop_reason)
                return
            total = max(len(st.targets), 1)
            if not failures:
                self._finish(st, "partial" if fallback_used else "succeeded", st.reason)
                if self._incidents_on:
                    self._resolve_incidents(
                        stage.id, f"stage {stage.id} {st.state} on a later run (attempts so far: {st.attempts})"
                    )
                return
            first_error = failures[0][1]
            if any(e.category == Category.SECURITY.value for _, e in failures):
                # Scope is law: no policy may continue past a security violation.
                security = next(e for _, e in failures if e.category == Category.SECURITY.value)
                st.error = security
                self._finish(st, "failed", f"security violation: {security.message}")
                if self._incidents_on:
                    self._park_failures(
                        stage, tool, [f for f in failures if f[1].category == Category.SECURITY.value], "security_violation"
                    )
                    self._open_incident(stage, "security_violation", security, f"security violation in stage {stage.id}")
                self._stop(f"security violation in stage {stage.id!r}: {security.message}", "failed", security)
                return
            failed_targets = [t for t, _ in failures]
            percent = 100.0 * len(failures) / total
            if len(failures) < total and percent <= stage.tolerated_failure_percent:
                st.degraded = True
                self._finish(
                    st,
                    "partial",
                    f"{len(failures)} of {total} targets failed ({percent:.0f}% <= tolerated {stage.tolerated_failure_percent:g}%): {first_error.message}",
                )
                return
            st.error = first_error
            if stage.on_failure == "fallback" and not fallback_used and stage.fallback_tool:
                fallback_used = True
                st.degraded = True
                st.reason = f"{tool} failed ({first_error.category}: {first_error.message}); fell back to {stage.fallback_tool}"
                tool = stage.fallback_tool
                targets = [t for t in self._targets_for(stage, tool) if _target_key(t) in failed_targets]
                self._reset_targets(stage, tool, only=[_target_key(t) for t in targets])
                continue
            if stage.on_failure == "await_approval":
                answer = await self._wait_for_human(stage, "failure")
                if answer == "retry":
                    targets = [t for t in targets if _target_key(t) in failed_targets] or targets
                    self._reset_targets(stage, tool, only=[_target_key(t) for t in targets])
                    st.error = None
                    continue
                if answer == "skip":
                    self._finish(st, "skipped", f"{self._answer_note(stage.id, answer)} after: {first_error.message}")
                    if self._incidents_on:
                        self._unrecoverable(stage, tool, failures, first_error, by_human=self._answered_by_human(stage.id))
                    return
                if answer == "abort":
                    self._finish(st, "cancelled", self._stop_reason or "aborted")
                    return
                if self._incidents_on:
                    self._unrecoverable(stage, tool, failures, first_error, by_human=self._answered_by_human(stage.id))
                self._stage_failed(stage, first_error)
                return
            if stage.on_failure == "skip":
                self._finish(
                    st, "skipped", f"failed and skipped (on_failure: skip): {first_error.category}: {first_error.message}"
                )
                if self._incidents_on:
                    self._unrecoverable(stage, tool, failures, first_error, by_human=False)
                return
            if self._incidents_on:
                self._unrecoverable(stage, tool, failures, first_error, by_human=False)
            self._stage_failed(stage, first_error)
            return

    async def _run_targets(self, stage: Stage, tool: str, targets: list[Target | None]) -> list[tuple[str, ErrorInfo]]:
        results = await asyncio.gather(*(self._run_target(stage, tool, t) for t in targets))
        return [r for r in results if r is not None]

    async def _run_target(self, stage: Stage, tool: str, target: Target | None) -> tuple[str, ErrorInfo] | None:
        st = self._status.stages[stage.id]
        key = _target_key(target)
        ts = st.targets[key]
        await workflow.wait_condition(lambda: not self._paused or self._stop_reason is not None)
        if self._stop_reason and not stage.always:
            ts.state = "cancelled"
            return key, ErrorInfo(category=Category.USER_ABORT.value, message=self._stop_reason)
        plan = stage.retry_plan(tool)
        ts.state = "running"
        ts.tool = tool
        self._changed()
        task_input = StageTaskInput(
            assessment_id=self._status.workflow_id,
            stage_id=stage.id,
            kind=stage.kind,
            tool=tool,
            target=key,
            target_kind=target.kind if target else "",
            options=stage.tool_options(tool),
            scope=list(self._spec.scope.allow),
            workspace=self._status.workspace,
            retry=plan,
            snapshot=self._status.model_copy(deep=True) if not TOOLS[tool].target_kinds else None,
            chaos=dict(self._spec.chaos),
        )
        try:
            result = await workflow.execute_activity(
                tool,
                task_input,
                result_type=StageTaskResult,
                start_to_close_timeout=stage.effective_timeout,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=to_retry_policy(plan),
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
        except ActivityError as err:
            error = error_from_activity(err, plan)
            now = workflow.now()
            first_failed = self._failure_times.get((stage.id, key), (now, now))[0]
            self._failure_times[(stage.id, key)] = (first_failed, now)
            ts.state = "cancelled" if error.category == Category.USER_ABORT.value else "failed"
            ts.error = error
            ts.attempts += error.attempts
            st.attempts += error.attempts
            self._progress(st)
            return key, error
        ts.state = "succeeded"
        ts.error = None
        ts.attempts += result.attempt
        ts.findings = result.findings
        st.attempts += result.attempt
        st.outputs.update(result.outputs)
        if result.degraded_reason:
            st.degraded = True
            st.reason = result.degraded_reason
        self._progress(st)
        return None

    # ------------------------------------------------------------------ human in the loop

    async def _wait_for_human(self, stage: Stage, kind: str) -> str:
        """Park the stage until someone answers (or its deadline passes); return the action."""
        st = self._status.stages[stage.id]
        st.state = "awaiting_approval" if kind == "approval" else "awaiting_intervention"
        self._waits[stage.id] = kind
        self._answers.pop(stage.id, None)
        self._changed()
        if self._incidents_on:
            self._open_wait_incident(stage, kind)
        try:
            await workflow.wait_condition(
                lambda: stage.id in self._answers or self._stop_reason is not None,
                timeout=stage.wait_timeout,
            )
            answer = self._answers.pop(stage.id, "abort")
        except TimeoutError:
            answer = {"approve": "approve", "reject": "reject", "skip": "skip", "fail": "fail"}[stage.on_wait_timeout]
            self._status.interventions.append(
                Intervention(
                    action=answer,
                    stage=stage.id,
                    by="deadline",
                    reason=f"no answer within wait_timeout; on_wait_timeout is {stage.on_wait_timeout}",
                    at=workflow.now(),
                    via="timeout",
                )
            )
        except asyncio.CancelledError:
            # Stopping (or the worker evicting this run): whoever cancelled publishes.
            self._waits.pop(stage.id, None)
            if self._incidents_on:
                self._close_wait_incident(stage, kind, "cancelled")
            raise
        self._waits.pop(stage.id, None)
        if self._incidents_on:
            self._close_wait_incident(stage, kind, answer)
        self._changed()
        return answer

    def _answer_note(self, stage_id: str, answer: str) -> str:
        for item in reversed(self._status.interventions):
            if item.stage == stage_id and item.accepted:
                who = f" by {item.by}" if item.by else ""
                why = f": {item.reason}" if item.reason else ""
                return f"{answer}{who}{why}"
        return answer

    def _check(self, action: str, d: Decision) -> str | None:
        """Why `action` cannot be applied now, or None if it can. Shared by signals and updates."""
        if self._status.outcome is not None or self._compensating:
            return "the assessment has already finished"
        if action in ("abort", "pause", "resume"):
            if self._stop_reason:
                return f"the assessment is already stopping: {self._stop_reason}"
            if action == "pause" and self._paused:
                return "the assessment is already paused"
            if action == "resume" and not self._paused:
                return "the assessment is not paused"
            return None
        if not d.stage:
            return f'{action} needs a stage: {{"stage": "<id>"}}; stages: {", ".join(self._stages)}'
        if d.stage not in self._stages:
            return f"no stage named {d.stage!r}; stages: {', '.join(self._stages)}"
        st = self._status.stages[d.stage]
        waiting = self._waits.get(d.stage)
        if action == "approve":
            if waiting != "approval":
                return f"stage {d.stage!r} is not awaiting approval (it is {st.state}); approve answers a requires_approval gate"
        elif action == "reject":
            if waiting is None:
                return f"stage {d.stage!r} is not awaiting a decision (it is {st.state})"
        elif action == "skip_stage":
            if waiting is None and st.state != "pending":
                return f"stage {d.stage!r} cannot be skipped: it is {st.state} (only pending or waiting stages can)"
        elif action == "retry_stage":
            if waiting == "approval":
                return f"stage {d.stage!r} has not run yet: it awaits approval (use approve)"
            if waiting is None:
                if st.state not in ("failed", "skipped", "cancelled", "partial"):
                    return f"stage {d.stage!r} is {st.state}; only a failed, skipped, cancelled or partial stage can be retried"
                if self._stop_reason:
                    return f"the assessment is stopping ({self._stop_reason}); nothing can be retried"
                busy = [
                    s
                    for s in self._downstream(d.stage)
                    if self._status.stages[s].state not in TERMINAL_STAGE_STATES and self._status.stages[s].state != "pending"
                ]
                if busy:
                    return f"stage {d.stage!r} has dependents still in progress: {', '.join(busy)}"
        return None

    def _apply(self, action: str, d: Decision, via: Literal["signal", "update", "timeout"]) -> str:
        self._status.interventions.append(
            Intervention(action=action, stage=d.stage, by=d.by, reason=d.reason, at=workflow.now(), via=via)
        )
        who = f" by {d.by}" if d.by else ""
        if action == "abort":
            self._stop(f"aborted{who}" + (f": {d.reason}" if d.reason else ""), "cancelled", None)
            message = "aborting: running stages are being cancelled, then compensations run"
        elif action == "pause":
            self._paused = True
            message = "paused: running activities finish, nothing new starts until resume"
        elif action == "resume":
            self._paused = False
            message = "resumed"
        else:
            assert d.stage is not None
            short = {"retry_stage": "retry", "skip_stage": "skip"}.get(action, action)
            if d.stage in self._waits:
                self._answers[d.stage] = short
                message = f"stage {d.stage}: {short}"
            elif action == "skip_stage":
                self._finish(
                    self._status.stages[d.stage], "skipped", f"skipped{who} before it ran" + (f": {d.reason}" if d.reason else "")
                )
                message = f"stage {d.stage} will not run"
            else:
                reset = self._reset_for_retry(d.stage)
                message = f"re-running {', '.join(reset)}"
        self._changed()
        return message

    def _reset_for_retry(self, stage_id: str) -> list[str]:
        reset = [stage_id] + [s for s in self._downstream(stage_id) if self._status.stages[s].state in TERMINAL_STAGE_STATES]
        for sid in reset:
            st = self._status.stages[sid]
            stage = self._stages[sid]
            st.state = "pending"
            st.error = None
            st.reason = ""
            st.degraded = False
            self._reset_targets(stage, stage.tool_name)
        return reset

    def _downstream(self, stage_id: str) -> list[str]:
        found: list[str] = []
        frontier = [stage_id]
        while frontier:
            current = frontier.pop()
            for s in self._spec.stages:
                if current in s.depends_on and s.id not in found:
                    found.append(s.id)
                    frontier.append(s.id)
        return found

    def _problem(self, action: str, d: Decision) -> str | None:
        malformed = d.payload_problem()  # decoded leniently now: refuse it here, by field
        if malformed:
            return malformed
        extra = sorted((d.model_extra or {}).keys())
        if extra:
            return f"unknown field(s) {', '.join(extra)}; allowed: stage, by, reason"
        return self._check(action, d)

    def _handle_signal(self, action: str, d: Decision) -> None:
        problem = self._problem(action, d)
        if problem:
            workflow.logger.warning("intervention ignored", extra={"action": action, "stage": d.stage, "reason": problem})
            self._status.interventions.append(
                Intervention(
                    action=action, stage=d.stage, by=d.by, reason=d.reason, at=workflow.now(), accepted=False, note=problem
                )
            )
            self._changed()
            return
        self._apply(action, d, "signal")

    def _validate_update(self, action: str, d: Decision) -> None:
        problem = self._problem(action, d)
        if problem:
            raise ValueError(problem)

    # Signals: fire-and-forget, for tctl and the temporal CLI. A signal that cannot apply is
    # recorded in `interventions` with the reason, never silently dropped.
    @workflow.signal(name="approve")
    def approve_signal(self, d: Decision) -> None:
        self._handle_signal("approve", d)

    @workflow.signal(name="reject")
    def reject_signal(self, d: Decision) -> None:
        self._handle_signal("reject", d)

    @workflow.signal(name="retry_stage")
    def retry_stage_signal(self, d: Decision) -> None:
        self._handle_signal("retry_stage", d)

    @workflow.signal(name="skip_stage")
    def skip_stage_signal(self, d: Decision) -> None:
        self._handle_signal("skip_stage", d)

    @workflow.signal(name="abort")
    def abort_signal(self, d: Decision) -> None:
        self._handle_signal("abort", d)

    @workflow.signal(name="pause")
    def pause_signal(self, d: Decision) -> None:
        self._handle_signal("pause", d)

    @workflow.signal(name="resume")
    def resume_signal(self, d: Decision) -> None:
        self._handle_signal("resume", d)

    # Updates: the starter's commands. Validators refuse what cannot apply, so a wrong
    # stage name is an error for the caller and leaves no trace in history.
    @workflow.update(name="approve")
    def approve_update(self, d: Decision) -> str:
        return self._apply("approve", d, "update")

    @approve_update.validator
    def _v_approve(self, d: Decision) -> None:
        self._validate_update("approve", d)

    @workflow.update(name="reject")
    def reject_update(self, d: Decision) -> str:
        return self._apply("reject", d, "update")

    @reject_update.validator
    def _v_reject(self, d: Decision) -> None:
        self._validate_update("reject", d)

    @workflow.update(name="retry_stage")
    def retry_stage_update(self, d: Decision) -> str:
        return self._apply("retry_stage", d, "update")

    @retry_stage_update.validator
    def _v_retry(self, d: Decision) -> None:
        self._validate_update("retry_stage", d)

    @workflow.update(name="skip_stage")
    def skip_stage_update(self, d: Decision) -> str:
        return self._apply("skip_stage", d, "update")

    @skip_stage_update.validator
    def _v_skip(self, d: Decision) -> None:
        self._validate_update("skip_stage", d)

    @workflow.update(name="abort")
    def abort_update(self, d: Decision) -> str:
        return self._apply("abort", d, "update")

    @abort_update.validator
    def _v_abort(self, d: Decision) -> None:
        self._validate_update("abort", d)

    @workflow.update(name="pause")
    def pause_update(self, d: Decision) -> str:
        return self._apply("pause", d, "update")

    @pause_update.validator
    def _v_pause(self, d: Decision) -> None:
        self._validate_update("pause", d)

    @workflow.update(name="resume")
    def resume_update(self, d: Decision) -> str:
        return self._apply("resume", d, "update")

    @resume_update.validator
    def _v_resume(self, d: Decision) -> None:
        self._validate_update("resume", d)

    @workflow.query(name="status")
    def status(self) -> AssessmentStatus:
        return self._status

    # ------------------------------------------------------------------ incidents and dead letters (incidents-v1)
    #
    # Rules (README "Incidents and escalation"):
    # - an intervention wait opens an incident (gate: "approval", failure wait: the error's
    #   category); any answer to a gate resolves it; a failure wait is resolved by skip,
    #   reject, abort or the deadline, and by the retried stage succeeding (a retry that
    #   fails again waits again: the same incident, one more occurrence);
    # - a stage that ends unrecoverable (retries exhausted and the stage failed or was
    #   skipped by on_failure: skip, or a human skipped/rejected it after a failure wait)
    #   parks one dead letter per failed target; an incident is opened for it
    #   (required_stage_failed, or retries_exhausted when the stage was skipped or is
    #   optional) unless a human just decided it, who needs no page about their decision;
    # - targets that failed within tolerated_failure_percent (stage `partial`) are policy, not
    #   incidents; a fallback that succeeds is recovery, not an incident;
    # - a security violation parks its target(s) and opens a P1;
    # - a compensation that still fails parks an entry (no replay recipe) and opens a P2.

    def _side(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._side_tasks.append(task)
        return task

    async def _drain_side_tasks(self) -> None:
        """Let incident starts/signals and dead-letter writes land before compensating."""
        while not all(t.done() for t in self._side_tasks):
            try:
                await workflow.wait_condition(lambda: all(t.done() for t in self._side_tasks))
            except asyncio.CancelledError:
                continue  # cancelled through Temporal meanwhile: still let them land
        for task in self._side_tasks:
            if not task.cancelled():
                task.result()  # a bug here fails the workflow task, visibly
        self._side_tasks.clear()

    def _incident_key(self, stage_id: str, target: str, dedup_reason: str) -> str:
        return dedup_key_for(self._status.workflow_id, stage_id, target, dedup_reason)

    def _answer_commands(self, stage: Stage | None, incident_id: str, kind: str) -> list[str]:
        wid = self._status.workflow_id
        commands: list[str] = []
        if stage is not None and kind == "approval":
            commands += [
                f"python -m starter approve {wid} {stage.id}",
                f"python -m starter reject {wid} {stage.id}",
                f'temporal workflow signal --workflow-id {wid} --name approve --input \'{{"stage": "{stage.id}", "by": "you"}}\'',
            ]
        elif stage is not None and kind in ("failure", "stage"):
            commands += [
                f"python -m starter retry {wid} {stage.id}",
                f"python -m starter skip {wid} {stage.id}" if kind == "failure" else f"python -m starter status {wid}",
                f'temporal workflow signal --workflow-id {wid} --name retry_stage --input \'{{"stage": "{stage.id}", "by": "you"}}\'',
            ]
        else:
            commands.append(f"python -m starter status {wid}")
        commands += [
            f"python -m starter incidents ack {incident_id} --by you",
            f'temporal workflow signal --workflow-id {incident_id} --name ack --input \'{{"by": "you"}}\'',
            f"python -m starter incidents resolve {incident_id} --by you --note 'what was done'",
        ]
        return commands

    def _open_incident(
        self,
        stage: Stage | None,
        reason: IncidentReason,
        error: ErrorInfo,
        title: str,
        *,
        dedup_reason: str | None = None,
        kind: str = "stage",
        target: str = "",
        stage_id: str | None = None,
    ) -> str:
        """Open (or add an occurrence to) the incident for this problem; returns its id."""
        sid = stage.id if stage is not None else (stage_id or "")
        key = self._incident_key(sid, target, dedup_reason or reason)
        incident_id = incident_workflow_id(key)
        required = stage is None or stage.criticality == "required"
        info = workflow.info()
        self._occurrence_seq += 1
        ref = IncidentRef(
            incident_id=incident_id,
            dedup_key=key,
            severity=severity_for(error.category, reason, required=required),
            reason=reason,
            title=redact(f"{title} ({self._status.name}, assessment {self._status.workflow_id})"),
            category=error.category,
            message=redact(error.message),
            assessment_id=self._status.workflow_id,
            workflow_id=info.workflow_id,
            run_id=info.run_id,
            stage_id=sid,
            target=redact(target),
            trace_id=f"{info.workflow_id}/{info.run_id}",
            commands=self._answer_commands(stage, incident_id, kind),
            opened_at=workflow.now(),
            occurrence_id=f"{info.run_id}/{self._occurrence_seq}",
        )
        if incident_id not in self._status.incidents:
            self._status.incidents.append(incident_id)
        self._open_incidents.setdefault(sid, {})[key] = incident_id
        self._incident_op(key, self._start_or_recur(ref))
        self._changed()
        return incident_id

    def _incident_op(self, key: str, op: Coroutine[Any, Any, None]) -> None:
        """Operations on one incident run in order (its start before its resolve)."""
        previous = self._incident_ops.get(key)

        async def in_order() -> None:
            if previous is not None:
                await previous
            await op

        self._incident_ops[key] = self._side(in_order())

    async def _start_or_recur(self, ref: IncidentRef) -> None:
        """Start the incident workflow, or add an occurrence if this problem is open.

        Through the `open_incident` activity rather than as a child workflow: the incident
        must outlive the assessment and must not count as the assessment's pending work
        (see activities/incidents.py for why that matters)."""
        try:
            await workflow.execute_activity(
                "open_incident",
                OpenIncidentRequest(incident=ref, task_queue=workflow.info().task_queue),
                result_type=OpenIncidentResult,
                start_to_close_timeout=SHORT_ACTIVITY_TIMEOUT,
                retry_policy=to_retry_policy(plan_for(RetryClass.HTTP_API)),
            )
        except ActivityError as err:
            error = error_from_activity(err, plan_for(RetryClass.HTTP_API))
            # Temporal itself is unreachable past the retries: the problem is still in the
            # status, the history and (for unrecoverable tasks) the DLQ; say loudly that
            # nobody was paged.
            workflow.logger.error(
                "incident could not be opened",
                extra={"incident": ref.incident_id, "category": error.category, "error": error.message},
            )

    async def _signal_incident(self, incident_id: str, name: str, arg: Any) -> None:
        try:
            await workflow.get_external_workflow_handle(incident_id).signal(name, arg)
        except FailureError as err:
            # Typically: a human already resolved it and it ended. Nothing to undo; say so.
            workflow.logger.warning(
                "incident signal not delivered", extra={"incident": incident_id, "signal": name, "error": str(err)}
            )

    def _resolve_incidents(self, stage_id: str, note: str, only: str | None = None) -> None:
        for key, incident_id in list(self._open_incidents.get(stage_id, {}).items()):
            if only is not None and key != only:
                continue
            del self._open_incidents[stage_id][key]
            answer = IncidentAnswer(by="secflow", note=redact(note)[:2000])
            self._incident_op(key, self._signal_incident(incident_id, "resolve", answer))

    def _open_wait_incident(self, stage: Stage, kind: str) -> None:
        st = self._status.stages[stage.id]
        if kind == "approval":
            error = ErrorInfo(category="approval", message=f"stage {stage.id} waits for approval before it runs")
            title = f"stage {stage.id} waits for approval"
        else:
            err = st.error or ErrorInfo(category=Category.INTERNAL.value, message="failed")
            error = ErrorInfo(
                category=err.category,
                message=f"stage {stage.id} failed after {st.attempts} attempt(s) ({err.category}: {err.message}) and waits for a decision",
            )
            title = f"stage {stage.id} failed and waits for a decision"
        self._open_incident(stage, "intervention_wait", error, title, dedup_reason=f"intervention_wait:{kind}", kind=kind)

    def _close_wait_incident(self, stage: Stage, kind: str, answer: str) -> None:
        """Any answer ends a gate's wait; a failure wait stays open through a retry."""
        if kind == "failure" and answer == "retry":
            return
        key = self._incident_key(stage.id, "", f"intervention_wait:{kind}")
        if answer == "cancelled":
            note = f"wait ended: {self._stop_reason or 'assessment cancelled'}"
        elif answer == "abort":
            note = f"wait ended: {self._stop_reason or 'assessment aborted'}"
        else:
            note = f"answered: {self._answer_note(stage.id, answer)}"
            last = next((i for i in reversed(self._status.interventions) if i.stage == stage.id), None)
            if last is not None and last.via == "timeout":
                note = f"no answer within wait_timeout; on_wait_timeout: {answer}"
        self._resolve_incidents(stage.id, note, only=key)

    def _answered_by_human(self, stage_id: str) -> bool:
        last = next((i for i in reversed(self._status.interventions) if i.stage == stage_id and i.accepted), None)
        return last is not None and last.via != "timeout"

    def _unrecoverable(
        self, stage: Stage, tool: str, failures: list[tuple[str, ErrorInfo]], first_error: ErrorInfo, *, by_human: bool
    ) -> None:
        self._park_failures(stage, tool, failures, "retries_exhausted")
        if by_human or first_error.category == Category.USER_ABORT.value:
            return
        st = self._status.stages[stage.id]
        failed = st.state != "skipped"
        reason: IncidentReason = "required_stage_failed" if failed and stage.criticality == "required" else "retries_exhausted"
        what = "failed" if failed else "was skipped"
        self._open_incident(
            stage,
            reason,
            ErrorInfo(
                category=first_error.category,
                message=f"stage {stage.id} {what} after {st.attempts} attempt(s): {first_error.category}: {first_error.message}",
            ),
            f"stage {stage.id} {what} after its retries",
        )

    def _park_failures(self, stage: Stage, tool: str, failures: list[tuple[str, ErrorInfo]], reason: DeadLetterReason) -> None:
        info = workflow.info()
        wid = self._status.workflow_id
        now = workflow.now()
        st = self._status.stages[stage.id]
        targetless = not TOOLS[tool].target_kinds
        for key, error in failures:
            if error.category == Category.USER_ABORT.value:
                continue
            first, last = self._failure_times.get((stage.id, key), (now, now))
            target = next((t for t in self._spec.targets if t.value == key), None)
            ts = st.targets.get(key)
            entry = DeadLetterInput(
                task_id=dead_letter_task_id(wid, info.run_id, stage.id, key, reason),
                workflow_id=wid,
                run_id=info.run_id,
                stage_id=stage.id,
                target=key,
                tool=tool,
                reason=reason,
                category=error.category,
                message=redact(error.message),
                attempts=max(ts.attempts if ts else 0, error.attempts, 1),
                first_failure_at=first,
                last_failure_at=last,
                replay=ReplayRecipe(
                    spec_name=self._spec.name,
                    scope=list(self._spec.scope.allow),
                    stage=stage.model_dump(mode="json", exclude_defaults=True),
                    target=target.model_dump(mode="json", exclude_none=True) if target is not None and not targetless else None,
                    task_queue=info.task_queue,
                    spec_targets=[t.model_dump(mode="json", exclude_none=True) for t in self._spec.targets] if targetless else [],
                ),
            )
            self._side(self._park(entry))

    async def _park(self, entry: DeadLetterInput) -> None:
        try:
            await workflow.execute_activity(
                "park_dead_letter",
                entry,
                result_type=DeadLetterResult,
                start_to_close_timeout=SHORT_ACTIVITY_TIMEOUT,
                retry_policy=to_retry_policy(plan_for(RetryClass.HTTP_API)),
            )
        except ActivityError as err:
            error = error_from_activity(err, plan_for(RetryClass.HTTP_API))
            # The store is down past its retries: the failure itself is still in the
            # status, the history and the incident; say loudly that the DLQ missed it.
            workflow.logger.error(
                "dead letter could not be parked",
                extra={"task_id": entry.task_id, "category": error.category, "error": error.message},
            )

    def _compensations_failed(self) -> None:
        info = workflow.info()
        wid = self._status.workflow_id
        now = workflow.now()
        for record, activity, arg in self._saga.failed_steps:
            error = record.error or ErrorInfo(category=Category.INTERNAL.value, message="unknown error")
            self._side(
                self._park(
                    DeadLetterInput(
                        task_id=dead_letter_task_id(wid, info.run_id, "compensation", record.name, "compensation_failed"),
                        workflow_id=wid,
                        run_id=info.run_id,
                        stage_id="compensation",
                        target=record.name,
                        tool=activity,
                        reason="compensation_failed",
                        category=error.category,
                        message=redact(error.message),
                        attempts=max(record.attempts, 1),
                        first_failure_at=now,
                        last_failure_at=now,
                        replay=None,
                        extra={
                            "compensation": record.name,
                            "activity": activity,
                            "input": arg.model_dump(mode="json") if isinstance(arg, BaseModel) else arg,
                        },
                    )
                )
            )
            self._open_incident(
                None,
                "compensation_failed",
                ErrorInfo(
                    category=error.category,
                    message=f"compensation {record.name!r} ({activity}) failed and needs manual cleanup: {error.message}",
                ),
                f"compensation {record.name!r} failed; manual cleanup needed",
                kind="compensation",
                stage_id="compensation",
                target=record.name,
            )

    # ------------------------------------------------------------------ endings

    def _stop(self, reason: str, outcome: AssessmentOutcome, error: ErrorInfo | None = None) -> None:
        """Fail fast / abort: nothing new starts (but `always` stages), running stages are cancelled."""
        if self._stop_reason:
            return
        self._stop_reason = reason
        self._stop_outcome = outcome
        self._stop_error = error
        self._status.reason = reason
        for sid, task in self._tasks.items():
            if not self._stages[sid].always and not task.done():
                task.cancel()
        self._changed()

    async def _cancel_running_stages(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in list(self._tasks.values()):
            try:
                await task
            except asyncio.CancelledError:
                pass  # the stage recorded itself as cancelled in _execute_stage
        self._tasks.clear()

    def _skip_unstarted(self, reason: str) -> None:
        for st in self._status.stages.values():
            if st.state == "pending":
                self._finish(st, "skipped", f"not started: {reason}")

    def _stage_failed(self, stage: Stage, error: ErrorInfo) -> None:
        st = self._status.stages[stage.id]
        st.error = error
        self._finish(st, "failed", f"{error.category}: {error.message}")
        if stage.criticality == "required":
            self._stop(f"required stage {stage.id!r} failed: {error.category}: {error.message}", "failed", error)

    def _decide_outcome(self) -> AssessmentOutcome:
        if self._stop_outcome:
            return self._stop_outcome
        degraded = any(
            st.state in ("failed", "skipped", "partial", "cancelled") or st.degraded for st in self._status.stages.values()
        )
        if degraded:
            self._status.reason = self._status.reason or "; ".join(
                f"{sid}: {st.state}" + (f" ({st.reason})" if st.reason else "")
                for sid, st in self._status.stages.items()
                if st.state in ("failed", "skipped", "partial", "cancelled") or st.degraded
            )
            return "completed_with_errors"
        return "completed"

    async def _finalize(self) -> None:
        """Count findings from the store (the truth) and close the error ledger."""
        try:
            counts = await workflow.execute_activity(
                "finalize_assessment",
                FinalizeRequest(
                    assessment_id=self._status.workflow_id,
                    stage_outcomes={sid: st.state for sid, st in self._status.stages.items()},
                ),
                result_type=FindingCounts,
                start_to_close_timeout=SHORT_ACTIVITY_TIMEOUT,
                retry_policy=to_retry_policy(plan_for(RetryClass.HTTP_API)),
            )
        except ActivityError as err:
            error = error_from_activity(err, plan_for(RetryClass.HTTP_API))
            # The assessment's work is done; a store outage must not undo it. Keep the
            # workflow's own counts and say so.
            self._status.reason = (self._status.reason + "; " if self._status.reason else "") + (
                f"findings could not be counted from the store ({error.category}: {error.message}); counts are the workflow's own"
            )
            workflow.logger.error("finalize failed", extra={"error": error.message, "category": error.category})
            self._recount()
        else:
            self._status.findings = counts

    # ------------------------------------------------------------------ bookkeeping

    def _targets_for(self, stage: Stage, tool: str) -> list[Target | None]:
        info = TOOLS[tool]
        if not info.target_kinds:
            return [None]
        return list(self._spec.targets_for(tool))

    def _reset_targets(self, stage: Stage, tool: str, only: list[str] | None = None) -> None:
        st = self._status.stages[stage.id]
        info = TOOLS.get(tool)
        keys = [""] if info is None or not info.target_kinds else [t.value for t in self._spec.targets_for(tool)]
        if only is None:
            st.targets = {k: TargetStatus(tool=tool) for k in keys}
        else:
            for k in only:
                prev = st.targets.get(k) or TargetStatus()
                st.targets[k] = TargetStatus(tool=tool, attempts=prev.attempts)
        self._progress(st)

    def _progress(self, st: StageStatus) -> None:
        st.progress.total = len(st.targets)
        st.progress.done = sum(1 for t in st.targets.values() if t.state in ("succeeded", "failed", "skipped", "cancelled"))
        st.findings = sum(t.findings for t in st.targets.values())
        self._recount()
        self._changed()

    def _recount(self) -> None:
        total = sum(st.findings for st in self._status.stages.values())
        self._status.findings = FindingCounts(total=total, by_severity=self._status.findings.by_severity)

    def _finish(self, st: StageStatus, state: StageState, reason: str = "") -> None:
        st.state = state
        if reason:
            st.reason = reason
        self._changed()

    def _changed(self) -> None:
        self._version += 1
        self._publish()

    def _derive_status(self) -> str:
        if self._status.outcome:
            return self._status.outcome
        if self._compensating:
            return "compensating"
        if self._stop_reason:
            return "stopping"
        if self._lock_wait:
            return "waiting_for_lock"
        if self._waits:
            return "awaiting_intervention"
        if self._paused:
            return "paused"
        return "running"

    def _publish(self) -> None:
        """Mirror state into the Web UI: search attributes (on change) and current details."""
        status = self._derive_status()
        self._status.status = status
        if not self._running:
            return
        self._status.awaiting = sorted(self._waits)
        key = (status, tuple(self._status.awaiting))
        if key != self._published:
            self._published = key
            workflow.upsert_search_attributes([SA_STATUS.value_set(status), SA_AWAITING.value_set(list(self._status.awaiting))])
        workflow.set_current_details(self._details())

    def _details(self) -> str:
        wid = self._status.workflow_id
        lines = [f"**{self._status.name}**: {self._status.status}"]
        if self._lock_wait:
            lines.append(f"Waiting for a scan lock: {self._lock_wait}. `python -m starter abort {wid}` gives up.")
        for sid, kind in sorted(self._waits.items()):
            st = self._status.stages[sid]
            if kind == "approval":
                lines.append(
                    f"Stage `{sid}` waits for approval. Answer: `python -m starter approve {wid} {sid}` or "
                    f"`python -m starter reject {wid} {sid}`; or `temporal workflow signal --workflow-id {wid} "
                    f'--name approve --input \'{{"stage": "{sid}", "by": "you"}}\'`'
                )
            else:
                err = st.error.message if st.error else "failed"
                lines.append(
                    f"Stage `{sid}` failed after retries ({err}) and waits for a decision: "
                    f"`python -m starter retry {wid} {sid}`, `python -m starter skip {wid} {sid}` or "
                    f"`python -m starter reject {wid} {sid}`; or `temporal workflow signal --workflow-id {wid} "
                    f'--name retry_stage --input \'{{"stage": "{sid}"}}\'`'
                )
        running = [sid for sid, st in self._status.stages.items() if st.state == "running"]
        if running:
            lines.append(
                "Running: "
                + ", ".join(
                    f"{sid} ({self._status.stages[sid].progress.done}/{self._status.stages[sid].progress.total} targets)"
                    for sid in running
                )
            )
        if self._paused:
            lines.append(f"Paused. `python -m starter resume {wid}` continues.")
        if self._status.reason:
            lines.append(self._status.reason)
        lines.append(f"Findings so far: {self._status.findings.total}")
        return "\n\n".join(lines)


def _target_key(target: Target | None) -> str:
    """A target's key in the stage status ("" for a tool that runs once, not per target)."""
    return target.value if target else ""


def _lock_key(target: Target) -> str:
    """Scan locks are per host: a URL and a host target on the same machine share one."""
    if target.kind == "url":
        return (urlsplit(target.value).hostname or target.value).lower()
    if target.kind == "host":
        return target.value.lower()
    return f"path:{target.value}"
