"""The classifier's reason in the error ledger and the DLQ; `@classified` failures in the ledger.

Against a real dev server: a `@classified` activity (create_workspace) fails for real (a
file stands where its directory must go), and an assessment whose stage fails parks a
dead-letter entry that carries the reason, which `dlq list/show` print.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from activities.registry import ALL_ACTIVITIES
from activities.resources import create_workspace
from secflow.dead_letters import DeadLetterInput, dead_letter_task_id, get_dead_letter, park, ref_for
from secflow.errors import classify
from secflow.models import AssessmentStatus, WorkspaceRequest
from secflow.settings import load_settings
from secflow.store import ErrorEvent, FindingsStore, open_store
from tests.helpers import final_status, make_spec, start
from tests.pg import pg_server  # noqa: F401  (pytest fixture)
from tests.servers import closed_port
from tests.support_classified_workflow import ClassifiedFailureWorkflow, ClassifiedOutcome
from worker import WORKFLOWS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(params=["sqlite", "postgresql"])
def own_store(request: pytest.FixtureRequest, tmp_path) -> Iterator[FindingsStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        url = request.getfixturevalue("pg_server").create_database()
    store = FindingsStore(url)
    yield store
    store.close()


def _event(event_id: str, *, target: str, reason: str | None, at: datetime, stage: str = "headers") -> ErrorEvent:
    return ErrorEvent(
        event_id=event_id,
        assessment_id="a-1",
        stage_id=stage,
        target=target,
        tool="http_headers",
        attempt=1,
        category="transient",
        message="ConnectError: refused",
        retryable=True,
        occurred_at=at,
        reason=reason,
    )


def _entry(target: str, *, at: datetime, reason: str = "", stage: str = "headers") -> DeadLetterInput:
    return DeadLetterInput(
        task_id=dead_letter_task_id("a-1", "r-1", stage, target, "retries_exhausted"),
        workflow_id="a-1",
        run_id="r-1",
        stage_id=stage,
        target=target,
        tool="http_headers",
        reason="retries_exhausted",
        category="transient",
        message="refused",
        first_failure_at=at,
        last_failure_at=at,
        error_reason=reason,
    )


def test_reason_round_trips_and_the_dlq_takes_the_ledgers_latest(own_store: FindingsStore) -> None:
    store = own_store
    assert 12 in [v for v, _, _ in store.schema_versions()]
    t0 = datetime.now(UTC) - timedelta(minutes=5)
    assert store.record_error(_event("e1", target="http://a/", reason="ECONNREFUSED", at=t0))
    assert store.record_error(_event("e2", target="http://a/", reason="ReadTimeout", at=t0 + timedelta(seconds=1)))
    assert store.record_error(_event("e3", target="http://b/", reason=None, at=t0 + timedelta(seconds=2)))
    assert not store.record_error(_event("e1", target="http://a/", reason="changed", at=t0))  # idempotent
    assert {e.event_id: e.reason for e in store.list_errors("a-1")} == {"e1": "ECONNREFUSED", "e2": "ReadTimeout", "e3": None}

    # No reason given: the ledger's latest for the stage and target.
    park(store, _entry("http://a/", at=t0 + timedelta(seconds=3)))
    assert get_dead_letter(store, _entry("http://a/", at=t0).task_id).error_reason == "ReadTimeout"
    # A target whose events carry no reason: none is invented.
    park(store, _entry("http://b/", at=t0 + timedelta(seconds=3)))
    assert get_dead_letter(store, _entry("http://b/", at=t0).task_id).error_reason == ""
    # A stage-wide entry (no target) takes the stage's latest reason.
    park(store, _entry("", at=t0 + timedelta(seconds=3)))
    assert get_dead_letter(store, _entry("", at=t0).task_id).error_reason == "ReadTimeout"
    # The caller's reason wins; a newer failure of the same task refreshes it, an older one does not.
    park(store, _entry("http://a/", at=t0 + timedelta(seconds=4), reason="HTTP 503"))
    assert get_dead_letter(store, _entry("http://a/", at=t0).task_id).error_reason == "HTTP 503"
    park(store, _entry("http://a/", at=t0 + timedelta(seconds=1), reason="stale"))
    assert get_dead_letter(store, _entry("http://a/", at=t0).task_id).error_reason == "HTTP 503"


@pytest.fixture
async def ledger_worker(client: Client, task_queue: str) -> AsyncIterator[str]:
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[*WORKFLOWS, ClassifiedFailureWorkflow],
        activities=ALL_ACTIVITIES,
        graceful_shutdown_timeout=timedelta(seconds=2),
    ):
        yield task_queue


def _block_workspace(assessment_id: str) -> str:
    """A regular file where the assessment's workspace directory must go: mkdir fails for real."""
    path = load_settings().workspaces_dir / assessment_id
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a directory\n")
    return str(path)


async def test_classified_activity_failure_reaches_the_ledger_once(client: Client, ledger_worker: str) -> None:
    assessment_id = f"ws-{uuid.uuid4().hex[:8]}"
    blocker = _block_workspace(assessment_id)
    handle = await client.start_workflow(
        "TestClassifiedFailure",
        WorkspaceRequest(assessment_id=assessment_id),
        id=f"classified-{assessment_id}",
        task_queue=ledger_worker,
        result_type=ClassifiedOutcome,
    )
    outcome = await handle.result()
    try:
        os.mkdir(blocker)
    except FileExistsError as exc:
        expected = classify(exc)  # the same failure, classified here
    assert outcome.error_type == expected.category.value == "permanent"

    events = await asyncio.to_thread(open_store().list_errors, assessment_id)
    assert len(events) == 1, events  # permanent: one attempt, one event
    [event] = events
    run_id = (await handle.describe()).run_id
    assert event.event_id == f"{handle.id}/{run_id}/1/1"
    assert (event.tool, event.attempt, event.category, event.retryable) == ("create_workspace", 1, "permanent", False)
    assert event.reason == expected.reason and event.reason
    assert "File exists" in event.message

    # The same attempt recorded again (a worker recording twice) is still one event.
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, workflow_id=handle.id, workflow_run_id=run_id, activity_id="1", attempt=1, activity_type="create_workspace"
    )
    with pytest.raises(ApplicationError):
        await env.run(create_workspace, WorkspaceRequest(assessment_id=assessment_id))
    assert [e.event_id for e in await asyncio.to_thread(open_store().list_errors, assessment_id)] == [event.event_id]


async def test_classified_retry_that_succeeds_marks_the_earlier_attempt_recovered() -> None:
    assessment_id = f"ws-{uuid.uuid4().hex[:8]}"
    blocker = _block_workspace(assessment_id)
    env = ActivityEnvironment()
    first = dataclasses.replace(
        env.info,
        workflow_id=f"wf-{assessment_id}",
        workflow_run_id="run-1",
        activity_id="7",
        attempt=1,
        activity_type="create_workspace",
    )
    env.info = first
    with pytest.raises(ApplicationError):
        await env.run(create_workspace, WorkspaceRequest(assessment_id=assessment_id))
    os.remove(blocker)  # an operator clears the way; the next attempt works
    env.info = dataclasses.replace(first, attempt=2)
    await env.run(create_workspace, WorkspaceRequest(assessment_id=assessment_id))
    [event] = await asyncio.to_thread(open_store().list_errors, assessment_id)
    assert (event.event_id, event.outcome) == (f"wf-{assessment_id}/run-1/7/1", "recovered")


async def _starter(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "starter", *args], cwd=ROOT, env=dict(os.environ), capture_output=True, text=True
    )


async def test_dead_letter_entry_carries_the_classifiers_reason(client: Client, ledger_worker: str) -> None:
    port = closed_port()
    url = f"http://127.0.0.1:{port}/"
    spec = make_spec(
        [{"url": url}],
        [{"id": "headers", "kind": "dast", "tool": "http_headers", "retry": {"max_attempts": 2, "initial_interval": "100ms"}}],
    )
    handle = await start(client, spec, ledger_worker)
    failed = await final_status(handle)
    assert failed.stages["headers"].state == "failed"
    run_id = (await handle.describe()).run_id
    task_id = dead_letter_task_id(handle.id, run_id, "headers", url, "retries_exhausted")
    store = open_store()
    entry = await asyncio.to_thread(get_dead_letter, store, task_id)
    if entry is None:  # parked under another id by the workflow: find it by stage
        from secflow.dead_letters import list_dead_letters

        [entry] = [e for e in await asyncio.to_thread(list_dead_letters, store, workflow_id=handle.id) if e.stage_id == "headers"]
    ledger = [e for e in await asyncio.to_thread(store.list_errors, handle.id) if e.stage_id == "headers" and e.reason]
    assert ledger, "the tool's failures carry the classifier's reason"
    latest = max(ledger, key=lambda e: (e.occurred_at, e.event_id))
    assert entry.error_reason == latest.reason
    assert entry.category == latest.category == "transient"

    shown = await _starter("dlq", "show", ref_for(entry.task_id))
    assert shown.returncode == 0, shown.stderr
    assert f"why:            {latest.reason}" in shown.stdout
    listed = await _starter("dlq", "list", "--json")
    assert {e["task_id"]: e["error_reason"] for e in json.loads(listed.stdout)}[entry.task_id] == latest.reason
    text = await _starter("dlq", "list")
    assert f"why: {latest.reason}" in text.stdout
    assert isinstance(failed, AssessmentStatus)
