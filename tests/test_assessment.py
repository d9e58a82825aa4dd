"""The assessment workflow end to end on a real dev server, against real local targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import Client

from examples.demo_target import start_demo_target
from secflow.store import open_store
from tests.helpers import target_states, activity_order, final_status, make_spec, start, status_of
from tests.servers import GOOD_HEADERS, Listeners, Reply, ScriptedServer, closed_port


@pytest.fixture
def demo_target():
    target = start_demo_target("127.0.0.1", 0, [])
    yield target
    target.stop()


async def test_happy_path_scans_reports_and_releases_everything(client: Client, worker: str, demo_target) -> None:
    listeners = Listeners(3)
    try:
        lo, hi = min(listeners.ports), max(listeners.ports)
        spec = make_spec(
            [{"host": "127.0.0.1"}, {"url": f"http://127.0.0.1:{demo_target.port}/"}],
            [
                {"id": "ports", "kind": "discovery", "tool": "portscan", "options": {"ports": f"{lo}-{hi}", "rate": 2000}},
                {"id": "headers", "kind": "dast", "tool": "http_headers", "depends_on": ["ports"]},
                {"id": "report", "kind": "report", "always": True},
            ],
        )
        handle = await start(client, spec, worker)
        status = await final_status(handle)
    finally:
        listeners.close()

    assert status.outcome == "completed", status.reason
    assert status.stages["ports"].state == "succeeded"
    assert status.stages["headers"].state == "succeeded"
    assert status.stages["report"].state == "succeeded"

    store = open_store()
    findings = store.list_findings(handle.id)
    port_locations = sorted(f.location for f in findings if f.tool == "portscan")
    # every listener in the range is found; anything else open in the range is real too
    assert {f"127.0.0.1:{p}" for p in listeners.ports} <= set(port_locations)
    header_rules = {f.rule_id for f in findings if f.tool == "http-headers"}
    assert header_rules, "the weak demo target must yield header findings"
    assert status.findings.total == len(findings)
    assert sum(status.findings.by_severity.values()) == len(findings)

    # the report stage wrote both formats, with the findings in them
    report_json = Path(status.stages["report"].outputs["json"])
    doc = json.loads(report_json.read_text())
    assert len(doc["findings"]) == len(findings)
    assert Path(status.stages["report"].outputs["md"]).read_text().startswith("# Assessment report")

    # compensations ran LIFO: lock released before the workspace is removed
    assert [c.state for c in status.compensations] == ["done", "done"]
    order = await activity_order(handle)
    assert order[-3:] == ["release_scan_locks", "remove_workspace", "render_final_reports"]  # reports re-rendered last
    assert not Path(status.workspace).exists()
    assert all(lock.holder != handle.id for lock in store.list_locks())


async def test_503_then_200_is_retried_and_recorded_as_recovered(client: Client, worker: str) -> None:
    flaky = ScriptedServer([Reply(503, {"Retry-After": "1"}), Reply(200, GOOD_HEADERS)])
    try:
        spec = make_spec(
            [{"url": flaky.url}],
            [{"id": "headers", "kind": "dast", "tool": "http_headers", "retry": {"max_attempts": 3}}],
        )
        handle = await start(client, spec, worker)
        status = await final_status(handle)
    finally:
        flaky.close()
    assert status.outcome == "completed"
    assert status.stages["headers"].attempts == 2
    assert len(flaky.requests) == 3  # two attempts, then the recovery validation's health probe
    errors = open_store().list_errors(handle.id)
    assert [(e.category, e.attempt, e.outcome) for e in errors] == [("transient", 1, "recovered")]


async def test_required_stage_failure_fails_fast_and_unwinds_lifo(client: Client, worker: str) -> None:
    dead = f"http://127.0.0.1:{closed_port()}/"
    spec = make_spec(
        [{"url": dead}],
        [
            {"id": "headers", "kind": "dast", "tool": "http_headers", "retry": {"max_attempts": 2, "initial_interval": "100ms"}},
            {"id": "after", "kind": "dast", "tool": "http_headers", "depends_on": ["headers"]},
            {"id": "report", "kind": "report", "always": True},
        ],
    )
    handle = await start(client, spec, worker)
    status = await final_status(handle)
    assert status.outcome == "failed"
    assert status.stages["headers"].state == "failed"
    assert status.stages["headers"].error.category == "transient"
    assert status.stages["headers"].attempts == 2
    assert status.stages["after"].state == "skipped"
    assert status.stages["report"].state == "succeeded", "always stages run after a failure"
    order = await activity_order(handle)
    assert order[-3:] == ["release_scan_locks", "remove_workspace", "render_final_reports"]  # reports re-rendered last
    assert [c.state for c in status.compensations] == ["done", "done"]
    desc = await handle.describe()
    assert desc.status.name == "FAILED"


async def test_optional_stage_skip_policy_completes_with_errors(client: Client, worker: str) -> None:
    dead = f"http://127.0.0.1:{closed_port()}/"
    good = ScriptedServer([Reply(200, GOOD_HEADERS)])
    try:
        spec = make_spec(
            [{"url": dead}, {"url": good.url}],
            [
                {"id": "broken", "kind": "dast", "tool": "http_headers", "criticality": "optional", "on_failure": "skip",
                 "retry": {"max_attempts": 1}},
                {"id": "tolerant", "kind": "dast", "tool": "http_headers",
                 "options": {"tolerated_failure_percent": 50}, "retry": {"max_attempts": 1}},
            ],
        )
        handle = await start(client, spec, worker)
        status = await final_status(handle)
    finally:
        good.close()
    assert status.outcome == "completed_with_errors"
    assert status.stages["broken"].state == "skipped"
    assert status.stages["tolerant"].state == "partial"
    assert target_states(handle.id, "tolerant")[dead] == "failed"
    assert target_states(handle.id, "tolerant")[good.url] == "succeeded"


async def test_out_of_scope_redirect_is_a_security_violation(client: Client, worker: str) -> None:
    outside = ScriptedServer([Reply(200, GOOD_HEADERS)])
    redirector = ScriptedServer([Reply(302, {"Location": f"http://localhost:{outside.port}/"})])
    try:
        spec = make_spec(
            [{"url": redirector.url}],
            [{"id": "headers", "kind": "dast", "tool": "http_headers"}],
            scope={"allow": [redirector.url]},
        )
        handle = await start(client, spec, worker)
        status = await final_status(handle)
    finally:
        outside.close()
        redirector.close()
    assert status.outcome == "failed"
    assert status.stages["headers"].error.category == "security"
    assert status.stages["headers"].attempts == 1, "security violations are never retried"
    assert outside.requests == [], "the out-of-scope server must never be contacted"
    assert [c.state for c in status.compensations] == ["done", "done"]


async def test_second_assessment_on_a_locked_target_is_refused(client: Client, worker: str) -> None:
    store = open_store()
    store.acquire_lock("127.0.0.1", "someone-else")
    try:
        spec = make_spec(
            [{"host": "127.0.0.1"}],
            [{"id": "ports", "kind": "discovery", "tool": "portscan", "options": {"ports": "1"}}],
            locks={"on_conflict": "refuse"},
        )
        handle = await start(client, spec, worker)
        status = await final_status(handle)
    finally:
        store.release_lock("127.0.0.1", "someone-else")
    assert status.outcome == "failed"
    assert "someone-else" in status.reason
    assert status.stages["ports"].state == "skipped"
    assert all(lock.holder == "someone-else" or lock.target != "127.0.0.1" for lock in store.list_locks())


async def test_second_assessment_waits_for_the_lock_then_runs(client: Client, worker: str) -> None:
    store = open_store()
    store.acquire_lock("127.0.0.1", "earlier-scan")
    spec = make_spec(
        [{"host": "127.0.0.1"}],
        [{"id": "ports", "kind": "discovery", "tool": "portscan", "options": {"ports": "1"}}],
    )
    handle = await start(client, spec, worker)
    from tests.helpers import wait_for

    waiting = await wait_for(handle, lambda s: s.status == "waiting_for_lock")
    assert waiting.stages["ports"].state == "pending"
    store.release_lock("127.0.0.1", "earlier-scan")
    status = await final_status(handle)
    assert status.outcome == "completed"
    assert (await status_of(handle)).status == "completed"


async def test_independent_stages_run_concurrently(client: Client, worker: str) -> None:
    """Each request is held until both have arrived: run one after the other, both fail."""
    import threading

    barrier = threading.Barrier(2, timeout=15)

    def script(n: int, path: str) -> Reply:
        barrier.wait()  # BrokenBarrierError -> no answer -> the stage fails
        return Reply(200, GOOD_HEADERS)

    target = ScriptedServer(script)
    try:
        spec = make_spec(
            [{"url": target.url}],
            [
                {"id": "one", "kind": "dast", "tool": "http_headers", "retry": {"max_attempts": 1}},
                {"id": "two", "kind": "dast", "tool": "http_headers", "retry": {"max_attempts": 1}},
            ],
        )
        handle = await start(client, spec, worker)
        status = await final_status(handle)
    finally:
        target.close()
    assert len(target.requests) == 2
    assert status.stages["one"].state == "succeeded"
    assert status.stages["two"].state == "succeeded"
    assert status.outcome == "completed"


async def test_fallback_policy_runs_the_fallback_tool_and_marks_the_stage_degraded(client: Client, worker: str) -> None:
    # nmap -> portscan is the production pair (issue 3); until a second tool of a kind
    # exists, the mechanism is exercised with http_headers as its own fallback.
    target = ScriptedServer([Reply(500), Reply(500), Reply(200, GOOD_HEADERS)])
    try:
        spec = make_spec(
            [{"url": target.url}],
            [{"id": "headers", "kind": "dast", "tool": "http_headers", "on_failure": "fallback",
              "fallback_tool": "http_headers", "retry": {"max_attempts": 2, "initial_interval": "100ms"}}],
        )
        handle = await start(client, spec, worker)
        status = await final_status(handle)
    finally:
        target.close()
    stage = status.stages["headers"]
    assert stage.state == "partial" and stage.degraded
    assert "fell back to http-headers" in stage.reason
    assert stage.attempts == 3
    assert status.outcome == "completed_with_errors"


async def test_lock_left_by_a_terminated_assessment_is_taken_over(client: Client, worker: str) -> None:
    """`temporal workflow terminate` skips compensations; its scan lock must not block forever."""
    gate = make_spec(
        [{"host": "127.0.0.1"}],
        [{"id": "ports", "kind": "discovery", "tool": "portscan", "options": {"ports": "1"}, "requires_approval": True}],
    )
    first = await start(client, gate, worker)
    from tests.helpers import wait_for

    await wait_for(first, lambda s: s.awaiting == ["ports"])
    await first.terminate("operator terminated it")
    assert any(lock.holder == first.id for lock in open_store().list_locks()), "terminate leaves the lock behind"

    spec = make_spec(
        [{"host": "127.0.0.1"}],
        [{"id": "ports", "kind": "discovery", "tool": "portscan", "options": {"ports": "1"}}],
        locks={"on_conflict": "refuse"},
    )
    second = await start(client, spec, worker)
    status = await final_status(second)
    assert status.outcome == "completed"
    assert all(lock.holder != first.id for lock in open_store().list_locks())
