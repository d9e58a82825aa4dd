"""The assessment's user API: signals, updates and the status query, by their stable names.

Signals are fire-and-forget, for tctl and the temporal CLI: one that cannot apply is
recorded in `interventions` with the reason, never silently dropped. Updates are the
starter's commands: their validators refuse what cannot apply, so a wrong stage name is
an error for the caller and leaves no trace in history. Both take a `Decision`
(`{"stage": ..., "by": ..., "reason": ...}`) and go through the same three methods of
the workflow: `_on_signal`, `_on_update`, `_refuse_update`.

When the spec names approvers (`approvals:`), a decision must also be signed by one of
them: `DecisionGate` checks the signature (deterministic Ed25519, secflow/approvals.py),
remembers the nonces used, and writes every decision the workflow sees, accepted or not,
to the audit trail (docs/approvals.md says which path records what).
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from secflow.approvals import (
        ApprovalPolicy,
        DecisionRecord,
        Verdict,
        decision_problem,
        parse_issued_at,
        prune_nonces,
    )
    from secflow.models import AssessmentStatus, Decision
    from secflow.retries import STORE_PLAN
    from workflows.assessment import calls
    from workflows.failures import error_from_activity

# Behind this patch: the audit activity a decision schedules (runs recorded before it
# replay without it).
SIGNED_DECISIONS_PATCH = "signed-decisions"


class DecisionGate:
    """Who may answer: signature checks, used nonces and the audit trail of one assessment."""

    def __init__(self, workflow_id: str, nonces: dict[str, datetime] | None = None) -> None:
        self._wid = workflow_id
        self.nonces: dict[str, datetime] = dict(nonces or {})
        self._writes: list[asyncio.Task[None]] = []

    def check(self, policy: ApprovalPolicy | None, action: str, d: Decision) -> Verdict:
        """Verdict(None) when the decision may be taken (no approvers named: any decision);
        read-only, so update validators use it too."""
        if policy is None:
            return Verdict(None)
        return decision_problem(
            policy,
            workflow_id=self._wid,
            action=action,
            stage=d.stage,
            by=d.by,
            reason=d.reason,
            issued_at=d.issued_at,
            nonce=d.nonce,
            signature=d.signature,
            now=workflow.now(),
            used_nonces=self.nonces,
        )

    def consume(self, d: Decision) -> None:
        """A verified signed decision was taken (or refused for another reason): its nonce
        cannot be used again."""
        issued = parse_issued_at(d.issued_at or "")
        if d.nonce and issued is not None:
            prune_nonces(self.nonces, workflow.now())
            self.nonces[d.nonce] = issued

    def record(
        self, action: str, d: Decision, *, via: str, verdict: Verdict, verified: bool, accepted: bool, outcome: str
    ) -> None:
        """Write the decision to the audit trail, in a side task (handlers cannot await)."""
        if not workflow.patched(SIGNED_DECISIONS_PATCH):
            return
        # An accepted verified decision is keyed by its nonce (unique: replays are refused);
        # anything else by an id from the workflow's seeded random (same on replay).
        entry_id = d.nonce if verified and accepted and d.nonce else f"w-{workflow.uuid4().hex}"
        entry = DecisionRecord(
            workflow_id=self._wid,
            entry_id=entry_id,
            run_id=workflow.info().run_id,
            recorded_by="workflow",
            via=via,
            action=action,
            stage=d.stage or "",
            decided_by=d.by,
            reason=d.reason,
            issued_at=d.issued_at or "",
            nonce=d.nonce or "",
            key_fingerprint=verdict.fingerprint,
            signed=bool(d.signature),
            accepted=accepted,
            outcome=outcome,
            decided_at=workflow.now(),
        )
        self._writes = [t for t in self._writes if not t.done()]
        self._writes.append(asyncio.create_task(self._write(entry)))

    async def _write(self, entry: DecisionRecord) -> None:
        try:
            await calls.audit_decision(entry)
        except ActivityError as err:
            # The store stayed down past the retries: the decision still stands (it is in
            # the workflow's history and status); say loudly that its audit row is missing.
            error = error_from_activity(err, STORE_PLAN)
            workflow.logger.error(
                "decision not written to the audit trail",
                extra={"entry_id": entry.entry_id, "action": entry.action, "category": error.category, "error": error.message},
            )

    @property
    def idle(self) -> bool:
        return all(t.done() for t in self._writes)

    async def drain(self) -> None:
        """Let the audit writes land before the run ends or continues as new."""
        while not self.idle:
            try:
                await workflow.wait_condition(lambda: self.idle)
            except asyncio.CancelledError:
                continue  # cancelled through Temporal meanwhile: still let them land
        for task in self._writes:
            if not task.cancelled():
                task.result()
        self._writes.clear()


class AssessmentAPI:
    """Mixed into the workflow class; the handlers only name the action."""

    def _on_signal(self, action: str, d: Decision) -> None:
        raise NotImplementedError

    def _on_update(self, action: str, d: Decision) -> str:
        raise NotImplementedError

    def _refuse_update(self, action: str, d: Decision) -> None:
        raise NotImplementedError

    def _status_answer(self) -> AssessmentStatus:
        raise NotImplementedError

    @workflow.signal(name="approve")
    def approve_signal(self, d: Decision) -> None:
        self._on_signal("approve", d)

    @workflow.signal(name="reject")
    def reject_signal(self, d: Decision) -> None:
        self._on_signal("reject", d)

    @workflow.signal(name="retry_stage")
    def retry_stage_signal(self, d: Decision) -> None:
        self._on_signal("retry_stage", d)

    @workflow.signal(name="skip_stage")
    def skip_stage_signal(self, d: Decision) -> None:
        self._on_signal("skip_stage", d)

    @workflow.signal(name="abort")
    def abort_signal(self, d: Decision) -> None:
        self._on_signal("abort", d)

    @workflow.signal(name="pause")
    def pause_signal(self, d: Decision) -> None:
        self._on_signal("pause", d)

    @workflow.signal(name="resume")
    def resume_signal(self, d: Decision) -> None:
        self._on_signal("resume", d)

    @workflow.update(name="approve")
    def approve_update(self, d: Decision) -> str:
        return self._on_update("approve", d)

    @approve_update.validator
    def _v_approve(self, d: Decision) -> None:
        self._refuse_update("approve", d)

    @workflow.update(name="reject")
    def reject_update(self, d: Decision) -> str:
        return self._on_update("reject", d)

    @reject_update.validator
    def _v_reject(self, d: Decision) -> None:
        self._refuse_update("reject", d)

    @workflow.update(name="retry_stage")
    def retry_stage_update(self, d: Decision) -> str:
        return self._on_update("retry_stage", d)

    @retry_stage_update.validator
    def _v_retry(self, d: Decision) -> None:
        self._refuse_update("retry_stage", d)

    @workflow.update(name="skip_stage")
    def skip_stage_update(self, d: Decision) -> str:
        return self._on_update("skip_stage", d)

    @skip_stage_update.validator
    def _v_skip(self, d: Decision) -> None:
        self._refuse_update("skip_stage", d)

    @workflow.update(name="abort")
    def abort_update(self, d: Decision) -> str:
        return self._on_update("abort", d)

    @abort_update.validator
    def _v_abort(self, d: Decision) -> None:
        self._refuse_update("abort", d)

    @workflow.update(name="pause")
    def pause_update(self, d: Decision) -> str:
        return self._on_update("pause", d)

    @pause_update.validator
    def _v_pause(self, d: Decision) -> None:
        self._refuse_update("pause", d)

    @workflow.update(name="resume")
    def resume_update(self, d: Decision) -> str:
        return self._on_update("resume", d)

    @resume_update.validator
    def _v_resume(self, d: Decision) -> None:
        self._refuse_update("resume", d)

    @workflow.query(name="status")
    def status(self) -> AssessmentStatus:
        return self._status_answer()
