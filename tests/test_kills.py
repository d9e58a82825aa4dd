"""Worker kills during bookkeeping: a real worker process SIGKILLed while a `@classified`
activity runs is noticed by the heartbeat timeout (seconds), not by the start-to-close
timeout (1 or 10 minutes), and enough attempts remain that kills alone fail nothing.

The worker (tests/support_kill_worker.py) runs the product's calls (timeouts, policies)
and the real activities under the real `@classified` wrapper; only their first attempts
hold, as a long store write would, so the kill lands mid-activity.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from tests.devserver import DevServer
from tests.support_kill_worker import KillProbe

ROOT = Path(__file__).resolve().parent.parent
_RUN = "import asyncio; from tests.support_kill_worker import main; asyncio.run(main())"

pytestmark = pytest.mark.slow


class KillWorker:
    def __init__(self, task_queue: str, address: str, markers: Path, log: Path, hold_attempts: int) -> None:
        env = {
            **os.environ,
            "SECFLOW_TASK_QUEUE": task_queue,
            "TEMPORAL_ADDRESS": address,
            "SECFLOW_TEST_MARKER_DIR": str(markers),
            "SECFLOW_TEST_HOLD_ATTEMPTS": str(hold_attempts),
        }
        with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen([sys.executable, "-c", _RUN], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    def sigkill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


async def _wait_marker(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never started"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("call", "activity_type", "kills", "old_timeout"),
    [
        # create_workspace had 2 attempts of 1 minute: two kills failed the assessment.
        ("make_workspace", "create_workspace", 2, timedelta(minutes=1)),
        # finalize_assessment held the assessment's end for 10 minutes.
        ("finalize", "finalize_assessment", 1, timedelta(minutes=10)),
    ],
)
async def test_killed_worker_is_replaced_within_seconds(
    client: Client,
    server: DevServer,
    task_queue: str,
    tmp_path: Path,
    call: str,
    activity_type: str,
    kills: int,
    old_timeout: timedelta,
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    workers: list[KillWorker] = []
    try:
        workers.append(KillWorker(task_queue, server.address, markers, tmp_path / "w0.log", kills))
        handle = await client.start_workflow(
            "TestBookkeepingKill",
            KillProbe(assessment_id=f"kill-{uuid.uuid4().hex[:8]}", call=call),
            id=f"kill-{uuid.uuid4().hex[:10]}",
            task_queue=task_queue,
        )
        for attempt in range(1, kills + 1):
            await _wait_marker(markers / f"{activity_type}-{attempt}")
            workers[-1].sigkill()
            workers.append(KillWorker(task_queue, server.address, markers, tmp_path / f"w{attempt}.log", kills))
        # Generous bound for a loaded machine; the old timeout alone would exceed it.
        result = await asyncio.wait_for(handle.result(), timeout=120)
    finally:
        for w in workers:
            w.stop()
    assert result

    # By the history's timestamps: scheduled -> completed took a few heartbeat timeouts,
    # far below one start-to-close timeout, and it was the attempt after the last kill.
    scheduled = started = completed = None
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            assert event.activity_task_scheduled_event_attributes.activity_type.name == activity_type
            scheduled = event.event_time.ToDatetime()
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            started = event.activity_task_started_event_attributes.attempt
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            completed = event.event_time.ToDatetime()
    assert scheduled is not None and completed is not None
    assert started == kills + 1
    took = completed - scheduled
    print(f"\n{activity_type}: {kills} kill(s), scheduled -> completed in {took.total_seconds():.1f}s")
    assert took < min(old_timeout, timedelta(seconds=55))
