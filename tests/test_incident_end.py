"""Incidents that end: what the end of its assessment does to an incident, what it says
about who was told, and what the Web UI shows of assessments, incidents and activities.

Real dev server, real worker (every workflow and activity), a Slack stand-in on loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Replayer
from temporalio.service import RPCError, RPCStatusCode

from secflow import guidance
from secflow.dead_letters import find_dead_letter
from secflow.incidents import (
    AlertPlan,
    AssessmentEnded,
    IncidentEvent,
    IncidentState,
    IncidentStatus,
    Notification,
    Severity,
    delivery_summary,
    settles_at_end,
)
from secflow.store import open_store
from tests.alert_standins import SlackStandin
from tests.devserver import DevServer
from tests.helpers import final_status, make_spec, start
from tests.servers import closed_port
from tests.support_incident_worker import incident_worker, write_routing
from worker import WORKFLOWS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def slack() -> Iterator[SlackStandin]:
    standin = SlackStandin(path="/services/T0SECFLOW/B0END/hooksecret9")
    yield standin
    standin.close()


@pytest.fixture(autouse=True)
def routing(tmp_path: Path, slack: SlackStandin, monkeypatch: pytest.MonkeyPatch) -> Path:
    tiers = {sev: [["tier1"]] for sev in ("P1", "P2", "P3")}
    path = write_routing(tmp_path / "alerts.yaml", {"tier1": slack.webhook_url}, tiers)
    monkeypatch.setenv("SECFLOW_ALERTS_CONFIG", str(path))
    return path


@pytest.fixture
async def queue(client: Client, task_queue: str) -> AsyncIterator[str]:
    async with incident_worker(client, task_queue):
        yield task_queue


async def wait_incident(handle: WorkflowHandle, predicate, timeout: float = 30.0) -> IncidentStatus:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = await handle.query("incident", result_type=IncidentStatus)
        except RPCError as err:  # the assessment names the incident a moment before it starts
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            await asyncio.sleep(0.2)
            continue
        if predicate(last):
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"incident condition not reached; last: {last.model_dump_json(indent=1) if last else None}")


async def details_of(handle: WorkflowHandle) -> str:
    meta = await handle.query("__temporal_workflow_metadata")
    return meta.current_details if hasattr(meta, "current_details") else meta["currentDetails"]


def run_printed(command: str) -> subprocess.CompletedProcess[str]:
    """Run a command exactly as SecFlow printed it, from the project folder (`.venv/bin/secflow
    ...`); the test's own `python -m starter ...` lines run with this interpreter."""
    argv = shlex.split(command)
    if argv[:3] == ["python", "-m", "starter"]:
        argv = [sys.executable, *argv[1:]]
    else:
        assert argv[0] == guidance.CLI, command
    return subprocess.run(argv, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True)


async def test_a_skipped_optional_stage_resolves_its_incident_when_the_run_completes_with_errors(
    client: Client, queue: str, server: DevServer
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/"
    spec = make_spec(
        [{"url": url}],
        [{"id": "headers", "kind": "dast", "tool": "http_headers", "criticality": "optional", "on_failure": "skip",
          "retry": {"max_attempts": 1}}],
    )
    handle = await start(client, spec, queue)
    status = await final_status(handle)
    assert status.outcome == "completed_with_errors" and status.stages["headers"].state == "skipped"
    (incident_id,) = status.incidents
    incident = client.get_workflow_handle(incident_id, result_type=IncidentStatus)
    done = await asyncio.wait_for(incident.result(), 30)
    assert (done.severity, done.reason) == (Severity.P3, "retries_exhausted")
    assert done.state == IncidentState.RESOLVED and done.resolved_by == "secflow"
    assert done.resolution_note.startswith("lived with: the assessment ended completed_with_errors")
    assert done.assessment_outcome == "completed_with_errors"
    assert [a.action for a in done.answers if a.accepted][-2:] == ["assessment_ended", "resolve"]

    # The Web UI: the assessment's and the incident's static summary and details...
    desc = await handle.describe()
    assert await desc.static_summary() == "test: 1 target, 1 stages"
    details = await desc.static_details() or ""
    assert "`headers`: dast with http-headers (optional)" in details and "1 url" in details
    assert url not in details, "no target names in the run's metadata"
    idesc = await incident.describe()
    assert (await idesc.static_summary() or "").startswith("P3 incident: stage headers was skipped after its retries")
    assert f"assessment `{handle.id}`, stage `headers`" in (await idesc.static_details() or "")
    shown = await asyncio.to_thread(server.cli, "workflow", "describe", "--workflow-id", handle.id)
    # The summary is a payload like any other, so the codec encrypts it: without
    # --codec-endpoint the CLI shows ciphertext (the Web UI decodes it through the codec
    # server, tests/test_webui_codec.py), and the SDK above decoded it.
    assert shown.returncode == 0 and "test: 1 target, 1 stages" not in shown.stdout, shown.stdout
    # ... and each tool activity's summary in the history (the Timeline's row label)
    summaries = []
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED and event.HasField("user_metadata"):
            (summary,) = await client.data_converter.decode([event.user_metadata.summary], [str])  # encrypted like any payload
            summaries.append(summary)
    assert f"http-headers {url}" in summaries, summaries


async def test_a_failed_required_stage_keeps_its_incident_open_with_commands_that_work_after_the_end(
    client: Client, queue: str
) -> None:
    spec = make_spec(
        [{"url": f"http://127.0.0.1:{closed_port()}/"}],
        [{"id": "broken", "kind": "dast", "tool": "http_headers", "retry": {"max_attempts": 1}}],
    )
    handle = await start(client, spec, queue)
    status = await final_status(handle)
    assert status.outcome == "failed"
    (incident_id,) = status.incidents
    incident = client.get_workflow_handle(incident_id, result_type=IncidentStatus)
    record = await wait_incident(incident, lambda s: s.assessment_outcome == "failed" and bool(s.notifications))
    assert record.state == IncidentState.OPEN and record.severity == Severity.P2
    assert not any(" retry " in c for c in record.commands), record.commands
    (replay,) = [c for c in record.commands if " dlq replay " in c]
    words = shlex.split(replay)
    ref = words[words.index("replay") + 1]
    entry = find_dead_letter(open_store(), ref)
    assert entry is not None and (entry.workflow_id, entry.stage_id) == (handle.id, "broken")

    # the printed commands run as printed
    listed = await asyncio.to_thread(run_printed, next(c for c in record.commands if " dlq list " in c))
    assert listed.returncode == 0 and ref in listed.stdout, listed.stdout + listed.stderr
    details = await details_of(incident)
    assert "P2 open, tier 1 notified (tier1)" in details and "its assessment ended failed" in details
    assert f"Now: `{replay}`" in details
    shown = await asyncio.to_thread(run_printed, f"python -m starter incidents show {incident_id}")
    assert "tier 1 notified (tier1)" in shown.stdout and "(ended failed)" in shown.stdout, shown.stdout
    assert replay in shown.stdout

    # the list names the assessment and the stage next to the id
    deadline = time.monotonic() + 20
    while True:
        out = await asyncio.to_thread(run_printed, "python -m starter incidents list --state open")
        row = next((line for line in out.stdout.splitlines() if incident_id in line), "")
        if row or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.3)
    assert out.stdout.startswith("SEV STATE"), out.stdout
    assert row.split()[:4] == ["P2", "open", handle.id, "broken"], row
    await incident.signal("resolve", {"by": "tests"})

    # the run's own history (with the end-of-assessment signal and its patch marker)
    # replays against today's code, as a worker restart would replay it
    history = await handle.fetch_history()
    kinds = [e.event_type for e in history.events]
    assert EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED in kinds
    replayer = Replayer(workflows=WORKFLOWS, data_converter=client.data_converter)
    assert (await replayer.replay_workflow(history, raise_on_replay_failure=True)).replay_failure is None


def _status(**update) -> IncidentStatus:
    base = IncidentStatus(
        incident_id="incident-" + "a" * 32, dedup_key="a" * 32, severity=Severity.P2, state=IncidentState.OPEN,
        reason="required_stage_failed", title="t", category="transient", message="m", assessment_id="a", workflow_id="a",
        tier=1, plan=AlertPlan(severity=Severity.P2, tiers=[["slack"], ["pager"]]),
    )
    return base.model_copy(update=update)


def _sent(channel: str, status: str, error: str = "") -> Notification:
    return Notification(at=datetime.now(UTC), event=IncidentEvent.TRIGGER, tier=1, channel=channel, sequence=1,
                        status=status, error=error)  # type: ignore[arg-type]


def test_notified_is_said_only_when_a_channel_accepted_the_message() -> None:
    assert delivery_summary(_status(plan=AlertPlan(severity=Severity.P2))) == "nobody notified: no channel configured"
    assert delivery_summary(_status(plan=None)).startswith("nobody notified yet")
    assert delivery_summary(_status()) == "notifying tier 1"
    failed = _status(notifications=[_sent("slack", "failed", "transient: connection refused")])
    assert delivery_summary(failed) == "tier 1 delivery failed (slack: transient: connection refused)"
    assert delivery_summary(_status(notifications=[_sent("slack", "capped")])) == "tier 1 not notified (slack: capped)"
    assert delivery_summary(_status(notifications=[_sent("slack", "sent")])) == "tier 1 notified (slack)"


@pytest.mark.parametrize(
    ("reason", "severity", "outcome", "resolves"),
    [
        ("retries_exhausted", Severity.P3, "completed_with_errors", True),
        ("retries_exhausted", Severity.P3, "failed", False),  # the run did not finish: look at it
        ("retries_exhausted", Severity.P2, "completed_with_errors", False),  # a required stage skipped
        ("intervention_wait", Severity.P2, "cancelled", True),  # nothing left to answer
        ("required_stage_failed", Severity.P2, "failed", False),
        ("security_violation", Severity.P1, "failed", False),
        ("compensation_failed", Severity.P2, "completed", False),
    ],
)
def test_the_end_of_the_assessment_resolves_only_what_was_lived_with(
    reason: str, severity: Severity, outcome: str, resolves: bool
) -> None:
    ended = AssessmentEnded(assessment_id="a", outcome=outcome, stage_state="skipped")
    assert bool(settles_at_end(reason, severity, ended)) is resolves


async def test_a_stage_shard_carries_a_static_summary(client: Client, queue: str) -> None:
    """Past INLINE_TARGETS a stage round runs as a StageTargets child: its Web UI row says
    which assessment, stage, tool and round it is."""
    from secflow.models import INLINE_TARGETS
    from tests.servers import GOOD_HEADERS, Reply, ScriptedServer

    target = ScriptedServer([Reply(200, GOOD_HEADERS)])
    try:
        urls = [{"url": f"{target.url}p{i}"} for i in range(INLINE_TARGETS + 1)]
        spec = make_spec(urls, [{"id": "headers", "kind": "dast", "tool": "http-headers"}])
        handle = await start(client, spec, queue)
        status = await final_status(handle)
    finally:
        target.close()
    assert status.outcome == "completed"
    child = client.get_workflow_handle(f"{handle.id}/headers/round-1")
    assert await (await child.describe()).static_summary() == "test: stage headers, http-headers round 1"


async def test_an_incident_without_a_channel_or_with_a_refusing_one_does_not_say_notified(
    client: Client, task_queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.alert_standins import Fault
    from tests.support_incident_worker import make_ref

    refusing = SlackStandin(path="/services/T0SECFLOW/B0REFUSE/hooksecret7", faults=[Fault(status=403, body="invalid_token")])
    try:
        path = write_routing(tmp_path / "sparse.yaml", {"refusing": refusing.webhook_url}, {"P1": [["refusing"]]})
        monkeypatch.setenv("SECFLOW_ALERTS_CONFIG", str(path))  # P3: no route, so no channel
        async with incident_worker(client, task_queue):
            quiet, paged = make_ref(Severity.P3), make_ref(Severity.P1)
            handles = [await client.start_workflow("IncidentWorkflow", r, id=r.incident_id, task_queue=task_queue)
                       for r in (quiet, paged)]
            await wait_incident(handles[0], lambda s: s.plan is not None)
            await wait_incident(handles[1], lambda s: [n.status for n in s.notifications] == ["failed"])
            texts = [await details_of(h) for h in handles]
            shown = await asyncio.to_thread(run_printed, f"python -m starter incidents show {paged.incident_id}")
            asked = len(refusing.received)
            for h in handles:
                await h.signal("resolve", {"by": "tests"})
                await asyncio.wait_for(h.result(), 30)
    finally:
        refusing.close()
    assert asked == 1, "the channel was asked once (a 403 is not retried) and refused"
    assert texts[0].startswith("P3 open, nobody notified: no channel configured. "), texts[0]
    assert texts[1].startswith("P1 open, tier 1 delivery failed (refusing: permanent"), texts[1]
    assert "notified (" not in texts[1]
    assert "tier 1 delivery failed (refusing: permanent" in shown.stdout, shown.stdout + shown.stderr
