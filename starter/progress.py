"""Waiting for an assessment's end while saying how far it got.

`run --wait` and `result` wait on the workflow's result; meanwhile they ask the `status`
query every few seconds and print one line of stage states to stderr when it changed
(stdout stays the result, so `--json` output is still machine-readable). When no worker
answers the query the line says so once, rather than going quiet.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from temporalio.client import WorkflowHandle

    from secflow.models import AssessmentStatus

POLL_SECONDS = 2.0
QUERY_TIMEOUT = timedelta(seconds=3)


def progress_line(status: AssessmentStatus) -> str:
    """`<id>: running | ports succeeded 1/1 | headers running 0/2 | ... | findings 3`."""
    parts = [f"{status.workflow_id}: {status.status}"]
    for sid, st in status.stages.items():
        parts.append(f"{sid} {st.state} {st.progress.done}/{st.progress.total}")
    if status.awaiting:
        parts.append(f"awaiting a human: {', '.join(status.awaiting)}")
    parts.append(f"findings {status.findings.total}")
    return " | ".join(parts)


async def result_with_progress(handle: WorkflowHandle, *, task_queue: str, interval: float = POLL_SECONDS) -> Any:
    """`handle.result()`, printing progress lines to stderr while it is not there yet."""
    from secflow.models import AssessmentStatus

    waiting = asyncio.ensure_future(handle.result())
    last = ""
    told_silent = False  # "no worker answered" is said once per silence
    try:
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=interval)
            if done:
                return waiting.result()
            try:
                status = await handle.query("status", result_type=AssessmentStatus, rpc_timeout=QUERY_TIMEOUT)
            except Exception:  # progress is a nicety; the wait goes on whatever the query says
                if waiting.done():
                    continue
                if not told_silent:
                    told_silent = True
                    _say(f"{handle.id}: no worker answered a status query; still waiting (is a worker polling {task_queue!r}?)")
                continue
            told_silent = False
            line = progress_line(status)
            if line != last:
                _say(line)
                last = line
    finally:
        if not waiting.done():
            waiting.cancel()


def _say(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)
