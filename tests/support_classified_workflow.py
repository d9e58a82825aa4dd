"""Test-only: a workflow that runs the REAL `create_workspace` activity (a `@classified` one).

It returns the failure's category and the run's activity id so a test can find the
ledger entry by its deterministic id.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from secflow.models import WorkspaceInfo, WorkspaceRequest


class ClassifiedOutcome(BaseModel):
    error_type: str = ""
    path: str = ""


@workflow.defn(name="TestClassifiedFailure")
class ClassifiedFailureWorkflow:
    @workflow.run
    async def run(self, req: WorkspaceRequest) -> ClassifiedOutcome:
        try:
            info = await workflow.execute_activity(
                "create_workspace",
                req,
                result_type=WorkspaceInfo,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=2, initial_interval=timedelta(milliseconds=100)),
            )
        except ActivityError as exc:
            cause = exc.cause
            return ClassifiedOutcome(error_type=cause.type or "" if isinstance(cause, ApplicationError) else "")
        return ClassifiedOutcome(path=info.path)
