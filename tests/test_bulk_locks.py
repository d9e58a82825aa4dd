"""Bulk scan locks, documents and per-target outcomes in the store, on SQLite and
PostgreSQL; and the bulk lock activities against the real Temporal dev server.

Store tests run against both backends (`db` is parametrized, as in tests/test_store.py):
real files, a real PostgreSQL server (tests/pg.py), real threads and OS processes.
"""

from __future__ import annotations

import multiprocessing
import random
import sqlite3
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from activities.locks import acquire_scan_locks, release_scan_locks
from secflow.documents import clear_spec_cache, load_spec, save_spec
from secflow.errors import PermanentError
from secflow.locking import BulkLockOutcome, BulkLockRequest, lock_key, lock_keys
from secflow.spec import Spec, Target
from secflow.store import MAX_LOCK_CONFLICTS, FindingsStore, TargetOutcome, open_store, parse_db_url
from tests.pg import PgServer, pg_server  # noqa: F401  (pg_server: fixture)
from tests.support_lock_workflows import BulkLockCallerWorkflow, LockHolderWorkflow


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SECFLOW_DB_URL", "SECFLOW_DB_BUSY_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)


@dataclass
class Db:
    backend: str
    url: str

    def rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        location = parse_db_url(self.url)
        if self.backend == "sqlite":
            conn: Any = sqlite3.connect(location.path, isolation_level=None)
        else:
            import psycopg

            conn = psycopg.connect(autocommit=True, **location.connect_kwargs())
            sql = sql.replace("?", "%s")
        try:
            cursor = conn.execute(sql, params)
            return [tuple(r) for r in cursor.fetchall()] if cursor.description else []
        finally:
            conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Db:
    if request.param == "sqlite":
        return Db("sqlite", f"sqlite:///{tmp_path / 'findings.db'}")
    server: PgServer = request.getfixturevalue("pg_server")
    return Db("postgresql", server.create_database())


@pytest.fixture
def store(db: Db) -> Iterator[FindingsStore]:
    s = FindingsStore(db.url)
    yield s
    s.close()


def _held(db: Db) -> dict[str, str]:
    return dict(db.rows("SELECT target, holder FROM scan_locks"))


def _tickets(db: Db) -> list[tuple[str, str]]:
    return db.rows("SELECT target, holder FROM lock_waiters ORDER BY ticket, target, holder")


# --- bulk locks --------------------------------------------------------------------------


def test_all_or_nothing_sorted_and_deduplicated(store: FindingsStore, db: Db) -> None:
    assert store.acquire_locks(["b", "a", "b"], "A").acquired
    assert _held(db) == {"a": "A", "b": "A"}

    refused = store.acquire_locks(["c", "b", "d"], "B")
    assert not refused.acquired
    assert refused.conflicts == {"b": "A"}
    assert _held(db) == {"a": "A", "b": "A"}  # nothing of the request was taken, not even c and d
    assert store.lock_holders() == {"A", "B"}  # B now waits
    assert store.acquire_locks([], "B").acquired  # nothing asked, nothing refused


def test_reentrant_and_waiters_do_not_block_the_holder(store: FindingsStore, db: Db) -> None:
    keys = [f"host-{i:04d}" for i in range(1000)]
    assert store.acquire_locks(keys, "A").acquired
    refused = store.acquire_locks(list(reversed(keys)), "B")
    assert not refused.acquired
    assert len(refused.conflicts) == MAX_LOCK_CONFLICTS  # bounded whatever the key count
    assert list(refused.conflicts) == keys[:MAX_LOCK_CONFLICTS]
    assert set(refused.conflicts.values()) == {"A"}
    # A asks again (a retried activity): what it holds is free for it, B's tickets too.
    assert store.acquire_locks(keys, "A").acquired
    assert store.acquire_locks(keys[:10] + ["extra"], "A").acquired
    assert len(_held(db)) == 1001 and set(_held(db).values()) == {"A"}


def test_first_come_first_served(store: FindingsStore, db: Db) -> None:
    assert store.acquire_locks(["x"], "A").acquired
    # B waits on x and y (x is A's): B queues on both.
    assert store.acquire_locks(["x", "y"], "B").conflicts == {"x": "A"}
    # y is free, but B asked first: C is refused, naming the waiter it queues behind.
    assert store.acquire_locks(["y"], "C").model_dump() == {"acquired": False, "conflicts": {"y": "B"}}
    # B asking again keeps its place: C is still behind it.
    assert not store.acquire_locks(["x", "y"], "B").acquired
    assert store.acquire_locks(["y"], "C").conflicts == {"y": "B"}
    assert _tickets(db) == [("x", "B"), ("y", "B"), ("y", "C")]

    assert store.release_locks("A") == 1
    assert store.acquire_locks(["y"], "C").conflicts == {"y": "B"}  # B is still first in line
    assert store.acquire_locks(["y", "x"], "B").acquired
    assert _held(db) == {"x": "B", "y": "B"}
    assert _tickets(db) == [("y", "C")]  # B's tickets went with its success
    assert store.acquire_locks(["y"], "C").conflicts == {"y": "B"}

    assert store.release_locks("B", ["y"]) == 1
    assert store.acquire_locks(["y"], "C").acquired
    assert _tickets(db) == []
    assert _held(db) == {"x": "B", "y": "C"}


def test_a_holder_part_way_through_its_batches_is_not_held_back_by_tickets(store: FindingsStore) -> None:
    # The cycle that tickets alone would make: C holds k2 and wants k3; B queues on k1 and
    # k3 behind A's k1; A wants C's k2. B's ticket on the free k3 must not stop C.
    assert store.acquire_locks(["k2"], "C").acquired
    assert store.acquire_locks(["k1"], "A").acquired
    assert store.acquire_locks(["k1", "k3"], "B").conflicts == {"k1": "A"}
    assert store.acquire_locks(["k2"], "A").conflicts == {"k2": "C"}
    assert store.acquire_locks(["k3"], "C").acquired
    # A newcomer holding nothing still queues behind B.
    store.release_locks("C")
    assert store.acquire_locks(["k3"], "D").conflicts == {"k3": "B"}
    assert store.acquire_locks(["k2"], "A").acquired
    store.release_locks("A")
    assert store.acquire_locks(["k1", "k3"], "B").acquired


def test_release_all_drops_locks_and_tickets_of_that_holder_only(store: FindingsStore, db: Db) -> None:
    assert store.acquire_locks(["a", "b", "c"], "A").acquired
    assert store.acquire_locks(["z"], "Z").acquired
    assert not store.acquire_locks(["c", "d"], "B").acquired
    assert not store.acquire_locks(["z", "a"], "A").acquired  # A now also waits on z
    assert store.lock_holders() == {"A", "B", "Z"}

    assert store.release_locks("A") == 3
    assert store.release_locks("A") == 0  # again: nothing left, nothing else touched
    assert _held(db) == {"z": "Z"}
    assert _tickets(db) == [("c", "B"), ("d", "B")]
    assert store.release_locks("B") == 0
    assert store.lock_holders() == {"Z"}
    # The old single-key API still sees (and is seen by) the bulk locks.
    assert store.acquire_lock("z", "Y").holder == "Z"
    assert store.acquire_lock("q", "Y").acquired
    assert store.acquire_locks(["q"], "Z").conflicts == {"q": "Y"}


def test_many_threads_exclusive_and_each_served(store: FindingsStore) -> None:
    # Eight holders want overlapping sets; each takes its set in three sorted batches (as
    # an assessment does), retrying a refused batch until it gets it, holds the whole set
    # a moment and releases. Nobody may ever see a key held twice, and nobody may wait
    # forever: with tickets honoured by holders part-way through their batches, this
    # very setup deadlocked every time.
    rng = random.Random(9)
    holders = [f"wf-{i}" for i in range(8)]
    sets = {h: sorted(rng.sample([f"k{j:03d}" for j in range(100)], 45)) for h in holders}
    inside: dict[str, str] = {}
    guard = threading.Lock()
    errors: list[str] = []

    def run(holder: str) -> None:
        try:
            started = time.monotonic()
            for start in range(0, 45, 15):
                batch = sets[holder][start : start + 15]
                while not store.acquire_locks(batch, holder).acquired:
                    if time.monotonic() - started > 30:
                        raise AssertionError(f"{holder} waited 30 s for {batch[0]}..: deadlock")
                    time.sleep(0.002)
            with guard:
                clash = {k: inside[k] for k in sets[holder] if k in inside}
                if clash:
                    errors.append(f"{holder} got keys held by {clash}")
                inside.update({k: holder for k in sets[holder]})
            time.sleep(0.01)
            with guard:
                for k in sets[holder]:
                    del inside[k]
            store.release_locks(holder)
        except BaseException:
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=run, args=(h,)) for h in holders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[0]
    assert store.lock_holders() == set()


def _bulk_worker(url: str, name: str, keys: list[str], barrier, results) -> None:
    try:
        store = open_store(url)
        barrier.wait(timeout=60)
        result = store.acquire_locks(keys, name)
        results.put((name, result.acquired, result.conflicts, None))
    except BaseException:
        results.put((name, False, {}, traceback.format_exc()))


def test_processes_racing_for_overlapping_sets_exactly_one_wins(db: Db) -> None:
    FindingsStore(db.url).close()
    shared = [f"host-{i}" for i in range(300)]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_bulk_worker, args=(db.url, f"wf-{i}", shared[i * 10 :] + [f"own-{i}"], barrier, results))
        for i in range(4)
    ]
    for p in procs:
        p.start()
    reports = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert not [err for *_, err in reports if err], reports
    winners = [name for name, acquired, _, _ in reports if acquired]
    assert len(winners) == 1, reports
    held = _held(db)
    assert set(held.values()) == set(winners)
    index = int(winners[0].split("-")[1])
    assert set(held) == set(shared[index * 10 :]) | {f"own-{index}"}
    for name, acquired, conflicts, _ in reports:
        if not acquired:
            assert conflicts and name not in conflicts.values()


# --- documents -----------------------------------------------------------------------------


def test_documents_are_content_addressed_and_idempotent(store: FindingsStore, db: Db) -> None:
    body = '{"name": "déjà vu"}'
    digest = store.put_document(body)
    assert digest.startswith("sha256:") and len(digest) == len("sha256:") + 64
    import hashlib

    assert digest == "sha256:" + hashlib.sha256(body.encode("utf-8")).hexdigest()
    assert store.put_document(body) == digest
    assert db.rows("SELECT COUNT(*) FROM documents") == [(1,)]
    assert store.get_document(digest) == body
    assert store.get_document("sha256:" + "0" * 64) is None


def _spec(targets: list[Target]) -> Spec:
    return Spec.model_validate(
        {
            "name": "bulk",
            "scope": {"allow": ["127.0.0.0/8", "/src"]},
            "targets": [t.model_dump(exclude_none=True) for t in targets],
            "stages": [{"id": "ports", "kind": "discovery", "tool": "portscan"}],
        }
    )


def test_spec_travels_by_reference(store: FindingsStore) -> None:
    spec = _spec([Target(host=f"127.0.{i // 250}.{i % 250}") for i in range(2000)])
    ref = save_spec(store, spec)
    clear_spec_cache()
    loaded = load_spec(store, ref)
    assert loaded == spec
    assert load_spec(store, ref) is loaded  # parsed once per process
    with pytest.raises(PermanentError, match="not in the findings store"):
        load_spec(store, "sha256:" + "1" * 64)
    with pytest.raises(PermanentError, match="not a document digest"):
        load_spec(store, "spec.yaml")


def test_lock_keys_are_per_host_and_paths_need_none() -> None:
    assert lock_key(Target(url="https://App.Example.TEST:8443/login")) == "app.example.test"
    assert lock_key(Target(host="DB.example.test")) == "db.example.test"
    assert lock_key(Target(path="/src/repo")) is None
    spec = _spec(
        [
            Target(host="127.0.0.2"),
            Target(url="http://127.0.0.1:8080/"),
            Target(host="127.0.0.1"),
            Target(path="/src/repo"),
        ]
    )
    assert lock_keys(spec) == ["127.0.0.1", "127.0.0.2"]


# --- per-target outcomes -------------------------------------------------------------------


def test_target_outcomes_upsert_count_page_delete(store: FindingsStore, db: Db) -> None:
    outcomes = [
        TargetOutcome(
            assessment_id="a1",
            stage_id=f"s{i % 2}",
            target=f"10.0.{i // 256}.{i % 256}",
            tool="portscan",
            state="failed" if i % 7 == 0 else "succeeded",
            attempts=1,
        )
        for i in range(5000)
    ]
    assert store.record_target_outcomes(outcomes) == 5000
    # Retried with some outcomes changed: still one row per key, latest wins.
    outcomes[0] = outcomes[0].model_copy(
        update={"state": "succeeded", "attempts": 2, "findings": 3, "error_category": "", "error_message": ""}
    )
    outcomes[1] = outcomes[1].model_copy(
        update={"state": "failed", "error_category": "transient", "error_message": "connection reset"}
    )
    assert store.record_target_outcomes(outcomes + [outcomes[1]]) == 5000
    assert db.rows("SELECT COUNT(*) FROM target_outcomes") == [(5000,)]
    store.record_target_outcomes([TargetOutcome(assessment_id="other", stage_id="s0", target="x", state="failed")])

    expected: dict[str, dict[str, int]] = {}
    for o in outcomes:
        expected.setdefault(o.stage_id, {}).setdefault(o.state, 0)
        expected[o.stage_id][o.state] += 1
    assert store.count_target_outcomes("a1") == expected
    assert store.count_target_outcomes("nobody") == {}

    # Keyset paging over every row gives each once, in (stage, target) order.
    seen: list[tuple[str, str]] = []
    after = None
    while True:
        page = store.list_target_outcomes("a1", after=after, limit=700)
        if not page:
            break
        seen += [(o.stage_id, o.target) for o in page]
        after = (page[-1].stage_id, page[-1].target)
    assert seen == sorted((o.stage_id, o.target) for o in outcomes)

    failed = store.list_target_outcomes("a1", stage_id="s1", state="failed", limit=1000)
    assert len(failed) == expected["s1"]["failed"] and {o.state for o in failed} == {"failed"}
    first = next(o for o in failed if o.target == outcomes[1].target)
    assert (first.error_category, first.error_message, first.tool) == ("transient", "connection reset", "portscan")
    assert first.updated_at is not None and first.updated_at.utcoffset() is not None
    page = store.list_target_outcomes("a1", stage_id="s1", state="failed", after=("s1", failed[9].target), limit=5)
    assert [o.target for o in page] == [o.target for o in failed[10:15]]
    with pytest.raises(ValueError, match="limit"):
        store.list_target_outcomes("a1", limit=0)

    assert store.delete_target_outcomes("a1", "s0") == 2500
    assert store.count_target_outcomes("a1") == {"s1": expected["s1"]}
    assert store.delete_target_outcomes("a1", "s0") == 0


# --- the activities, against the real Temporal dev server ----------------------------------


@pytest.fixture
def activity_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'locks.db'}"
    monkeypatch.setenv("SECFLOW_DB_URL", url)
    return url


async def test_terminated_holder_locks_are_taken_over(client: Client, activity_db: str) -> None:
    queue = f"bulk-locks-{uuid.uuid4().hex[:8]}"
    store = open_store(activity_db)
    spec = _spec([Target(host=f"127.0.1.{i}") for i in range(1, 41)] + [Target(path="/src/repo")])
    ref = save_spec(store, spec)
    async with Worker(
        client,
        task_queue=queue,
        workflows=[LockHolderWorkflow, BulkLockCallerWorkflow],
        activities=[acquire_scan_locks, release_scan_locks],
    ):
        old_id, new_id = f"holder-old-{uuid.uuid4().hex[:6]}", f"holder-new-{uuid.uuid4().hex[:6]}"
        old = await client.start_workflow(LockHolderWorkflow.run, id=old_id, task_queue=queue)
        await client.start_workflow(LockHolderWorkflow.run, id=new_id, task_queue=queue)

        async def call(name: str, req: BulkLockRequest) -> BulkLockOutcome:
            # A real activity execution, scheduled by Temporal and run by the worker.
            return await client.execute_workflow(
                BulkLockCallerWorkflow.run,
                args=[f"{name}_scan_locks", req],
                id=f"caller-{uuid.uuid4().hex[:8]}",
                task_queue=queue,
            )

        first = await call("acquire", BulkLockRequest(holder=old_id, spec_ref=ref, batch=0, batch_size=25))
        assert (first.acquired, first.keys, first.total_keys) == (True, 25, 40)
        second = await call("acquire", BulkLockRequest(holder=old_id, spec_ref=ref, batch=1, batch_size=25))
        assert (second.acquired, second.keys) == (True, 15)
        assert len(store.list_locks()) == 40

        # The old holder is running: the new one is refused and queues.
        refused = await call("acquire", BulkLockRequest(holder=new_id, spec_ref=ref, batch=0, batch_size=40))
        assert not refused.acquired and set(refused.conflicts.values()) == {old_id}
        assert len(refused.conflicts) == MAX_LOCK_CONFLICTS

        await old.terminate(reason="test: terminated mid-run, compensations skipped")
        taken = await call("acquire", BulkLockRequest(holder=new_id, spec_ref=ref, batch=0, batch_size=40))
        assert taken.acquired and taken.keys == 40
        assert {lock.holder for lock in store.list_locks()} == {new_id}
        assert store.lock_holders() == {new_id}

        # A holder Temporal does not know is not broken.
        assert store.acquire_locks(["manual-host"], "someone-by-hand").acquired
        hand = await call("acquire", BulkLockRequest(holder=new_id, keys=["manual-host"]))
        assert not hand.acquired and hand.conflicts == {"manual-host": "someone-by-hand"}

        released = await call("release", BulkLockRequest(holder=new_id))
        assert released.released == 40
        assert store.lock_holders() == {"someone-by-hand"}
        await client.get_workflow_handle(new_id).terminate(reason="test done")
