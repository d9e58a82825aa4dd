"""The sharded assessment on a real dev server, scaled down so that sharding really happens.

2,500 host targets (127.0.x.y, one closed port each) in one stage with a small batch size
and small event budgets: the stage runs in `StageTargets` child workflows that continue as
new several times; every target's outcome lands in the store exactly once; no payload in
the whole history tree passes 256 KB and no run passes its budget by more than a batch.
A gate held across the assessment's own continue-as-new still answers on the same id.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from temporalio.client import Client

from secflow.history_audit import audit_tree
from secflow.models import ShardProgress
from secflow.settings import load_settings
from secflow.store import open_store
from tests.helpers import activity_order, final_status, make_spec, start, status_of, wait_for
from tests.servers import GOOD_HEADERS, Reply, ScriptedServer, closed_port

PAYLOAD_BUDGET = 256 * 1024


def _hosts(n: int) -> list[dict[str, str]]:
    return [{"host": f"127.0.{i // 250}.{i % 250 + 1}"} for i in range(n)]


def _sweep(n: int, port: int, **options: int) -> dict:
    return {
        "id": "sweep",
        "kind": "discovery",
        "tool": "portscan",
        "options": {"ports": str(port), "connect_timeout": "1s", **options},
    }


async def test_2500_targets_shard_continue_as_new_and_stay_within_budgets(client: Client, worker: str) -> None:
    n, batch, budget = 2500, 250, 1500
    spec = make_spec(
        _hosts(n),
        [_sweep(n, closed_port(), targets_per_batch=batch, targets_in_flight=100)],
        scope={"allow": ["127.0.0.0/16"]},
    )
    handle = await start(client, spec, worker, shard_event_budget=budget)
    status = await final_status(handle, timeout=600)
    assert status.outcome == "completed", status.reason

    sweep = status.stages["sweep"]
    assert sweep.state == "succeeded"
    assert sweep.counts == {"succeeded": n}
    assert sweep.progress.done == sweep.progress.total == n
    # the status is constant-size: counts, not a per-target map
    assert sweep.targets == {}
    assert len(status.model_dump_json()) < 8 * 1024

    # every target reported exactly once, in the store
    outcomes = open_store().list_target_outcomes(handle.id, stage_id="sweep", limit=10_000)
    assert len(outcomes) == n
    assert len({o.target for o in outcomes}) == n
    assert {o.state for o in outcomes} == {"succeeded"}

    audit = await audit_tree(client, handle.id)
    shard_runs = [r for r in audit.runs if r.workflow_type == "StageTargets"]
    assert len(shard_runs) >= 3, [(r.workflow_type, r.event_count) for r in audit.runs]  # continue-as-new happened
    assert audit.largest_payload is not None and audit.largest_payload.bytes < PAYLOAD_BUDGET, audit.largest_payload
    # a run hands over between batches: at most its budget plus one batch's events
    for run in audit.runs:
        assert run.event_count < budget + batch * 4 + 100, (run.workflow_type, run.event_count)
    parent = [r for r in audit.runs if r.workflow_type == "Assessment"]
    assert parent and max(r.event_count for r in parent) < 200  # the assessment keeps only the process


async def test_gate_across_the_assessments_continue_as_new(client: Client, worker: str) -> None:
    """The assessment continues as new while a gate waits; approve on the same id still lands."""
    spec = make_spec(
        _hosts(150),
        [
            _sweep(150, closed_port(), targets_per_batch=50),
            {"id": "gate", "kind": "discovery", "tool": "portscan", "options": {"ports": str(closed_port())},
             "requires_approval": True, "depends_on": ["sweep"]},
        ],
        scope={"allow": ["127.0.0.0/16"]},
    )
    handle = await start(client, spec, worker, event_budget=40)
    await wait_for(handle, lambda s: s.stages["gate"].state == "awaiting_approval", timeout=120)

    # the run waiting for approval is a new one: the first handed over at the gate
    async def runs() -> int:
        return len([w async for w in client.list_workflows(f"WorkflowId = '{handle.id}'")])

    for _ in range(100):
        if await runs() >= 2:
            break
        await asyncio.sleep(0.2)
    assert await runs() >= 2
    status = await status_of(handle)
    assert status.stages["sweep"].counts == {"succeeded": 150}
    assert status.awaiting == ["gate"]

    await client.get_workflow_handle(handle.id).signal("approve", {"stage": "gate", "by": "alice"})
    status = await final_status(handle, timeout=120)
    assert status.outcome == "completed", status.reason
    assert status.stages["gate"].state == "succeeded"
    assert [i.by for i in status.interventions if i.action == "approve"] == ["alice"]
    assert [c.state for c in status.compensations] == ["done", "done"]
    assert open_store().list_locks() == [] or all(lock.holder != handle.id for lock in open_store().list_locks())


async def test_abort_stops_a_sharded_stage_and_records_what_ran(client: Client, worker: str) -> None:
    spec = make_spec(
        _hosts(600),
        [_sweep(600, closed_port(), targets_per_batch=100, targets_in_flight=20), {"id": "report", "kind": "report", "always": True}],
        scope={"allow": ["127.0.0.0/16"]},
    )
    handle = await start(client, spec, worker)
    await wait_for(handle, lambda s: s.stages["sweep"].progress.done >= 100, timeout=120)
    await handle.signal("abort", {"by": "bob", "reason": "wrong window"})
    status = await final_status(handle, timeout=120)
    assert status.outcome == "cancelled"
    sweep = status.stages["sweep"]
    assert sweep.state == "cancelled"
    done = sweep.counts.get("succeeded", 0)
    assert 100 <= done < 600
    assert status.stages["report"].state == "succeeded"  # `always` stages run after an abort
    stored = open_store().list_target_outcomes(handle.id, stage_id="sweep", limit=1000)
    assert len({o.target for o in stored}) == len(stored)
    assert sum(1 for o in stored if o.state == "succeeded") == done
    assert all(lock.holder != handle.id for lock in open_store().list_locks())


async def test_uncreatable_workspace_unwinds_reports_and_opens_an_incident(client: Client, worker: str) -> None:
    """An ActivityError while acquiring is caught: compensations run, `always` stages run,
    an incident is opened, and the status says failed (not "running")."""
    workflow_id = "t-noworkspace-" + Path(str(closed_port())).name
    workspaces = load_settings().workspaces_dir
    workspaces.mkdir(parents=True, exist_ok=True)
    # a dangling link where the workspace directory should be: mkdir fails for real, and
    # removing "the workspace" finds nothing of ours to remove
    (workspaces / workflow_id).symlink_to(workspaces / "nowhere" / workflow_id)
    spec = make_spec(
        [{"host": "127.0.0.1"}],
        [
            {"id": "ports", "kind": "discovery", "tool": "portscan", "options": {"ports": str(closed_port())}},
            {"id": "report", "kind": "report", "always": True},
        ],
    )
    handle = await start(client, spec, worker, workflow_id=workflow_id)
    status = await final_status(handle, timeout=120)
    assert status.outcome == "failed"
    assert status.status == "failed"
    assert "exists" in status.reason.lower(), status.reason
    assert status.stages["ports"].state == "skipped"
    assert status.stages["report"].state == "succeeded"
    assert status.incidents, "acquisition failure must page someone"
    assert [c.state for c in status.compensations] == ["done"]  # the workspace's removal, attempted
    assert "acquire_scan_locks" not in await activity_order(handle)


async def test_path_targets_take_no_scan_lock(client: Client, worker: str, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "app.py").write_text("print('hello')\n")
    spec = make_spec(
        [{"path": str(repo)}],
        [{"id": "secrets", "kind": "secrets", "tool": "detect_secrets"}],
        scope={"allow": [str(tmp_path)]},
    )
    first, second = await asyncio.gather(start(client, spec, worker), start(client, spec, worker))
    a, b = await asyncio.gather(final_status(first), final_status(second))
    assert a.outcome == b.outcome == "completed"
    assert "acquire_scan_locks" not in await activity_order(first)
    assert [c.name for c in a.compensations] == ["remove workspace"]


@pytest.mark.parametrize("size", [10, 400])
async def test_status_query_is_constant_size(client: Client, worker: str, size: int) -> None:
    spec = make_spec(_hosts(size), [_sweep(size, closed_port(), targets_per_batch=100)], scope={"allow": ["127.0.0.0/16"]})
    handle = await start(client, spec, worker)
    status = await final_status(handle, timeout=300)
    assert status.stages["sweep"].counts == {"succeeded": size}
    assert len(json.dumps(status.model_dump(mode="json"))) < 4096


async def test_terminated_mid_acquisition_leaks_nothing_after_the_reaper(client: Client, worker: str) -> None:
    """Terminate (skips compensations) while the second lock batch waits: the reaper
    releases the first batch's 1,000 locks and the waiter ticket, and removes the workspace."""
    from secflow.reaper import reap_once

    busy_host = "127.0.9.9"  # sorts after every 127.0.[0-4].x host: it is in the second batch
    holder = await start(
        client,
        make_spec([{"host": busy_host}], [{"id": "gate", "kind": "discovery", "tool": "portscan",
                                            "options": {"ports": str(closed_port())}, "requires_approval": True}],
                  scope={"allow": ["127.0.0.0/16"]}),
        worker,
    )
    await wait_for(holder, lambda s: s.awaiting == ["gate"])
    hosts = [{"host": f"127.0.{i // 250}.{i % 250 + 1}"} for i in range(1250)] + [{"host": busy_host}]
    victim = await start(client, make_spec(hosts, [_sweep(1251, closed_port())], scope={"allow": ["127.0.0.0/16"]}), worker)
    waiting = await wait_for(victim, lambda s: s.status == "waiting_for_lock", timeout=60)
    store = open_store()
    held = [lock for lock in store.list_locks() if lock.holder == victim.id]
    assert len(held) == 1000, "the first batch is held, all or nothing"
    assert Path(waiting.workspace).is_dir()

    await victim.terminate(reason="operator terminates mid-acquisition")
    report = await reap_once(client, load_settings())
    assert victim.id in report.holders_released
    assert [lock for lock in store.list_locks() if lock.holder == victim.id] == []
    assert victim.id not in store.lock_holders()
    assert not Path(waiting.workspace).exists()
    assert any(lock.holder == holder.id for lock in store.list_locks()), "a running holder keeps its lock"

    await holder.signal("abort", {"by": "tests"})
    await final_status(holder)


async def test_pause_and_resume_reach_a_running_shard(client: Client, worker: str) -> None:
    """`pause` on the assessment's id stops its shard from starting targets; `resume` goes on."""
    spec = make_spec(
        _hosts(800),
        [_sweep(800, closed_port(), targets_per_batch=100, targets_in_flight=10)],
        scope={"allow": ["127.0.0.0/16"]},
    )
    handle = await start(client, spec, worker)
    await wait_for(handle, lambda s: s.stages["sweep"].progress.done >= 100, timeout=120)
    await handle.execute_update("pause", {"by": "carol"})
    shard = client.get_workflow_handle(f"{handle.id}/sweep/round-1")
    await asyncio.sleep(1.5)  # targets already in flight finish
    before = (await shard.query("progress", result_type=ShardProgress)).processed
    await asyncio.sleep(2)
    after = (await shard.query("progress", result_type=ShardProgress)).processed
    assert after == before < 800, "a paused shard starts nothing new"
    assert (await status_of(handle)).status == "paused"
    await handle.execute_update("resume", {"by": "carol"})
    status = await final_status(handle, timeout=300)
    assert status.outcome == "completed"
    assert status.stages["sweep"].counts == {"succeeded": 800}


async def test_security_violation_in_a_shard_stops_the_round_and_the_assessment(client: Client, worker: str) -> None:
    """One of 150 URL targets redirects out of scope: the shard starts nothing new, the
    stage fails as `security`, the assessment stops, the target is dead-lettered and paged."""
    outside = ScriptedServer([Reply(200, GOOD_HEADERS)])
    bad = "/p0077"

    def reply(n: int, path: str) -> Reply:
        return Reply(302, {"Location": f"http://localhost:{outside.port}/"}) if path == bad else Reply(200, GOOD_HEADERS)

    site = ScriptedServer(reply)
    try:
        spec = make_spec(
            [{"url": f"{site.url}p{i:04d}"} for i in range(150)],
            [{"id": "headers", "kind": "dast", "tool": "http_headers",
              "options": {"targets_in_flight": 5, "targets_per_batch": 50}}],
            scope={"allow": [site.url]},
        )
        handle = await start(client, spec, worker)
        status = await final_status(handle, timeout=120)
    finally:
        outside.close()
        site.close()
    assert outside.requests == [], "the out-of-scope server must never be contacted"
    assert status.outcome == "failed"
    headers = status.stages["headers"]
    assert headers.state == "failed" and headers.error is not None and headers.error.category == "security"
    assert headers.counts.get("succeeded", 0) < 149, "nothing new starts after the violation"
    assert len(site.requests) < 150
    assert status.incidents
    from secflow.dead_letters import list_dead_letters

    parked = [e for e in list_dead_letters(open_store()) if e.workflow_id == handle.id]
    assert [(e.reason, e.category, e.target) for e in parked] == [("security_violation", "security", f"{site.url}{bad[1:]}")]


async def test_worker_killed_during_a_sharded_stage_loses_and_repeats_nothing(client: Client, server, task_queue: str, tmp_path: Path) -> None:
    """Two worker processes; one SIGKILLed mid-shard. The other finishes the shard (its
    workflow tasks and the dead worker's activities); every target is reported once."""
    import signal

    from tests.test_durability import WorkerProcess

    workers = [WorkerProcess(task_queue, server.address, tmp_path / f"w{i}.log") for i in range(2)]
    try:
        n = 1500
        spec = make_spec(_hosts(n), [_sweep(n, closed_port(), targets_per_batch=100, targets_in_flight=20)],
                         scope={"allow": ["127.0.0.0/16"]})
        handle = await start(client, spec, task_queue)
        await wait_for(handle, lambda s: s.stages["sweep"].progress.done >= 300, timeout=120)
        workers[0].kill(signal.SIGKILL)
        workers[0].wait()
        status = await final_status(handle, timeout=300)
    finally:
        for w in workers:
            w.stop()
    assert status.outcome == "completed", status.reason
    assert status.stages["sweep"].counts == {"succeeded": n}
    outcomes = open_store().list_target_outcomes(handle.id, stage_id="sweep", limit=10_000)
    assert len(outcomes) == len({o.target for o in outcomes}) == n
