"""Test-only workflow and activities for the harvest's Temporal scenarios (round 2)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy


@activity.defn
async def sleepy(seconds: float) -> None:
    await asyncio.sleep(seconds)


@activity.defn
async def hang(seconds: float) -> None:
    """Never heartbeats: the heartbeat timeout catches it."""
    await asyncio.sleep(seconds)


@workflow.defn
class SleepyWorkflow:
    @workflow.run
    async def run(self, action: str) -> None:
        once = RetryPolicy(maximum_attempts=1)
        if action == "sleep":
            await workflow.execute_activity(sleepy, 30.0, start_to_close_timeout=timedelta(seconds=60), retry_policy=once)
        elif action == "hang":
            await workflow.execute_activity(
                hang, 10.0, start_to_close_timeout=timedelta(seconds=60), heartbeat_timeout=timedelta(seconds=1), retry_policy=once
            )
        elif action == "overrun":
            await workflow.execute_activity(sleepy, 10.0, start_to_close_timeout=timedelta(seconds=1), retry_policy=once)
