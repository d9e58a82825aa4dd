"""Test-only: a workflow that parks dead letters through the REAL `park_dead_letter` activity.

Parking the same input several times in one run is what a retried activity (or a workflow
replaying its history) does; the store must end up with one entry.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from secflow.dead_letters import DeadLetterInput, DeadLetterResult


class ParkRequest(BaseModel):
    entries: list[DeadLetterInput]


class ParkResults(BaseModel):
    results: list[DeadLetterResult]


@workflow.defn(name="TestParkDeadLetters")
class ParkDeadLettersWorkflow:
    @workflow.run
    async def run(self, req: ParkRequest) -> ParkResults:
        results = []
        for entry in req.entries:
            results.append(
                await workflow.execute_activity(
                    "park_dead_letter", entry, result_type=DeadLetterResult, start_to_close_timeout=timedelta(seconds=30)
                )
            )
        return ParkResults(results=results)
