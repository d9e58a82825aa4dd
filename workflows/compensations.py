"""The saga: what an assessment acquired, and how to give it back, in LIFO order.

A step registers its compensation BEFORE it acquires (so a crash between acquiring and
registering cannot leak), every compensation activity is idempotent, runs on its own
retry policy, and is shielded from workflow cancellation: a cancelled assessment still
releases its locks. A compensation that fails after its retries is recorded and the
unwind goes on with the others; the caller raises it for a human.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from secflow.models import CompensationRecord
    from secflow.retries import COMPENSATION_PLAN, to_retry_policy
    from workflows.failures import error_from_activity

COMPENSATION_TIMEOUT = timedelta(minutes=2)
# Compensation activities are @classified, which heartbeats every second: a worker killed
# mid-undo is noticed in seconds, not after COMPENSATION_TIMEOUT.
COMPENSATION_HEARTBEAT = timedelta(seconds=5)


@dataclass
class _Step:
    record: CompensationRecord
    activity: str
    arg: BaseModel | dict[str, Any]  # a dict once carried through continue-as-new


def activity_name(activity: str | Callable[..., Any]) -> str:
    """An activity's registered name, from its name or its typed reference."""
    if isinstance(activity, str):
        return activity
    return getattr(activity, "__temporal_activity_definition").name


class Compensations:
    def __init__(self, records: list[CompensationRecord]) -> None:
        # `records` is the list shown in status/result; we append to it in place.
        self._records = records
        self._steps: list[_Step] = []
        self._failed_steps: list[_Step] = []

    def register(self, name: str, activity: str | Callable[..., Any], arg: BaseModel) -> None:
        record = CompensationRecord(name=name)
        self._records.append(record)
        self._steps.append(_Step(record, activity_name(activity), arg))

    def pending(self) -> list[dict[str, Any]]:
        """The compensations not yet run, as data a continue-as-new can carry."""
        return [
            {
                "record": self._records.index(step.record),
                "activity": step.activity,
                "arg": step.arg.model_dump(mode="json") if isinstance(step.arg, BaseModel) else step.arg,
            }
            for step in self._steps
        ]

    def restore(self, pending: list[dict[str, Any]]) -> None:
        """Take back what `pending()` gave (the records are already in the status)."""
        for item in pending:
            self._steps.append(_Step(self._records[item["record"]], item["activity"], item["arg"]))

    @property
    def failed(self) -> list[CompensationRecord]:
        return [r for r in self._records if r.state == "failed"]

    @property
    def failed_steps(self) -> list[tuple[CompensationRecord, str, BaseModel | dict[str, Any]]]:
        """(record, activity name, its input) of each compensation that failed, in unwind
        order: what a dead-letter entry and an incident need to say what to clean up."""
        return [(s.record, s.activity, s.arg) for s in self._failed_steps]

    async def unwind(self) -> None:
        """Run every registered compensation, newest first, even if we get cancelled."""
        task = asyncio.ensure_future(self._unwind_all())
        while not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                # The workflow was cancelled while compensating: keep compensating.
                continue
        task.result()

    async def _unwind_all(self) -> None:
        while self._steps:
            step = self._steps.pop()
            step.record.state = "running"
            try:
                await workflow.execute_activity(
                    step.activity,
                    step.arg,
                    start_to_close_timeout=COMPENSATION_TIMEOUT,
                    heartbeat_timeout=COMPENSATION_HEARTBEAT,
                    retry_policy=to_retry_policy(COMPENSATION_PLAN),
                )
            except ActivityError as err:
                step.record.state = "failed"
                step.record.error = error_from_activity(err, COMPENSATION_PLAN)
                step.record.attempts = step.record.error.attempts
                self._failed_steps.append(step)
                workflow.logger.error(
                    "compensation failed", extra={"compensation": step.record.name, "error": step.record.error.message}
                )
            else:
                step.record.state = "done"
