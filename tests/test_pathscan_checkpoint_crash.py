"""A worker process SIGKILLed in the middle of a bandit, semgrep or detect-secrets scan: a
second worker process resumes at the first unfinished file batch, every finding is stored
exactly once (the same fingerprints as an uninterrupted run), and the finished batches are
not scanned again (the checkpoint and both workers' logs say which batch ran where).

Real dev server, real `python worker.py` processes, real tools from the venv, a tree
generated in tmp with enough files for many batches.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHandle

from secflow.store import open_store
from tests.devserver import DevServer
from tests.helpers import final_status, make_spec, start
from tests.test_durability import WorkerProcess
from tests.test_pathscan_checkpoint import make_tree, run_direct

pytestmark = pytest.mark.slow

# tool -> (stage kind, files in the tree, files per batch): 6-15 batches, enough to kill the
# worker mid-way as soon as the server holds a checkpoint (the first one reaches it at once).
CASES = {
    "bandit": ("sast", 60, 4),
    "semgrep": ("sast", 18, 3),
    "detect-secrets": ("secrets", 48, 4),
}


async def checkpoint_seen(client: Client, handle: WorkflowHandle) -> tuple[int, dict[str, Any]]:
    """(attempt, the path-scan checkpoint) of the running scan, as the server has it."""
    desc = await handle.describe()
    for pending in desc.raw_description.pending_activities:
        details: dict[str, Any] = {}
        if pending.heartbeat_details.payloads:
            [decoded] = await client.data_converter.decode(pending.heartbeat_details.payloads[:1])
            details = (decoded or {}).get("pathscan") or {}
        return pending.attempt, details
    return 0, {}


def events(log: Path, name: str) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("event") == name:
            out.append(record)
    return out


@pytest.mark.parametrize("tool", sorted(CASES))
async def test_sigkilled_worker_mid_scan_resumes_at_the_next_batch(
    tool: str, client: Client, server: DevServer, task_queue: str, tmp_path: Path
) -> None:
    kind, files, batch_files = CASES[tool]
    root = make_tree(tmp_path / "tree", files)
    spec = make_spec(
        [{"path": str(root)}],
        [{"id": "scan", "kind": kind, "tool": tool, "options": {"batch_files": batch_files},
          "retry": {"max_attempts": 5, "initial_interval": "200ms"}}],
        scope={"allow": [str(root)]},
    )  # fmt: skip
    first = WorkerProcess(task_queue, server.address, tmp_path / "worker1.log")
    second = None
    try:
        handle = await start(client, spec, task_queue)
        deadline = time.monotonic() + 120
        seen: dict[str, Any] = {}
        while time.monotonic() < deadline:
            _, seen = await checkpoint_seen(client, handle)
            if seen.get("next_batch", 0) >= 1:
                break
            await asyncio.sleep(0.1)
        assert seen.get("next_batch", 0) >= 1, "no checkpoint reached the server"
        first.kill(signal.SIGKILL)
        first.wait()
        assert seen["next_batch"] < seen["batches"], f"the scan finished before the kill: {seen}"
        second = WorkerProcess(task_queue, server.address, tmp_path / "worker2.log")
        status = await final_status(handle, timeout=240)
    finally:
        first.stop()
        if second:
            second.stop()
    assert status.outcome == "completed", status.reason
    stage = status.stages["scan"]
    assert stage.attempts >= 2

    # every finding exactly once: the fingerprints of an uninterrupted run, none twice
    _, reference = await run_direct(tool, root, batch_files=5000)
    expected = {f.fingerprint for f in reference.findings}
    stored = [f for f in open_store().list_findings(handle.id) if f.tool == tool]
    assert len(stored) == len({f.fingerprint for f in stored}), "a finding stored twice"
    assert {f.fingerprint for f in stored} == expected
    assert stage.findings == len(expected)

    # the resumed attempt started at the checkpoint the server had, and ran only later batches
    total = seen["batches"]
    [resumed] = events(second.log, f"resuming {tool} scan")
    start_at = int(resumed["next_batch"])
    assert seen["next_batch"] <= start_at < total
    assert stage.outputs["resumed_at_batch"] == str(start_at)
    assert sorted(int(e["batch"]) for e in events(second.log, f"{tool} batch scanned")) == list(range(start_at, total))
    done_first = {int(e["batch"]) for e in events(first.log, f"{tool} batch scanned")}
    assert set(range(start_at)) <= done_first, "the skipped batches were finished by the killed worker"
    print(f"\n{tool}: killed after batch {max(done_first)} of {total}; resumed at {start_at} (server had {seen['next_batch']})")
    # the lost attempt is in the error ledger, recovered
    errors = open_store().list_errors(handle.id)
    assert errors and all(e.outcome == "recovered" for e in errors)
