"""Assessment: one assessment spec driven to a correct end, at any number of targets.

The process:
1. read the stored spec's summary (stages and counts; the targets stay in the store);
2. acquire a workspace and the scan locks of every host, in sorted batches taken all or
   nothing, registering each compensation before acquiring;
3. run the stage DAG: a stage starts when its dependencies are done, independent stages
   run concurrently; a gate waits for a human; each round of a stage fans out over its
   targets (in a `StageTargets` child workflow per round, or here when they are few) and
   its failures go through the stage's `on_failure` policy (`policy.verdict`);
4. `always` stages run whatever happened (the report);
5. count findings from the store and close the error ledger;
6. compensate LIFO and end as completed, completed_with_errors, failed or cancelled;
7. render the report stage's files again from the final status (they were a snapshot).

The run continues as new when its history passes its budget at a quiet moment (nothing
in flight but human waits), carrying its state. Decisions are pure functions in
`policy.py`; incidents and dead letters go through `IncidentDesk`; the user API is
`AssessmentAPI`; the text people read comes from `secflow.guidance`.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Literal

from temporalio import workflow
from temporalio.common import SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError
from temporalio.workflow import ChildWorkflowCancellationType

with workflow.unsafe.imports_passed_through():
    from secflow import guidance
    from secflow.adaptive import ADAPTIVE_PATCH, adaptive_request
    from secflow.errors import Category
    from secflow.ladder import RUNG_LABEL
    from secflow.locking import BulkLockRequest
    from secflow.models import (
        INLINE_TARGETS,
        TERMINAL_STAGE_STATES,
        AssessmentCarry,
        AssessmentOutcome,
        AssessmentRequest,
        AssessmentStatus,
        Decision,
        ErrorInfo,
        FinalizeRequest,
        Intervention,
        LadderStep,
        RecoveryCheck,
        ShardProgress,
        ShardReport,
        SpecSummary,
        StageRef,
        StageShardInput,
        StageState,
        StageStatus,
        WorkspaceRequest,
    )
    from secflow.recovery import RecoveryValidationRequest
    from secflow.reports.final import FINAL_REPORTS_PATCH, FinalReportsRequest, report_formats
    from secflow.retries import STORE_PLAN, plan_for
    from secflow.spec import Stage
    from secflow.tools import TOOLS, RetryClass
    from workflows.assessment import calls, policy
    from workflows.assessment.api import AssessmentAPI, DecisionGate
    from workflows.assessment.desk import IncidentDesk
    from workflows.assessment.targets import StageTargetsWorkflow, TargetRunner
    from workflows.compensations import Compensations
    from workflows.failures import error_from_activity

SA_STATUS = SearchAttributeKey.for_keyword("SecflowStatus")
SA_AWAITING = SearchAttributeKey.for_keyword_list("SecflowAwaiting")

LOCK_POLL_INTERVAL = timedelta(seconds=5)
INCIDENTS_END_PATCH = "incidents-hear-the-end"  # _end signals `assessment_ended` to open incidents
# on_failure as a ladder of rungs, each rung's end written to the error ledger
# (settle_ladder_rung); runs recorded before it walk the single-value policy.
LADDER_PATCH = "recovery-ladder"
VALIDATION_PATCH = "recovery-validation"  # validate_recovery after a stage recovers
DLQ_REPLAY_BY = "dlq replay "  # requested_by of an assessment `dlq replay` started
LOCK_BATCH = 1000  # hosts locked per activity (one transaction)


class AcquisitionFailed(Exception):
    """Acquiring the workspace or the scan locks failed; carries the error to report."""

    def __init__(self, error: ErrorInfo) -> None:
        super().__init__(error.message)
        self.error = error


@workflow.defn(name="Assessment")
class AssessmentWorkflow(AssessmentAPI):
    @workflow.init
    def __init__(self, req: AssessmentRequest) -> None:
        info = workflow.info()
        self._req = req
        carry = req.carried
        self._summary: SpecSummary | None = carry.summary if carry else None
        self._status = carry.status if carry else AssessmentStatus(workflow_id=info.workflow_id, name="", status="running")
        self._stages: dict[str, Stage] = {s.id: s for s in self._summary.stages} if self._summary else {}
        self._saga = Compensations(self._status.compensations)
        self._desk = IncidentDesk(
            workflow_id=info.workflow_id,
            name=self._status.name,
            spec_ref=req.spec_ref,
            incidents=self._status.incidents,
            open_incidents=carry.open_incidents if carry else None,
            occurrence_seq=carry.occurrence_seq if carry else 0,
        )
        self._gate = DecisionGate(info.workflow_id, carry.nonces if carry else None)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._children: dict[str, workflow.ChildWorkflowHandle] = {}
        self._waits: dict[str, str] = dict(carry.waits) if carry else {}  # stage id -> "approval" | "failure"
        self._wait_since: dict[str, datetime] = dict(carry.wait_since) if carry else {}
        self._signals: list[asyncio.Task[None]] = []  # pause/resume sent to stage shards
        self._answers: dict[str, str] = {}
        self._findings_before: dict[str, int] = {}  # stage id -> findings kept before its retry round
        self._human_reruns: set[str] = set()  # stages re-run by retry_stage (a human, a DLQ replay)
        self._paused = carry.paused if carry else False
        self._stop_reason: str | None = None
        self._stop_outcome: AssessmentOutcome | None = None
        self._stop_error: ErrorInfo | None = None
        self._lock_wait: str | None = None
        self._compensating = False
        self._version = 0
        self._published: tuple[str, tuple[str, ...]] | None = None
        if carry:
            self._saga.restore(carry.compensations)
        elif req.summary is not None:
            self._take_summary(req.summary)

    # ------------------------------------------------------------------ the process

    @workflow.run
    async def run(self, req: AssessmentRequest) -> AssessmentStatus:
        cancelled = False
        try:
            try:
                if req.carried is None:
                    await self._begin(req)  # 1
                    await self._acquire()  # 2
                await self._run_stage_dag()  # 3, 4
            except AcquisitionFailed as failed:
                self._stop(failed.error.message, "failed", failed.error)
                self._desk.acquisition_failed(failed.error)
                await self._run_stage_dag()  # nothing runs but `always` stages
        except asyncio.CancelledError:
            cancelled = True
            self._stop("cancelled through Temporal (workflow cancel request)", "cancelled")
            await self._cancel_running_stages()
            self._skip_unstarted(self._stop_reason or "cancelled")
        if not cancelled:
            try:
                await self._finalize()  # 5
            except asyncio.CancelledError:
                cancelled = True
                self._stop("cancelled through Temporal (workflow cancel request)", "cancelled")
        return await self._end(cancelled)  # 6

    async def _begin(self, req: AssessmentRequest) -> None:
        self._status.started_at = workflow.now()
        if req.summary is not None:
            return  # shown from the first moment (see __init__)
        try:
            summary = await calls.describe(req.spec_ref)
        except ActivityError as err:
            # Nothing was acquired yet: there is nothing to undo, only to say why.
            error = error_from_activity(err, STORE_PLAN)
            self._status.reason = f"the spec cannot be read: {error.message}"
            self._status.outcome = "failed"
            self._status.finished_at = workflow.now()
            self._publish()
            raise ApplicationError(self._status.reason, self._status, type=error.category, non_retryable=True) from None
        self._take_summary(summary)
        self._publish()

    def _take_summary(self, summary: SpecSummary) -> None:
        self._summary = summary
        self._stages = {s.id: s for s in summary.stages}
        self._status.name = self._desk.name = summary.name
        for stage in summary.stages:
            st = self._status.stages[stage.id] = StageStatus(kind=stage.kind, tool=stage.tool_name)
            st.progress.total = summary.targets_by_tool.get(stage.tool_name, 1)

    async def _acquire(self) -> None:
        """The workspace, then every host's scan lock in sorted batches (all or nothing each).

        Sorted across batches, so two assessments wanting overlapping hosts never
        deadlock; compensations are registered before acquiring, so nothing leaks."""
        assert self._summary is not None
        wid = self._status.workflow_id
        try:
            workspace = WorkspaceRequest(assessment_id=wid)
            self._saga.register("remove workspace", calls.REMOVE_WORKSPACE, workspace)
            self._status.workspace = (await calls.make_workspace(workspace)).path
            keys = self._summary.lock_keys
            if keys == 0:
                return  # path targets are only read: they need no lock
            self._saga.register(f"release {keys} scan lock(s)", calls.RELEASE_LOCKS, BulkLockRequest(holder=wid))
            for batch in range((keys + LOCK_BATCH - 1) // LOCK_BATCH):
                await self._lock_batch(batch)
                if self._stop_reason:
                    return
        except ActivityError as err:
            error = error_from_activity(err, plan_for(RetryClass.FILESYSTEM))
            raise AcquisitionFailed(error) from None

    async def _lock_batch(self, batch: int) -> None:
        assert self._summary is not None
        locks = self._summary.locks
        deadline = workflow.now() + locks.wait_timeout
        request = BulkLockRequest(
            holder=self._status.workflow_id, spec_ref=self._req.spec_ref, batch=batch, batch_size=LOCK_BATCH
        )
        while True:
            outcome = await calls.lock_batch(request)
            if outcome.acquired:
                self._lock_wait = None
                self._publish()
                return
            target, holder = next(iter(outcome.conflicts.items()), ("?", "?"))
            busy = f"target {target} is taken by assessment {holder} (scanning it, or waiting for it ahead of us)"
            if len(outcome.conflicts) > 1:
                busy += f" (and {len(outcome.conflicts) - 1} more host(s) are busy)"
            if locks.on_conflict == "refuse":
                raise AcquisitionFailed(
                    ErrorInfo(category=Category.RESOURCE.value, message=f"{busy} (locks.on_conflict: refuse)")
                )
            if workflow.now() >= deadline:
                raise AcquisitionFailed(
                    ErrorInfo(category=Category.RESOURCE.value, message=f"{busy}; gave up after locks.wait_timeout")
                )
            self._lock_wait = busy
            self._publish()
            try:
                await workflow.wait_condition(lambda: self._stop_reason is not None, timeout=LOCK_POLL_INTERVAL)
                return  # aborted while waiting
            except TimeoutError:
                continue

    async def _end(self, cancelled: bool) -> AssessmentStatus:
        outcome, reason = policy.assessment_outcome(self._stop_outcome, self._status.stages)
        if reason and not self._status.reason:
            self._status.reason = reason
        await self._desk.drain()
        self._compensating = True
        self._publish()
        await self._saga.unwind()
        self._compensating = False
        if self._saga.failed_steps:
            self._desk.compensations_failed(self._saga.failed_steps)
            await self._desk.drain()
            # The run ends Failed (below): its status must not say `completed`. The scan's
            # results stand, the cleanup needs a human, so at best completed_with_errors.
            outcome = policy.outcome_after_failed_cleanup(outcome)
            if not self._status.reason:
                self._status.reason = f"compensation {self._saga.failed[0].name!r} failed and needs manual cleanup"
        await self._gate.drain()  # decisions seen until now reach the audit trail
        self._status.outcome = outcome
        self._status.finished_at = workflow.now()
        # Incidents still open hear that their assessment ended: each resolves itself if
        # its cause was lived with, or stays open with commands that work after the end.
        # Behind a patch: runs recorded before it ended without these signals.
        if self._desk.holds_open_incidents and workflow.patched(INCIDENTS_END_PATCH):
            self._desk.assessment_ended(outcome, self._status.reason, self._status.stages)
            await self._desk.drain()
        self._publish()
        await self._final_reports()  # 7

        failed = self._saga.failed
        if failed:
            first = failed[0]
            raise ApplicationError(
                f"compensation {first.name!r} failed and needs manual cleanup: "
                f"{first.error.message if first.error else 'unknown error'}",
                self._status,
                type=first.error.category if first.error else Category.INTERNAL.value,
                non_retryable=True,
            )
        if cancelled:
            raise asyncio.CancelledError(self._status.reason)
        if outcome == "failed":
            error = self._stop_error or ErrorInfo(category=Category.INTERNAL.value, message=self._status.reason)
            raise ApplicationError(
                f"assessment failed: {self._status.reason}", self._status, type=error.category, non_retryable=True
            )
        return self._status

    # ------------------------------------------------------------------ the stage DAG

    async def _run_stage_dag(self) -> None:
        self._resume_carried_waits()
        while True:
            self._start_ready_stages()
            if not self._tasks and all(self._state(sid) in TERMINAL_STAGE_STATES for sid in self._stages):
                return
            seen = self._version
            await workflow.wait_condition(lambda: self._version != seen or self._may_hand_over())  # noqa: B023 - awaited in this iteration
            if self._may_hand_over():
                self._hand_over()
            for sid, task in list(self._tasks.items()):
                if task.done():
                    del self._tasks[sid]
                    if not task.cancelled():
                        task.result()  # a bug in stage code fails the workflow task, visibly

    def _start_ready_stages(self) -> None:
        for sid, stage in self._stages.items():
            st = self._status.stages[sid]
            states = self._states()  # live: a stage skipped just now frees those after it
            if st.state != "pending" or sid in self._tasks or not policy.dependencies_done(stage, self._stages.values(), states):
                continue
            if self._stop_reason and not stage.always:
                self._finish(st, "skipped", f"not started: {self._stop_reason}")
                continue
            if self._paused and not self._stop_reason:
                continue
            blocker = policy.failed_required_dependency(stage, self._stages, states)
            if blocker and not stage.always:
                self._finish(st, "skipped", f"required dependency {blocker!r} failed")
                continue
            st.state = "running"
            self._tasks[sid] = asyncio.create_task(self._execute_stage(stage))
            self._changed()

    async def _execute_stage(self, stage: Stage, resume_wait: str | None = None) -> None:
        st = self._status.stages[stage.id]
        started = False
        try:
            if resume_wait == "approval" or (resume_wait is None and stage.requires_approval):
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
            await self._run_with_failure_policy(stage, ask_first=resume_wait == "failure")
        except asyncio.CancelledError:
            if started:
                self._finish(st, "cancelled", self._stop_reason or "cancelled")
            else:
                self._finish(st, "skipped", f"not started: {self._stop_reason or 'cancelled'}")
            raise

    async def _run_with_failure_policy(self, stage: Stage, *, ask_first: bool = False) -> None:
        """Rounds over the stage's targets until `policy.verdict` ends the stage."""
        if workflow.patched(LADDER_PATCH):
            await self._walk_ladder(stage, ask_first=ask_first)
            return
        st = self._status.stages[stage.id]
        tool = st.tool or stage.tool_name
        fallback_used = tool != stage.tool_name
        only_failed = ask_first  # after a carried failure wait, a retry runs the failed targets
        while True:
            if ask_first:
                ask_first = False
                decision = policy.Verdict("ask_human", "", st.error)
            else:
                st.state = "running"
                self._changed()
                try:
                    progress = await self._run_round(stage, tool, only_failed=only_failed)
                except ActivityError as err:
                    # The round's bookkeeping (target batches, outcomes) failed past its
                    # retries: the round failed with that error, for the stage's policy.
                    progress = self._failed_round(st, error_from_activity(err, STORE_PLAN))
                await self._absorb(stage, progress, only_failed=only_failed)
                decision = policy.verdict(
                    stage,
                    self._round_outcome(st, progress),
                    stopping=self._stop_reason is not None,
                    fallback_used=fallback_used,
                )
            if decision.kind == "succeeded":
                self._finish(st, "partial" if fallback_used else "succeeded", st.reason)
                self._desk.stage_recovered(
                    stage.id, f"stage {stage.id} {st.state} on a later run (attempts so far: {st.attempts})"
                )
                return
            if decision.kind == "cancelled":
                self._finish(st, "cancelled", self._stop_reason or "cancelled")
                return
            error = decision.error or ErrorInfo(category=Category.INTERNAL.value, message="failed")
            if decision.kind == "security":
                st.error = error
                self._finish(st, "failed", decision.reason)
                self._desk.security_violation(stage, error)
                self._stop(f"security violation in stage {stage.id!r}: {error.message}", "failed", error)
                return
            if decision.kind == "tolerated":
                st.degraded = True
                self._finish(st, "partial", decision.reason)
                return
            st.error = error
            if decision.kind == "fallback":
                assert stage.fallback_tool is not None
                fallback_used = True
                st.degraded = True
                st.reason = decision.reason
                tool = st.tool = stage.fallback_tool
                only_failed = True
                continue
            if decision.kind == "ask_human":
                answer = await self._wait_for_human(stage, "failure")
                if answer == "retry":
                    st.error = None
                    only_failed = True
                    continue
                if answer == "abort":
                    self._finish(st, "cancelled", self._stop_reason or "aborted")
                    return
                by_human = self._answered_by_human(stage.id)
                if answer == "skip":
                    self._finish(st, "skipped", f"{self._answer_note(stage.id, answer)} after: {error.message}")
                    self._desk.gave_up(stage, failed=False, error=error, attempts=st.attempts, by_human=by_human)
                    return
                self._desk.gave_up(stage, failed=True, error=error, attempts=st.attempts, by_human=by_human)
                self._stage_failed(stage, error)
                return
            if decision.kind == "skip":
                self._finish(st, "skipped", decision.reason)
                self._desk.gave_up(stage, failed=False, error=error, attempts=st.attempts, by_human=False)
                return
            self._desk.gave_up(stage, failed=True, error=error, attempts=st.attempts, by_human=False)
            self._stage_failed(stage, error)
            return

    async def _walk_ladder(self, stage: Stage, *, ask_first: bool = False) -> None:
        """Rounds over the stage's targets, then its recovery ladder (secflow/ladder.py):
        after Temporal's retries a failed round goes to the first rung not tried yet
        (fallback, a human, then dead_letter / fail / skip). The parent decides every
        rung, also for rounds run by a StageTargets child."""
        st = self._status.stages[stage.id]
        ladder = stage.ladder
        tool = st.tool or stage.tool_name
        fallback_used = tool != stage.tool_name
        position = ladder.index("fallback") + 1 if fallback_used and "fallback" in ladder else 0
        round_rung = "fallback" if fallback_used else "retry"
        if stage.id in self._human_reruns:  # re-run by retry_stage: a human's (or a DLQ replay's) retry
            self._human_reruns.discard(stage.id)
            round_rung = "await_approval"
            position = ladder.index("await_approval") if "await_approval" in ladder else 0
        only_failed = ask_first  # after a carried failure wait, a retry runs the failed targets
        resumed = lived_with = False
        while True:
            if ask_first:
                ask_first = False
                position = ladder.index("await_approval") if "await_approval" in ladder else 0
                decision = policy.rung_verdict(
                    stage, position, st.error or ErrorInfo(category=Category.INTERNAL.value, message="failed")
                )
            else:
                st.state = "running"
                st.rung = RUNG_LABEL[round_rung]
                self._changed()
                try:
                    progress = await self._run_round(stage, tool, only_failed=only_failed, rung=RUNG_LABEL[round_rung])
                except ActivityError as err:
                    progress = self._failed_round(st, error_from_activity(err, STORE_PLAN))
                await self._absorb(stage, progress, only_failed=only_failed)
                resumed = resumed or progress.resumed > 0
                lived_with = bool(progress.degraded_reason)
                decision = policy.ladder_verdict(
                    stage,
                    self._round_outcome(st, progress),
                    stopping=self._stop_reason is not None,
                    position=position,
                )
            if decision.kind == "succeeded":
                st.rung = ""
                # a round that finished degraded (a service stayed down) lived with its
                # errors rather than recovering from them: nothing to validate
                after = "" if lived_with and round_rung == "retry" else self._recovered_by(st, round_rung, resumed)
                if after:
                    st.ladder.append(LadderStep(rung=after, outcome="recovered"))
                self._finish(st, "partial" if fallback_used else "succeeded", st.reason)
                self._desk.stage_recovered(
                    stage.id, f"stage {stage.id} {st.state} on a later run (attempts so far: {st.attempts})"
                )
                if after:
                    await self._validate_recovery(stage, after)
                return
            if decision.kind in ("cancelled", "security", "tolerated") and st.state == "running":
                # the round's errors end here, not on a later rung
                outcome = {"cancelled": "cancelled", "security": "failed", "tolerated": "degraded"}[decision.kind]
                self._rung_ended(stage, RUNG_LABEL[round_rung], outcome, decision.reason)
            if decision.kind == "cancelled":
                st.rung = ""
                self._finish(st, "cancelled", self._stop_reason or "cancelled")
                return
            error = decision.error or ErrorInfo(category=Category.INTERNAL.value, message="failed")
            if decision.kind == "security":
                st.rung = ""
                st.error = error
                self._finish(st, "failed", decision.reason)
                self._desk.security_violation(stage, error)
                self._stop(f"security violation in stage {stage.id!r}: {error.message}", "failed", error)
                return
            if decision.kind == "tolerated":
                st.rung = ""
                st.degraded = True
                self._finish(st, "partial", decision.reason)
                return
            st.error = error
            if st.state == "running":  # the round's rung failed; the ladder's next rung takes over
                self._rung_ended(stage, RUNG_LABEL[round_rung], "failed", error.message)
            by_human = False
            while True:  # rungs that end without a round: a human who lets it fall, the terminal rungs
                rung = ladder[decision.rung]
                st.rung = RUNG_LABEL[rung]
                if decision.kind == "fallback":
                    assert stage.fallback_tool is not None
                    fallback_used = True
                    st.degraded = True
                    st.reason = decision.reason
                    tool = st.tool = stage.fallback_tool
                    round_rung, only_failed, position = "fallback", True, decision.rung + 1
                    break
                if decision.kind == "ask_human":
                    answer = await self._wait_for_human(stage, "failure")
                    if answer == "retry":
                        st.error = None
                        round_rung, only_failed, position = "await_approval", True, decision.rung
                        break
                    if answer == "abort":
                        self._rung_ended(stage, "human", "cancelled", self._stop_reason or "aborted")
                        self._finish(st, "cancelled", self._stop_reason or "aborted")
                        return
                    by_human = self._answered_by_human(stage.id)
                    if answer == "skip":
                        self._rung_ended(stage, "human", "skipped", self._answer_note(stage.id, answer))
                        st.rung = ""
                        self._finish(st, "skipped", f"{self._answer_note(stage.id, answer)} after: {error.message}")
                        self._desk.gave_up(stage, failed=False, error=error, attempts=st.attempts, by_human=by_human)
                        return
                    # reject, or the deadline's fail: the next rung takes over
                    self._rung_ended(stage, "human", "failed", self._answer_note(stage.id, answer))
                    decision = policy.rung_verdict(stage, decision.rung + 1, error)
                    continue
                st.rung = ""
                if decision.kind == "skip":
                    self._rung_ended(stage, "skip", "skipped", decision.reason)
                    self._finish(st, "skipped", decision.reason)
                    self._desk.gave_up(stage, failed=False, error=error, attempts=st.attempts, by_human=by_human)
                    return
                parked = decision.kind == "dead_letter"
                self._rung_ended(stage, RUNG_LABEL[rung], "parked" if parked else "failed", error.message)
                self._desk.gave_up(stage, failed=True, error=error, attempts=st.attempts, by_human=by_human, park=parked)
                self._stage_failed(stage, error)
                return

    def _recovered_by(self, st: StageStatus, round_rung: str, resumed: bool) -> str:
        """The rung that recovered a stage that just succeeded, or "" for a clean run."""
        if round_rung != "retry":
            return RUNG_LABEL[round_rung]
        if resumed:  # a retry that went on from a checkpoint: the more specific name
            return "resume"
        if st.retries > 0:
            return "retry"
        # a dead-letter replay run as a new assessment (starter/dlq.py names it so)
        return "replay" if self._req.requested_by.startswith(DLQ_REPLAY_BY) else ""

    def _rung_ended(self, stage: Stage, rung: str, outcome: str, note: str) -> None:
        """A rung ended for the stage: shown in its ladder, written to the error ledger
        (a side task of the desk, in order per stage)."""
        st = self._status.stages[stage.id]
        st.ladder.append(LadderStep(rung=rung, outcome=outcome, note=note[:300]))
        self._changed()
        self._desk.settle_rung(stage.id, rung, outcome)

    async def _validate_recovery(self, stage: Stage, after: str) -> None:
        """Check a recovered stage (secflow/recovery.py); a failed check marks it unverified."""
        if not workflow.patched(VALIDATION_PATCH):
            return
        st = self._status.stages[stage.id]
        try:
            result = await calls.validate(
                RecoveryValidationRequest(
                    assessment_id=self._status.workflow_id,
                    stage_id=stage.id,
                    check_id=f"round-{st.rounds}-{len(st.ladder)}",
                    after=after,
                    tools=[t for t in (stage.tool_name, stage.fallback_tool) if t],
                    reported_findings=st.findings,
                )
            )
        except asyncio.CancelledError:
            # The assessment is stopping: the stage did recover; it stays as it ended, and
            # the status says it was not checked.
            st.validation = RecoveryCheck(passed=True, after=after, problems=["not validated: the assessment stopped first"])
            self._changed()
            return
        except ActivityError as err:
            error = error_from_activity(err, STORE_PLAN)
            result_problems = [f"the validation could not run ({error.category}: {error.message})"]
            st.validation = RecoveryCheck(passed=False, after=after, problems=result_problems)
        else:
            st.validation = RecoveryCheck(passed=result.passed, after=after, problems=result.problems)
        if st.validation.passed:
            self._changed()
            return
        shown = "; ".join(st.validation.problems[:3])
        self._finish(st, "unverified", (st.reason + "; " if st.reason else "") + f"recovery ({after}) not verified: {shown}")
        self._desk.recovery_unverified(stage, after, st.validation.problems)

    async def _run_round(self, stage: Stage, tool: str, *, only_failed: bool, rung: str = "retry") -> ShardProgress:
        """One round of the stage over its targets: here when few, else in a child workflow."""
        assert self._summary is not None
        st = self._status.stages[stage.id]
        st.rounds += 1
        if only_failed:
            self._findings_before[stage.id] = st.findings
        shard = StageShardInput(
            assessment_id=self._status.workflow_id,
            stage=stage,
            tool=tool,
            spec_ref=self._req.spec_ref,
            workspace=self._status.workspace,
            round=st.rounds,
            only_failed=only_failed,
            concurrency=stage.concurrency,
            batch_size=stage.batch_size,
            event_budget=self._req.shard_event_budget,
            paused=self._paused,
            rung=rung,
        )
        ask = adaptive_request(self._status.workflow_id, stage, tool)
        if ask is not None and workflow.patched(ADAPTIVE_PATCH):
            try:
                choice = await calls.choose_plan(ask)  # the record read once, the plan kept in history
            except ActivityError as err:
                # An unreadable record costs the optimisation, not the stage: the table's plan.
                error = error_from_activity(err, STORE_PLAN)
                st.adaptive = f"{tool}: table plan (recovery record unreadable: {error.category}: {error.message})"
            else:
                st.adaptive = choice.reason
                shard.retry_plan = choice.plan
            workflow.logger.info("adaptive retry plan", extra={"stage": stage.id, "tool": tool, "reason": st.adaptive})
        if not TOOLS[tool].target_kinds:
            runner = TargetRunner(shard.model_copy(update={"snapshot": self._snapshot()}), paused=lambda: self._paused)
            await runner.run_single()
            return runner.progress
        if self._summary.targets_by_tool.get(tool, 0) <= INLINE_TARGETS:
            known = None if only_failed else self._summary.few_targets.get(tool)
            runner = TargetRunner(
                shard,
                paused=lambda: self._paused,
                on_progress=lambda: self._show_round(st, runner.progress, publish=False, stage_id=stage.id),
            )
            await (runner.run_known(known) if known is not None else runner.run())
            return runner.progress
        return await self._run_child(stage, shard)

    async def _run_child(self, stage: Stage, shard: StageShardInput) -> ShardProgress:
        handle = await workflow.start_child_workflow(
            StageTargetsWorkflow.run,
            shard,
            id=f"{self._status.workflow_id}/{stage.id}/round-{shard.round}",
            task_queue=workflow.info().task_queue,
            static_summary=f"{self._status.name}: stage {stage.id}, {shard.tool} round {shard.round}"
            + (" (failed targets)" if shard.only_failed else ""),
            cancellation_type=ChildWorkflowCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        self._children[stage.id] = handle
        try:
            return await asyncio.shield(handle)
        except asyncio.CancelledError:
            # Stopping: the shard cancels what runs, records it, and returns what it did.
            await handle.signal(StageTargetsWorkflow.stop)
            progress = await asyncio.shield(handle)
            await self._absorb(stage, progress, only_failed=shard.only_failed)
            raise
        except ChildWorkflowError as err:
            # The shard itself failed (e.g. the store stayed down past its retries): the
            # round's targets count as failed with that error, for the stage's policy.
            cause = err.cause
            error = ErrorInfo(
                category=getattr(cause, "type", None) or Category.INTERNAL.value,
                message=getattr(cause, "message", None) or str(err),
            )
            return self._failed_round(self._status.stages[stage.id], error)
        finally:
            self._children.pop(stage.id, None)

    @staticmethod
    def _round_outcome(st: StageStatus, progress: ShardProgress) -> policy.RoundOutcome:
        """What a round left, as the policy (single value or ladder) judges it."""
        return policy.RoundOutcome(
            stage_total=st.progress.total,
            failed=progress.failed,
            first_error=progress.first_error,
            security_error=progress.security_error,
            all_aborted=progress.first_error is None,
        )

    @staticmethod
    def _failed_round(st: StageStatus, error: ErrorInfo) -> ShardProgress:
        total = max(st.progress.total, 1)
        return ShardProgress(counts={"failed": total}, processed=total, first_error=error)

    async def _absorb(self, stage: Stage, progress: ShardProgress, *, only_failed: bool) -> None:
        """Fold a round's progress into the stage's status (counts, findings, failures)."""
        st = self._status.stages[stage.id]
        if only_failed:
            # Which targets are failed now is the store's to say: the round re-ran some.
            st.counts = await calls.count_targets(StageRef(assessment_id=self._status.workflow_id, stage_id=stage.id))
        else:
            st.counts = dict(progress.counts)
        # a retry or fallback round adds to what the stage kept before it (not to the live
        # count `_show_round` showed during the round)
        st.findings = (self._findings_before.pop(stage.id, 0) if only_failed else 0) + progress.findings
        # attempts of the most-tried target, added up over the stage's rounds (a retry or a
        # fallback round adds its own): 1 means no target needed a retry
        st.attempts += progress.attempts
        # per target: a retry or fallback round re-runs each target it ran once more
        reruns = progress.counts.get("succeeded", 0) + progress.counts.get("failed", 0) if only_failed else 0
        st.retries += progress.retries + reruns
        st.recent_failures = progress.recent_failures or st.recent_failures
        st.outputs.update(progress.outputs)
        if progress.degraded_reason:
            st.degraded = True
            st.reason = progress.degraded_reason
        self._show_round(st, None)

    def _show_round(self, st: StageStatus, live: ShardProgress | None, *, publish: bool = True, stage_id: str = "") -> None:
        """Counts into the status (what `status` answers); `publish` also re-renders the Web
        UI's details, which a round running here skips per target (it is the costly part)."""
        if live is not None:
            st.counts = dict(live.counts)
            st.findings = self._findings_before.get(stage_id, 0) + live.findings
            st.recent_failures = list(live.recent_failures)
        st.progress.done = sum(n for state, n in st.counts.items() if state != "running")
        self._status.findings.total = sum(s.findings for s in self._status.stages.values())
        if publish:
            self._changed()

    # ------------------------------------------------------------------ human in the loop

    async def _wait_for_human(self, stage: Stage, kind: str) -> str:
        """Park the stage until someone answers (or its deadline passes); return the action."""
        st = self._status.stages[stage.id]
        st.state = "awaiting_approval" if kind == "approval" else "awaiting_intervention"
        resumed = stage.id in self._waits  # carried over by continue-as-new: already announced
        self._waits[stage.id] = kind
        if kind == "approval" and not resumed and self._required_approvals() > 1:
            st.approvals = []  # a gate met again (a re-run) needs its approvals again
            st.approvals_required = self._required_approvals()
        self._answers.pop(stage.id, None)
        self._changed()
        if not resumed:
            self._desk.wait_began(stage, kind, st.error, st.attempts)
        try:
            await workflow.wait_condition(
                lambda: stage.id in self._answers or self._stop_reason is not None, timeout=self._wait_left(stage)
            )
            answer = self._answers.pop(stage.id, "abort")
        except TimeoutError:
            answer = policy.timeout_answer(stage.on_wait_timeout)
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
            self._waits.pop(stage.id, None)
            self._desk.wait_ended(stage, kind, "cancelled", f"wait ended: {self._stop_reason or 'assessment cancelled'}")
            raise
        self._waits.pop(stage.id, None)
        self._wait_since.pop(stage.id, None)
        self._desk.wait_ended(stage, kind, answer, self._wait_note(stage, answer))
        self._changed()
        return answer

    def _wait_left(self, stage: Stage) -> timedelta | None:
        """What remains of the stage's wait_timeout (a wait carried over keeps its deadline)."""
        if stage.wait_timeout is None:
            return None
        since = self._wait_since.setdefault(stage.id, workflow.now())
        return max(since + stage.wait_timeout - workflow.now(), timedelta(milliseconds=1))

    def _wait_note(self, stage: Stage, answer: str) -> str:
        if answer == "abort":
            return f"wait ended: {self._stop_reason or 'assessment aborted'}"
        last = next((i for i in reversed(self._status.interventions) if i.stage == stage.id), None)
        if last is not None and last.via == "timeout":
            return f"no answer within wait_timeout; on_wait_timeout: {answer}"
        return f"answered: {self._answer_note(stage.id, answer)}"

    def _answer_note(self, stage_id: str, answer: str) -> str:
        for item in reversed(self._status.interventions):
            if item.stage == stage_id and item.accepted:
                who = f" by {item.by}" if item.by else ""
                why = f": {item.reason}" if item.reason else ""
                return f"{answer}{who}{why}"
        return answer

    def _answered_by_human(self, stage_id: str) -> bool:
        last = next((i for i in reversed(self._status.interventions) if i.stage == stage_id and i.accepted), None)
        return last is not None and last.via != "timeout"

    def _view(self) -> policy.InterventionView:
        return policy.InterventionView(
            finished=self._status.outcome is not None or self._compensating,
            stop_reason=self._stop_reason,
            paused=self._paused,
            stages=list(self._stages.values()),
            states=self._states(),
            waits=dict(self._waits),
            required_approvals=self._required_approvals(),
            approvals={sid: list(st.approvals) for sid, st in self._status.stages.items() if st.approvals},
        )

    def _required_approvals(self) -> int:
        approvals = self._summary.approvals if self._summary else None
        return approvals.required if approvals else 1

    def _on_signal(self, action: str, d: Decision) -> None:
        verdict = self._gate.check(self._summary.approvals if self._summary else None, action, d)
        verified = verdict.problem is None and bool(verdict.fingerprint)
        if verified:
            self._gate.consume(d)  # even if refused below: a verified nonce is spent
        problem = verdict.problem or policy.intervention_problem(action, d, self._view())
        if problem:
            workflow.logger.warning("intervention ignored", extra={"action": action, "stage": d.stage, "reason": problem})
            self._status.interventions.append(
                Intervention(
                    action=action, stage=d.stage, by=d.by, reason=d.reason, at=workflow.now(), accepted=False, note=problem
                )
            )
            self._gate.record(action, d, via="signal", verdict=verdict, verified=verified, accepted=False, outcome=problem)
            self._changed()
            return
        message = self._apply(action, d, "signal")
        self._gate.record(action, d, via="signal", verdict=verdict, verified=verified, accepted=True, outcome=message)

    def _on_update(self, action: str, d: Decision) -> str:
        verdict = self._gate.check(self._summary.approvals if self._summary else None, action, d)
        if verdict.problem:  # e.g. the same nonce came in a signal since validation
            raise ApplicationError(verdict.problem, type=Category.SECURITY.value, non_retryable=True)
        verified = bool(verdict.fingerprint)
        if verified:
            self._gate.consume(d)
        message = self._apply(action, d, "update")
        self._gate.record(action, d, via="update", verdict=verdict, verified=verified, accepted=True, outcome=message)
        return message

    def _refuse_update(self, action: str, d: Decision) -> None:
        problem = self._gate.check(self._summary.approvals if self._summary else None, action, d).problem
        problem = problem or policy.intervention_problem(action, d, self._view())
        if problem:
            raise ValueError(problem)

    def _status_answer(self) -> AssessmentStatus:
        return self._status

    def _apply(self, action: str, d: Decision, via: Literal["signal", "update"]) -> str:
        self._status.interventions.append(
            Intervention(action=action, stage=d.stage, by=d.by, reason=d.reason, at=workflow.now(), via=via)
        )
        who = f" by {d.by}" if d.by else ""
        if action == "abort":
            self._stop(f"aborted{who}" + (f": {d.reason}" if d.reason else ""), "cancelled", None)
            message = "aborting: running stages are being cancelled, then compensations run"
        elif action in ("pause", "resume"):
            self._paused = action == "pause"
            self._tell_children(action)
            message = "paused: running activities finish, nothing new starts until resume" if self._paused else "resumed"
        else:
            assert d.stage is not None
            short = {"retry_stage": "retry", "skip_stage": "skip"}.get(action, action)
            st = self._status.stages[d.stage]
            if action == "approve" and st.approvals_required > 1:
                st.approvals.append(d.by)  # four-eyes: distinct approvers (policy refuses a second approve by one)
            if st.approvals_required > 1 and action == "approve" and len(st.approvals) < st.approvals_required:
                message = (
                    f"stage {d.stage}: {len(st.approvals)} of {st.approvals_required} approvals "
                    f"({', '.join(st.approvals)}); waiting for another approver"
                )
                self._status.interventions[-1].note = message
            elif d.stage in self._waits:
                self._answers[d.stage] = short
                message = f"stage {d.stage}: {short}"
            elif action == "skip_stage":
                self._finish(
                    self._status.stages[d.stage], "skipped", f"skipped{who} before it ran" + (f": {d.reason}" if d.reason else "")
                )
                message = f"stage {d.stage} will not run"
            else:
                reset = policy.stages_to_rerun(self._stages.values(), self._states(), d.stage)
                for sid in reset:
                    self._reset_stage(sid)
                self._human_reruns.add(d.stage)  # its re-run is the ladder's human rung
                message = f"re-running {', '.join(reset)}"
        self._changed()
        return message

    def _reset_stage(self, stage_id: str) -> None:
        st = self._status.stages[stage_id]
        stage = self._stages[stage_id]
        st.state = "pending"
        st.tool = stage.tool_name
        st.error = None
        st.reason = ""
        st.degraded = False
        st.counts = {}
        st.recent_failures = []
        st.findings = 0
        st.progress.done = 0
        st.rung = ""
        st.validation = None

    def _tell_children(self, signal: str) -> None:
        self._signals = [t for t in self._signals if not t.done()]
        for handle in list(self._children.values()):
            self._signals.append(asyncio.create_task(self._signal_child(handle, signal)))

    @staticmethod
    async def _signal_child(handle: workflow.ChildWorkflowHandle, signal: str) -> None:
        try:
            await handle.signal(signal)
        except Exception as err:  # the child just finished: nothing left to pause
            workflow.logger.info("stage shard not signalled", extra={"child": handle.id, "signal": signal, "error": str(err)})

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

    async def _finalize(self) -> None:
        """Count findings from the store (the truth) and close the error ledger."""
        try:
            self._status.findings = await calls.finalize(
                FinalizeRequest(
                    assessment_id=self._status.workflow_id,
                    stage_outcomes={sid: st.state for sid, st in self._status.stages.items()},
                )
            )
        except ActivityError as err:
            error = error_from_activity(err, STORE_PLAN)
            # The assessment's work is done; a store outage must not undo it. Keep the
            # workflow's own counts and say so.
            self._status.reason = (self._status.reason + "; " if self._status.reason else "") + (
                f"findings could not be counted from the store ({error.category}: {error.message}); counts are the workflow's own"
            )
            workflow.logger.error("finalize failed", extra={"error": error.message, "category": error.category})

    async def _final_reports(self) -> None:
        """Render the report stage's files again from the final status: the stage ran
        before the ledger was closed and the compensations ran, so its files are a snapshot.
        A new command, so behind a patch: recorded histories replay without it."""
        if not report_formats(self._status) or not workflow.patched(FINAL_REPORTS_PATCH):
            return
        try:
            await calls.final_reports(FinalReportsRequest(status=self._snapshot()))
        except ActivityError as err:
            error = error_from_activity(err, plan_for(RetryClass.FILESYSTEM))
            # The assessment has ended; its report files stay the stage's snapshot (they say so).
            self._status.reason = (self._status.reason + "; " if self._status.reason else "") + (
                f"the final report files could not be written ({error.category}: {error.message}); "
                "they show the state when the report stage ran"
            )
            workflow.logger.error("final reports failed", extra={"error": error.message, "category": error.category})
            self._publish()

    # ------------------------------------------------------------------ continue-as-new

    def _may_hand_over(self) -> bool:
        """Continue as new only at a quiet moment: the history is past its budget and
        nothing is in flight but human waits (which the next run takes up again)."""
        info = workflow.info()
        if not (info.is_continue_as_new_suggested() or info.get_current_history_length() >= self._req.event_budget):
            return False
        if self._stop_reason or self._compensating or not self._desk.idle or not self._gate.idle:
            return False
        if not workflow.all_handlers_finished():
            return False
        return all(sid in self._waits for sid in self._tasks)

    def _hand_over(self) -> None:
        assert self._summary is not None
        carry = AssessmentCarry(
            status=self._status,
            summary=self._summary,
            compensations=self._saga.pending(),
            waits=dict(self._waits),
            wait_since=dict(self._wait_since),
            paused=self._paused,
            open_incidents=self._desk.open_incidents,
            occurrence_seq=self._desk.occurrence_seq,
            nonces=dict(self._gate.nonces),
        )
        workflow.continue_as_new(self._req.model_copy(update={"carried": carry}))

    def _resume_carried_waits(self) -> None:
        carry = self._req.carried
        if carry is None or self._tasks:
            return
        for sid, kind in carry.waits.items():
            self._tasks[sid] = asyncio.create_task(self._execute_stage(self._stages[sid], resume_wait=kind))

    @workflow.signal(name="shard_progress")
    def shard_progress(self, report: ShardReport) -> None:
        """A stage shard's counts after each batch, so `status` shows a round as it goes."""
        st = self._status.stages.get(report.stage_id)
        if st is not None and st.rounds == report.round and st.state == "running" and not report.only_failed:
            self._show_round(st, report.progress, stage_id=report.stage_id)

    # ------------------------------------------------------------------ what people see

    def _states(self) -> dict[str, str]:
        return {sid: st.state for sid, st in self._status.stages.items()}

    def _state(self, sid: str) -> str:
        return self._status.stages[sid].state

    def _snapshot(self) -> AssessmentStatus:
        return self._status.model_copy(deep=True)

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
            lines.append(f"Waiting for a scan lock: {self._lock_wait}. `{guidance.abort_command(wid)}` gives up.")
        for sid, kind in sorted(self._waits.items()):
            st = self._status.stages[sid]
            if kind == "approval":
                first, second, signal = guidance.approve_commands(wid, sid)
                given = f" ({len(st.approvals)} of {st.approvals_required} approvals)" if st.approvals_required > 1 else ""
                lines.append(f"Stage `{sid}` waits for approval{given}. Answer: `{first}` or `{second}`; or `{signal}`")
            else:
                err = st.error.message if st.error else "failed"
                retry, skip, reject, signal = guidance.failure_commands(wid, sid)
                lines.append(
                    f"Stage `{sid}` failed after retries ({err}) and waits for a decision: `{retry}`, `{skip}` or `{reject}`; or `{signal}`"
                )
        approvals = self._summary.approvals if self._summary else None
        if approvals and self._waits:
            sid = sorted(self._waits)[0]
            signed = guidance.signed_signal_command(wid, "approve" if self._waits[sid] == "approval" else "retry_stage", sid)
            lines.append(
                f"Decisions must be signed by a listed approver ({', '.join(a.name for a in approvals.approvers)}): "
                f"set SECFLOW_SIGNING_KEY for the commands above, or `{signed}`"
            )
        running = [(sid, st) for sid, st in self._status.stages.items() if st.state == "running"]
        if running:
            lines.append(
                "Running: "
                + ", ".join(
                    f"{sid} ({st.progress.done}/{st.progress.total} targets"
                    + (f", {st.rung} round" if st.rung and st.rung != "retry" else "")
                    + ")"
                    for sid, st in running
                )
            )
        failed = sum(st.counts.get("failed", 0) for st in self._status.stages.values())
        if failed:
            lines.append(f"{failed} target(s) failed: `{guidance.failed_targets_command(wid)}`")
        if self._paused:
            lines.append(f"Paused. `{guidance.resume_command(wid)}` continues.")
        if self._status.reason:
            lines.append(self._status.reason)
        lines.append(f"Findings so far: {self._status.findings.total}")
        return "\n\n".join(lines)
