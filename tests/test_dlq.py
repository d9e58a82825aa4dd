"""The dead-letter queue: parking (idempotent, redacted), the `dlq` commands, real replays."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta, timezone

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from activities.registry import ALL_ACTIVITIES
from secflow.dead_letters import (
    DeadLetterInput,
    ReplayRecipe,
    counts_by_state,
    dead_letter_task_id,
    get_dead_letter,
    list_dead_letters,
    mark_replayed,
    mark_replaying,
    purge,
    ref_for,
    restore_replay_state,
)
from secflow.error_stats import compute_stats, load_dead_letter_marks, load_error_rows, resolve_recovered
from secflow.models import AssessmentStatus
from secflow.spec import Spec
from secflow.store import ErrorEvent, FindingsStore, open_store
from worker import WORKFLOWS
from tests.helpers import final_status, make_spec, start, wait_for
from tests.pg import pg_server  # noqa: F401  (pytest fixture)
from tests.servers import GOOD_HEADERS, Reply, ScriptedServer, closed_port
from tests.support_dlq_target import TargetOnPort
from tests.support_dlq_workflow import ParkDeadLettersWorkflow, ParkRequest, ParkResults

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"


@pytest.fixture
async def dlq_worker(client: Client, task_queue: str) -> AsyncIterator[str]:
    """SecFlow's workflows and activities plus the test-only parking workflow."""
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[*WORKFLOWS, ParkDeadLettersWorkflow],
        activities=ALL_ACTIVITIES,
        graceful_shutdown_timeout=timedelta(seconds=2),
    ):
        yield task_queue


async def starter(*args: str) -> subprocess.CompletedProcess[str]:
    """The starter CLI in a thread: the in-process worker shares this event loop."""
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "starter", *args], cwd=ROOT, env=dict(os.environ), capture_output=True, text=True
    )


async def park(client: Client, queue: str, *entries: DeadLetterInput) -> ParkResults:
    return await client.execute_workflow(
        "TestParkDeadLetters", ParkRequest(entries=list(entries)), id=f"park-{uuid.uuid4().hex[:8]}",
        task_queue=queue, result_type=ParkResults,
    )


def entry_for(spec: Spec, status: AssessmentStatus, run_id: str, stage_id: str, queue: str, *, message: str,
              at: datetime | None = None, attempts: int = 2) -> DeadLetterInput:
    """What the assessment workflow parks for a stage that exhausted its retries."""
    stage = spec.stage(stage_id)
    target = spec.targets_for(stage.tool_name)[0]
    at = at or datetime.now(timezone.utc)
    return DeadLetterInput(
        task_id=dead_letter_task_id(status.workflow_id, run_id, stage_id, target.value, "retries_exhausted"),
        workflow_id=status.workflow_id,
        run_id=run_id,
        stage_id=stage_id,
        target=target.value,
        tool=stage.tool_name,
        reason="retries_exhausted",
        category="transient",
        message=message,
        attempts=attempts,
        first_failure_at=at - timedelta(seconds=1),
        last_failure_at=at,
        replay=ReplayRecipe(
            spec_name=spec.name,
            scope=list(spec.scope.allow),
            stage=stage.model_dump(mode="json", exclude_defaults=True),
            target=target.model_dump(mode="json", exclude_none=True),
            task_queue=queue,
        ),
    )


def synthetic_entry(queue: str, *, message: str = "boom", at: datetime | None = None, attempts: int = 1) -> DeadLetterInput:
    spec = make_spec([{"url": "http://127.0.0.1:9/"}], [{"id": "headers", "kind": "dast", "tool": "http_headers"}])
    wid = f"wf-{uuid.uuid4().hex[:8]}"
    status = AssessmentStatus(workflow_id=wid, name="test", status="failed")
    return entry_for(spec, status, "run-1", "headers", queue, message=message, at=at, attempts=attempts)


# --- parking -------------------------------------------------------------------------------


async def test_park_twice_is_one_entry_and_the_message_is_redacted(client: Client, dlq_worker: str) -> None:
    t0 = datetime.now(timezone.utc).replace(microsecond=0)
    first = synthetic_entry(dlq_worker, message=f"GET failed: Authorization: Bearer {SECRET} token={SECRET}", at=t0)
    retried = first.model_copy()  # the very same input again: a retried activity
    later = first.model_copy(update={"last_failure_at": t0 + timedelta(minutes=5), "attempts": 4, "message": "failed again"})
    stale = first.model_copy(update={"last_failure_at": t0 - timedelta(minutes=5), "attempts": 1})

    results = await park(client, dlq_worker, first, retried, later, stale)

    assert [r.created for r in results.results] == [True, False, False, False]
    rows = list_dead_letters(open_store(), workflow_id=first.workflow_id)
    assert len(rows) == 1
    row = rows[0]
    assert row.task_id == first.task_id and row.state == "parked"
    assert row.first_failure_at == first.first_failure_at
    assert row.last_failure_at == t0 + timedelta(minutes=5), "moves forward, never back"
    assert row.attempts == 4
    assert row.message == "failed again"
    assert row.replay is not None and row.replay.stage["id"] == "headers"


async def test_planted_secret_is_not_stored(client: Client, dlq_worker: str) -> None:
    entry = synthetic_entry(dlq_worker, message=f"https://admin:{SECRET}@127.0.0.1/ refused; api_key={SECRET}")
    await park(client, dlq_worker, entry)
    stored = get_dead_letter(open_store(), entry.task_id)
    assert stored is not None
    assert SECRET not in stored.message and "[REDACTED]" in stored.message
    assert "127.0.0.1" in stored.message  # what is not secret stays readable


@pytest.fixture(params=["sqlite", "postgresql"])
def own_store(request: pytest.FixtureRequest, tmp_path) -> Iterator[FindingsStore]:
    """A store of the test's own, on both backends (the SQL must be portable)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'dlq.db'}"
    else:
        url = request.getfixturevalue("pg_server").create_database()
    store = FindingsStore(url)
    yield store
    store.close()


def test_replayed_entry_parked_again_is_reopened_and_purge_keeps_unreplayed(own_store: FindingsStore) -> None:
    store = own_store
    from secflow.dead_letters import park as park_fn

    t0 = datetime.now(timezone.utc) - timedelta(days=10)
    a = synthetic_entry("q", at=t0)
    b = synthetic_entry("q", at=t0)
    park_fn(store, a)
    park_fn(store, b)
    assert mark_replaying(store, a.task_id, "x-replay-1", claim=True)
    assert not mark_replaying(store, a.task_id, "x-replay-2", claim=True), "a second concurrent replay is refused"
    before_claim = get_dead_letter(store, b.task_id)
    assert mark_replaying(store, b.task_id, "b-replay-9", claim=True)
    assert restore_replay_state(store, before_claim, "b-replay-9")  # its start failed: put it back
    assert get_dead_letter(store, b.task_id) == before_claim
    assert not mark_replayed(store, a.task_id, "completed", "some-other-replay"), "only the replay it points at"
    assert mark_replayed(store, a.task_id, "completed", "x-replay-1")
    # b was replayed in place and failed again: the workflow parks it again, later.
    assert mark_replaying(store, b.task_id, b.workflow_id)
    park_fn(store, b.model_copy(update={"last_failure_at": t0 + timedelta(minutes=1)}))
    again = get_dead_letter(store, b.task_id)
    assert again is not None and (again.state, again.replay_outcome) == ("parked", "failed")

    with pytest.raises(ValueError):
        purge(store)  # no filter: refused, nothing deleted
    assert purge(store, replayed=True, older_than=t0 - timedelta(days=1)) == []  # a is newer than that
    deleted = purge(store, replayed=True, older_than=datetime.now(timezone.utc))
    assert deleted == [a.task_id]
    assert get_dead_letter(store, b.task_id) is not None, "an unreplayed entry survives --state replayed"
    assert counts_by_state(store) == {"parked": 1, "replaying": 0, "replayed": 0}
    marks = load_dead_letter_marks(store)
    assert [(m.workflow_id, m.state) for m in marks] == [(b.workflow_id, "parked")]
    assert purge(store, task_ids=[b.task_id]) == [b.task_id]
    assert counts_by_state(store) == {"parked": 0, "replaying": 0, "replayed": 0}
    # the ledger side on the same backend: rows since a time, and the runner's recovery marking
    for n in (1, 2):
        store.record_error(ErrorEvent(
            event_id=f"run/act1/{n}", assessment_id="a1", stage_id="s", target="t", tool="http_headers", attempt=n,
            category="transient", message="HTTP 503", retryable=True, occurred_at=t0 + timedelta(seconds=n), dependency="osv",
        ))
    store.record_error(ErrorEvent(
        event_id="run/act0/1", assessment_id="a1", stage_id="s", target="t", tool="http_headers", attempt=1,
        category="permanent", message="HTTP 404", retryable=False, occurred_at=t0,
    ))
    recovered = resolve_recovered(store, "a1", "s", "t", "run/act1/")
    assert {category: len(seconds) for category, seconds in recovered.items()} == {"transient": 2}
    assert all(s >= 0 for s in recovered["transient"])
    rows = load_error_rows(store, since=t0 + timedelta(milliseconds=500))
    assert [(r.event_id, r.outcome, r.dependency) for r in rows] == [("run/act1/1", "recovered", "osv"), ("run/act1/2", "recovered", "osv")]
    assert all(r.resolved_at is not None for r in rows)
    assert [r.outcome for r in load_error_rows(store)] == ["recovered"] * 3


# --- the CLI -------------------------------------------------------------------------------


async def test_dlq_list_show_json_and_bad_ids(client: Client, dlq_worker: str) -> None:
    entry = synthetic_entry(dlq_worker, message="connection refused")
    await park(client, dlq_worker, entry)
    ref = ref_for(entry.task_id)

    out = await starter("dlq", "list", "--state", "parked", "--json")
    assert out.returncode == 0, out.stderr
    listed = {e["task_id"]: e for e in json.loads(out.stdout)}
    assert listed[entry.task_id]["ref"] == ref
    assert listed[entry.task_id]["state"] == "parked"

    for given in (entry.task_id, ref, ref[:6]):
        out = await starter("dlq", "show", given, "--json")
        assert out.returncode == 0, out.stderr
        shown = json.loads(out.stdout)
        assert (shown["task_id"], shown["stage_id"], shown["attempts"]) == (entry.task_id, "headers", 1)
        assert shown["replay"]["target"] == {"url": "http://127.0.0.1:9/"}

    text = await starter("dlq", "list")
    assert text.returncode == 0 and ref in text.stdout

    assert (await starter("dlq", "show", "not-an-id")).returncode == 2
    assert (await starter("dlq", "show", "")).returncode == 2
    assert (await starter("dlq", "show", "abc\x01def/x")).returncode == 2
    unknown = await starter("dlq", "show", "nope/run/stage/-/retries_exhausted")
    assert unknown.returncode == 1 and "no dead-letter entry" in unknown.stderr
    assert (await starter("dlq", "replay", "0000000000")).returncode in (1, 2)
    assert (await starter("dlq", "purge", "--older-than", "1d")).returncode == 2
    assert (await starter("dlq", "list", "--since", "yesterday")).returncode == 2
    # what must not be replayed is refused, and nothing is started
    security = synthetic_entry(dlq_worker, message="GET http://10.9.9.9/ is outside scope.allow")
    security = security.model_copy(update={
        "reason": "security_violation", "category": "security",
        "task_id": dead_letter_task_id(security.workflow_id, "run-1", "headers", security.target, "security_violation"),
    })
    compensation = synthetic_entry(dlq_worker, message="release scan lock failed").model_copy(update={"replay": None})
    compensation = compensation.model_copy(update={"reason": "compensation_failed", "task_id": compensation.task_id + "c"})
    await park(client, dlq_worker, security, compensation)
    refused = await starter("dlq", "replay", ref_for(security.task_id))
    assert refused.returncode == 1 and "security violation" in refused.stderr
    refused = await starter("dlq", "replay", compensation.task_id)
    assert refused.returncode == 1 and "nothing to replay" in refused.stderr
    assert {get_dead_letter(open_store(), e.task_id).state for e in (security, compensation)} == {"parked"}
    # refused purges changed nothing
    assert get_dead_letter(open_store(), entry.task_id) is not None
    assert (await starter("dlq", "purge", ref)).returncode == 0
    assert get_dead_letter(open_store(), entry.task_id) is None


# --- replay --------------------------------------------------------------------------------


async def _parked_entry(client: Client, queue: str, spec: Spec, handle, stage_id: str) -> str:
    """The entry the assessment parked itself, or (before that wiring) one parked for it
    through the real activity with the same deterministic id."""
    desc = await handle.describe()
    status = await final_status(handle) if desc.status.name != "RUNNING" else await handle.query("status", result_type=AssessmentStatus)
    entry = entry_for(spec, status, desc.run_id, stage_id, queue, message=status.stages[stage_id].error.message)
    if get_dead_letter(open_store(), entry.task_id) is None:
        await park(client, queue, entry)
    return entry.task_id


async def test_replay_starts_a_one_stage_assessment_that_completes_once_the_target_is_back(client: Client, dlq_worker: str) -> None:
    port = closed_port()
    spec = make_spec(
        [{"host": "127.0.0.1"}, {"url": f"http://127.0.0.1:{port}/"}],
        [
            {"id": "ports", "kind": "discovery", "tool": "portscan", "options": {"ports": str(closed_port())}},
            {"id": "headers", "kind": "dast", "tool": "http_headers", "depends_on": ["ports"],
             "retry": {"max_attempts": 2, "initial_interval": "100ms"}},
        ],
    )
    handle = await start(client, spec, dlq_worker)
    failed = await final_status(handle)
    assert failed.outcome == "failed" and failed.stages["headers"].state == "failed"
    task_id = await _parked_entry(client, dlq_worker, spec, handle, "headers")

    target = TargetOnPort(port)  # the operator brings the service back
    try:
        out = await starter("dlq", "replay", ref_for(task_id), "--wait")
    finally:
        target.close()
    assert out.returncode == 0, out.stdout + out.stderr
    entry = get_dead_letter(open_store(), task_id)
    assert entry is not None
    assert (entry.state, entry.replay_outcome) == ("replayed", "completed")
    assert entry.replay_workflow_id and entry.replay_workflow_id.startswith(f"{handle.id}-replay-")
    assert entry.replay_workflow_id in out.stdout
    replay = await final_status(client.get_workflow_handle(entry.replay_workflow_id, result_type=AssessmentStatus))
    assert replay.outcome == "completed"
    assert list(replay.stages) == ["headers"], "just that stage, without its dependency"
    assert replay.stages["headers"].state == "succeeded"
    assert target.requests, "the replay really reached the target"

    shown = await starter("dlq", "show", task_id, "--json")
    assert json.loads(shown.stdout)["replay_outcome"] == "completed"
    again = await starter("dlq", "replay", task_id)
    assert again.returncode == 0, "a replayed entry may be replayed again"
    # without --wait, `dlq show` asks Temporal how that replay ended and records it
    second = get_dead_letter(open_store(), task_id)
    assert second is not None and second.state == "replaying" and second.replay_workflow_id != entry.replay_workflow_id
    await final_status(client.get_workflow_handle(second.replay_workflow_id, result_type=AssessmentStatus))
    shown = json.loads((await starter("dlq", "show", task_id, "--json")).stdout)
    assert shown["state"] == "replayed" and shown["replay_outcome"] == "failed"  # target is down again


async def test_replay_into_a_waiting_workflow_reruns_the_stage_in_place(client: Client, dlq_worker: str) -> None:
    state = {"healthy": False}
    target = ScriptedServer(lambda n, path: Reply(200, GOOD_HEADERS) if state["healthy"] else Reply(503))
    try:
        spec = make_spec(
            [{"url": target.url}],
            [{"id": "headers", "kind": "dast", "tool": "http_headers", "on_failure": "await_approval",
              "retry": {"max_attempts": 2, "initial_interval": "100ms"}}],
        )
        handle = await start(client, spec, dlq_worker)
        await wait_for(handle, lambda s: s.awaiting == ["headers"], timeout=60)
        task_id = await _parked_entry(client, dlq_worker, spec, handle, "headers")
        state["healthy"] = True
        out = await starter("dlq", "replay", task_id, "--wait", "--by", "frank")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "in place" in out.stdout
        status = await final_status(handle)
    finally:
        target.close()
    assert status.outcome == "completed"
    assert status.stages["headers"].state == "succeeded"
    retry = [i for i in status.interventions if i.action == "retry_stage"]
    assert len(retry) == 1 and retry[0].by == "frank" and retry[0].via == "update"
    entry = get_dead_letter(open_store(), task_id)
    assert entry is not None
    assert (entry.state, entry.replay_outcome, entry.replay_workflow_id) == ("replayed", "completed", handle.id)
    # error analytics on the same real run: both failed attempts were recovered, by a human
    rows = [r for r in load_error_rows(open_store()) if r.assessment_id == handle.id]
    stats = compute_stats(rows, load_dead_letter_marks(open_store()), open_incidents=None, until=datetime.now(timezone.utc))
    assert (stats.total, stats.recovered, stats.recovered_with_human, stats.recovered_automatically) == (2, 2, 2, 0)


async def test_replay_of_a_stage_the_running_assessment_skipped_reruns_it_in_place(client: Client, dlq_worker: str) -> None:
    """The assessment parks the skipped stage itself; while it still runs (a gate keeps it
    alive), `dlq replay` re-runs that stage inside it instead of starting a new one."""
    state = {"healthy": False}
    target = ScriptedServer(lambda n, path: Reply(200, GOOD_HEADERS) if state["healthy"] else Reply(503))
    try:
        spec = make_spec(
            [{"url": target.url}],
            [
                {"id": "headers", "kind": "dast", "tool": "http_headers", "criticality": "optional",
                 "on_failure": "skip", "retry": {"max_attempts": 2, "initial_interval": "100ms"}},
                {"id": "gate", "kind": "dast", "tool": "http_headers", "requires_approval": True},
            ],
        )
        handle = await start(client, spec, dlq_worker)
        await wait_for(handle, lambda s: s.stages["headers"].state == "skipped" and s.awaiting == ["gate"], timeout=60)
        run_id = (await handle.describe()).run_id or ""
        task_id = dead_letter_task_id(handle.id, run_id, "headers", target.url, "retries_exhausted")
        for _ in range(100):  # parked from a side task of the workflow: give it a moment
            if get_dead_letter(open_store(), task_id) is not None:
                break
            await asyncio.sleep(0.1)
        assert get_dead_letter(open_store(), task_id) is not None, "the assessment parked the skipped stage"

        state["healthy"] = True
        out = await starter("dlq", "replay", ref_for(task_id), "--wait", "--by", "grace")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "in place" in out.stdout
        running = await handle.query("status", result_type=AssessmentStatus)
        assert running.stages["headers"].state == "succeeded"
        await handle.execute_update("approve", {"stage": "gate", "by": "grace"})
        status = await final_status(handle)
    finally:
        target.close()
    assert status.outcome == "completed"
    entry = get_dead_letter(open_store(), task_id)
    assert entry is not None
    assert (entry.state, entry.replay_outcome, entry.replay_workflow_id) == ("replayed", "completed", handle.id)
    retry = [i for i in status.interventions if i.action == "retry_stage"]
    assert len(retry) == 1 and retry[0].by == "grace"
