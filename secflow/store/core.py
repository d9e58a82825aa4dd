"""The findings store: findings, their links to assessments, scan locks and the error ledger,
per-target outcomes and documents addressed by digest.

Who writes here: Temporal activities, which may run more than once, in several worker
processes at once, and be killed at any moment; and the starter CLI, from yet another
process. So every write is

* keyed by a deterministic id (finding fingerprint, (assessment, fingerprint) link,
  lock target, error event id, (assessment, stage, target) outcome, document digest)
  and written as an upsert or insert-or-ignore, so a retry changes nothing it should not;
* one transaction, so a process killed half-way leaves either all of it or none of it.

The dead-letter queue, alert deliveries and circuit-breaker rows are kept by
repositories of this package, bound to the store: ``store.dead_letters``,
``store.deliveries``, ``store.breakers``, ``store.audit`` (secflow/store/<name>.py). They are the only
code outside this module that uses its connections and private helpers.

Scan locks come in two shapes over one table: `acquire_lock` (one key; older workflow
runs still use it) and `acquire_locks` (a batch of keys, all or nothing, first come first
served through waiter tickets in `lock_waiters`). Both see each other's locks.

SQLite is the default backend (one file, WAL journal, a busy timeout so concurrent
writers queue instead of failing). PostgreSQL is used when ``SECFLOW_DB_URL`` is a
``postgresql://user:pass@host:port/dbname`` URL (driver: psycopg 3), for deployments
where workers run on several machines. The SQL is kept behind a small seam
(:class:`Dialect` for placeholders/upsert spelling, :class:`_Backend` for connections and
one-time database setup), so both backends share one schema, one migration list and one
implementation of every operation.

The API is synchronous and thread-safe; activities call it through ``asyncio.to_thread``.
Each call borrows a connection from a small per-store pool, so threads never share a
connection mid-transaction.

Driver errors are not wrapped: a writer that waited longer than the busy timeout gets
``sqlite3.OperationalError("database is locked")`` (SQLite) or
``psycopg.errors.LockNotAvailable`` (PostgreSQL, ``lock_timeout``); an unreachable
PostgreSQL server gives ``psycopg.OperationalError``. SecFlow's error taxonomy classifies
those real types. The PostgreSQL password is handed to the driver as a separate
parameter, never as part of a connection string, so no error, log line or ``repr``
carries it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from secflow.errors import Category
from secflow.findings import SEVERITY_ORDER, Confidence, Finding, FindingEnrichment, Severity
from secflow.models import FindingCounts
from secflow.settings import ensure_private_dir

if TYPE_CHECKING:  # imported when first used: the repositories import the models they store
    from secflow.store.audit import AuditRepository
    from secflow.store.breakers import BreakerRepository
    from secflow.store.dead_letters import DeadLetterRepository
    from secflow.store.deliveries import DeliveryRepository
    from secflow.store.recovery import RecoveryRepository

__all__ = [
    "BUSY_TIMEOUT_ENV",
    "DATA_DIR_ENV",
    "DB_URL_ENV",
    "DEFAULT_BUSY_TIMEOUT",
    "MAX_LOCK_CONFLICTS",
    "MIGRATIONS",
    "BulkLockResult",
    "DbLocation",
    "Dialect",
    "ErrorEvent",
    "FindingCounts",
    "FindingsStore",
    "LockInfo",
    "LockResult",
    "Migration",
    "TargetOutcome",
    "UpsertResult",
    "default_db_url",
    "document_digest",
    "open_store",
    "parse_db_url",
]

DB_URL_ENV = "SECFLOW_DB_URL"
DATA_DIR_ENV = "SECFLOW_DATA_DIR"
BUSY_TIMEOUT_ENV = "SECFLOW_DB_BUSY_TIMEOUT"
DEFAULT_BUSY_TIMEOUT = 10.0  # seconds a writer waits for another writer before "database is locked"

_POSTGRES_SCHEMES = frozenset({"postgres", "postgresql"})
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,30}")
_URL_HINT = "expected sqlite:///relative/path.db or sqlite:////absolute/path.db"
_PG_URL_HINT = "expected postgresql://user:password@host:port/dbname"
# Driver suffixes accepted on a PostgreSQL URL (SQLAlchemy spelling): only the driver we use.
_PG_DRIVER_SUFFIXES = frozenset({"", "psycopg"})
DEFAULT_CONNECT_TIMEOUT = 10  # seconds to reach a PostgreSQL server before OperationalError


# --- result and record models ------------------------------------------------------------


class UpsertResult(BaseModel):
    """What one `upsert_findings` call did, counted per assessment.

    `inserted`: fingerprints new to this assessment; `updated`: those it already had.
    A retried activity therefore reports inserted=0.
    """

    inserted: int = 0
    updated: int = 0


class LockResult(BaseModel):
    """Outcome of `acquire_lock`: whether the caller holds the lock, and who does."""

    acquired: bool
    holder: str
    acquired_at: datetime


class LockInfo(BaseModel):
    target: str
    holder: str
    acquired_at: datetime


# At most this many entries in BulkLockResult.conflicts: enough to say who is in the
# way, small enough for any payload whatever the number of keys asked for.
MAX_LOCK_CONFLICTS = 20


class BulkLockResult(BaseModel):
    """Outcome of `acquire_locks`: all keys taken, or none and who is in the way.

    `conflicts` maps a key to the holder blocking it: the holder of its lock, or an
    older waiter (first come, first served); at most MAX_LOCK_CONFLICTS entries, the
    first keys in sorted order.
    """

    acquired: bool
    conflicts: dict[str, str] = Field(default_factory=dict)


class TargetOutcome(BaseModel):
    """Where one target of one stage of an assessment stands (one row, upserted)."""

    assessment_id: str
    stage_id: str
    target: str
    tool: str = ""
    state: str
    attempts: int = 0
    findings: int = 0
    error_category: str = ""
    error_message: str = ""
    # Set by the store when it writes the row, unless the caller gives one.
    updated_at: datetime | None = None


class ErrorEvent(BaseModel):
    """One error SecFlow met, recorded even when a retry later recovered from it.

    `event_id` is deterministic (built by the caller from workflow id, activity id and
    attempt, say), so recording the same event twice stores it once. `message` must
    already be redacted. `outcome` is None until known, then 'recovered', 'failed',
    'skipped', ...
    """

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(min_length=1)
    assessment_id: str = Field(min_length=1)
    stage_id: str
    target: str
    tool: str
    attempt: int = Field(ge=0)
    category: str
    message: str
    retryable: bool
    occurred_at: datetime
    outcome: str | None = None
    # The outbound HTTP dependency (secflow.http name: "nvd", "osv", ...) the error came
    # from, when it came from one.
    dependency: str | None = None
    # When the outcome was written (set by the store; ignored by record_error).
    resolved_at: datetime | None = None
    # The classifier's reason for `category` (secflow.errors.Classification.reason).
    reason: str | None = None
    # The recovery-ladder rung that handled the error last and how it ended
    # (secflow/ladder.py): "retry" + "recovered", "fallback" + "failed", ...
    rung: str | None = None
    rung_outcome: str | None = None

    @field_validator("category")
    @classmethod
    def _known_category(cls, value: str) -> str:
        known = {c.value for c in Category}
        if value not in known:
            raise ValueError(f"unknown error category {value!r}; expected one of {sorted(known)}")
        return value

    @field_validator("occurred_at")
    @classmethod
    def _aware_utc(cls, value: datetime) -> datetime:
        # A naive time would sort wrongly against the others; refuse rather than guess.
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("occurred_at must be timezone-aware")
        return value.astimezone(UTC)


# --- database URL ------------------------------------------------------------------------


@dataclass(frozen=True)
class DbLocation:
    """A parsed database URL.

    SQLite: `path` is absolute. PostgreSQL: `host`, `port`, `dbname`, `user`, `password`
    and extra libpq `options` (from the URL's query). `url` and `repr()` never show the
    password or the options (which could carry one); equality and hashing do include
    them, so `open_store()` never hands a store opened with other credentials.
    """

    backend: str
    path: Path | None = None
    host: str | None = None
    port: int | None = None
    dbname: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    options: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @property
    def url(self) -> str:
        """The URL without credentials: safe for logs, errors and reports."""
        if self.backend == "sqlite":
            return f"sqlite:///{self.path}"
        host = self.host or ""
        if ":" in host:  # an IPv6 literal
            host = f"[{host}]"
        user = f"{urllib.parse.quote(self.user, safe='')}@" if self.user else ""
        port = f":{self.port}" if self.port is not None else ""
        return f"postgresql://{user}{host}{port}/{urllib.parse.quote(self.dbname or '', safe='')}"

    def connect_kwargs(self) -> dict[str, Any]:
        """psycopg.connect() keyword arguments (PostgreSQL only); contains the password."""
        kwargs: dict[str, Any] = dict(self.options)
        for name in ("host", "port", "dbname", "user", "password"):
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = value
        kwargs.setdefault("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
        return kwargs


def _create_private_db_file(path: Path) -> None:
    """Create the SQLite file 0600 (in a 0700 directory when we make one) before SQLite does.

    SQLite gives its -wal and -shm files the database file's mode, so they are 0600 too. A
    file left 0644 by an older SecFlow is tightened, with its -wal and -shm.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for f in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(OSError):  # absent, or not ours: leave it
            if f.stat().st_mode & 0o077 and f.stat().st_uid == os.geteuid():
                f.chmod(0o600)


def default_db_url() -> str:
    """`SECFLOW_DB_URL` if set, else a SQLite file in `SECFLOW_DATA_DIR` (default ./.secflow).

    The data directory is made absolute and created, so every process started from the
    same place agrees on one file.
    """
    url = os.environ.get(DB_URL_ENV, "").strip()
    if url:
        return url
    data_dir = Path(os.environ.get(DATA_DIR_ENV, "").strip() or ".secflow").expanduser().resolve()
    ensure_private_dir(data_dir)
    return f"sqlite:///{data_dir / 'secflow.db'}"


def parse_db_url(url: str) -> DbLocation:
    """Parse a database URL, or raise ValueError saying what is wrong.

    ``sqlite:///rel/path.db`` is relative to the current directory and
    ``sqlite:////abs/path.db`` absolute (the SQLAlchemy convention, and what
    `default_db_url` produces). ``postgresql://user:password@host:port/dbname`` (or
    ``postgres://``, ``postgresql+psycopg://``) selects PostgreSQL; user and password may
    be percent-encoded, and query parameters are passed to libpq (``?sslmode=require``).
    The URL itself is never echoed in errors: a PostgreSQL URL carries a password.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"{DB_URL_ENV} is empty ({_URL_HINT})")
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        raise ValueError(f"{DB_URL_ENV} is not a URL: no '<scheme>://' prefix ({_URL_HINT})")
    base_scheme = scheme.lower().split("+", 1)[0]
    if base_scheme in _POSTGRES_SCHEMES:
        return _parse_postgres_url(scheme, rest)
    if base_scheme != "sqlite":
        shown = scheme if _SCHEME_RE.fullmatch(scheme) else "?"
        raise ValueError(f"{DB_URL_ENV} has an unsupported scheme {shown!r} ({_URL_HINT})")
    if scheme.lower() != "sqlite":
        raise ValueError(f"{DB_URL_ENV}: SQLite driver suffixes are not supported ({_URL_HINT})")
    if not rest.startswith("/"):
        raise ValueError(f"{DB_URL_ENV}: a SQLite URL has no host; use three slashes ({_URL_HINT})")
    path_text, _, query = rest[1:].partition("?")
    if query:
        raise ValueError(f"{DB_URL_ENV}: query parameters are not supported in SQLite URLs ({_URL_HINT})")
    if not path_text:
        raise ValueError(f"{DB_URL_ENV}: the SQLite URL has no file path ({_URL_HINT})")
    if path_text == ":memory:" or path_text.startswith("file:"):
        raise ValueError(f"{DB_URL_ENV}: in-memory SQLite is not supported (workers and the CLI must share one file)")
    path = Path(path_text).expanduser()
    if path_text.endswith("/") or path.name in {"", ".", ".."}:
        raise ValueError(f"{DB_URL_ENV}: the SQLite path names a directory, not a file ({_URL_HINT})")
    return DbLocation(backend="sqlite", path=path.resolve())


def _parse_postgres_url(scheme: str, rest: str) -> DbLocation:
    """The PostgreSQL half of `parse_db_url`. Messages never include the URL's userinfo."""
    driver = scheme.lower().partition("+")[2]
    if driver not in _PG_DRIVER_SUFFIXES:
        shown = driver if _SCHEME_RE.fullmatch(driver) else "?"
        raise ValueError(f"{DB_URL_ENV}: PostgreSQL driver {shown!r} is not supported; SecFlow uses psycopg ({_PG_URL_HINT})")
    parts = urllib.parse.urlsplit("postgresql://" + rest)
    if parts.fragment:
        raise ValueError(f"{DB_URL_ENV}: a PostgreSQL URL has no #fragment ({_PG_URL_HINT})")
    options: dict[str, str] = {}
    try:
        pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ValueError(f"{DB_URL_ENV}: the PostgreSQL URL's query string is malformed ({_PG_URL_HINT})") from None
    for key, value in pairs:
        if not re.fullmatch(r"[a-z_]{1,40}", key):
            raise ValueError(f"{DB_URL_ENV}: the PostgreSQL URL has a malformed query parameter name ({_PG_URL_HINT})")
        if key in {"host", "hostaddr", "port", "dbname", "user", "password"}:
            raise ValueError(f"{DB_URL_ENV}: give {key} in the URL itself, not as a query parameter ({_PG_URL_HINT})")
        options[key] = value
    netloc = parts.netloc.rpartition("@")[2]
    if "," in netloc:
        raise ValueError(f"{DB_URL_ENV}: multi-host PostgreSQL URLs are not supported ({_PG_URL_HINT})")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{DB_URL_ENV}: the PostgreSQL port must be a number from 1 to 65535 ({_PG_URL_HINT})") from None
    if port == 0:
        raise ValueError(f"{DB_URL_ENV}: the PostgreSQL port must be a number from 1 to 65535 ({_PG_URL_HINT})")
    host = parts.hostname
    if not host:
        raise ValueError(f"{DB_URL_ENV}: the PostgreSQL URL has no host ({_PG_URL_HINT})")
    dbname = urllib.parse.unquote(parts.path[1:]) if parts.path.startswith("/") else ""
    if not dbname or "/" in dbname:
        raise ValueError(f"{DB_URL_ENV}: the PostgreSQL URL must name one database after the host ({_PG_URL_HINT})")
    user = urllib.parse.unquote(parts.username) if parts.username else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    return DbLocation(
        backend="postgresql",
        host=host,
        port=port,
        dbname=dbname,
        user=user or None,
        password=password,
        options=tuple(sorted(options.items())),
    )


def _busy_timeout_from_env() -> float:
    raw = os.environ.get(BUSY_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_BUSY_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{BUSY_TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{BUSY_TIMEOUT_ENV} must be a finite number of seconds >= 0, got {raw!r}")
    return value


# --- dialect / backend seam --------------------------------------------------------------


@dataclass(frozen=True)
class Dialect:
    """The few places where SQL spelling differs between SQLite and PostgreSQL.

    Statements are written with ``?`` placeholders and standard
    ``INSERT ... ON CONFLICT (...) DO UPDATE/NOTHING`` (both engines accept it);
    `sql()` rewrites placeholders for the backend.
    """

    name: str
    placeholder: str  # "?" (sqlite3) or "%s" (psycopg)
    begin_write: str  # start a transaction that takes the write lock up front
    greatest: str  # two-argument max(): MAX in SQLite, GREATEST in PostgreSQL
    # Run inside the migration transaction to serialise concurrent migrators; SQLite's
    # BEGIN IMMEDIATE already does, PostgreSQL takes a transaction-scoped advisory lock.
    migration_lock: str | None = None
    # Collation given to every TEXT column the migrations create. SQLite compares text
    # bytewise; PostgreSQL would use the database's locale, under which ORDER BY and the
    # MAX of ISO timestamps stored as text could differ from SQLite. "C" is bytewise.
    text_collation: str | None = None
    # Run first in every bulk scan-lock transaction (acquire_locks / release_locks) to
    # serialise them, so waiter tickets are numbered in one order. SQLite's
    # BEGIN IMMEDIATE already serialises every writer.
    lock_queue_lock: str | None = None

    def sql(self, text: str) -> str:
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)

    def ddl(self, text: str) -> str:
        """A portable CREATE statement, spelled for this backend."""
        if self.text_collation is None:
            return text
        return re.sub(r"\bTEXT\b", f'TEXT COLLATE "{self.text_collation}"', text)


SQLITE_DIALECT = Dialect(name="sqlite", placeholder="?", begin_write="BEGIN IMMEDIATE", greatest="MAX")

# Key of the advisory lock that serialises migrations of one PostgreSQL database
# (an arbitrary constant; "SecFlow store migrate" in spirit). Transaction-scoped, so a
# migrator killed half-way releases it with its rolled-back transaction.
PG_MIGRATION_LOCK_KEY = 0x5EC_F10E_0001
# Key of the advisory lock that serialises bulk scan-lock transactions (see Dialect).
PG_LOCK_QUEUE_KEY = 0x5EC_F10E_0002
POSTGRES_DIALECT = Dialect(
    name="postgresql",
    placeholder="%s",
    # READ COMMITTED: every statement sees the latest committed rows, and
    # INSERT ... ON CONFLICT waits for a concurrent inserter of the same key, then
    # updates (or skips) its row, so upserts and lock races need no table lock.
    begin_write="BEGIN",
    greatest="GREATEST",
    migration_lock=f"SELECT pg_advisory_xact_lock({PG_MIGRATION_LOCK_KEY})",
    text_collation="C",
    lock_queue_lock=f"SELECT pg_advisory_xact_lock({PG_LOCK_QUEUE_KEY})",
)


class _Backend(Protocol):
    dialect: Dialect

    def connect(self) -> Any:
        """A new DB-API connection in autocommit mode (transactions are explicit)."""

    def prepare(self, conn: Any) -> None:
        """One-time per-open setup of the database itself (journal mode, ...)."""

    def has_table(self, conn: Any, name: str) -> bool:
        """Whether `name` exists (catalog lookup differs: sqlite_master vs to_regclass)."""

    def in_transaction(self, conn: Any) -> bool:
        """Whether `conn` is inside a transaction (or in a state we cannot tell)."""

    def reusable(self, conn: Any) -> bool:
        """Whether an idle pooled connection may be handed out again."""

    def describe(self) -> str:
        """Where the database is, for logs and errors; never includes credentials."""


class _SQLiteBackend:
    dialect = SQLITE_DIALECT

    def __init__(self, path: Path, busy_timeout: float) -> None:
        self.path = path
        self.busy_timeout = busy_timeout

    def connect(self) -> sqlite3.Connection:
        # isolation_level=None: the sqlite3 module does not open transactions behind our
        # back; we issue BEGIN IMMEDIATE / COMMIT ourselves. `timeout` installs SQLite's
        # busy handler, so a writer waits for the lock instead of failing at once.
        conn = sqlite3.connect(
            str(self.path),
            timeout=self.busy_timeout,
            isolation_level=None,
            check_same_thread=False,  # pooled: used by one thread at a time, not always the same
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def prepare(self, conn: sqlite3.Connection) -> None:
        # WAL: readers (the CLI, reports) never block writers and vice versa. The mode is
        # persistent in the file; switching it needs a brief exclusive lock, so two
        # processes opening a brand-new file at once may see "locked": retry until the
        # busy timeout runs out.
        deadline = time.monotonic() + max(self.busy_timeout, 0.05)
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL").fetchone()
                return
            except sqlite3.OperationalError as exc:
                if not _is_locked(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)

    def has_table(self, conn: sqlite3.Connection, name: str) -> bool:
        row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
        return row is not None

    def in_transaction(self, conn: sqlite3.Connection) -> bool:
        return conn.in_transaction

    def reusable(self, conn: sqlite3.Connection) -> bool:
        return True

    def describe(self) -> str:
        return f"sqlite:///{self.path}"


class _PostgresBackend:
    """PostgreSQL through psycopg 3: one server connection per pooled connection.

    `busy_timeout` becomes the session's ``lock_timeout``: a writer that waits longer
    than that for a row or table another transaction holds fails with
    ``psycopg.errors.LockNotAvailable`` (an OperationalError), like SQLite's
    "database is locked".
    """

    dialect = POSTGRES_DIALECT

    def __init__(self, location: DbLocation, busy_timeout: float) -> None:
        import psycopg  # imported here: SQLite-only installs and tests never need it

        self._psycopg = psycopg
        self._location = location
        # lock_timeout = 0 would mean "wait forever"; SQLite's 0 means "do not wait".
        self._lock_timeout_ms = max(1, round(busy_timeout * 1000))

    def connect(self) -> Any:
        # Keyword arguments, not a conninfo string: libpq never echoes a password it
        # was given this way, and psycopg has no string to quote in its errors.
        conn = self._psycopg.connect(autocommit=True, **self._location.connect_kwargs())
        try:
            conn.execute(f"SET lock_timeout = {self._lock_timeout_ms}")
        except BaseException:
            conn.close()
            raise
        return conn

    def prepare(self, conn: Any) -> None:
        pass  # nothing per database: the server owns durability and concurrency settings

    def has_table(self, conn: Any, name: str) -> bool:
        row = conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()
        return row is not None and row[0] is not None

    def in_transaction(self, conn: Any) -> bool:
        return conn.info.transaction_status != self._psycopg.pq.TransactionStatus.IDLE

    def reusable(self, conn: Any) -> bool:
        return not conn.closed and not self.in_transaction(conn)

    def describe(self) -> str:
        return self._location.url


def _is_locked(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


# --- schema and migrations ---------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    """One schema step. Statements must be portable SQL (SQLite and PostgreSQL)."""

    version: int
    name: str
    statements: tuple[str, ...]


# Append only: never edit or reorder a migration that has shipped.
# Timestamps are ISO-8601 UTC text with microseconds and a fixed '+00:00' suffix, so
# they compare correctly as strings (MAX, ORDER BY).
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "findings and assessment links",
        (
            """
            CREATE TABLE findings (
                fingerprint TEXT PRIMARY KEY,
                tool        TEXT NOT NULL,
                rule_id     TEXT NOT NULL,
                title       TEXT NOT NULL,
                severity    TEXT NOT NULL,
                confidence  TEXT NOT NULL,
                target      TEXT NOT NULL,
                location    TEXT NOT NULL,
                cwe         TEXT NOT NULL,
                cve         TEXT NOT NULL,
                evidence    TEXT NOT NULL,
                first_seen  TEXT NOT NULL,
                last_seen   TEXT NOT NULL
            )
            """,
            """
            CREATE TABLE assessment_findings (
                assessment_id            TEXT NOT NULL,
                fingerprint              TEXT NOT NULL REFERENCES findings (fingerprint),
                stage_id                 TEXT NOT NULL,
                first_seen_in_assessment TEXT NOT NULL,
                PRIMARY KEY (assessment_id, fingerprint)
            )
            """,
            "CREATE INDEX assessment_findings_by_stage ON assessment_findings (assessment_id, stage_id)",
            "CREATE INDEX assessment_findings_by_fingerprint ON assessment_findings (fingerprint)",
        ),
    ),
    Migration(
        2,
        "scan locks",
        (
            """
            CREATE TABLE scan_locks (
                target      TEXT PRIMARY KEY,
                holder      TEXT NOT NULL,
                acquired_at TEXT NOT NULL
            )
            """,
        ),
    ),
    Migration(
        3,
        "error events",
        (
            """
            CREATE TABLE error_events (
                event_id      TEXT PRIMARY KEY,
                assessment_id TEXT NOT NULL,
                stage_id      TEXT NOT NULL,
                target        TEXT NOT NULL,
                tool          TEXT NOT NULL,
                attempt       INTEGER NOT NULL,
                category      TEXT NOT NULL,
                message       TEXT NOT NULL,
                retryable     INTEGER NOT NULL,
                occurred_at   TEXT NOT NULL,
                outcome       TEXT,
                resolved_at   TEXT
            )
            """,
            "CREATE INDEX error_events_by_assessment ON error_events (assessment_id, occurred_at)",
            "CREATE INDEX error_events_by_stage ON error_events (assessment_id, stage_id, target)",
        ),
    ),
    Migration(
        4,
        "cve enrichment cache and finding enrichment",
        (
            """
            CREATE TABLE enrichment_cache (
                cve_id     TEXT PRIMARY KEY,
                payload    TEXT NOT NULL,
                fetched_at TEXT NOT NULL
            )
            """,
            "ALTER TABLE findings ADD COLUMN enrichment TEXT",
        ),
    ),
    Migration(
        5,
        "circuit breaker snapshots per worker process",
        (
            # One row per (worker process, dependency), rewritten on every transition, so
            # `python -m starter breakers` can show what each worker's breakers are doing.
            """
            CREATE TABLE breaker_states (
                worker_id          TEXT NOT NULL,
                dependency         TEXT NOT NULL,
                state              TEXT NOT NULL,
                failures           INTEGER NOT NULL,
                trips              INTEGER NOT NULL,
                opened_at          TEXT,
                next_half_open_at  TEXT,
                updated_at         TEXT NOT NULL,
                PRIMARY KEY (worker_id, dependency)
            )
            """,
        ),
    ),
    Migration(
        6,
        "dead-letter queue",
        (
            """
            CREATE TABLE dead_letters (
                task_id            TEXT PRIMARY KEY,
                workflow_id        TEXT NOT NULL,
                run_id             TEXT NOT NULL,
                stage_id           TEXT NOT NULL,
                target             TEXT NOT NULL,
                tool               TEXT NOT NULL,
                reason             TEXT NOT NULL,
                category           TEXT NOT NULL,
                message            TEXT NOT NULL,
                attempts           INTEGER NOT NULL,
                first_failure_at   TEXT NOT NULL,
                last_failure_at    TEXT NOT NULL,
                replay             TEXT NOT NULL,
                state              TEXT NOT NULL,
                replayed_at        TEXT,
                replay_outcome     TEXT,
                replay_workflow_id TEXT
            )
            """,
            "CREATE INDEX dead_letters_by_state ON dead_letters (state, last_failure_at)",
            "CREATE INDEX dead_letters_by_workflow ON dead_letters (workflow_id)",
        ),
    ),
    Migration(
        7,
        "alert deliveries (grouping, caps, channel references)",
        (
            """
            CREATE TABLE alert_deliveries (
                delivery_id   TEXT PRIMARY KEY,
                dedup_key     TEXT NOT NULL,
                channel       TEXT NOT NULL,
                event         TEXT NOT NULL,
                group_key     TEXT NOT NULL,
                status        TEXT NOT NULL,
                merged_count  INTEGER NOT NULL,
                created_at    TEXT NOT NULL,
                updated_at    TEXT NOT NULL,
                external_ref  TEXT
            )
            """,
            "CREATE INDEX alert_deliveries_by_channel ON alert_deliveries (channel, created_at)",
            "CREATE INDEX alert_deliveries_by_group ON alert_deliveries (channel, group_key, created_at)",
            "CREATE INDEX alert_deliveries_by_incident ON alert_deliveries (dedup_key, channel)",
        ),
    ),
    Migration(
        8,
        "error events name the dependency that failed",
        ("ALTER TABLE error_events ADD COLUMN dependency TEXT",),
    ),
    Migration(
        9,
        "enrichment per assessment",
        # What one assessment's enrich stage learned stays with that assessment: a later
        # assessment sharing the finding must not rewrite an earlier one's report.
        # findings.enrichment (migration 4) is only read for links written before this.
        ("ALTER TABLE assessment_findings ADD COLUMN enrichment TEXT",),
    ),
    Migration(
        10,
        "documents by digest, per-target outcomes, bulk scan locks with waiter tickets",
        (
            # Content-addressed documents (the spec and scope of an assessment, stored
            # once and passed around by digest instead of copied into every payload).
            """
            CREATE TABLE documents (
                digest     TEXT PRIMARY KEY,
                body       TEXT NOT NULL,
                created_at TEXT NOT NULL
            )
            """,
            # One row per (assessment, stage, target): the per-target state that used to
            # live in workflow state. The primary key is also the paging order.
            """
            CREATE TABLE target_outcomes (
                assessment_id  TEXT NOT NULL,
                stage_id       TEXT NOT NULL,
                target         TEXT NOT NULL,
                tool           TEXT NOT NULL,
                state          TEXT NOT NULL,
                attempts       INTEGER NOT NULL,
                findings       INTEGER NOT NULL,
                error_category TEXT NOT NULL,
                error_message  TEXT NOT NULL,
                updated_at     TEXT NOT NULL,
                PRIMARY KEY (assessment_id, stage_id, target)
            )
            """,
            "CREATE INDEX target_outcomes_by_state ON target_outcomes (assessment_id, state, stage_id, target)",
            # First come, first served for scan locks: a holder refused a set of keys
            # leaves a ticket on each; a later asker is refused while an older ticket
            # waits on one of its keys. Tickets of one refusal share one number.
            """
            CREATE TABLE lock_waiters (
                target        TEXT NOT NULL,
                holder        TEXT NOT NULL,
                ticket        INTEGER NOT NULL,
                waiting_since TEXT NOT NULL,
                PRIMARY KEY (target, holder)
            )
            """,
            "CREATE INDEX lock_waiters_by_holder ON lock_waiters (holder)",
            "CREATE INDEX scan_locks_by_holder ON scan_locks (holder)",
        ),
    ),
    Migration(
        11,
        "decisions audit trail",
        (
            # Every human decision, accepted or not, kept past Temporal's retention
            # (secflow/store/audit.py). entry_id: the nonce of an accepted signed decision,
            # else an id its recorder made; a retried write is one row.
            """
            CREATE TABLE decisions_audit (
                workflow_id     TEXT NOT NULL,
                entry_id        TEXT NOT NULL,
                run_id          TEXT NOT NULL,
                recorded_by     TEXT NOT NULL,
                via             TEXT NOT NULL,
                action          TEXT NOT NULL,
                stage_id        TEXT NOT NULL,
                decided_by      TEXT NOT NULL,
                reason          TEXT NOT NULL,
                issued_at       TEXT NOT NULL,
                nonce           TEXT NOT NULL,
                key_fingerprint TEXT NOT NULL,
                signed          INTEGER NOT NULL,
                accepted        INTEGER NOT NULL,
                outcome         TEXT NOT NULL,
                decided_at      TEXT NOT NULL,
                PRIMARY KEY (workflow_id, entry_id)
            )
            """,
            "CREATE INDEX decisions_audit_by_time ON decisions_audit (decided_at)",
        ),
    ),
    Migration(
        12,
        "the classifier's reason in the error ledger and the dead-letter queue",
        (
            # Why a failure got its category ("ECONNREFUSED", "exit 139 (SIGSEGV)"):
            # `secflow.errors.Classification.reason`, short and redacted.
            "ALTER TABLE error_events ADD COLUMN reason TEXT",
            "ALTER TABLE dead_letters ADD COLUMN error_reason TEXT",
        ),
    ),
    Migration(
        13,
        "recovery ladder rungs on error events, recovery validations",
        (
            # The ladder rung that handled the error last (retry, fallback, human,
            # dead_letter, fail, skip) and how that rung ended (secflow/ladder.py).
            "ALTER TABLE error_events ADD COLUMN rung TEXT",
            "ALTER TABLE error_events ADD COLUMN rung_outcome TEXT",
            # One row per check of a recovered stage (secflow/store/recovery.py); a
            # retried write of the same check is one row.
            """
            CREATE TABLE recovery_validations (
                assessment_id TEXT NOT NULL,
                stage_id      TEXT NOT NULL,
                check_id      TEXT NOT NULL,
                after_rung    TEXT NOT NULL,
                passed        INTEGER NOT NULL,
                problems      TEXT NOT NULL,
                findings      INTEGER NOT NULL,
                checked_at    TEXT NOT NULL,
                PRIMARY KEY (assessment_id, stage_id, check_id)
            )
            """,
            "CREATE INDEX recovery_validations_by_time ON recovery_validations (checked_at)",
        ),
    ),
)


def _check_migrations(migrations: tuple[Migration, ...]) -> None:
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(migrations) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..n in order, got {versions}")


_check_migrations(MIGRATIONS)

_SCHEMA_VERSION_DDL = """
CREATE TABLE IF NOT EXISTS schema_version (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TEXT NOT NULL
)
"""


# --- helpers -----------------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(value: datetime) -> str:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamps must be timezone-aware")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _parse_ts(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:  # never written that way, but do not hand out naive times
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _require(name: str, value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")


def document_digest(body: str) -> str:
    """The address of a document: "sha256:" and the hex SHA-256 of its UTF-8 bytes."""
    return "sha256:" + hashlib.sha256(body.encode("utf-8")).hexdigest()


# Keys per IN (...) list: far below SQLite's variable limit and PostgreSQL's 65,535.
_IN_CHUNK = 500


def _lock_keys(keys: Sequence[str]) -> list[str]:
    if isinstance(keys, str):
        raise TypeError("keys must be a sequence of strings, not one string")
    for key in keys:
        _require("lock key", key)
    return sorted(set(keys))


def _chunks(items: list[str], size: int = _IN_CHUNK) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


_SEVERITY_RANK_SQL = (
    "CASE f.severity "
    + " ".join(f"WHEN '{s.value}' THEN {i}" for i, s in enumerate(SEVERITY_ORDER))
    + f" ELSE {len(SEVERITY_ORDER)} END"
)


# --- the store ---------------------------------------------------------------------------


class FindingsStore:
    """Findings, assessment links, scan locks and error events in one database.

    Use `open_store()` rather than constructing directly; it caches one store per URL
    per process. Thread-safe: each call borrows its own pooled connection.
    """

    def __init__(self, url: str, *, busy_timeout: float | None = None) -> None:
        location = parse_db_url(url)
        timeout = _busy_timeout_from_env() if busy_timeout is None else float(busy_timeout)
        if not timeout >= 0 or timeout == float("inf"):
            raise ValueError(f"busy_timeout must be a finite number of seconds >= 0, got {busy_timeout!r}")
        self.location = location
        self.url = location.url
        self.busy_timeout = timeout
        self._backend: _Backend
        if location.backend == "postgresql":
            self._backend = _PostgresBackend(location, timeout)
        else:
            assert location.path is not None
            self._backend = _SQLiteBackend(location.path, timeout)
        self._dialect = self._backend.dialect
        self._lock = threading.Lock()
        self._idle: list[Any] = []
        self._closed = False
        self._pid = os.getpid()
        #: Versions of the migrations this open applied (empty when the schema was current).
        self.applied_migrations: list[int] = []

        if location.path is not None:
            _create_private_db_file(location.path)
        conn = self._backend.connect()
        try:
            self._backend.prepare(conn)
            self.applied_migrations = self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._idle.append(conn)

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Close pooled connections; connections in use close when they are returned."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()
        _forget(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> FindingsStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FindingsStore({self._backend.describe()!r})"

    # -- repositories of the other tables ---------------------------------------------------
    #
    # Tables whose models live elsewhere in secflow/ are reached through a repository bound
    # to this store (secflow/store/<name>.py); no module outside secflow/store/ touches the
    # store's connections or private helpers.

    @cached_property
    def dead_letters(self) -> DeadLetterRepository:
        """The dead-letter queue (``dead_letters``)."""
        from secflow.store.dead_letters import DeadLetterRepository

        return DeadLetterRepository(self)

    @cached_property
    def deliveries(self) -> DeliveryRepository:
        """Alert deliveries (``alert_deliveries``)."""
        from secflow.store.deliveries import DeliveryRepository

        return DeliveryRepository(self)

    @cached_property
    def audit(self) -> AuditRepository:
        """The decisions audit trail (``decisions_audit``)."""
        from secflow.store.audit import AuditRepository

        return AuditRepository(self)

    @cached_property
    def recovery(self) -> RecoveryRepository:
        """Ladder rungs on error events and recovery validations (migration 13)."""
        from secflow.store.recovery import RecoveryRepository

        return RecoveryRepository(self)

    @cached_property
    def breakers(self) -> BreakerRepository:
        """Circuit-breaker rows of every worker (``breaker_states``)."""
        from secflow.store.breakers import BreakerRepository

        return BreakerRepository(self)

    # -- connections and transactions -----------------------------------------------------

    def _borrow(self) -> Any:
        stale: list[Any] = []
        try:
            with self._lock:
                if self._closed:
                    raise RuntimeError("the findings store is closed")
                while self._idle:
                    conn = self._idle.pop()
                    if self._backend.reusable(conn):
                        return conn
                    stale.append(conn)
        finally:
            for conn in stale:
                with contextlib.suppress(Exception):
                    conn.close()
        return self._backend.connect()

    def _give_back(self, conn: Any, *, healthy: bool) -> None:
        with self._lock:
            if healthy and not self._closed:
                self._idle.append(conn)
                return
        with contextlib.suppress(Exception):
            conn.close()

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        """A pooled connection for reads (each statement is its own snapshot)."""
        conn = self._borrow()
        healthy = True
        try:
            yield conn
        except BaseException:
            healthy = self._backend.reusable(conn) and not self._backend.in_transaction(conn)
            raise
        finally:
            self._give_back(conn, healthy=healthy)

    @contextlib.contextmanager
    def _write(self) -> Iterator[Any]:
        """One write transaction, holding the write lock from its first statement.

        Taking the lock up front (BEGIN IMMEDIATE) matters in WAL mode: a transaction
        that reads first and upgrades later fails with SQLITE_BUSY_SNAPSHOT without
        waiting when another writer got in between.
        """
        with self._connection() as conn:
            conn.execute(self._dialect.begin_write)
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(Exception):
                    if self._backend.in_transaction(conn):
                        conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _x(self, conn: Any, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return conn.execute(self._dialect.sql(sql), params)

    def _many(self, conn: Any, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """One statement for many rows (sqlite3 loops in C; psycopg pipelines them)."""
        if rows:
            cursor = conn.cursor()
            try:
                cursor.executemany(self._dialect.sql(sql), rows)
            finally:
                cursor.close()

    # -- migrations -----------------------------------------------------------------------

    def _applied_versions(self, conn: Any) -> set[int] | None:
        """Applied migration versions, or None on a database SecFlow never touched."""
        if not self._backend.has_table(conn, "schema_version"):
            return None
        rows = conn.execute("SELECT version FROM schema_version").fetchall()
        return {int(r[0]) for r in rows}

    def _migrate(self, conn: Any) -> list[int]:
        """Apply missing migrations, in order, each recorded in schema_version.

        Fast path: a read that finds everything applied takes no write lock. Otherwise
        all missing migrations run in one write transaction that re-reads the applied
        set under the lock, so two processes opening a new file at once apply each
        migration exactly once (the second waits, then finds nothing to do).
        """
        latest = MIGRATIONS[-1].version
        applied = self._applied_versions(conn)
        if applied is not None and self._check_known(applied) and len(applied) == latest:
            return []
        done: list[int] = []
        conn.execute(self._dialect.begin_write)
        try:
            if self._dialect.migration_lock:
                conn.execute(self._dialect.migration_lock)
            conn.execute(self._dialect.ddl(_SCHEMA_VERSION_DDL))
            applied = self._applied_versions(conn) or set()
            self._check_known(applied)
            for migration in MIGRATIONS:
                if migration.version in applied:
                    continue
                for statement in migration.statements:
                    conn.execute(self._dialect.ddl(statement))
                self._x(
                    conn,
                    "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, _ts(_utcnow())),
                )
                done.append(migration.version)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                if self._backend.in_transaction(conn):
                    conn.execute("ROLLBACK")
            raise
        return done

    def _check_known(self, applied: set[int]) -> bool:
        latest = MIGRATIONS[-1].version
        newer = sorted(v for v in applied if v > latest)
        if newer:
            raise RuntimeError(
                f"the findings database at {self._backend.describe()} has schema version "
                f"{max(newer)}, newer than this SecFlow knows ({latest}); upgrade SecFlow"
            )
        return True

    def schema_versions(self) -> list[tuple[int, str, datetime]]:
        """(version, name, applied_at) of every applied migration, oldest first."""
        with self._connection() as conn:
            rows = conn.execute("SELECT version, name, applied_at FROM schema_version ORDER BY version").fetchall()
        return [(int(v), n, _parse_ts(a)) for v, n, a in rows]

    # -- findings -------------------------------------------------------------------------

    def upsert_findings(self, assessment_id: str, stage_id: str, findings: Iterable[Finding]) -> UpsertResult:
        """Insert or refresh findings and link them to the assessment, in one transaction.

        A fingerprint new to the store is inserted with first_seen = last_seen = now; a
        known one keeps first_seen and gets last_seen = now (never moved backwards by a
        worker with a lagging clock) and the latest title, severity, evidence, etc.
        The (assessment, fingerprint) link records the stage that first reported it.
        Duplicate fingerprints within one call count once (the last one wins).
        """
        _require("assessment_id", assessment_id)
        _require("stage_id", stage_id)
        batch: dict[str, Finding] = {}
        for finding in findings:
            if not isinstance(finding, Finding):
                raise TypeError(f"upsert_findings takes Finding objects, got {type(finding).__name__}")
            _require("finding.fingerprint", finding.fingerprint)
            batch.pop(finding.fingerprint, None)  # keep the latest, in the latest position
            batch[finding.fingerprint] = finding
        if not batch:
            return UpsertResult()

        g = self._dialect.greatest
        upsert_finding = f"""
            INSERT INTO findings (fingerprint, tool, rule_id, title, severity, confidence, target,
                                  location, cwe, cve, evidence, first_seen, last_seen)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (fingerprint) DO UPDATE SET
                tool = excluded.tool, rule_id = excluded.rule_id, title = excluded.title,
                severity = excluded.severity, confidence = excluded.confidence,
                target = excluded.target, location = excluded.location, cwe = excluded.cwe,
                cve = excluded.cve, evidence = excluded.evidence,
                last_seen = {g}(findings.last_seen, excluded.last_seen)
        """
        link = """
            INSERT INTO assessment_findings (assessment_id, fingerprint, stage_id, first_seen_in_assessment)
            VALUES (?, ?, ?, ?)
            ON CONFLICT (assessment_id, fingerprint) DO NOTHING
        """
        inserted = updated = 0
        with self._write() as conn:
            now = _ts(_utcnow())
            # Fingerprint order, whatever order the caller gave: PostgreSQL locks rows one
            # by one, so two writers that meet on the same rows in opposite orders would
            # deadlock; in one global order they simply queue. (SQLite locks the file.)
            for fp, f in sorted(batch.items()):
                self._x(
                    conn,
                    upsert_finding,
                    (
                        fp,
                        f.tool,
                        f.rule_id,
                        f.title,
                        Severity(f.severity).value,
                        Confidence(f.confidence).value,
                        f.target,
                        f.location,
                        json.dumps(list(f.cwe)),
                        json.dumps(list(f.cve)),
                        f.evidence,
                        now,
                        now,
                    ),
                )
                # DO NOTHING reports rowcount 0 when the link existed: that is a retry
                # (or a re-report) within this assessment.
                if self._x(conn, link, (assessment_id, fp, stage_id, now)).rowcount == 1:
                    inserted += 1
                else:
                    updated += 1
        return UpsertResult(inserted=inserted, updated=updated)

    def list_findings(self, assessment_id: str) -> list[Finding]:
        """The assessment's findings, critical first, then by location."""
        _require("assessment_id", assessment_id)
        sql = f"""
            SELECT f.fingerprint, f.tool, f.rule_id, f.title, f.severity, f.confidence, f.target,
                   f.location, f.cwe, f.cve, f.evidence, f.first_seen, f.last_seen,
                   COALESCE(a.enrichment, f.enrichment)
            FROM assessment_findings a JOIN findings f ON f.fingerprint = a.fingerprint
            WHERE a.assessment_id = ?
            ORDER BY {_SEVERITY_RANK_SQL}, f.location, f.target, f.tool, f.rule_id, f.fingerprint
        """
        with self._connection() as conn:
            rows = self._x(conn, sql, (assessment_id,)).fetchall()
        return [
            Finding(
                fingerprint=r[0],
                tool=r[1],
                rule_id=r[2],
                title=r[3],
                severity=Severity(r[4]),
                confidence=Confidence(r[5]),
                target=r[6],
                location=r[7],
                cwe=json.loads(r[8]),
                cve=json.loads(r[9]),
                evidence=r[10],
                first_seen=_parse_ts(r[11]),
                last_seen=_parse_ts(r[12]),
                assessment_id=assessment_id,
                enrichment=FindingEnrichment.from_stored(r[13]),
            )
            for r in rows
        ]

    def count_findings(self, assessment_id: str, stage_id: str | None = None) -> FindingCounts:
        """Findings linked to the assessment (to one stage, if given), by severity.

        All five severities are present in `by_severity`, zero included.
        """
        _require("assessment_id", assessment_id)
        sql = """
            SELECT f.severity, COUNT(*)
            FROM assessment_findings a JOIN findings f ON f.fingerprint = a.fingerprint
            WHERE a.assessment_id = ?
        """
        params: tuple[Any, ...] = (assessment_id,)
        if stage_id is not None:
            sql += " AND a.stage_id = ?"
            params += (stage_id,)
        sql += " GROUP BY f.severity"
        with self._connection() as conn:
            rows = self._x(conn, sql, params).fetchall()
        by_severity = {s.value: 0 for s in SEVERITY_ORDER}
        for severity, count in rows:
            by_severity[severity] = by_severity.get(severity, 0) + int(count)
        return FindingCounts(total=sum(by_severity.values()), by_severity=by_severity)

    # -- CVE enrichment -------------------------------------------------------------------

    def put_enrichment(self, cve_id: str, payload_json: str, fetched_at: datetime) -> None:
        """Cache what enrichment learned about `cve_id` (replacing an older entry)."""
        _require("cve_id", cve_id)
        _require("payload_json", payload_json)
        with self._write() as conn:
            self._x(
                conn,
                "INSERT INTO enrichment_cache (cve_id, payload, fetched_at) VALUES (?, ?, ?) "
                "ON CONFLICT (cve_id) DO UPDATE SET payload = excluded.payload, fetched_at = excluded.fetched_at",
                (cve_id, payload_json, _ts(fetched_at)),
            )

    def get_enrichment(self, cve_id: str) -> tuple[str, datetime] | None:
        """The cached payload for `cve_id` and when it was fetched, or None."""
        _require("cve_id", cve_id)
        with self._connection() as conn:
            row = self._x(conn, "SELECT payload, fetched_at FROM enrichment_cache WHERE cve_id = ?", (cve_id,)).fetchone()
        return None if row is None else (row[0], _parse_ts(row[1]))

    def forget_enrichment(self, cve_id: str) -> bool:
        """Drop the cached entry for `cve_id`. Returns whether there was one."""
        _require("cve_id", cve_id)
        with self._write() as conn:
            return self._x(conn, "DELETE FROM enrichment_cache WHERE cve_id = ?", (cve_id,)).rowcount > 0

    def set_finding_enrichment(self, assessment_id: str, fingerprint: str, enrichment_json: str | None) -> bool:
        """Attach enrichment (JSON) to the assessment's finding. Returns whether it exists."""
        _require("assessment_id", assessment_id)
        _require("fingerprint", fingerprint)
        with self._write() as conn:
            cursor = self._x(
                conn,
                "UPDATE assessment_findings SET enrichment = ? WHERE assessment_id = ? AND fingerprint = ?",
                (enrichment_json, assessment_id, fingerprint),
            )
            return cursor.rowcount > 0

    def get_finding_enrichment(self, assessment_id: str, fingerprint: str) -> str | None:
        _require("assessment_id", assessment_id)
        _require("fingerprint", fingerprint)
        with self._connection() as conn:
            row = self._x(
                conn,
                "SELECT COALESCE(a.enrichment, f.enrichment) FROM assessment_findings a "
                "JOIN findings f ON f.fingerprint = a.fingerprint WHERE a.assessment_id = ? AND a.fingerprint = ?",
                (assessment_id, fingerprint),
            ).fetchone()
        return None if row is None else row[0]

    # -- scan locks -----------------------------------------------------------------------

    def acquire_lock(self, target: str, holder: str) -> LockResult:
        """Take the scan lock on `target` for `holder`, or report who has it.

        Atomic across processes (primary key + one write transaction). Idempotent: the
        current holder asking again gets acquired=True and the original acquired_at.
        """
        _require("target", target)
        _require("holder", holder)
        with self._write() as conn:
            self._x(
                conn,
                "INSERT INTO scan_locks (target, holder, acquired_at) VALUES (?, ?, ?) ON CONFLICT (target) DO NOTHING",
                (target, holder, _ts(_utcnow())),
            )
            row = self._x(conn, "SELECT holder, acquired_at FROM scan_locks WHERE target = ?", (target,)).fetchone()
        current, acquired_at = row
        return LockResult(acquired=current == holder, holder=current, acquired_at=_parse_ts(acquired_at))

    def release_lock(self, target: str, holder: str) -> bool:
        """Release `target` if `holder` holds it. Returns whether a lock was released.

        Releasing a lock held by someone else, or one already released, changes nothing.
        """
        _require("target", target)
        _require("holder", holder)
        with self._write() as conn:
            cursor = self._x(conn, "DELETE FROM scan_locks WHERE target = ? AND holder = ?", (target, holder))
            return cursor.rowcount > 0

    def list_locks(self) -> list[LockInfo]:
        with self._connection() as conn:
            rows = conn.execute("SELECT target, holder, acquired_at FROM scan_locks ORDER BY target").fetchall()
        return [LockInfo(target=t, holder=h, acquired_at=_parse_ts(a)) for t, h, a in rows]

    # -- bulk scan locks (first come, first served) ----------------------------------------

    def acquire_locks(self, keys: Sequence[str], holder: str) -> BulkLockResult:
        """Take every key's scan lock for `holder`, or none of them, in one transaction.

        Keys are deduplicated and taken in sorted order (two callers wanting overlapping
        sets queue instead of deadlocking). Re-entrant: keys `holder` already holds
        count as free. First come, first served: a key whose lock is free but on which
        another holder has an older waiter ticket than `holder`'s own (or `holder` has
        none) is refused too, naming that waiter, unless `holder` already holds some
        lock (it is part-way through its sorted batches; letting a ticket hold it back
        could deadlock, see below).

        On refusal `holder` gets a waiter ticket on every key it asked for (a ticket it
        already had keeps its place); on success all of `holder`'s tickets are dropped.
        """
        _require("holder", holder)
        wanted = _lock_keys(keys)
        if not wanted:
            return BulkLockResult(acquired=True)
        now = _ts(_utcnow())
        with self._write() as conn:
            if self._dialect.lock_queue_lock:
                conn.execute(self._dialect.lock_queue_lock)
            # Waiter tickets only hold back a holder that holds no lock yet. One that is
            # part-way through its batches waits on locks alone: it takes keys in the one
            # global (sorted) order, so it cannot be in a cycle, whereas a ticket on a
            # free key is a reservation out of that order. (Example: C holds k2 and wants
            # k3; B queues on k1 and k3 behind A's k1; A waits for C's k2. If B's ticket
            # on k3 held C back, all three would wait forever.) Ticket waits alone cannot
            # cycle either: each points at an older ticket.
            holds_locks = self._x(conn, "SELECT 1 FROM scan_locks WHERE holder = ? LIMIT 1", (holder,)).fetchone()
            # Insert first, then look: a conflict is then whatever row is not ours, even
            # one that a concurrent single-key acquire_lock committed meanwhile
            # (PostgreSQL's ON CONFLICT waits for it). The savepoint undoes the insert
            # when the answer is "no".
            conn.execute("SAVEPOINT bulk_acquire")
            self._many(
                conn,
                "INSERT INTO scan_locks (target, holder, acquired_at) VALUES (?, ?, ?) ON CONFLICT (target) DO NOTHING",
                [(key, holder, now) for key in wanted],
            )
            conflicts: dict[str, str] = {}
            for chunk in _chunks(wanted):
                marks = ", ".join("?" * len(chunk))
                rows = self._x(
                    conn,
                    f"SELECT target, holder FROM scan_locks WHERE holder <> ? AND target IN ({marks})",
                    (holder, *chunk),
                ).fetchall()
                conflicts.update(dict(rows))
            mine: dict[str, int] = {}
            others: list[tuple[str, str, int]] = []
            for chunk in _chunks(wanted):
                marks = ", ".join("?" * len(chunk))
                rows = self._x(
                    conn,
                    f"SELECT target, holder, ticket FROM lock_waiters WHERE target IN ({marks})",
                    tuple(chunk),
                ).fetchall()
                for target, waiter, ticket in rows:
                    if waiter == holder:
                        mine[target] = int(ticket)
                    else:
                        others.append((target, waiter, int(ticket)))
            # An older ticket (smaller number; ties by holder name, for a total order)
            # of someone else goes first.
            ahead: dict[str, tuple[int, str]] = {}
            for target, waiter, ticket in others if holds_locks is None else ():
                own = mine.get(target)
                if own is not None and (ticket, waiter) >= (own, holder):
                    continue
                if target not in ahead or (ticket, waiter) < ahead[target]:
                    ahead[target] = (ticket, waiter)
            for target, (_, waiter) in ahead.items():
                conflicts.setdefault(target, waiter)

            if not conflicts:
                conn.execute("RELEASE SAVEPOINT bulk_acquire")
                self._x(conn, "DELETE FROM lock_waiters WHERE holder = ?", (holder,))
                return BulkLockResult(acquired=True)

            conn.execute("ROLLBACK TO SAVEPOINT bulk_acquire")
            conn.execute("RELEASE SAVEPOINT bulk_acquire")
            new = [key for key in wanted if key not in mine]
            if new:
                (top,) = self._x(conn, "SELECT COALESCE(MAX(ticket), 0) FROM lock_waiters").fetchone()
                ticket = int(top) + 1
                self._many(
                    conn,
                    "INSERT INTO lock_waiters (target, holder, ticket, waiting_since) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (target, holder) DO NOTHING",
                    [(key, holder, ticket, now) for key in new],
                )
        shown = {key: conflicts[key] for key in sorted(conflicts)[:MAX_LOCK_CONFLICTS]}
        return BulkLockResult(acquired=False, conflicts=shown)

    def release_locks(self, holder: str, keys: Sequence[str] | None = None) -> int:
        """Drop `holder`'s scan locks and waiter tickets (on `keys`, or all when None).

        One transaction; returns how many locks were released (tickets not counted).
        Locks of other holders are never touched, so releasing twice is harmless.
        """
        _require("holder", holder)
        with self._write() as conn:
            if self._dialect.lock_queue_lock:
                conn.execute(self._dialect.lock_queue_lock)
            if keys is None:
                released = self._x(conn, "DELETE FROM scan_locks WHERE holder = ?", (holder,)).rowcount
                self._x(conn, "DELETE FROM lock_waiters WHERE holder = ?", (holder,))
                return int(released)
            released = 0
            for chunk in _chunks(_lock_keys(keys)):
                marks = ", ".join("?" * len(chunk))
                released += self._x(
                    conn, f"DELETE FROM scan_locks WHERE holder = ? AND target IN ({marks})", (holder, *chunk)
                ).rowcount
                self._x(conn, f"DELETE FROM lock_waiters WHERE holder = ? AND target IN ({marks})", (holder, *chunk))
            return released

    def lock_holders(self) -> set[str]:
        """Everyone who holds a scan lock or waits for one (for stale-holder reaping)."""
        with self._connection() as conn:
            rows = conn.execute("SELECT holder FROM scan_locks UNION SELECT holder FROM lock_waiters").fetchall()
        return {r[0] for r in rows}

    # -- documents ------------------------------------------------------------------------

    def put_document(self, body: str) -> str:
        """Store `body` once under its digest ("sha256:<hex>" of its UTF-8); returns the digest."""
        if not isinstance(body, str):
            raise TypeError(f"put_document takes a str, got {type(body).__name__}")
        digest = document_digest(body)
        with self._write() as conn:
            self._x(
                conn,
                "INSERT INTO documents (digest, body, created_at) VALUES (?, ?, ?) ON CONFLICT (digest) DO NOTHING",
                (digest, body, _ts(_utcnow())),
            )
        return digest

    def get_document(self, digest: str) -> str | None:
        """The body stored under `digest`, or None."""
        _require("digest", digest)
        with self._connection() as conn:
            row = self._x(conn, "SELECT body FROM documents WHERE digest = ?", (digest,)).fetchone()
        return None if row is None else row[0]

    # -- per-target outcomes --------------------------------------------------------------

    def record_target_outcomes(self, outcomes: list[TargetOutcome]) -> int:
        """Upsert each (assessment, stage, target)'s row, all in one transaction.

        A key given twice keeps its last outcome. Returns the number of rows written.
        """
        batch: dict[tuple[str, str, str], TargetOutcome] = {}
        for outcome in outcomes:
            if not isinstance(outcome, TargetOutcome):
                raise TypeError(f"record_target_outcomes takes TargetOutcome items, got {type(outcome).__name__}")
            _require("assessment_id", outcome.assessment_id)
            _require("stage_id", outcome.stage_id)
            _require("target", outcome.target)
            _require("state", outcome.state)
            batch[(outcome.assessment_id, outcome.stage_id, outcome.target)] = outcome
        if not batch:
            return 0
        now = _ts(_utcnow())
        # Key order: PostgreSQL locks rows one by one, so two writers meeting on the same
        # rows in opposite orders could deadlock; in one global order they queue.
        rows = [
            (
                *key,
                o.tool,
                o.state,
                int(o.attempts),
                int(o.findings),
                o.error_category,
                o.error_message,
                _ts(o.updated_at) if o.updated_at is not None else now,
            )
            for key, o in sorted(batch.items())
        ]
        with self._write() as conn:
            self._many(
                conn,
                """
                INSERT INTO target_outcomes (assessment_id, stage_id, target, tool, state, attempts, findings,
                                             error_category, error_message, updated_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (assessment_id, stage_id, target) DO UPDATE SET
                    tool = excluded.tool, state = excluded.state, attempts = excluded.attempts,
                    findings = excluded.findings, error_category = excluded.error_category,
                    error_message = excluded.error_message, updated_at = excluded.updated_at
                """,
                rows,
            )
        return len(rows)

    def list_target_outcomes(
        self,
        assessment_id: str,
        *,
        stage_id: str | None = None,
        state: str | None = None,
        after: tuple[str, str] | None = None,
        limit: int = 100,
    ) -> list[TargetOutcome]:
        """One page of the assessment's outcomes in (stage_id, target) order.

        Keyset paging: pass the (stage_id, target) of the last row of a page as `after`
        to get the next one; an empty page means the end.
        """
        _require("assessment_id", assessment_id)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer, got {limit!r}")
        sql = (
            "SELECT stage_id, target, tool, state, attempts, findings, error_category, error_message, updated_at "
            "FROM target_outcomes WHERE assessment_id = ?"
        )
        params: tuple[Any, ...] = (assessment_id,)
        if stage_id is not None:
            sql += " AND stage_id = ?"
            params += (stage_id,)
        if state is not None:
            sql += " AND state = ?"
            params += (state,)
        if after is not None:
            after_stage, after_target = after
            sql += " AND (stage_id > ? OR (stage_id = ? AND target > ?))"
            params += (after_stage, after_stage, after_target)
        sql += " ORDER BY stage_id, target LIMIT ?"
        params += (limit,)
        with self._connection() as conn:
            rows = self._x(conn, sql, params).fetchall()
        return [
            TargetOutcome(
                assessment_id=assessment_id,
                stage_id=r[0],
                target=r[1],
                tool=r[2],
                state=r[3],
                attempts=int(r[4]),
                findings=int(r[5]),
                error_category=r[6],
                error_message=r[7],
                updated_at=_parse_ts(r[8]),
            )
            for r in rows
        ]

    def count_target_outcomes(self, assessment_id: str) -> dict[str, dict[str, int]]:
        """How many targets of each stage are in each state: {stage_id: {state: count}}."""
        _require("assessment_id", assessment_id)
        with self._connection() as conn:
            rows = self._x(
                conn,
                "SELECT stage_id, state, COUNT(*) FROM target_outcomes WHERE assessment_id = ? "
                "GROUP BY stage_id, state ORDER BY stage_id, state",
                (assessment_id,),
            ).fetchall()
        counts: dict[str, dict[str, int]] = {}
        for stage, state, count in rows:
            counts.setdefault(stage, {})[state] = int(count)
        return counts

    def delete_target_outcomes(self, assessment_id: str, stage_id: str) -> int:
        """Forget one stage's outcomes (a stage retried from scratch). Returns how many."""
        _require("assessment_id", assessment_id)
        _require("stage_id", stage_id)
        with self._write() as conn:
            return int(
                self._x(
                    conn,
                    "DELETE FROM target_outcomes WHERE assessment_id = ? AND stage_id = ?",
                    (assessment_id, stage_id),
                ).rowcount
            )

    # -- error events ---------------------------------------------------------------------

    def record_error(self, event: ErrorEvent) -> bool:
        """Store the event unless its event_id is already there. True when newly stored."""
        if not isinstance(event, ErrorEvent):
            raise TypeError(f"record_error takes an ErrorEvent, got {type(event).__name__}")
        with self._write() as conn:
            cursor = self._x(
                conn,
                """
                INSERT INTO error_events (event_id, assessment_id, stage_id, target, tool, attempt,
                                          category, message, retryable, occurred_at, outcome, resolved_at,
                                          dependency, reason, rung, rung_outcome)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (event_id) DO NOTHING
                """,
                (
                    event.event_id,
                    event.assessment_id,
                    event.stage_id,
                    event.target,
                    event.tool,
                    event.attempt,
                    event.category,
                    event.message,
                    1 if event.retryable else 0,
                    _ts(event.occurred_at),
                    event.outcome,
                    _ts(_utcnow()) if event.outcome is not None else None,
                    event.dependency,
                    event.reason,
                    event.rung,
                    event.rung_outcome,
                ),
            )
            return cursor.rowcount == 1

    def list_errors(self, assessment_id: str) -> list[ErrorEvent]:
        """Every error recorded for the assessment, oldest first."""
        _require("assessment_id", assessment_id)
        return self._read_errors("WHERE assessment_id = ?", (assessment_id,))

    def list_errors_since(self, since: datetime | None = None) -> list[ErrorEvent]:
        """Every error of every assessment that occurred at or after `since` (all if None)."""
        if since is None:
            return self._read_errors("", ())
        return self._read_errors("WHERE occurred_at >= ?", (_ts(since),))

    def list_open_errors(self, assessment_id: str, stage_id: str, target: str) -> list[ErrorEvent]:
        """The stage's events on `target` that have no outcome yet, oldest first."""
        return self._read_errors(
            "WHERE assessment_id = ? AND stage_id = ? AND target = ? AND outcome IS NULL",
            (assessment_id, stage_id, target),
        )

    def _read_errors(self, where: str, params: tuple[Any, ...]) -> list[ErrorEvent]:
        with self._connection() as conn:
            rows = self._x(
                conn,
                "SELECT event_id, assessment_id, stage_id, target, tool, attempt, category, message, "
                f"retryable, occurred_at, outcome, dependency, resolved_at, reason, rung, rung_outcome FROM error_events {where} "
                "ORDER BY occurred_at, event_id",
                params,
            ).fetchall()
        return [
            ErrorEvent.model_construct(
                event_id=r[0],
                assessment_id=r[1],
                stage_id=r[2],
                target=r[3],
                tool=r[4],
                attempt=int(r[5]),
                category=r[6],
                message=r[7],
                retryable=bool(r[8]),
                occurred_at=_parse_ts(r[9]),
                outcome=r[10],
                dependency=r[11],
                resolved_at=_parse_ts(r[12]) if r[12] else None,
                reason=r[13],
                rung=r[14],
                rung_outcome=r[15],
            )
            for r in rows
        ]

    def resolve_error_ids(self, event_ids: Iterable[str], outcome: str) -> int:
        """Set `outcome` on these events where they have none yet; returns how many."""
        _require("outcome", outcome)
        ids = list(event_ids)
        if not ids:
            return 0
        now = _ts(_utcnow())
        with self._write() as conn:
            return sum(
                self._x(
                    conn,
                    "UPDATE error_events SET outcome = ?, resolved_at = ? WHERE event_id = ? AND outcome IS NULL",
                    (outcome, now, event_id),
                ).rowcount
                for event_id in ids
            )

    def resolve_errors(self, assessment_id: str, stage_id: str, target: str | None, outcome: str) -> int:
        """Set `outcome` on the stage's (and target's) still-unresolved events; returns how many.

        Events that already have an outcome keep it, so calling this again, or after a
        more specific resolution, is harmless.
        """
        _require("assessment_id", assessment_id)
        _require("stage_id", stage_id)
        _require("outcome", outcome)
        sql = """
            UPDATE error_events SET outcome = ?, resolved_at = ?
            WHERE assessment_id = ? AND stage_id = ? AND outcome IS NULL
        """
        params: tuple[Any, ...] = (outcome, _ts(_utcnow()), assessment_id, stage_id)
        if target is not None:
            sql += " AND target = ?"
            params += (target,)
        with self._write() as conn:
            return self._x(conn, sql, params).rowcount


# --- per-process cache -------------------------------------------------------------------

_cache_lock = threading.Lock()
_cache: dict[tuple[int, DbLocation, float], FindingsStore] = {}
# The default store per (pid, cwd, environment): see open_store.
_default_cache: dict[tuple[object, ...], FindingsStore] = {}


def open_store(url: str | None = None, *, busy_timeout: float | None = None) -> FindingsStore:
    """The store at `url` (default: `default_db_url()`), opened and migrated once per process.

    `busy_timeout` is how many seconds a writer waits for another writer before
    "database is locked" (default `SECFLOW_DB_BUSY_TIMEOUT` or 10 s).
    """
    # Every tool activity asks for the default store: answer that from the environment as
    # it is now, without resolving paths and parsing the URL again each time.
    env_key = None
    if url is None and busy_timeout is None:
        env_key = (os.getpid(), os.getcwd(), *(os.environ.get(k) for k in (DB_URL_ENV, DATA_DIR_ENV, BUSY_TIMEOUT_ENV)))
        with _cache_lock:
            known = _default_cache.get(env_key)
            if known is not None and not known.closed:
                return known
    if url is None:
        url = default_db_url()
    location = parse_db_url(url)
    timeout = _busy_timeout_from_env() if busy_timeout is None else float(busy_timeout)
    key = (os.getpid(), location, timeout)
    with _cache_lock:
        store = _cache.get(key)
        if store is not None and not store.closed:
            if env_key is not None:
                _default_cache[env_key] = store
            return store
        # Opening under the cache lock: two threads asking at once get one store (and
        # the migration runs once). Opening is quick unless another process holds the
        # write lock, in which case every opener would wait anyway.
        store = FindingsStore(url, busy_timeout=timeout)
        _cache[key] = store
        if env_key is not None:
            _default_cache[env_key] = store
        return store


def _forget(store: FindingsStore) -> None:
    with _cache_lock:
        for key, cached in list(_cache.items()):
            if cached is store:
                del _cache[key]
        for env_key, cached in list(_default_cache.items()):
            if cached is store:
                del _default_cache[env_key]
