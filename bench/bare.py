"""Bare Temporal baseline for bench/crash_pickup.py: the same heartbeat settings as SecFlow,
none of SecFlow's machinery (no store, no checkpoint writes, no classification)."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.worker import Worker

HEARTBEAT_TIMEOUT = timedelta(seconds=4)  # what workflows/assessment.py uses


@activity.defn(name="bare_long_task")
async def bare_long_task(total: int) -> int:
    details = activity.info().heartbeat_details
    done = int(details[0]) if details else 0
    while done < total:
        await asyncio.sleep(0.1)
        done += 1
        activity.heartbeat(done)
    return done


@workflow.defn(name="BareLongWorkflow")
class BareLongWorkflow:
    @workflow.run
    async def run(self, total: int) -> int:
        return await workflow.execute_activity(
            "bare_long_task",
            total,
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
            retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=5),
        )


async def main() -> None:
    client = await Client.connect(os.environ["TEMPORAL_ADDRESS"])
    async with Worker(client, task_queue=sys.argv[1], workflows=[BareLongWorkflow], activities=[bare_long_task]):
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
