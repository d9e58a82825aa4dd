"""Incidents and dead letters: everything the assessment tells people about problems.

The assessment tells the desk what happened (a wait began or ended, a stage recovered,
gave up or met a security violation, acquisition or a compensation failed); the desk
decides whether that opens, recurs or resolves an incident and what is parked in the
dead-letter queue. Its work runs as side tasks, so a stage cancelled by a stop never
loses them; `drain()` lets them land before compensating.

Rules (README "Incidents and escalation"):
- an intervention wait opens an incident (gate: "approval", failure wait: the error's
  category); any answer to a gate resolves it; a failure wait is resolved by skip,
  reject, abort or the deadline, and by the retried stage succeeding (a retry that fails
  again waits again: the same incident, one more occurrence);
- a stage that ends unrecoverable (retries exhausted and the stage failed or was skipped
  by on_failure: skip, or a human skipped/rejected it after a failure wait) parks its
  failed targets (read from the store) and opens an incident (required_stage_failed, or
  retries_exhausted when skipped or optional) unless a human just decided it;
- failures within tolerated_failure_percent (`partial`) are policy, not incidents; a
  fallback that succeeds is recovery, not an incident;
- a security violation parks its target(s) and opens a P1;
- a recovered stage whose validation fails (`unverified`) opens `recovery_unverified` (P3);
- acquisition that fails (workspace, scan locks) opens a P2: the assessment could not start;
- a compensation that still fails parks an entry (no replay recipe) and opens a P2;
- when the assessment ends, every incident it still holds open is told so
  (`assessment_ended`, with the commands that work after the end); the incident applies
  `secflow.incidents.settles_at_end`: resolved if its cause was lived with, else open.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from typing import Any, Literal

from temporalio import workflow
from temporalio.exceptions import ActivityError, FailureError

with workflow.unsafe.imports_passed_through():
    from secflow import guidance
    from secflow.dead_letters import DeadLetterInput, dead_letter_task_id, ref_for
    from secflow.errors import Category
    from secflow.incidents import (
        AssessmentEnded,
        IncidentAnswer,
        IncidentReason,
        IncidentRef,
        OpenIncidentRequest,
        dedup_key_for,
        incident_workflow_id,
        severity_for,
    )
    from secflow.models import WHOLE_STAGE, CompensationRecord, ErrorInfo, ParkStageFailures, StageStatus
    from secflow.recovery import RungSettlement
    from secflow.redaction import redact
    from secflow.retries import STORE_PLAN
    from secflow.spec import Stage
    from workflows.assessment import calls
    from workflows.failures import error_from_activity


ParkReason = Literal["retries_exhausted", "security_violation"]


class IncidentDesk:
    def __init__(
        self,
        *,
        workflow_id: str,
        name: str,
        spec_ref: str,
        incidents: list[str],
        open_incidents: dict[str, dict[str, str]] | None = None,
        occurrence_seq: int = 0,
    ) -> None:
        self._wid = workflow_id
        self.name = name  # the spec's name, once read
        self._spec_ref = spec_ref
        self._incidents = incidents  # the status's list; appended in place
        self.open_incidents: dict[str, dict[str, str]] = open_incidents or {}  # stage -> {dedup key: incident id}
        self.occurrence_seq = occurrence_seq
        self._side_tasks: list[asyncio.Task[None]] = []
        self._ops: dict[str, asyncio.Task[None]] = {}  # dedup key -> last op; ops on one incident run in order
        # stage -> (run id, park reason, categories) of its parked failures in this run, so
        # the end can name their dead-letter refs (lost across continue-as-new: then the
        # incident offers `dlq list` only)
        self._parked: dict[str, tuple[str, str, list[str]]] = {}
        self._entry_refs: dict[str, str] = {}  # dedup key -> ref of the one entry it parked (compensations)

    # ------------------------------------------------------------------ what happened

    def wait_began(self, stage: Stage, kind: str, error: ErrorInfo | None, attempts: int) -> None:
        if kind == "approval":
            err = ErrorInfo(category="approval", message=f"stage {stage.id} waits for approval before it runs")
            title = f"stage {stage.id} waits for approval"
        else:
            e = error or ErrorInfo(category=Category.INTERNAL.value, message="failed")
            err = ErrorInfo(
                category=e.category,
                message=f"stage {stage.id} failed after {attempts} attempt(s) ({e.category}: {e.message}) and waits for a decision",
            )
            title = f"stage {stage.id} failed and waits for a decision"
        self._open(stage, "intervention_wait", err, title, dedup_reason=f"intervention_wait:{kind}", kind=kind)

    def wait_ended(self, stage: Stage, kind: str, answer: str, note: str) -> None:
        """Any answer ends a gate's wait; a failure wait stays open through a retry."""
        if kind == "failure" and answer == "retry":
            return
        key = self._key(stage.id, "", f"intervention_wait:{kind}")
        self.resolve(stage.id, note, only=key)

    def stage_recovered(self, stage_id: str, note: str) -> None:
        self.resolve(stage_id, note)

    def gave_up(self, stage: Stage, *, failed: bool, error: ErrorInfo, attempts: int, by_human: bool, park: bool = True) -> None:
        """The stage ends unrecoverable: park its failed targets (unless its ladder ends in
        `fail`, which parks nothing); page unless a human decided."""
        if park:
            self._park_stage(stage, "retries_exhausted")
        if by_human or error.category == Category.USER_ABORT.value:
            return
        reason: IncidentReason = "required_stage_failed" if failed and stage.criticality == "required" else "retries_exhausted"
        what = "failed" if failed else "was skipped"
        self._open(
            stage,
            reason,
            ErrorInfo(
                category=error.category,
                message=f"stage {stage.id} {what} after {attempts} attempt(s): {error.category}: {error.message}",
            ),
            f"stage {stage.id} {what} after its retries",
        )

    def recovery_unverified(self, stage: Stage, after: str, problems: list[str]) -> None:
        """A recovered stage failed its validation (secflow/recovery.py): its results do
        not count as clean until someone looks."""
        shown = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
        self._open(
            stage,
            "recovery_unverified",
            ErrorInfo(
                category=Category.INTERNAL.value, message=f"stage {stage.id} recovered ({after}) but failed validation: {shown}"
            ),
            f"stage {stage.id}: recovery not verified",
        )

    def settle_rung(self, stage_id: str, rung: str, outcome: str) -> None:
        """Write a rung's end to the error ledger, in order per stage, as a side task: the
        stage goes on (or ends) at once, and `drain()` lets the write land."""
        req = RungSettlement(assessment_id=self._wid, stage_id=stage_id, rung=rung, outcome=outcome)
        self._in_order(f"ladder:{stage_id}", self._settle(req))

    async def _settle(self, req: RungSettlement) -> None:
        try:
            await calls.settle_rung(req)
        except ActivityError as err:
            error = error_from_activity(err, STORE_PLAN)
            # The ledger is down past its retries: the ladder is still in the status and the
            # history; the ledger misses this rung. Say so loudly.
            workflow.logger.error(
                "ladder rung not recorded",
                extra={"stage": req.stage_id, "rung": req.rung, "category": error.category, "error": error.message},
            )

    def security_violation(self, stage: Stage, error: ErrorInfo) -> None:
        self._park_stage(stage, "security_violation", categories=[Category.SECURITY.value])
        self._open(stage, "security_violation", error, f"security violation in stage {stage.id}")

    def acquisition_failed(self, error: ErrorInfo) -> None:
        self._open(
            None,
            "required_stage_failed",
            ErrorInfo(category=error.category, message=f"the assessment could not acquire what it needs: {error.message}"),
            "acquisition failed; the assessment did not run",
            stage_id="acquire",
        )

    def compensations_failed(self, failed: list[tuple[CompensationRecord, str, Any]]) -> None:
        info = workflow.info()
        now = workflow.now()
        for record, activity, arg in failed:
            error = record.error or ErrorInfo(category=Category.INTERNAL.value, message="unknown error")
            entry = DeadLetterInput(
                task_id=dead_letter_task_id(self._wid, info.run_id, "compensation", record.name, "compensation_failed"),
                workflow_id=self._wid,
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
                    "input": arg.model_dump(mode="json") if hasattr(arg, "model_dump") else arg,
                },
            )
            self._side(self._park_entry(entry))
            incident_key = self._key("compensation", record.name, "compensation_failed")
            self._entry_refs[incident_key] = ref_for(entry.task_id)
            self._open(
                None,
                "compensation_failed",
                ErrorInfo(
                    category=error.category,
                    message=f"compensation {record.name!r} ({activity}) failed and needs manual cleanup: {error.message}",
                ),
                f"compensation {record.name!r} failed; manual cleanup needed",
                stage_id="compensation",
                target=record.name,
            )

    def resolve(self, stage_id: str, note: str, only: str | None = None) -> None:
        for key, incident_id in list(self.open_incidents.get(stage_id, {}).items()):
            if only is not None and key != only:
                continue
            del self.open_incidents[stage_id][key]
            answer = IncidentAnswer(by="secflow", note=redact(note)[:2000])
            self._in_order(key, self._signal(incident_id, "resolve", answer))

    @property
    def holds_open_incidents(self) -> bool:
        return any(self.open_incidents.values())

    def assessment_ended(self, outcome: str, reason: str, stages: Mapping[str, StageStatus]) -> None:
        """Tell every incident still open that the assessment ended, with what works now."""
        for sid, keyed in self.open_incidents.items():
            st = stages.get(sid)
            replay = self._replay_refs(sid, st)
            for key, incident_id in keyed.items():
                entry = self._entry_refs.get(key)
                if entry is not None:  # no replay recipe: show the entry
                    commands = guidance.after_end_commands(self._wid, show_refs=[entry])
                else:
                    commands = guidance.after_end_commands(self._wid, replay, parked=sid in self._parked)
                ended = AssessmentEnded(
                    assessment_id=self._wid,
                    outcome=outcome,
                    stage_state=st.state if st is not None else "",
                    reason=redact(reason)[:500],
                    commands=commands,
                )
                self._in_order(key, self._signal(incident_id, "assessment_ended", ended))
        self.open_incidents = {}

    def _replay_refs(self, stage_id: str, st: StageStatus | None, most: int = 3) -> list[str]:
        """Dead-letter refs of the stage's last failed targets (`dlq replay REF` works as printed)."""
        parked = self._parked.get(stage_id)
        if parked is None or st is None:
            return []
        run_id, reason, categories = parked
        refs: list[str] = []
        for f in st.recent_failures:
            if f.category == Category.USER_ABORT.value or (categories and f.category not in categories):
                continue
            target = "" if f.target == WHOLE_STAGE else f.target
            ref = ref_for(dead_letter_task_id(self._wid, run_id, stage_id, target, reason))
            if ref not in refs:
                refs.append(ref)
        return refs[-most:]

    async def drain(self) -> None:
        """Let incident starts/signals and dead-letter writes land (before compensating)."""
        while not all(t.done() for t in self._side_tasks):
            try:
                await workflow.wait_condition(lambda: all(t.done() for t in self._side_tasks))
            except asyncio.CancelledError:
                continue  # cancelled through Temporal meanwhile: still let them land
        for task in self._side_tasks:
            if not task.cancelled():
                task.result()  # a bug here fails the workflow task, visibly
        self._side_tasks.clear()

    @property
    def idle(self) -> bool:
        return all(t.done() for t in self._side_tasks)

    # ------------------------------------------------------------------ how

    def _key(self, stage_id: str, target: str, dedup_reason: str) -> str:
        return dedup_key_for(self._wid, stage_id, target, dedup_reason)

    def _commands(self, stage: Stage | None, incident_id: str, kind: str) -> list[str]:
        if stage is not None and kind == "approval":
            commands = guidance.approve_commands(self._wid, stage.id)
        elif stage is not None and kind == "failure":
            commands = guidance.failure_commands(self._wid, stage.id)
        elif stage is not None:
            commands = guidance.rerun_commands(self._wid, stage.id)
        else:
            commands = [guidance.status_command(self._wid)]
        return commands + guidance.incident_commands(incident_id)

    def _open(
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
        key = self._key(sid, target, dedup_reason or reason)
        incident_id = incident_workflow_id(key)
        info = workflow.info()
        self.occurrence_seq += 1
        ref = IncidentRef(
            incident_id=incident_id,
            dedup_key=key,
            severity=severity_for(error.category, reason, required=stage is None or stage.criticality == "required"),
            reason=reason,
            title=redact(f"{title} ({self.name}, assessment {self._wid})"),
            category=error.category,
            message=redact(error.message),
            assessment_id=self._wid,
            workflow_id=info.workflow_id,
            run_id=info.run_id,
            stage_id=sid,
            target=redact(target),
            trace_id=f"{info.workflow_id}/{info.run_id}",
            commands=self._commands(stage, incident_id, kind),
            opened_at=workflow.now(),
            # the sequence survives continue-as-new, so occurrence ids never repeat
            occurrence_id=f"{self._wid}/{self.occurrence_seq}",
        )
        if incident_id not in self._incidents:
            self._incidents.append(incident_id)
        self.open_incidents.setdefault(sid, {})[key] = incident_id
        self._in_order(key, self._start_or_recur(ref))
        return incident_id

    def _side(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._side_tasks.append(task)
        return task

    def _in_order(self, key: str, op: Coroutine[Any, Any, None]) -> None:
        previous = self._ops.get(key)

        async def in_order() -> None:
            if previous is not None:
                await previous
            await op

        self._ops[key] = self._side(in_order())

    def _park_stage(self, stage: Stage, reason: ParkReason, categories: list[str] | None = None) -> None:
        info = workflow.info()
        req = ParkStageFailures(
            assessment_id=self._wid,
            run_id=info.run_id,
            stage_id=stage.id,
            spec_ref=self._spec_ref,
            reason=reason,
            task_queue=info.task_queue,
            categories=categories or [],
        )
        self._parked[stage.id] = (info.run_id, reason, list(categories or []))
        self._side(self._park_from_store(req))

    async def _park_from_store(self, req: ParkStageFailures) -> None:
        try:
            await calls.park_failures(req)
        except ActivityError as err:
            error = error_from_activity(err, STORE_PLAN)
            # The store is down past its retries: the failures are still in the status,
            # the history and the incident; say loudly that the DLQ missed them.
            workflow.logger.error(
                "dead letters could not be parked",
                extra={"stage": req.stage_id, "category": error.category, "error": error.message},
            )

    async def _park_entry(self, entry: DeadLetterInput) -> None:
        try:
            await calls.park_one(entry)
        except ActivityError as err:
            error = error_from_activity(err, STORE_PLAN)
            workflow.logger.error(
                "dead letter could not be parked",
                extra={"task_id": entry.task_id, "category": error.category, "error": error.message},
            )

    async def _start_or_recur(self, ref: IncidentRef) -> None:
        """Start the incident workflow, or add an occurrence if this problem is open.

        Through the `open_incident` activity rather than as a child workflow: the incident
        must outlive the assessment and must not count as its pending work."""
        try:
            await calls.start_incident(OpenIncidentRequest(incident=ref, task_queue=workflow.info().task_queue))
        except ActivityError as err:
            error = error_from_activity(err, calls.INCIDENT_PLAN)
            workflow.logger.error(
                "incident could not be opened",
                extra={"incident": ref.incident_id, "category": error.category, "error": error.message},
            )

    async def _signal(self, incident_id: str, name: str, arg: Any) -> None:
        try:
            await workflow.get_external_workflow_handle(incident_id).signal(name, arg)
        except FailureError as err:
            # Typically: a human already resolved it and it ended. Nothing to undo; say so.
            workflow.logger.warning(
                "incident signal not delivered", extra={"incident": incident_id, "signal": name, "error": str(err)}
            )
