"""Attempts per target, not summed over targets: a stage whose two targets each succeeded
at once shows `retries=0`, and one retried target shows `retries=1` (issue 11: `2/2
attempts=2` looked like a retry)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from temporalio.client import Client

from secflow.reports.markdown import render_markdown
from tests.helpers import final_status, make_spec, start
from tests.servers import GOOD_HEADERS, Reply, ScriptedServer

ROOT = Path(__file__).resolve().parent.parent


async def test_status_and_reports_count_retries_per_target(client: Client, worker: str) -> None:
    healthy = [ScriptedServer([Reply(200, GOOD_HEADERS)]) for _ in range(2)]
    flaky = ScriptedServer([Reply(500), Reply(200, GOOD_HEADERS)])  # fails once, then recovers
    try:
        spec = make_spec(
            [{"url": s.url} for s in (*healthy, flaky)],
            [{"id": "headers", "kind": "dast", "tool": "http-headers",
              "retry": {"max_attempts": 3, "initial_interval": "100ms"}}],
        )
        handle = await start(client, spec, worker)
        status = await final_status(handle)
        shown = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "starter", "status", handle.id], cwd=ROOT, env=dict(os.environ),
            capture_output=True, text=True,
        )
    finally:
        for s in (*healthy, flaky):
            s.close()
    st = status.stages["headers"]
    assert status.outcome == "completed" and st.state == "succeeded"
    assert (st.retries, st.attempts, st.rounds) == (1, 2, 1), "one target needed a second attempt; the others none"
    assert shown.returncode == 0, shown.stderr
    line = next(x for x in shown.stdout.splitlines() if x.strip().startswith("headers"))
    assert "3/3 retries=1 findings=" in line and "attempts=" not in line, line
    report = render_markdown(status, [], [])
    assert "| stage | kind | tool | state | retries | findings | notes |" in report
    assert "| headers | dast | http-headers | succeeded | 1 |" in report
