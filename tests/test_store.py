"""The findings store, exercised for real: real SQLite files, a real PostgreSQL server,
real OS processes, real locks.

Every behaviour test runs against both backends (`db` is parametrized); tests of one
backend's own failure modes (a garbage SQLite file, SQLite's "database is locked", a
refused PostgreSQL connection) run against that backend only. PostgreSQL is a throwaway
server this session starts itself (tests/pg.py); each test gets a fresh database on it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
import traceback
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from secflow.findings import Finding, Severity
from secflow.store import (
    MIGRATIONS,
    ErrorEvent,
    FindingsStore,
    default_db_url,
    open_store,
    parse_db_url,
)
from tests.pg import PgServer, free_port, pg_server, running_server  # noqa: F401  (pg_server: fixture)

SEVERITIES = [s.value for s in Severity]
SEVERITIES_CYCLE = list(Severity)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests name their databases explicitly; nothing may fall back to ./.secflow.
    for name in ("SECFLOW_DB_URL", "SECFLOW_DATA_DIR", "SECFLOW_DB_BUSY_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)


@dataclass
class Db:
    """A fresh, empty database of one backend, and a side door into it for assertions."""

    backend: str
    url: str

    def _connect(self) -> Any:
        location = parse_db_url(self.url)
        if self.backend == "sqlite":
            return sqlite3.connect(location.path, isolation_level=None)
        import psycopg

        return psycopg.connect(autocommit=True, **location.connect_kwargs())

    def rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Run one statement (``?`` placeholders) on a connection of its own."""
        conn = self._connect()
        try:
            if self.backend != "sqlite":
                sql = sql.replace("?", "%s")
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
def db_path(tmp_path: Path) -> Path:
    """SQLite-only tests."""
    return tmp_path / "findings.db"


@pytest.fixture
def store(db: Db):
    s = FindingsStore(db.url)
    yield s
    s.close()


def _finding(i: int, *, severity: Severity = Severity.MEDIUM, target: str = "10.0.0.1", title: str = "") -> Finding:
    return Finding.new(
        tool="nuclei",
        rule_id=f"rule-{i}",
        title=title or f"problem {i}",
        severity=severity,
        target=target,
        location=f"/path/{i:04d}",
        cwe=["CWE-79"],
        evidence=f"evidence {i}",
    )


def _rows(db_path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _run_processes(target, args_per_process: list[tuple], results) -> list[Any]:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=target, args=args) for args in args_per_process]
    for p in procs:
        p.start()
    reports = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    return reports


# --- findings ----------------------------------------------------------------------------


def test_retried_upsert_inserts_then_updates_one_row_each(store: FindingsStore, db: Db) -> None:
    findings = [_finding(i) for i in range(5)]

    first = store.upsert_findings("a1", "scan", findings)
    assert (first.inserted, first.updated) == (5, 0)
    before = {f.fingerprint: f for f in store.list_findings("a1")}

    # The retried activity reports the same findings, one of them now with more detail.
    findings[2] = _finding(2, severity=Severity.CRITICAL, title="worse than we thought")
    second = store.upsert_findings("a1", "scan", findings)
    assert (second.inserted, second.updated) == (0, 5)

    assert db.rows("SELECT COUNT(*) FROM findings") == [(5,)]
    assert db.rows("SELECT COUNT(*) FROM assessment_findings") == [(5,)]
    after = store.list_findings("a1")
    assert len(after) == 5
    for f in after:
        assert f.first_seen == before[f.fingerprint].first_seen
        assert f.last_seen > before[f.fingerprint].last_seen
        assert f.first_seen.tzinfo is not None and f.first_seen.utcoffset() == timedelta(0)
        assert f.assessment_id == "a1"
    # Latest data wins, and critical sorts first.
    assert after[0].fingerprint == findings[2].fingerprint
    assert (after[0].severity, after[0].title) == (Severity.CRITICAL, "worse than we thought")
    assert [f.location for f in after[1:]] == sorted(f.location for f in after[1:])


def test_duplicates_within_one_batch_count_once(store: FindingsStore) -> None:
    result = store.upsert_findings("a1", "scan", [_finding(1), _finding(1, title="again"), _finding(2)])
    assert (result.inserted, result.updated) == (2, 0)
    titles = {f.title for f in store.list_findings("a1")}
    assert titles == {"again", "problem 2"}
    assert store.upsert_findings("a1", "scan", []).model_dump() == {"inserted": 0, "updated": 0}


def test_same_fingerprint_in_two_assessments_is_one_row_two_links(store: FindingsStore, db: Db) -> None:
    shared = _finding(1, severity=Severity.HIGH)
    assert store.upsert_findings("a1", "scan", [shared, _finding(2, severity=Severity.LOW)]).inserted == 2
    assert store.upsert_findings("a2", "web", [shared]).model_dump() == {"inserted": 1, "updated": 0}

    assert db.rows("SELECT COUNT(*) FROM findings") == [(2,)]
    assert db.rows(
        "SELECT assessment_id, stage_id FROM assessment_findings WHERE fingerprint = ? ORDER BY 1",
        (shared.fingerprint,),
    ) == [("a1", "scan"), ("a2", "web")]

    a1 = store.count_findings("a1")
    assert a1.total == 2
    assert a1.by_severity == {"critical": 0, "high": 1, "medium": 0, "low": 1, "info": 0}
    a2 = store.count_findings("a2")
    assert a2.total == 1 and a2.by_severity["high"] == 1 and set(a2.by_severity) == set(SEVERITIES)
    assert store.count_findings("a2", "scan").total == 0
    assert store.count_findings("a2", "web").total == 1
    assert store.count_findings("nobody").model_dump() == {"total": 0, "by_severity": {s: 0 for s in SEVERITIES}}
    assert [f.assessment_id for f in store.list_findings("a2")] == ["a2"]
    # The shared finding has one first_seen, whichever assessment asks.
    [in_a2] = store.list_findings("a2")
    in_a1 = next(f for f in store.list_findings("a1") if f.fingerprint == shared.fingerprint)
    assert in_a1.first_seen == in_a2.first_seen


def _upsert_worker(url: str, index: int, numbers: list[int], barrier, results) -> None:
    try:
        barrier.wait(timeout=60)
        store = open_store(url)  # all four open a brand-new file at once: migrations race too
        inserted = updated = 0
        for start in range(0, len(numbers), 7):
            batch = [_finding(n, severity=SEVERITIES_CYCLE[n % 5]) for n in numbers[start : start + 7]]
            r = store.upsert_findings("shared", f"stage-{index}", batch)
            inserted, updated = inserted + r.inserted, updated + r.updated
        store.close()
        results.put((index, inserted, updated, None))
    except BaseException:  # report everything, "database is locked" in particular
        results.put((index, 0, 0, traceback.format_exc()))


def test_four_processes_upserting_overlapping_sets_give_exactly_the_union(db: Db) -> None:
    url = db.url
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    results = ctx.Queue()
    sets = [list(range(i * 40, i * 40 + 100)) for i in range(4)]  # each overlaps its neighbours
    sets[1].reverse()  # different orders, so processes meet on the same rows from both ends
    sets[3].reverse()
    procs = [ctx.Process(target=_upsert_worker, args=(url, i, sets[i], barrier, results)) for i in range(4)]
    for p in procs:
        p.start()
    reports = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0

    errors = [err for _, _, _, err in reports if err]
    assert not errors, errors[0]
    union = set().union(*map(set, sets))
    submitted = sum(len(s) for s in sets)
    assert sum(r[1] for r in reports) == len(union)  # each fingerprint new to the assessment once
    assert sum(r[1] + r[2] for r in reports) == submitted

    store = FindingsStore(url)
    try:
        found = store.list_findings("shared")
        assert len(found) == len(union)
        expected = {_finding(n).fingerprint for n in union}
        assert {f.fingerprint for f in found} == expected
        assert store.count_findings("shared").total == len(union)
        assert store.applied_migrations == []
        assert [v for v, _, _ in store.schema_versions()] == [m.version for m in MIGRATIONS]
    finally:
        store.close()
    assert db.rows("SELECT COUNT(*), COUNT(DISTINCT fingerprint) FROM findings") == [(len(union), len(union))]
    if db.backend == "sqlite":
        assert db.rows("PRAGMA journal_mode") == [("wal",)]


async def test_threads_share_one_store_safely(store: FindingsStore) -> None:
    # Activities call the store through asyncio.to_thread, many at once.
    batches = [[_finding(n) for n in range(i * 10, i * 10 + 30)] for i in range(8)]
    results = await asyncio.gather(*(asyncio.to_thread(store.upsert_findings, "t", "s", b) for b in batches))
    assert sum(r.inserted for r in results) == 100
    assert sum(r.inserted + r.updated for r in results) == 240
    assert store.count_findings("t").total == 100


# --- scan locks --------------------------------------------------------------------------


def _lock_worker(url: str, name: str, targets: list[str], barrier, results) -> None:
    try:
        store = open_store(url)
        barrier.wait(timeout=60)
        outcomes = [(t, *store.acquire_lock(t, name).model_dump(include={"acquired", "holder"}).values()) for t in targets]
        results.put((name, outcomes, None))
    except BaseException:
        results.put((name, [], traceback.format_exc()))


def test_two_processes_racing_for_a_lock_exactly_one_wins(db: Db) -> None:
    url = db.url
    FindingsStore(url).close()  # schema in place; the race is about the locks
    targets = [f"host-{i}.example.test" for i in range(30)]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_lock_worker, args=(url, "wf-A", targets, barrier, results)),
        ctx.Process(target=_lock_worker, args=(url, "wf-B", list(reversed(targets)), barrier, results)),
    ]
    for p in procs:
        p.start()
    reports = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert not [err for _, _, err in reports if err], reports

    by_target: dict[str, list[tuple[str, bool, str]]] = {}
    for name, outcomes, _ in reports:
        for target, acquired, holder in outcomes:
            by_target.setdefault(target, []).append((name, acquired, holder))
    store = FindingsStore(url)
    try:
        held = {lock.target: lock.holder for lock in store.list_locks()}
        for target in targets:
            attempts = by_target[target]
            winners = [name for name, acquired, _ in attempts if acquired]
            assert len(winners) == 1, attempts
            assert all(holder == winners[0] for _, _, holder in attempts)  # the loser sees the winner
            assert held[target] == winners[0]
    finally:
        store.close()


def test_lock_release_rules(store: FindingsStore) -> None:
    first = store.acquire_lock("10.0.0.5", "wf-1")
    assert first.acquired and first.holder == "wf-1"
    assert first.acquired_at.utcoffset() == timedelta(0)

    again = store.acquire_lock("10.0.0.5", "wf-1")  # a retried acquire activity
    assert again.acquired and again.acquired_at == first.acquired_at

    other = store.acquire_lock("10.0.0.5", "wf-2")
    assert not other.acquired and other.holder == "wf-1" and other.acquired_at == first.acquired_at

    assert store.release_lock("10.0.0.5", "wf-2") is False  # not the holder: lock stays
    assert [(l.target, l.holder) for l in store.list_locks()] == [("10.0.0.5", "wf-1")]

    assert store.release_lock("10.0.0.5", "wf-1") is True
    assert store.release_lock("10.0.0.5", "wf-1") is False  # double release is harmless
    assert store.list_locks() == []
    assert store.acquire_lock("10.0.0.5", "wf-2").acquired


# --- contention and broken databases -----------------------------------------------------


def test_write_blocked_by_exclusive_transaction_raises_database_is_locked(db_path: Path) -> None:
    store = FindingsStore(f"sqlite:///{db_path}", busy_timeout=0.2)
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            store.upsert_findings("a1", "scan", [_finding(1)])
        other.execute("ROLLBACK")
        # The store is not poisoned: once the other writer is gone, the retry succeeds.
        assert store.upsert_findings("a1", "scan", [_finding(1)]).inserted == 1
    finally:
        other.close()
        store.close()


def test_reopening_runs_no_migration_twice(db: Db) -> None:
    url = db.url
    first = FindingsStore(url)
    assert first.applied_migrations == [m.version for m in MIGRATIONS]
    versions = first.schema_versions()
    first.upsert_findings("a1", "scan", [_finding(1)])

    concurrent = FindingsStore(url)  # opened while the first is still open
    assert concurrent.applied_migrations == []
    concurrent.close()
    first.close()

    again = FindingsStore(url)
    try:
        assert again.applied_migrations == []
        assert again.schema_versions() == versions  # same rows, same applied_at
        assert again.count_findings("a1").total == 1
    finally:
        again.close()
    assert db.rows("SELECT COUNT(*) FROM schema_version") == [(len(MIGRATIONS),)]


def _open_worker(url: str, index: int, barrier, results) -> None:
    try:
        barrier.wait(timeout=60)
        store = FindingsStore(url)
        applied = store.applied_migrations
        store.close()
        results.put((index, applied, None))
    except BaseException:
        results.put((index, None, traceback.format_exc()))


def test_processes_opening_a_fresh_database_at_once_apply_migrations_once(db: Db) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    results = ctx.Queue()
    reports = _run_processes(_open_worker, [(db.url, i, barrier, results) for i in range(4)], results)
    assert not [err for _, _, err in reports if err], reports
    applied = sorted((a for _, a, _ in reports), key=len)
    assert applied == [[], [], [], [m.version for m in MIGRATIONS]]  # one migrator; the rest waited, found it done
    assert db.rows("SELECT version FROM schema_version ORDER BY version") == [(m.version,) for m in MIGRATIONS]


def test_database_newer_than_the_code_is_refused(db: Db) -> None:
    FindingsStore(db.url).close()
    db.rows("INSERT INTO schema_version VALUES (999, 'from the future', '2100-01-01T00:00:00.000000+00:00')")
    with pytest.raises(RuntimeError, match="newer than this SecFlow") as caught:
        FindingsStore(db.url)
    assert "pw-" not in str(caught.value)  # the test server's password


def test_open_store_is_one_store_per_database_per_process(db: Db) -> None:
    s = open_store(db.url)
    try:
        assert open_store(db.url) is s
        assert open_store(db.url, busy_timeout=1.5) is not s  # a different timeout is another store
        open_store(db.url, busy_timeout=1.5).close()
    finally:
        s.close()
    again = open_store(db.url)  # closed stores are not handed out
    assert again is not s
    again.close()


def test_a_file_that_is_not_sqlite_raises_database_error(db_path: Path) -> None:
    db_path.write_bytes(b"\x00garbage, definitely not SQLite\xff" * 200)
    with pytest.raises(sqlite3.DatabaseError):
        FindingsStore(f"sqlite:///{db_path}")
    with pytest.raises(sqlite3.DatabaseError):
        open_store(f"sqlite:///{db_path}")  # and a failed open is not cached
    with pytest.raises(sqlite3.DatabaseError):
        open_store(f"sqlite:///{db_path}")


# --- PostgreSQL's own failure modes -----------------------------------------------------


def _pg_db(request: pytest.FixtureRequest) -> Db:
    server: PgServer = request.getfixturevalue("pg_server")
    return Db("postgresql", server.create_database())


def test_postgresql_write_blocked_by_a_table_lock_raises_lock_not_available(request: pytest.FixtureRequest) -> None:
    import psycopg
    from psycopg import errors

    db = _pg_db(request)
    store = FindingsStore(db.url, busy_timeout=0.2)
    other = psycopg.connect(autocommit=True, **parse_db_url(db.url).connect_kwargs())
    try:
        other.execute("BEGIN")
        other.execute("LOCK TABLE findings IN EXCLUSIVE MODE")
        with pytest.raises(errors.LockNotAvailable) as caught:  # lock_timeout = busy_timeout
            store.upsert_findings("a1", "scan", [_finding(1)])
        assert isinstance(caught.value, psycopg.OperationalError)
        other.execute("ROLLBACK")
        # The store is not poisoned: once the other writer is gone, the retry succeeds.
        assert store.upsert_findings("a1", "scan", [_finding(1)]).inserted == 1
    finally:
        other.close()
        store.close()


def test_postgresql_columns_compare_bytewise_like_sqlite(request: pytest.FixtureRequest) -> None:
    db = _pg_db(request)
    FindingsStore(db.url).close()
    collations = db.rows(
        "SELECT DISTINCT collation_name FROM information_schema.columns "
        "WHERE table_schema = 'public' AND data_type = 'text'"
    )
    assert collations == [("C",)]


def test_postgresql_refused_connection_raises_operational_error_without_the_password() -> None:
    import psycopg

    url = f"postgresql://secflow:hunter2-secret@127.0.0.1:{free_port()}/secflow"  # nothing listens there
    for attempt in range(2):  # and a failed open is not cached
        with pytest.raises(psycopg.OperationalError) as caught:
            open_store(url, busy_timeout=1)
        assert "hunter2" not in str(caught.value) and "hunter2" not in repr(caught.value)
        assert "127.0.0.1" in str(caught.value)  # the driver's own message, saying where
    with pytest.raises(psycopg.OperationalError):
        FindingsStore(url)


def test_postgresql_wrong_password_raises_operational_error_without_it(request: pytest.FixtureRequest) -> None:
    import psycopg

    server: PgServer = request.getfixturevalue("pg_server")
    url = f"postgresql://secflow:wrong-hunter2@127.0.0.1:{server.port}/postgres"
    with pytest.raises(psycopg.OperationalError) as caught:
        FindingsStore(url)
    assert "password authentication failed" in str(caught.value)
    assert "hunter2" not in str(caught.value) and "hunter2" not in repr(caught.value)


@pytest.mark.slow
def test_postgresql_server_stopped_then_restarted() -> None:
    import psycopg

    with running_server() as server:  # a server of its own: this test stops it
        url = server.create_database()
        store = FindingsStore(url)
        try:
            assert store.upsert_findings("a1", "scan", [_finding(1)]).inserted == 1
            server.stop()
            with pytest.raises(psycopg.OperationalError) as caught:  # the pooled connection died
                store.upsert_findings("a1", "scan", [_finding(2)])
            assert server.password not in str(caught.value)
            with pytest.raises(psycopg.OperationalError) as caught:  # and no new one can be made
                store.count_findings("a1")
            assert server.password not in str(caught.value)
            with pytest.raises(psycopg.OperationalError):
                FindingsStore(url)

            server.start()  # same port, same data
            # Dead connections were dropped, not pooled: the store recovers by itself.
            assert store.upsert_findings("a1", "scan", [_finding(1), _finding(2)]).model_dump() == {
                "inserted": 1,
                "updated": 1,
            }
            assert store.count_findings("a1").total == 2
        finally:
            store.close()


# --- URLs --------------------------------------------------------------------------------


def test_sqlite_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_db_url("sqlite:///data/x.db").path == tmp_path / "data" / "x.db"
    absolute = tmp_path / "abs" / "y.db"
    assert parse_db_url(f"sqlite:///{absolute}").path == absolute  # sqlite:////abs/y.db

    s = open_store("sqlite:///rel/dir/z.db")  # parent directories are created
    try:
        assert (tmp_path / "rel" / "dir" / "z.db").is_file()
        assert open_store(f"sqlite:///{tmp_path}/rel/dir/z.db") is s  # one store per file per process
    finally:
        s.close()
    assert open_store("sqlite:///rel/dir/z.db") is not s  # closed stores are not handed out
    open_store("sqlite:///rel/dir/z.db").close()


def test_default_db_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_db_url() == f"sqlite:///{tmp_path / '.secflow' / 'secflow.db'}"
    assert (tmp_path / ".secflow").is_dir()

    monkeypatch.setenv("SECFLOW_DATA_DIR", "data-here")
    assert default_db_url() == f"sqlite:///{tmp_path / 'data-here' / 'secflow.db'}"
    assert (tmp_path / "data-here").is_dir()

    monkeypatch.setenv("SECFLOW_DB_URL", f"sqlite:///{tmp_path}/env.db")
    assert default_db_url() == f"sqlite:///{tmp_path}/env.db"
    s = open_store()
    try:
        assert s.location.path == tmp_path / "env.db"
    finally:
        s.close()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://secflow:hunter2@db:5432/secflow", ("db", 5432, "secflow", "secflow", "hunter2", ())),
        ("postgres://u:hunter2@h/d", ("h", None, "d", "u", "hunter2", ())),
        ("postgresql+psycopg://u:hunter2@h/d", ("h", None, "d", "u", "hunter2", ())),
        ("postgresql://u%40corp:hunter2%2F%3A@[::1]:6543/my%20db?sslmode=require",
         ("::1", 6543, "my db", "u@corp", "hunter2/:", (("sslmode", "require"),))),
    ],
)
def test_postgresql_urls_parse_and_never_show_the_password(url: str, expected: tuple) -> None:
    location = parse_db_url(url)
    assert location.backend == "postgresql" and location.path is None
    got = (location.host, location.port, location.dbname, location.user, location.password, location.options)
    assert got == expected
    kwargs = location.connect_kwargs()
    assert kwargs["password"] == expected[4] and kwargs["connect_timeout"] == 10
    assert "hunter2" not in location.url and "hunter2" not in repr(location)
    assert location.url.startswith("postgresql://")
    assert parse_db_url(location.url).url == location.url  # the shown URL is itself a valid URL, sans password


@pytest.mark.parametrize(
    "url",
    ["", "   ", "findings.db", "mysql://u:hunter2@h/d", "sqlite://host/x.db", "sqlite:///", "sqlite:///:memory:",
     "sqlite+pysqlite:///x.db", "sqlite:///x.db?mode=ro", "://nothing", "sqlite:///dir/",
     "postgresql://u:hunter2@h:notaport/d", "postgresql://u:hunter2@h:0/d", "postgresql://u:hunter2@h/",
     "postgresql://u:hunter2@/d", "postgresql+asyncpg://u:hunter2@h/d", "postgresql://u:hunter2@h/d?password=x",
     "postgresql://u:hunter2@h1,h2/d", "postgresql://u:hunter2@h/d/e", "postgresql://u:hunter2@h/d?=x"],
)
def test_garbage_url_names_the_variable(url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="SECFLOW_DB_URL") as caught:
        parse_db_url(url)
    assert "hunter2" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []  # bad input changes nothing


def test_busy_timeout_is_configurable(db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    url = db.url
    with FindingsStore(url) as s:
        assert s.busy_timeout == 10.0
    monkeypatch.setenv("SECFLOW_DB_BUSY_TIMEOUT", "2.5")
    with FindingsStore(url) as s:
        assert s.busy_timeout == 2.5
    with FindingsStore(url, busy_timeout=0.5) as s:
        assert s.busy_timeout == 0.5
    monkeypatch.setenv("SECFLOW_DB_BUSY_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="SECFLOW_DB_BUSY_TIMEOUT"):
        FindingsStore(url)


# --- error events ------------------------------------------------------------------------


def _event(event_id: str, *, stage: str = "scan", target: str = "10.0.0.1", minute: int = 0, **extra) -> ErrorEvent:
    fields = dict(
        event_id=event_id,
        assessment_id="a1",
        stage_id=stage,
        target=target,
        tool="nmap",
        attempt=1,
        category="transient",
        message="connection reset by peer",
        retryable=True,
        occurred_at=datetime(2025, 5, 1, 12, minute, tzinfo=timezone.utc),
    )
    fields.update(extra)
    return ErrorEvent(**fields)


def test_error_event_recorded_once(store: FindingsStore) -> None:
    assert store.record_error(_event("wf/act-1/1")) is True
    assert store.record_error(_event("wf/act-1/1", message="a retry re-recording it")) is False
    [stored] = store.list_errors("a1")
    assert stored.message == "connection reset by peer"
    assert stored.outcome is None and stored.retryable is True
    assert stored.occurred_at == datetime(2025, 5, 1, 12, 0, tzinfo=timezone.utc)


def test_resolve_errors_touches_only_unresolved_ones(store: FindingsStore) -> None:
    store.record_error(_event("e3", minute=3, attempt=2))
    store.record_error(_event("e1", minute=1))
    store.record_error(_event("e2", minute=2, outcome="skipped"))
    store.record_error(_event("e4", minute=4, target="10.0.0.2"))
    store.record_error(_event("e5", minute=5, stage="report", category="external_tool", retryable=False))

    assert [e.event_id for e in store.list_errors("a1")] == ["e1", "e2", "e3", "e4", "e5"]

    assert store.resolve_errors("a1", "scan", "10.0.0.2", "failed") == 1
    assert store.resolve_errors("a1", "scan", None, "recovered") == 2  # e1, e3; e2 and e4 already known
    assert store.resolve_errors("a1", "scan", None, "recovered") == 0
    outcomes = {e.event_id: e.outcome for e in store.list_errors("a1")}
    assert outcomes == {"e1": "recovered", "e2": "skipped", "e3": "recovered", "e4": "failed", "e5": None}
    assert store.list_errors("other") == []


def test_error_event_validation() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        _event("x", occurred_at=datetime(2025, 5, 1, 12, 0))
    with pytest.raises(ValueError, match="unknown error category"):
        _event("x", category="flaky")
    shifted = _event("x", occurred_at=datetime(2025, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))))
    assert shifted.occurred_at == datetime(2025, 5, 1, 12, 0, tzinfo=timezone.utc)
    assert shifted.occurred_at.tzinfo == timezone.utc


def test_enrichment_cache_and_finding_enrichment(store: FindingsStore) -> None:
    assert store.get_enrichment("CVE-2019-10906") is None
    first = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    store.put_enrichment("CVE-2019-10906", '{"v": 1}', first)
    assert store.get_enrichment("CVE-2019-10906") == ('{"v": 1}', first)
    later = first + timedelta(hours=5)
    store.put_enrichment("CVE-2019-10906", '{"v": 2}', later)  # upsert replaces
    assert store.get_enrichment("CVE-2019-10906") == ('{"v": 2}', later)

    f = _finding(1)
    store.upsert_findings("a1", "s1", [f])
    assert store.get_finding_enrichment("a1", f.fingerprint) is None
    assert store.set_finding_enrichment("a1", f.fingerprint, '{"cve": "x"}') is True
    assert store.get_finding_enrichment("a1", f.fingerprint) == '{"cve": "x"}'
    store.upsert_findings("a1", "s1", [f])  # a re-report keeps the enrichment
    assert store.get_finding_enrichment("a1", f.fingerprint) == '{"cve": "x"}'
    assert store.set_finding_enrichment("a1", "0" * 64, "{}") is False
    # per assessment: a later assessment with the same finding has its own
    store.upsert_findings("a2", "s1", [f])
    assert store.set_finding_enrichment("a2", f.fingerprint, '{"cve": "y"}') is True
    assert store.get_finding_enrichment("a1", f.fingerprint) == '{"cve": "x"}'
    assert store.get_finding_enrichment("a2", f.fingerprint) == '{"cve": "y"}'
