"""Tiny workflows for tests/test_bulk_locks.py and tests/test_reaper.py (workflows must
live in a module the sandbox can import cleanly).

`LockHolderWorkflow` stands in for an assessment that holds scan locks or a workspace:
it runs until terminated. `BulkLockCallerWorkflow` calls one bulk lock activity for
real (scheduled by Temporal, run by a worker) and returns its outcome.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from secflow.locking import BulkLockOutcome, BulkLockRequest


@workflow.defn(name="test-lock-holder")
class LockHolderWorkflow:
    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)


@workflow.defn(name="test-bulk-lock-caller")
class BulkLockCallerWorkflow:
    @workflow.run
    async def run(self, activity_name: str, req: BulkLockRequest) -> BulkLockOutcome:
        return await workflow.execute_activity(
            activity_name,
            req,
            result_type=BulkLockOutcome,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_attempts=1),
        )
