"""The starter never hangs without saying why (issue 11): no worker, no server, a bug.

Each runs the real starter process against the session's real dev server.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from secflow.settings import load_settings
from tests.helpers import LOOPBACK_SCOPE, make_spec, own_loopback_host, start, wait_for
from worker import build_worker

ROOT = Path(__file__).resolve().parent.parent
# A bound for a hung process, far above the 5 s the starter promises: not a timing assertion.
HANG_GUARD = 60


async def secflow(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed console script, as a user runs it (in a thread: the test's worker shares this loop)."""
    return await asyncio.to_thread(
        subprocess.run,
        [str(Path(sys.executable).parent / "secflow"), *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )


def gated_spec():
    return make_spec(
        [{"host": own_loopback_host()}],
        [{"id": "ports", "kind": "discovery", "tool": "portscan", "options": {"ports": "1"}, "requires_approval": True}],
        scope=LOOPBACK_SCOPE,
    )


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 1, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and "tonic::" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    return lines[0]


async def test_no_worker_refuses_at_once_and_the_approve_never_lands(client: Client) -> None:
    queue = f"nobody-{uuid.uuid4().hex[:8]}"
    handle = await start(client, gated_spec(), queue)  # a queue no worker polls (yet)

    for args in (["approve", handle.id, "ports"], ["abort", handle.id], ["result", handle.id], ["status", handle.id]):
        line = one_line_error(await secflow(*args))
        assert f"no worker is polling task queue '{queue}'" in line, line
        assert f"SECFLOW_TASK_QUEUE={queue} .venv/bin/python worker.py" in line, line
    line = one_line_error(await secflow("run", "--wait", str(ROOT / "examples" / "demo.yaml"), env={"SECFLOW_TASK_QUEUE": queue}))
    assert "nothing was sent" in line

    # A worker comes back: the assessment reaches its gate and is still waiting there; the
    # refused approve (and abort) never reached the workflow.
    settings = load_settings({**os.environ, "SECFLOW_TASK_QUEUE": queue})
    async with build_worker(client, settings):
        status = await wait_for(handle, lambda s: s.awaiting == ["ports"])
        assert status.interventions == [] and status.status == "awaiting_intervention"
        kinds = [e.event_type async for e in handle.fetch_history_events()]
        assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED not in kinds
        assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED not in kinds
        # with the worker polling, the same command goes through
        approved = await secflow("approve", handle.id, "ports", "--by", "tests")
        assert approved.returncode == 0, approved.stderr
        result = await secflow("result", handle.id, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["outcome"] == "completed"


async def test_incident_show_and_ack_without_a_worker_refuse_at_once(client: Client) -> None:
    from secflow.incidents import Severity
    from tests.support_incident_worker import make_ref

    queue = f"nobody-{uuid.uuid4().hex[:8]}"
    ref = make_ref(Severity.P3)
    await client.start_workflow("IncidentWorkflow", ref, id=ref.incident_id, task_queue=queue)
    for args in (["incidents", "show", ref.incident_id], ["incidents", "ack", ref.incident_id, "--by", "tests"]):
        line = one_line_error(await secflow(*args))
        assert f"no worker is polling task queue '{queue}'" in line, line


async def test_a_finished_assessment_needs_no_worker(client: Client, worker: str) -> None:
    spec = make_spec(
        [{"host": own_loopback_host()}],
        [{"id": "ports", "kind": "discovery", "tool": "portscan", "options": {"ports": "1"}}],
        scope=LOOPBACK_SCOPE,
    )
    handle = await start(client, spec, worker)
    await asyncio.wait_for(handle.result(), 120)
    # the worker fixture still runs, but the answer comes from the stored result either way
    for args in (["result", handle.id], ["status", handle.id]):
        out = await secflow(*args)
        assert out.returncode == 0 and "completed" in out.stdout, out.stderr


async def test_run_wait_shows_progress_on_stderr(client: Client, worker: str, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        json.dumps(
            {
                "name": "progress",
                "scope": {"allow": ["127.0.0.1"]},
                "targets": [{"host": "127.0.0.1"}],
                "stages": [{"id": "ports", "kind": "discovery", "tool": "portscan", "options": {"ports": "1"},
                            "requires_approval": True}],
            }
        )
    )
    waiting = asyncio.ensure_future(secflow("run", str(spec), "--wait", "--json", env={"SECFLOW_TASK_QUEUE": worker}))
    # the run prints its id first; find it in visibility, then answer the gate
    handle = None
    while handle is None:
        await asyncio.sleep(0.5)
        async for wf in client.list_workflows(f"TaskQueue = '{worker}' AND ExecutionStatus = 'Running'"):
            handle = client.get_workflow_handle(wf.id)
    await wait_for(handle, lambda s: s.awaiting == ["ports"])
    await asyncio.sleep(2.5)  # let the waiting starter see the gate at least once
    await handle.execute_update("approve", {"stage": "ports", "by": "tests"}, result_type=str)
    out = await waiting
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout[out.stdout.index("{") :])["outcome"] == "completed"  # stdout: id, then the JSON
    assert "ports awaiting_approval 0/1" in out.stderr and "awaiting a human: ports" in out.stderr, out.stderr
    lines = [line for line in out.stderr.splitlines() if line]
    assert len(lines) == len(set(line.split("] ", 1)[1] for line in lines)), "a line only when something changed"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_refused_server_is_one_line_naming_the_address() -> None:
    address = f"127.0.0.1:{_closed_port()}"
    for args in (["status", "some-id"], ["approve", "some-id", "ports"], ["incidents", "list"]):
        line = one_line_error(await secflow(*args, env={"TEMPORAL_ADDRESS": address}))
        assert address in line and "connection refused" in line and "make demo" in line, line


async def test_silent_server_is_one_line_within_the_connect_timeout() -> None:
    # accepts TCP connections and never speaks HTTP/2: the connect must give up, not hang
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        line = one_line_error(await secflow("status", "some-id", env={"TEMPORAL_ADDRESS": address}))
    assert address in line, line


async def test_unexpected_exception_is_one_line_and_a_logged_traceback(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "secflow.db").write_bytes(b"this is not a database" * 100)
    out = await secflow("findings", "some-id", env={"SECFLOW_DATA_DIR": str(data), "SECFLOW_DB_URL": ""})
    line = one_line_error(out)
    assert line.startswith("error: unexpected ") and str(data / "starter.log") in line, line
    [entry] = [json.loads(x) for x in (data / "starter.log").read_text().splitlines()]
    assert entry["command"] == "findings" and "Traceback (most recent call last)" in entry["traceback"]
    assert entry["category"] == "permanent"  # classified by the one taxonomy (secflow/errors.py)
