"""`status` shows a recovery while it happens (issue 12, item 4): a worker SIGKILLed
mid-scan, and while the retry runs `status` names the lost attempt, its category, the
rung now handling it and the findings already kept in the store."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from temporalio.client import Client

from secflow.models import AssessmentStatus
from secflow.settings import load_settings
from starter.cli import fetch_status, merge_recovery, render_status
from tests.devserver import DevServer
from tests.helpers import final_status, make_spec, start
from tests.servers import listeners_in_window
from tests.test_durability import OFFSETS, WIDTH, WorkerProcess, scan_progress, wait_progress

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow  # kills a worker process


async def test_status_during_a_retry_shows_the_lost_attempt_and_the_kept_findings(
    client: Client, server: DevServer, task_queue: str, tmp_path: Path
) -> None:
    from worker import build_worker

    base, listeners = listeners_in_window(WIDTH, OFFSETS)
    spec = make_spec(
        [{"host": "127.0.0.1"}],
        [{"id": "ports", "kind": "discovery", "tool": "portscan",
          "options": {"ports": f"{base}-{base + WIDTH - 1}", "rate": 100},
          "retry": {"max_attempts": 5, "initial_interval": "200ms"}}],
    )
    first = WorkerProcess(task_queue, server.address, tmp_path / "worker1.log")
    seen: AssessmentStatus | None = None
    text = ""
    try:
        handle = await start(client, spec, task_queue)
        await wait_progress(client, handle, at_least=OFFSETS[0] + 60)  # the first open port is stored
        before = await fetch_status(handle, client)  # answered while the first worker lives
        first.kill(signal.SIGKILL)
        killed_at = time.monotonic()
        first.wait()
        # No worker at all: Temporal notices the lost attempt (heartbeat timeout) and
        # schedules attempt 2, which nobody starts, so the ledger cannot have it yet:
        # the starter says what Temporal says.
        while (await scan_progress(client, handle))[0] < 2:
            assert time.monotonic() - killed_at < 30, "Temporal never noticed the lost attempt"
            await asyncio.sleep(0.1)
        await merge_recovery(before, handle)
        early = before.stages["ports"].recovering
        assert early is not None and early.lost_attempt == 1 and early.rung == "retry", early
        assert "timeout" in early.message.lower() and early.findings_kept >= 1, early
        print(f"\nTemporal noticed the lost attempt {time.monotonic() - killed_at:.2f}s after SIGKILL")
        settings = load_settings({**os.environ, "SECFLOW_TASK_QUEUE": task_queue})
        async with build_worker(client, settings):
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                attempt, _ = await scan_progress(client, handle)
                if attempt >= 2:
                    status = await fetch_status(handle, client)
                    await merge_recovery(status, handle)
                    if status.stages["ports"].recovering is not None:
                        seen, text = status, render_status(status)
                        print(f"\nstatus showed the recovery {time.monotonic() - killed_at:.2f}s after SIGKILL")
                        break
                await asyncio.sleep(0.2)
            # the CLI itself, as an operator runs it, while the retry still runs
            cli = await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "starter", "status", handle.id],
                cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=60,
            )
            final = await final_status(handle)
    finally:
        listeners.close()
        first.stop()
    assert seen is not None, "status never showed the recovery while the retry ran"
    r = seen.stages["ports"].recovering
    assert r is not None
    assert r.lost_attempt == 1 and r.category == "transient" and r.rung == "retry", r
    assert r.findings_kept >= 1, "the port found before the kill is already in the store"
    assert "recovering: attempt 1 lost" in text and "now handled by retry" in text and "already kept" in text, text
    assert cli.returncode == 0 and "ports" in cli.stdout, cli.stderr
    assert final.outcome == "completed"
    assert final.stages["ports"].validation is not None and final.stages["ports"].validation.passed, final.stages["ports"]
    # the retry went on from the checkpoint: validated as a resume
    assert [(s.rung, s.outcome) for s in final.stages["ports"].ladder] == [("resume", "recovered")]
    assert final.stages["ports"].validation.after == "resume"
