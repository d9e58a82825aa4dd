"""Incidents: escalation on durable timers, answers by signal/update/CLI, and the
assessment opening, merging and resolving them (with dead letters) for real.

Timers run on a time-skipping dev server (v2, per-workflow virtual clocks): an hour of
escalation passes in seconds, and every assertion about *when* reads the workflow's own
record (notification and escalation times in workflow time), never the wall clock.
Alerts go through the real alert activities to a stand-in Slack webhook.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from secflow import guidance
from secflow.codec import data_converter_for
from secflow.dead_letters import list_dead_letters, ref_for
from secflow.incidents import IncidentAnswer, IncidentStatus, Severity
from secflow.models import Decision
from secflow.settings import load_settings
from secflow.store import open_store
from tests.alert_standins import SlackStandin
from tests.devserver import SEARCH_ATTRIBUTES, DevServer, temporal_binary
from tests.helpers import final_status, make_spec, start, wait_for
from tests.servers import GOOD_HEADERS, Reply, ScriptedServer, closed_port
from tests.support_incident_worker import incident_worker, make_ref, write_routing

ROOT = Path(__file__).resolve().parent.parent
TIERS = {"P1": [["tier1"], ["tier2"], ["tier3"]], "P2": [["tier1"], ["tier2"]], "P3": [["tier1"]]}


@pytest.fixture(scope="module")
def slack() -> Iterator[dict[str, SlackStandin]]:
    standins = {name: SlackStandin(path=f"/services/T0SECFLOW/B0{name.upper()}/hooksecret{i}") for i, name in enumerate(("tier1", "tier2", "tier3"))}
    yield standins
    for s in standins.values():
        s.close()


@pytest.fixture(autouse=True)
def routing(tmp_path: Path, slack: dict[str, SlackStandin], monkeypatch: pytest.MonkeyPatch) -> Path:
    path = write_routing(tmp_path / "alerts.yaml", {n: s.webhook_url for n, s in slack.items()}, TIERS)
    monkeypatch.setenv("SECFLOW_ALERTS_CONFIG", str(path))
    return path


@pytest.fixture(scope="module")
async def skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    args = ["--dynamic-config-value", "frontend.WorkflowTimeSkippingEnabled=true"]
    for sa in SEARCH_ATTRIBUTES:
        args += ["--search-attribute", sa]
    env = await WorkflowEnvironment.start_time_skipping_v2(
        dev_server_existing_path=temporal_binary(), dev_server_extra_args=args, data_converter=data_converter_for(load_settings())
    )
    yield env
    await env.shutdown()


@pytest.fixture
async def incident_queue(client: Client, task_queue: str) -> AsyncIterator[str]:
    async with incident_worker(client, task_queue):
        yield task_queue


async def incident_of(handle: WorkflowHandle) -> IncidentStatus:
    return await handle.query("incident", result_type=IncidentStatus)


async def wait_incident(handle: WorkflowHandle, predicate, timeout: float = 30.0) -> IncidentStatus:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = await incident_of(handle)
        except RPCError as err:  # the assessment names the incident a moment before it starts
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            await asyncio.sleep(0.2)
            continue
        if predicate(last):
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"incident condition not reached in {timeout}s; last: {last.model_dump_json(indent=1) if last else None}")


def offset(status: IncidentStatus, at) -> timedelta:
    assert status.opened_at is not None
    return at - status.opened_at


def temporal_cli(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([temporal_binary(), *args, "--address", address], capture_output=True, text=True)


async def starter(*args: str) -> subprocess.CompletedProcess[str]:
    """The starter CLI in a thread: the in-process worker shares this event loop."""
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "starter", *args], cwd=ROOT, env=dict(os.environ), capture_output=True, text=True
    )


# ---------------------------------------------------------------------------------- timers


async def test_unacknowledged_p1_escalates_at_15_minutes_and_at_the_resolve_deadline(
    skipping_env: WorkflowEnvironment, task_queue: str, slack: dict[str, SlackStandin]
) -> None:
    ref = make_ref(Severity.P1)
    before = {n: len(s.delivered()) for n, s in slack.items()}
    async with incident_worker(skipping_env.client, task_queue):
        handle = await skipping_env.client.start_workflow("IncidentWorkflow", ref, id=ref.incident_id, task_queue=task_queue)
        # Unbounded skipping: virtual time jumps from timer to timer while nothing else runs.
        status = await wait_incident(handle, lambda s: len(s.escalations) == 2 and len(s.notifications) == 3)
        sent = {(n.event.value, n.tier, n.channel): offset(status, n.at) for n in status.notifications}
        assert set(sent) == {("trigger", 1, "tier1"), ("escalate", 2, "tier2"), ("escalate", 3, "tier3")}
        assert sent[("trigger", 1, "tier1")] < timedelta(minutes=1), "tier 1 is told at once"
        assert timedelta(minutes=15) <= sent[("escalate", 2, "tier2")] < timedelta(minutes=16)
        assert timedelta(hours=1) <= sent[("escalate", 3, "tier3")] < timedelta(hours=1, minutes=1)
        assert [e.why for e in status.escalations] == ["ack_deadline", "resolve_deadline"]
        assert all(n.status == "sent" for n in status.notifications)
        assert status.tier == 3 and status.state.value == "open"

        await handle.signal("resolve", IncidentAnswer(by="carol", note="rolled back"))
        final = await asyncio.wait_for(handle.result(), 30)
    final = IncidentStatus.model_validate(final) if not isinstance(final, IncidentStatus) else final
    resolves = [n for n in final.notifications if n.event.value == "resolve"]
    assert sorted(n.channel for n in resolves) == ["tier1", "tier2", "tier3"], "every channel told is told it is resolved"
    assert final.resolved_by == "carol" and final.resolution_note == "rolled back"
    # what the Slack stand-ins really received: trigger+resolve on tier 1, escalate+resolve on 2 and 3
    assert {n: len(s.delivered()) - before[n] for n, s in slack.items()} == {"tier1": 2, "tier2": 2, "tier3": 2}
    desc = await handle.describe()
    sa = {p.key.name: p.value for p in desc.typed_search_attributes}
    assert sa["SecflowIncidentSeverity"] == "P1" and sa["SecflowIncidentState"] == "resolved"


async def test_ack_at_10_minutes_stops_the_ack_escalation_but_not_the_resolve_deadline(
    skipping_env: WorkflowEnvironment, task_queue: str
) -> None:
    ref = make_ref(Severity.P1)
    async with incident_worker(skipping_env.client, task_queue):
        with skipping_env.with_time_skipping_disabled():
            handle = await skipping_env.client.start_workflow("IncidentWorkflow", ref, id=ref.incident_id, task_queue=task_queue)
        await wait_incident(handle, lambda s: len(s.notifications) == 1)
        assert await skipping_env.fast_forward(handle, timedelta(minutes=10))
        # acknowledged by the operator's CLI, exactly as the README says
        address = skipping_env.client.service_client.config.target_host
        out = await asyncio.to_thread(
            temporal_cli, address, "workflow", "signal", "--workflow-id", ref.incident_id, "--name", "ack",
            "--input", '{"by": "alice", "note": "looking"}',
        )
        assert out.returncode == 0, out.stderr
        acked = await wait_incident(handle, lambda s: s.state.value == "acknowledged")
        assert timedelta(minutes=10) <= offset(acked, acked.acknowledged_at) < timedelta(minutes=11)
        await wait_incident(handle, lambda s: any(n.event.value == "acknowledge" for n in s.notifications))

        # past the 15-minute ack deadline: nobody else is paged
        assert await skipping_env.fast_forward(handle, timedelta(minutes=20))
        status = await incident_of(handle)
        assert status.escalations == [] and status.tier == 1
        assert [n.event.value for n in status.notifications] == ["trigger", "acknowledge"]
        # the Web UI's one sentence says what comes next, and when
        meta = await handle.query("__temporal_workflow_metadata")
        details = meta.current_details if hasattr(meta, "current_details") else meta["currentDetails"]
        due = status.opened_at + timedelta(hours=1)
        assert details.startswith(
            f"P1 acknowledged, tier 1 notified (tier1), acknowledged by alice, escalates to tier 2 at {due:%H:%M} UTC unless resolved"
        ), details
        assert status.next_escalation_at == due

        # past the 1 h resolve deadline: still unresolved, so tier 2 is paged (ack or not)
        assert await skipping_env.fast_forward(handle, timedelta(minutes=35))
        status = await wait_incident(handle, lambda s: len(s.notifications) == 3)
    (escalation,) = status.escalations
    assert escalation.why == "resolve_deadline" and escalation.tier == 2
    assert timedelta(hours=1) <= offset(status, escalation.at) < timedelta(hours=1, minutes=1)
    last = status.notifications[-1]
    assert (last.event.value, last.channel, last.status) == ("escalate", "tier2", "sent")
    assert status.acknowledged_by == "alice" and status.state.value == "acknowledged"


async def test_a_dead_channel_is_recorded_failed_while_the_others_and_the_escalations_go_out(
    skipping_env: WorkflowEnvironment, task_queue: str, slack: dict[str, SlackStandin], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    channels = {"dead": f"http://127.0.0.1:{closed_port()}/services/T0/B0/dead", "tier1": slack["tier1"].webhook_url,
                "tier2": slack["tier2"].webhook_url}
    path = write_routing(tmp_path / "dead.yaml", channels, {"P2": [["dead", "tier1"], ["tier2"]]})
    monkeypatch.setenv("SECFLOW_ALERTS_CONFIG", str(path))
    ref = make_ref(Severity.P2)
    async with incident_worker(skipping_env.client, task_queue):
        handle = await skipping_env.client.start_workflow("IncidentWorkflow", ref, id=ref.incident_id, task_queue=task_queue)
        status = await wait_incident(
            handle, lambda s: len(s.escalations) == 2 and len(s.notifications) == 4, timeout=60
        )
        await handle.signal("resolve", IncidentAnswer(by="tests"))
        await asyncio.wait_for(handle.result(), 60)
    by_channel = {(n.event.value, n.channel, n.tier): n for n in status.notifications}
    assert by_channel[("trigger", "tier1", 1)].status == "sent"
    dead = by_channel[("trigger", "dead", 1)]
    assert dead.status == "failed" and dead.error.startswith("transient")
    # the escalations went out on time, the dead channel recorded, not raised
    escalated = sorted(offset(status, n.at) for n in status.notifications if n.event.value == "escalate")
    assert timedelta(hours=1) <= escalated[0] < timedelta(hours=1, minutes=1)
    assert timedelta(hours=4) <= escalated[1] < timedelta(hours=4, minutes=1)
    assert [e.why for e in status.escalations] == ["ack_deadline", "resolve_deadline"]
    assert status.tier == 2, "past the last tier, the last tier is paged again"


async def test_p4_pages_nobody_and_sends_a_summary_each_day_while_unresolved(
    skipping_env: WorkflowEnvironment, task_queue: str, tmp_path: Path, slack: dict[str, SlackStandin],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = write_routing(tmp_path / "p4.yaml", {"tier1": slack["tier1"].webhook_url}, {"P4": [["tier1"]]})
    monkeypatch.setenv("SECFLOW_ALERTS_CONFIG", str(path))
    ref = make_ref(Severity.P4)
    async with incident_worker(skipping_env.client, task_queue):
        with skipping_env.with_time_skipping_disabled():
            handle = await skipping_env.client.start_workflow("IncidentWorkflow", ref, id=ref.incident_id, task_queue=task_queue)
        await wait_incident(handle, lambda s: s.plan is not None)
        assert await skipping_env.fast_forward(handle, timedelta(hours=23))
        assert (await incident_of(handle)).notifications == [], "P4: no page"
        assert await skipping_env.fast_forward(handle, timedelta(hours=26))
        status = await wait_incident(handle, lambda s: len(s.notifications) == 2)
        await handle.execute_update("resolve", IncidentAnswer(by="tests"), result_type=str)
        final = IncidentStatus.model_validate(await asyncio.wait_for(handle.result(), 30))
    summaries = [offset(status, n.at) for n in status.notifications]
    assert [n.event.value for n in status.notifications] == ["summary", "summary"]
    assert timedelta(hours=24) <= summaries[0] < timedelta(hours=24, minutes=1)
    assert timedelta(hours=48) <= summaries[1] < timedelta(hours=48, minutes=1)
    assert status.escalations == []
    assert [n.event.value for n in final.notifications][-1] == "resolve"


# ---------------------------------------------------------------------------------- assessments


def failing_wait_spec(url: str):
    return make_spec(
        [{"url": url}],
        [{"id": "flaky", "kind": "dast", "tool": "http_headers", "on_failure": "await_approval",
          "retry": {"max_attempts": 1}}],
    )


async def test_the_same_failure_twice_is_one_incident_with_two_occurrences(client: Client, incident_queue: str) -> None:
    handle = await start(client, failing_wait_spec(f"http://127.0.0.1:{closed_port()}/"), incident_queue)
    waiting = await wait_for(handle, lambda s: s.awaiting == ["flaky"] and bool(s.incidents))
    (incident_id,) = waiting.incidents
    incident = client.get_workflow_handle(incident_id, result_type=IncidentStatus)
    first = await wait_incident(incident, lambda s: s.notifications != [])
    assert first.severity == Severity.P2 and first.reason == "intervention_wait" and first.occurrences == 1
    assert f"{guidance.CLI} retry {handle.id} flaky" in first.commands
    assert f"{guidance.CLI} incidents ack {incident_id} --by you" in first.commands

    # retried while still broken: it fails and waits again -> the same incident, once more
    await handle.execute_update("retry_stage", Decision(stage="flaky", by="dave"), result_type=str)
    again = await wait_for(handle, lambda s: s.awaiting == ["flaky"] and s.stages["flaky"].attempts == 2)
    assert again.incidents == [incident_id]
    second = await wait_incident(incident, lambda s: s.occurrences == 2)
    assert second.state.value == "open"
    assert [n.event.value for n in second.notifications] == ["trigger"], "a recurrence pages nobody again"

    # the human skips: the wait is over, the incident is resolved by secflow, the task is parked
    await handle.execute_update("skip_stage", Decision(stage="flaky", by="dave"), result_type=str)
    status = await final_status(handle)
    assert status.outcome == "completed_with_errors" and status.incidents == [incident_id]
    done = await asyncio.wait_for(incident.result(), 30)
    assert done.resolved_by == "secflow" and "skip by dave" in done.resolution_note
    parked = list_dead_letters(open_store(), workflow_id=handle.id)
    assert [(d.stage_id, d.reason, d.category) for d in parked] == [("flaky", "retries_exhausted", "transient")]


async def test_a_stage_retried_successfully_resolves_its_incident(client: Client, incident_queue: str) -> None:
    state = {"healthy": False}
    target = ScriptedServer(lambda n, path: Reply(200, GOOD_HEADERS) if state["healthy"] else Reply(500))
    try:
        handle = await start(client, failing_wait_spec(target.url), incident_queue)
        waiting = await wait_for(handle, lambda s: s.awaiting == ["flaky"] and bool(s.incidents))
        incident = client.get_workflow_handle(waiting.incidents[0], result_type=IncidentStatus)
        await wait_incident(incident, lambda s: s.notifications != [])
        state["healthy"] = True
        await handle.execute_update("retry_stage", Decision(stage="flaky", by="erin"), result_type=str)
        status = await final_status(handle)
        done = await asyncio.wait_for(incident.result(), 30)
    finally:
        target.close()
    assert status.outcome == "completed" and status.stages["flaky"].state == "succeeded"
    assert done.state.value == "resolved" and done.resolved_by == "secflow"
    assert "flaky succeeded" in done.resolution_note
    assert [(n.event.value, n.channel) for n in done.notifications] == [("trigger", "tier1"), ("resolve", "tier1")]
    assert list_dead_letters(open_store(), workflow_id=handle.id) == [], "recovered: nothing is dead"


async def test_security_violation_opens_a_p1_and_parks_a_dead_letter(
    client: Client, incident_queue: str, slack: dict[str, SlackStandin]
) -> None:
    planted = "hunter2-ZZsecretZZ"
    outside = ScriptedServer([Reply(200, GOOD_HEADERS)])
    redirector = ScriptedServer([Reply(302, {"Location": f"http://admin:{planted}@localhost:{outside.port}/?api_key={planted}"})])
    before = len(slack["tier1"].received)
    try:
        spec = make_spec([{"url": redirector.url}], [{"id": "headers", "kind": "dast", "tool": "http_headers"}],
                         scope={"allow": [redirector.url]})
        handle = await start(client, spec, incident_queue)
        status = await final_status(handle)
    finally:
        outside.close()
        redirector.close()
    assert status.outcome == "failed" and status.stages["headers"].error.category == "security"
    (incident_id,) = status.incidents
    incident = client.get_workflow_handle(incident_id, result_type=IncidentStatus)
    p1 = await wait_incident(incident, lambda s: s.notifications != [])
    assert p1.severity == Severity.P1 and p1.reason == "security_violation" and p1.state.value == "open"
    assert p1.stage_id == "headers" and p1.assessment_id == handle.id
    assert p1.notifications[0].channel == "tier1" and p1.notifications[0].status == "sent"
    desc = await incident.describe()
    sa = {p.key.name: p.value for p in desc.typed_search_attributes}
    assert (sa["SecflowIncidentSeverity"], sa["SecflowIncidentState"]) == ("P1", "open")
    (entry,) = list_dead_letters(open_store(), workflow_id=handle.id)
    assert (entry.reason, entry.category, entry.stage_id, entry.target) == ("security_violation", "security", "headers", redirector.url)
    assert entry.replay is not None and entry.replay.stage["id"] == "headers" and entry.replay.target == {"url": redirector.url}
    assert entry.replay.scope == [redirector.url] and entry.replay.task_queue == incident_queue
    # the planted secret reached neither the incident, nor the DLQ, nor Slack
    sent = [r.body.decode() for r in slack["tier1"].received[before:]]
    assert sent and all(planted not in body for body in sent)
    assert planted not in p1.model_dump_json() and planted not in entry.message
    await incident.signal("resolve", IncidentAnswer(by="tests"))


async def test_failed_required_stage_opens_a_p2_after_the_assessment_ends(client: Client, incident_queue: str) -> None:
    spec = make_spec(
        [{"url": f"http://127.0.0.1:{closed_port()}/"}],
        [{"id": "broken", "kind": "dast", "tool": "http_headers", "retry": {"max_attempts": 1}},
         {"id": "report", "kind": "report", "always": True}],
    )
    handle = await start(client, spec, incident_queue)
    status = await final_status(handle)
    assert status.outcome == "failed"
    (incident_id,) = status.incidents
    incident = client.get_workflow_handle(incident_id, result_type=IncidentStatus)
    p2 = await wait_incident(incident, lambda s: s.notifications != [])
    assert (p2.severity, p2.reason, p2.state.value) == (Severity.P2, "required_stage_failed", "open")
    assert (await incident.describe()).status.name == "RUNNING", "the incident outlives its assessment"
    shown = await starter("status", handle.id)
    assert shown.returncode == 0 and f"incidents: {incident_id}" in shown.stdout, shown.stdout + shown.stderr
    await incident.signal("resolve", IncidentAnswer(by="tests"))


async def test_failed_compensation_opens_a_p2_and_parks_it_and_the_abort_resolves_the_gate_incident(
    client: Client, incident_queue: str
) -> None:
    target = ScriptedServer([Reply(200, GOOD_HEADERS)])
    try:
        spec = make_spec([{"url": target.url}], [{"id": "headers", "kind": "dast", "tool": "http_headers", "requires_approval": True}])
        handle = await start(client, spec, incident_queue)
        waiting = await wait_for(handle, lambda s: s.awaiting == ["headers"] and bool(s.incidents))
        (gate_id,) = waiting.incidents
        gate = client.get_workflow_handle(gate_id, result_type=IncidentStatus)
        gate_open = await wait_incident(gate, lambda s: s.plan is not None)
        assert (gate_open.reason, gate_open.severity, gate_open.category) == ("intervention_wait", Severity.P2, "approval")
        assert f"{guidance.CLI} approve {handle.id} headers" in gate_open.commands
        workspace = waiting.workspace
        os.rmdir(workspace)
        Path(workspace).write_text("not a directory")  # removing the workspace now fails for real
        await handle.execute_update("abort", Decision(by="ivan"), result_type=str)
        status = await final_status(handle)
    finally:
        target.close()
        if os.path.isfile(workspace):
            os.remove(workspace)
    assert {c.name: c.state for c in status.compensations}["remove workspace"] == "failed"
    gate_done = await asyncio.wait_for(gate.result(), 30)
    assert gate_done.resolved_by == "secflow" and "aborted by ivan" in gate_done.resolution_note
    (comp_id,) = [i for i in status.incidents if i != gate_id]
    comp = await wait_incident(client.get_workflow_handle(comp_id), lambda s: s.plan is not None)
    assert (comp.reason, comp.severity, comp.state.value) == ("compensation_failed", Severity.P2, "open")
    assert "remove workspace" in comp.message and "manual cleanup" in comp.message
    (entry,) = list_dead_letters(open_store(), workflow_id=handle.id)
    assert (entry.reason, entry.tool, entry.target, entry.replay) == ("compensation_failed", "remove_workspace", "remove workspace", None)
    assert entry.category == "permanent"
    # the assessment ended (cancelled): the incident stays open and points at its entry
    ended = await wait_incident(client.get_workflow_handle(comp_id), lambda s: s.assessment_outcome == "cancelled")
    assert ended.state.value == "open"
    assert f"{guidance.CLI} dlq show {ref_for(entry.task_id)}" in ended.commands, ended.commands
    assert not any(" retry " in c or " approve " in c for c in ended.commands)
    await client.get_workflow_handle(comp_id).signal("resolve", IncidentAnswer(by="tests"))


# ---------------------------------------------------------------------------------- answers and the CLI


async def test_answers_by_temporal_cli_and_starter_and_bad_payloads_change_nothing(
    client: Client, incident_queue: str, server: DevServer
) -> None:
    ref = make_ref(Severity.P3)
    handle = await client.start_workflow("IncidentWorkflow", ref, id=ref.incident_id, task_queue=incident_queue, result_type=IncidentStatus)
    await wait_incident(handle, lambda s: s.notifications != [])

    # bad payloads by signal: recorded as not accepted, state unchanged
    for payload in ('{"who": "mallory"}', '{"by": ""}', '"alice"'):
        out = await asyncio.to_thread(
            server.cli, "workflow", "signal", "--workflow-id", ref.incident_id, "--name", "ack", "--input", payload, check=False
        )
        assert out.returncode == 0, out.stderr
    no_payload = await asyncio.to_thread(server.cli, "workflow", "signal", "--workflow-id", ref.incident_id, "--name", "resolve", check=False)
    assert no_payload.returncode == 0, no_payload.stderr
    status = await wait_incident(handle, lambda s: len(s.answers) == 4)
    assert status.state.value == "open" and not status.acknowledged_by
    problems = [a.problem for a in status.answers]
    assert all(not a.accepted for a in status.answers)
    assert "who: unknown field" in problems[0] and problems[0].startswith("by: ")
    assert problems[1].startswith("by: ") and "at least 1 character" in problems[1]
    assert "expected a JSON object" in problems[2] and "missing payload" in problems[3]

    # the starter: bad id -> 2, bad --by -> 2, unknown incident -> 1, nothing changed
    bad_id = await starter("incidents", "ack", "not-an-incident")
    assert bad_id.returncode == 2 and "not an incident id" in bad_id.stderr
    bad_by = await starter("incidents", "ack", ref.incident_id, "--by", "")
    assert bad_by.returncode == 2 and "--by" in bad_by.stderr
    unknown = await starter("incidents", "ack", "incident-" + "0" * 32)
    assert unknown.returncode == 1 and "no incident with id" in unknown.stderr

    # ack by the starter (a validated update); a second ack is refused, exit 1
    ack = await starter("incidents", "ack", ref.incident_id, "--by", "bob", "--note", "on it")
    assert ack.returncode == 0, ack.stderr
    assert "acknowledged by bob" in ack.stdout
    again = await starter("incidents", "ack", ref.incident_id, "--by", "bob")
    assert again.returncode == 1 and "already acknowledged by bob" in again.stderr
    shown = await starter("incidents", "show", ref.incident_id, "--json")
    assert shown.returncode == 0, shown.stderr
    record = IncidentStatus.model_validate_json(shown.stdout)
    assert record.state.value == "acknowledged" and record.acknowledged_by == "bob"
    assert [a.via for a in record.answers if a.accepted] == ["update"]

    # resolve by the temporal CLI (what tctl users type), then the starter says it has ended
    out = await asyncio.to_thread(
        server.cli, "workflow", "signal", "--workflow-id", ref.incident_id, "--name", "resolve",
        "--input", '{"by": "carol", "note": "fixed the scanner"}',
    )
    assert out.returncode == 0, out.stderr
    final = await asyncio.wait_for(handle.result(), 30)
    assert final.resolved_by == "carol" and final.resolution_note == "fixed the scanner"
    assert [n.event.value for n in final.notifications] == ["trigger", "acknowledge", "resolve"]
    late = await starter("incidents", "resolve", ref.incident_id, "--by", "dave")
    assert late.returncode == 1 and "has ended" in late.stderr
    shown = await starter("incidents", "show", ref.incident_id)
    assert shown.returncode == 0 and "resolved by carol" in shown.stdout


async def test_incidents_list_reads_the_state_search_attribute(client: Client, incident_queue: str) -> None:
    refs = [make_ref(Severity.P3), make_ref(Severity.P2)]
    handles = [
        await client.start_workflow("IncidentWorkflow", r, id=r.incident_id, task_queue=incident_queue, result_type=IncidentStatus)
        for r in refs
    ]
    for h in handles:
        await wait_incident(h, lambda s: s.notifications != [])
    await handles[1].execute_update("ack", IncidentAnswer(by="alice"), result_type=str)

    async def listed(state: str) -> dict[str, dict]:
        out = await starter("incidents", "list", "--state", state, "--json")
        assert out.returncode == 0, out.stderr
        return {row["incident_id"]: row for row in json.loads(out.stdout)}

    async def eventually(state: str, predicate) -> dict[str, dict]:
        deadline = time.monotonic() + 20
        while True:  # visibility is eventually consistent
            rows = await listed(state)
            if predicate(rows) or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(0.3)

    ids = [r.incident_id for r in refs]
    rows = await eventually("open", lambda r: ids[0] in r)
    assert ids[0] in rows and ids[1] not in rows
    assert rows[ids[0]]["severity"] == "P3" and rows[ids[0]]["state"] == "open"
    rows = await eventually("acknowledged", lambda r: ids[1] in r)
    assert rows[ids[1]]["state"] == "acknowledged" and ids[0] not in rows
    active = await eventually("active", lambda r: set(ids) <= set(r))
    assert set(ids) <= set(active)

    for h in handles:
        await h.signal("resolve", IncidentAnswer(by="tests"))
        await asyncio.wait_for(h.result(), 30)
    rows = await eventually("resolved", lambda r: set(ids) <= set(r))
    assert {rows[i]["state"] for i in ids} == {"resolved"}
    assert ids[0] not in await listed("active")
    bad = await starter("incidents", "list", "--state", "closed")
    assert bad.returncode == 2


async def test_a_recurrence_during_the_resolve_reopens_the_incident_as_a_new_run(
    client: Client, incident_queue: str, slack: dict[str, SlackStandin]
) -> None:
    """The problem comes back while the resolve messages are still going out: the
    occurrence is not lost, the same incident id opens again in a fresh run."""
    from temporalio.client import WorkflowExecutionStatus

    from secflow.incidents import Recurrence
    from tests.alert_standins import Fault

    ref = make_ref(Severity.P3)
    handle = await client.start_workflow("IncidentWorkflow", ref, id=ref.incident_id, task_queue=incident_queue, result_type=IncidentStatus)
    first_run = handle.result_run_id
    await wait_incident(handle, lambda s: [n.status for n in s.notifications] == ["sent"])
    tier1 = slack["tier1"]
    seen = len(tier1.received)
    tier1.faults.append(Fault.hang(3.0))  # the resolve message hangs: a window for the recurrence
    try:
        await handle.signal("resolve", IncidentAnswer(by="carol", note="fixed"))
        deadline = time.monotonic() + 15
        while len(tier1.received) == seen and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(tier1.received) > seen, "the resolve message reached the channel"
        await handle.signal("recur", Recurrence(message="it failed again", occurrence_id="occ-2"))
        latest = client.get_workflow_handle(ref.incident_id, result_type=IncidentStatus)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            desc = await latest.describe()
            if desc.run_id != first_run and desc.status == WorkflowExecutionStatus.RUNNING:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("no new run of the incident")
        reopened = await wait_incident(latest, lambda s: [n.event.value for n in s.notifications] == ["trigger"] and s.notifications[0].status == "sent")
    finally:
        tier1.faults.clear()
    assert reopened.state.value == "open" and reopened.occurrences == 1
    assert reopened.message == "it failed again"
    # the first run told tier 1 it was resolved (after its retry) and then handed over
    first = client.get_workflow_handle(ref.incident_id, run_id=first_run)
    assert (await first.describe()).status == WorkflowExecutionStatus.CONTINUED_AS_NEW
    await latest.signal("resolve", IncidentAnswer(by="carol", note="really fixed"))
    final = await asyncio.wait_for(latest.result(), 30)
    assert final.resolved_by == "carol"
