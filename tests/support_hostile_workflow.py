"""A loop watcher for tests/test_hostile_scanners.py (workflows must live in a module).

`watch_loop` is an async activity like any other on the worker: it heartbeats every
0.2 s with a 2 s heartbeat timeout and measures how late each of its wake-ups is (the
event loop's lag). If anything blocks the loop for longer than the heartbeat timeout,
Temporal times the activity out and the workflow says so.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

TICK = 0.2
# Set by the test (same process and loop as the in-process worker) to end the watch.
STOP = asyncio.Event()


@activity.defn
async def watch_loop(max_seconds: float) -> float:
    """Heartbeat until STOP (or max_seconds); return the largest lag seen, in seconds."""
    worst = 0.0
    started = time.monotonic()
    while not STOP.is_set() and time.monotonic() - started < max_seconds:
        before = time.monotonic()
        await asyncio.sleep(TICK)
        worst = max(worst, time.monotonic() - before - TICK)
        activity.heartbeat(round(worst, 3))
    return worst


@workflow.defn
class LoopWatchWorkflow:
    @workflow.run
    async def run(self, max_seconds: float) -> str:
        try:
            worst = await workflow.execute_activity(
                watch_loop,
                max_seconds,
                start_to_close_timeout=timedelta(seconds=max_seconds + 30),
                heartbeat_timeout=timedelta(seconds=2),
                retry_policy=RetryPolicy(maximum_attempts=1),
            )
        except ActivityError as err:
            return f"failed: {err.cause}"
        return f"ok: max lag {worst:.3f}s"
