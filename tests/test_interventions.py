"""Manual intervention: signals sent the way operators send them (temporal CLI, JSON input),
and the starter's validated updates."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

from temporalio.client import Client

from secflow.store import open_store
from tests.devserver import DevServer
from tests.helpers import activity_order, final_status, make_spec, start, status_of, wait_for
from tests.servers import GOOD_HEADERS, Reply, ScriptedServer, closed_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def signal(server: DevServer, workflow_id: str, name: str, payload: dict) -> None:
    """Exactly what the README tells operators to run."""
    server.cli("workflow", "signal", "--workflow-id", workflow_id, "--name", name, "--input", json.dumps(payload))


async def starter(*args: str) -> subprocess.CompletedProcess[str]:
    """The starter CLI in a thread: the in-process worker shares this event loop."""
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "starter", *args], cwd=ROOT, env=dict(os.environ), capture_output=True, text=True
    )


def gated_spec(url: str, **gate: object):
    return make_spec(
        [{"url": url}],
        [
            {"id": "headers", "kind": "dast", "tool": "http_headers", "requires_approval": True, **gate},
            {"id": "report", "kind": "report", "always": True},
        ],
    )


async def test_gate_waits_visibly_then_approve_signal_from_cli_runs_it(client: Client, worker: str, server: DevServer) -> None:
    target = ScriptedServer([Reply(200, GOOD_HEADERS)])
    try:
        handle = await start(client, gated_spec(target.url), worker)
        waiting = await wait_for(handle, lambda s: s.awaiting == ["headers"])
        assert waiting.status == "awaiting_intervention"
        assert waiting.stages["headers"].state == "awaiting_approval"
        assert target.requests == [], "nothing runs before approval"

        # The Web UI view: search attributes and current details say what it waits for.
        desc = await handle.describe()
        sa = desc.typed_search_attributes
        assert {p.key.name: p.value for p in sa}["SecflowStatus"] == "awaiting_intervention"
        assert list({p.key.name: p.value for p in sa}["SecflowAwaiting"]) == ["headers"]
        meta = await handle.query("__temporal_workflow_metadata")
        details = meta.current_details if hasattr(meta, "current_details") else meta["currentDetails"]
        assert "approve" in details and "headers" in details

        signal(server, handle.id, "approve", {"stage": "headers", "by": "alice", "reason": "change ticket 42"})
        status = await final_status(handle)
    finally:
        target.close()
    assert status.outcome == "completed"
    assert len(target.requests) == 1
    approve = [i for i in status.interventions if i.action == "approve"]
    assert approve and approve[0].by == "alice" and approve[0].via == "signal" and approve[0].accepted


async def test_reject_signal_skips_the_gated_stage(client: Client, worker: str, server: DevServer) -> None:
    target = ScriptedServer([Reply(200, GOOD_HEADERS)])
    try:
        handle = await start(client, gated_spec(target.url), worker)
        await wait_for(handle, lambda s: s.awaiting == ["headers"])
        signal(server, handle.id, "reject", {"stage": "headers", "by": "bob", "reason": "out of window"})
        status = await final_status(handle)
    finally:
        target.close()
    assert status.outcome == "completed_with_errors"
    assert status.stages["headers"].state == "skipped"
    assert "bob" in status.stages["headers"].reason
    assert target.requests == []


async def test_signal_naming_a_wrong_stage_is_recorded_not_applied(client: Client, worker: str, server: DevServer) -> None:
    target = ScriptedServer([Reply(200, GOOD_HEADERS)])
    try:
        handle = await start(client, gated_spec(target.url), worker)
        await wait_for(handle, lambda s: s.awaiting == ["headers"])
        signal(server, handle.id, "approve", {"stage": "no-such-stage", "by": "carol"})
        signal(server, handle.id, "approve", {"stagee": "headers", "by": "carol"})
        status = await wait_for(handle, lambda s: len(s.interventions) == 2)
        assert [i.accepted for i in status.interventions] == [False, False]
        assert "no stage named 'no-such-stage'" in status.interventions[0].note
        assert "stagee" in status.interventions[1].note
        assert status.stages["headers"].state == "awaiting_approval"
        signal(server, handle.id, "abort", {"by": "carol", "reason": "test over"})
        status = await final_status(handle)
    finally:
        target.close()
    assert status.outcome == "cancelled"


async def test_abort_while_waiting_compensates_lifo(client: Client, worker: str, server: DevServer) -> None:
    target = ScriptedServer([Reply(200, GOOD_HEADERS)])
    try:
        handle = await start(client, gated_spec(target.url), worker)
        await wait_for(handle, lambda s: s.awaiting == ["headers"])
        signal(server, handle.id, "abort", {"by": "dave", "reason": "wrong target"})
        status = await final_status(handle)
    finally:
        target.close()
    assert status.outcome == "cancelled"
    assert "dave" in status.reason
    assert status.stages["headers"].state == "skipped"
    assert status.stages["report"].state == "succeeded"
    assert [c.state for c in status.compensations] == ["done", "done"]
    order = await activity_order(handle)
    assert order[-3:] == ["release_scan_locks", "remove_workspace", "render_final_reports"]  # reports re-rendered last
    assert target.requests == []
    assert all(lock.holder != handle.id for lock in open_store().list_locks())


async def test_failure_wait_then_retry_stage_signal_reruns_only_that_stage(client: Client, worker: str, server: DevServer) -> None:
    # The target fails until the operator "fixes" it; then retry_stage re-runs the stage.
    state = {"healthy": False}

    def script(n: int, path: str) -> Reply:
        return Reply(200, GOOD_HEADERS) if state["healthy"] else Reply(500)

    target = ScriptedServer(script)
    try:
        spec = make_spec(
            [{"host": "127.0.0.1"}, {"url": target.url}],
            [
                {"id": "ports", "kind": "discovery", "tool": "portscan", "options": {"ports": str(closed_port())}},
                {"id": "flaky", "kind": "dast", "tool": "http_headers", "depends_on": ["ports"],
                 "on_failure": "await_approval", "retry": {"max_attempts": 2, "initial_interval": "100ms"}},
            ],
        )
        handle = await start(client, spec, worker)
        waiting = await wait_for(handle, lambda s: s.awaiting == ["flaky"], timeout=60)
        assert waiting.stages["flaky"].state == "awaiting_intervention"
        assert waiting.stages["flaky"].error.category == "transient"
        assert waiting.stages["flaky"].attempts == 2
        state["healthy"] = True
        signal(server, handle.id, "retry_stage", {"stage": "flaky", "by": "erin"})
        status = await final_status(handle)
    finally:
        target.close()
    assert status.outcome == "completed"
    assert status.stages["flaky"].state == "succeeded"
    assert status.stages["flaky"].attempts == 3
    order = await activity_order(handle)
    assert order.count("portscan") == 1, "the finished upstream stage is not re-run"
    assert order.count("http-headers") == 2


async def test_skip_stage_signal_answers_a_failure_wait(client: Client, worker: str, server: DevServer) -> None:
    dead = f"http://127.0.0.1:{closed_port()}/"
    spec = make_spec(
        [{"url": dead}],
        [{"id": "broken", "kind": "dast", "tool": "http_headers", "on_failure": "await_approval",
          "retry": {"max_attempts": 1}}],
    )
    handle = await start(client, spec, worker)
    await wait_for(handle, lambda s: s.awaiting == ["broken"])
    signal(server, handle.id, "skip_stage", {"stage": "broken", "by": "frank", "reason": "host retired"})
    status = await final_status(handle)
    assert status.outcome == "completed_with_errors"
    assert status.stages["broken"].state == "skipped"
    assert "frank" in status.stages["broken"].reason


async def test_pause_and_resume_signals(client: Client, worker: str, server: DevServer) -> None:
    target = ScriptedServer([Reply(200, GOOD_HEADERS)])
    try:
        spec = make_spec(
            [{"url": target.url}],
            [
                {"id": "gate", "kind": "dast", "tool": "http_headers", "requires_approval": True},
                {"id": "after", "kind": "dast", "tool": "http_headers", "depends_on": ["gate"]},
            ],
        )
        handle = await start(client, spec, worker)
        await wait_for(handle, lambda s: s.awaiting == ["gate"])
        signal(server, handle.id, "pause", {"by": "gina"})
        signal(server, handle.id, "approve", {"stage": "gate", "by": "gina"})
        paused = await wait_for(handle, lambda s: not s.awaiting and s.status == "paused")
        await asyncio.sleep(1)
        paused = await status_of(handle)
        assert paused.status == "paused"
        assert target.requests == [], "nothing new starts while paused, not even an approved stage"
        assert paused.stages["after"].state == "pending"
        signal(server, handle.id, "resume", {"by": "gina"})
        status = await final_status(handle)
    finally:
        target.close()
    assert status.outcome == "completed"
    assert [i.action for i in status.interventions] == ["pause", "approve", "resume"]


async def test_starter_updates_validate_and_refuse_clearly(client: Client, worker: str) -> None:
    target = ScriptedServer([Reply(200, GOOD_HEADERS)])
    try:
        handle = await start(client, gated_spec(target.url), worker)
        await wait_for(handle, lambda s: s.awaiting == ["headers"])

        wrong = await starter("approve", handle.id, "nope", "--by", "hank")
        assert wrong.returncode == 1
        assert "no stage named 'nope'" in wrong.stderr
        not_waiting = await starter("approve", handle.id, "report", "--by", "hank")
        assert not_waiting.returncode == 1
        assert "not awaiting approval" in not_waiting.stderr
        resume = await starter("resume", handle.id)
        assert resume.returncode == 1 and "not paused" in resume.stderr
        assert (await status_of(handle)).interventions == [], "refused updates leave no trace"

        ok = await starter("approve", handle.id, "headers", "--by", "hank", "--reason", "ok by me")
        assert ok.returncode == 0, ok.stderr
        assert "headers" in ok.stdout
        status = await final_status(handle)
        js = await starter("status", handle.id, "--json")
    finally:
        target.close()
    assert status.outcome == "completed"
    assert status.interventions[0].via == "update" and status.interventions[0].by == "hank"
    doc = json.loads(js.stdout)
    for key in ("workflow_id", "status", "stages", "interventions", "compensations", "findings"):
        assert key in doc
    stage = doc["stages"]["headers"]
    for key in ("state", "attempts", "progress", "error"):
        assert key in stage
    assert set(doc["findings"]) >= {"total", "by_severity"}


async def test_temporal_cancel_compensates_and_ends_cancelled(client: Client, worker: str, server: DevServer) -> None:
    target = ScriptedServer([Reply(200, GOOD_HEADERS)])
    try:
        handle = await start(client, gated_spec(target.url), worker)
        await wait_for(handle, lambda s: s.awaiting == ["headers"])
        server.cli("workflow", "cancel", "--workflow-id", handle.id)
        from temporalio.client import WorkflowFailureError

        try:
            await handle.result()
        except WorkflowFailureError:
            pass  # expected: the workflow ends Canceled
        desc = await handle.describe()
    finally:
        target.close()
    assert desc.status.name == "CANCELED"
    order = await activity_order(handle)
    assert order[-2:] == ["release_scan_locks", "remove_workspace"]
    assert all(lock.holder != handle.id for lock in open_store().list_locks())


async def test_a_completed_run_whose_cleanup_fails_does_not_say_completed(client: Client, worker: str, server: DevServer) -> None:
    """The scan finished, then removing its workspace failed for real: the run ends Failed
    for a human, and the status it carries says so (it used to say `completed`)."""
    target = ScriptedServer([Reply(200, GOOD_HEADERS)])
    try:
        handle = await start(client, gated_spec(target.url), worker)
        waiting = await wait_for(handle, lambda s: s.awaiting == ["headers"])
        workspace = waiting.workspace
        os.rmdir(workspace)
        with open(workspace, "w") as sabotage:
            sabotage.write("not a directory")
        signal(server, handle.id, "approve", {"stage": "headers", "by": "ivan"})
        status = await final_status(handle)
    finally:
        target.close()
        if os.path.isfile(workspace):
            os.remove(workspace)
    assert status.stages["headers"].state == "succeeded"
    assert {c.name: c.state for c in status.compensations}["remove workspace"] == "failed"
    assert status.outcome == "completed_with_errors", status.outcome
    assert "remove workspace" in status.reason and "manual cleanup" in status.reason, status.reason


async def test_failed_compensation_is_recorded_and_raised_for_a_human(client: Client, worker: str, server: DevServer) -> None:
    """Someone replaced the workspace directory with a file: removing it fails for real."""
    target = ScriptedServer([Reply(200, GOOD_HEADERS)])
    try:
        handle = await start(client, gated_spec(target.url), worker)
        waiting = await wait_for(handle, lambda s: s.awaiting == ["headers"])
        workspace = waiting.workspace
        os.rmdir(workspace)
        with open(workspace, "w") as sabotage:
            sabotage.write("not a directory")
        signal(server, handle.id, "abort", {"by": "ivan"})
        status = await final_status(handle)
        desc = await handle.describe()
    finally:
        target.close()
        if os.path.isfile(workspace):
            os.remove(workspace)
    records = {c.name: c for c in status.compensations}
    assert records["remove workspace"].state == "failed"
    assert records["remove workspace"].error.category == "permanent"
    # the other compensation still ran: one failure does not stop the unwind
    assert records["release 1 scan lock(s)"].state == "done"
    assert desc.status.name == "FAILED", "a failed compensation is raised, not swallowed"
    from temporalio.client import WorkflowFailureError

    try:
        await handle.result()
    except WorkflowFailureError as err:
        assert "needs manual cleanup" in str(err.cause)
    else:
        raise AssertionError("the workflow must fail")


async def test_status_of_a_finished_assessment_needs_no_worker(client: Client, task_queue: str) -> None:
    """After the demo the worker is gone; `status` still answers, from the stored result."""
    from secflow.settings import load_settings
    from worker import build_worker

    target = ScriptedServer([Reply(200, GOOD_HEADERS)])
    try:
        settings = load_settings({**os.environ, "SECFLOW_TASK_QUEUE": task_queue})
        async with build_worker(client, settings):
            handle = await start(client, make_spec([{"url": target.url}], [{"id": "headers", "kind": "dast"}]), task_queue)
            await final_status(handle)
    finally:
        target.close()
    out = await starter("status", handle.id, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "completed"
    missing = await starter("status", "no-such-assessment")
    assert missing.returncode == 1 and "no assessment with id" in missing.stderr
