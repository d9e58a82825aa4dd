"""Circuit breaker states in the store, so `python -m starter breakers` can show them.

Each worker process writes one row per (worker id, dependency) into ``breaker_states``
(migration 5): on creation of a breaker, on every transition, and on every failure counted
while closed. Times in the table are wall-clock UTC (the breaker itself runs on a monotonic
clock and records the wall-clock instant of each opening as it happens). The worker id is ``SECFLOW_WORKER_ID`` or
``<hostname>:<pid>``.

Writes never happen on the caller's path: `publish()` only records the newest row per
dependency and wakes a daemon thread that writes it (coalescing bursts). The same thread
refreshes every row of its process every ``SECFLOW_BREAKER_REFRESH`` seconds (default 60),
so a row's ``updated_at`` says when its worker was last heard from: the CLI marks a worker
as possibly stale when that is older than 3 refresh intervals (it stopped, crashed or lost
the store). Rows not refreshed for `RETENTION` are deleted by the next refresh.

A store that fails (down, locked, misconfigured) never fails an HTTP call: the failure is
classified, logged, and the write retried with a growing delay (at most one refresh
interval).
"""

from __future__ import annotations

import atexit
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from pydantic import BaseModel

from secflow.logging import get_logger

if TYPE_CHECKING:
    from secflow.store import FindingsStore

__all__ = [
    "REFRESH_ENV",
    "WORKER_ID_ENV",
    "BreakerPublisher",
    "BreakerRow",
    "delete_breaker_rows_older_than",
    "list_breaker_rows",
    "publisher",
    "refresh_interval",
    "worker_id",
    "write_breaker_rows",
]

WORKER_ID_ENV = "SECFLOW_WORKER_ID"
REFRESH_ENV = "SECFLOW_BREAKER_REFRESH"
DEFAULT_REFRESH = 60.0
STALE_AFTER_REFRESHES = 3
RETENTION = timedelta(days=7)


def worker_id() -> str:
    """This process's id in the table: `SECFLOW_WORKER_ID`, or `<hostname>:<pid>`."""
    given = os.environ.get(WORKER_ID_ENV, "").strip()
    return given or f"{socket.gethostname()}:{os.getpid()}"


def refresh_interval() -> float:
    raw = os.environ.get(REFRESH_ENV, "").strip()
    if not raw:
        return DEFAULT_REFRESH
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{REFRESH_ENV} must be a number of seconds, got {raw!r}") from None
    if not 0 < value < 86400:
        raise ValueError(f"{REFRESH_ENV} must be between 0 and 86400 seconds, got {raw!r}")
    return value


class BreakerRow(BaseModel):
    """One row of ``breaker_states`` (times wall-clock UTC)."""

    worker_id: str
    dependency: str
    state: str
    failures: int
    trips: int
    opened_at: datetime | None = None
    next_half_open_at: datetime | None = None
    updated_at: datetime

    @classmethod
    def now(
        cls,
        dependency: str,
        *,
        state: str,
        failures: int,
        trips: int,
        opened_at: datetime | None,
        next_half_open_at: datetime | None,
        worker: str | None = None,
    ) -> BreakerRow:
        """A row as of now. The breaker runs on a monotonic clock; it records the wall-clock
        UTC time of each opening when it happens (and derives the half-open time from it),
        so a row rewritten later shows the same instants."""
        return cls(
            worker_id=worker or worker_id(),
            dependency=dependency,
            state=state,
            failures=failures,
            trips=trips,
            opened_at=opened_at,
            next_half_open_at=next_half_open_at,
            updated_at=datetime.now(UTC),
        )


# --- store access: the store's breaker repository (`store.breakers`, secflow/store/breakers.py)


def write_breaker_rows(store: FindingsStore, rows: list[BreakerRow]) -> None:
    """Upsert `rows` in one transaction (idempotent: a row is the whole current state)."""
    store.breakers.write(rows)


def list_breaker_rows(store: FindingsStore) -> list[BreakerRow]:
    return store.breakers.list_rows()


def delete_breaker_rows_older_than(store: FindingsStore, cutoff: datetime) -> int:
    return store.breakers.delete_older_than(cutoff)


# --- the background writer ------------------------------------------------------------------
class BreakerPublisher:
    """Writes breaker rows from a daemon thread; `publish()` never blocks on the store."""

    def __init__(self, current_rows: Callable[[], list[BreakerRow]]) -> None:
        self._current_rows = current_rows
        self._cond = threading.Condition()
        self._pending: dict[str, BreakerRow] = {}
        self._submitted = 0
        self._done = 0
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self.failures = 0  # store writes that failed (for tests and debugging)

    def publish(self, row: BreakerRow) -> None:
        with self._cond:
            self._pending[row.dependency] = row
            self._submitted += 1
            self._ensure_thread()
            self._cond.notify_all()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything published so far was written (or failed); False on timeout."""
        with self._cond:
            target = self._submitted
            return self._cond.wait_for(lambda: self._done >= target, timeout)

    def _ensure_thread(self) -> None:  # lock held
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="secflow-breaker-store", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            refresh = refresh_interval()
        except ValueError as exc:
            get_logger(component="http.breaker_store").warning(
                "bad breaker refresh interval; using the default", error=str(exc), default=DEFAULT_REFRESH
            )
            refresh = DEFAULT_REFRESH
        retry_in = 1.0
        next_refresh = time.monotonic() + refresh
        while True:
            with self._cond:
                if not self._pending:
                    self._cond.wait_for(lambda: bool(self._pending), max(0.0, next_refresh - time.monotonic()))
                rows, self._pending = list(self._pending.values()), {}
                upto = self._submitted
            due_refresh = time.monotonic() >= next_refresh
            if due_refresh:
                # Heartbeat: every breaker of this process, re-read now (updated_at = now).
                try:
                    latest = {r.dependency: r for r in self._current_rows()}
                except Exception as exc:  # never let the writer thread die of it
                    from secflow.errors import classify

                    c = classify(exc)
                    get_logger(component="http.breaker_store").error(
                        "could not read breaker states", category=c.category.value, reason=c.reason, error=str(exc)
                    )
                    latest = {}
                latest.update({r.dependency: r for r in rows if r.dependency not in latest})
                rows = list(latest.values())
            ok = self._write(rows, refresh=due_refresh)
            with self._cond:
                if ok:
                    retry_in = 1.0
                    if due_refresh:
                        next_refresh = time.monotonic() + refresh
                else:
                    for r in rows:  # keep them for the next try unless a newer row came
                        self._pending.setdefault(r.dependency, r)
                self._done = max(self._done, upto)
                self._cond.notify_all()
                if not ok:
                    self._cond.wait(retry_in)
                    retry_in = min(retry_in * 2, refresh)

    def _write(self, rows: list[BreakerRow], *, refresh: bool) -> bool:
        from secflow.store import open_store

        try:
            store = open_store()
            write_breaker_rows(store, rows)
            if refresh:
                delete_breaker_rows_older_than(store, datetime.now(UTC) - RETENTION)
            return True
        except Exception as exc:  # the store is down or wrong: classified, logged, retried later
            from secflow.errors import classify
            from secflow.redaction import redact

            self.failures += 1
            c = classify(exc)
            get_logger(component="http.breaker_store").error(
                "could not persist circuit breaker state",
                category=c.category.value,
                reason=c.reason,
                error=redact(str(exc)),
                dependencies=sorted(r.dependency for r in rows),
            )
            return False


_PUBLISHER: BreakerPublisher | None = None
_PUBLISHER_LOCK = threading.Lock()


def publisher(current_rows: Callable[[], list[BreakerRow]]) -> BreakerPublisher:
    global _PUBLISHER
    with _PUBLISHER_LOCK:
        if _PUBLISHER is None:
            _PUBLISHER = BreakerPublisher(current_rows)
            atexit.register(_PUBLISHER.flush, 2.0)
        return _PUBLISHER
