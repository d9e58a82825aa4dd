"""The assessment's user API: signals, updates and the status query, by their stable names.

Signals are fire-and-forget, for tctl and the temporal CLI: one that cannot apply is
recorded in `interventions` with the reason, never silently dropped. Updates are the
starter's commands: their validators refuse what cannot apply, so a wrong stage name is
an error for the caller and leaves no trace in history. Both take a `Decision`
(`{"stage": ..., "by": ..., "reason": ...}`) and go through the same three methods of
the workflow: `_on_signal`, `_on_update`, `_refuse_update`.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from secflow.models import AssessmentStatus, Decision


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
