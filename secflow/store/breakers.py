"""The circuit-breaker repository: the ``breaker_states`` table (migration 5), reached as
``store.breakers``.

What a row means and who writes it (each worker's background publisher) is told in
`secflow.http.breaker_store`; this is only how rows are written and read.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from secflow.http.breaker_store import BreakerRow
from secflow.store.core import _parse_ts, _ts

if TYPE_CHECKING:
    from secflow.store.core import FindingsStore

__all__ = ["BreakerRepository"]

_UPSERT = (
    "INSERT INTO breaker_states (worker_id, dependency, state, failures, trips, opened_at, next_half_open_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (worker_id, dependency) DO UPDATE SET state = excluded.state, failures = excluded.failures, "
    "trips = excluded.trips, opened_at = excluded.opened_at, next_half_open_at = excluded.next_half_open_at, "
    "updated_at = excluded.updated_at"
)


def _ts_or_none(value: datetime | None) -> str | None:
    return None if value is None else _ts(value)


def _parse_or_none(text: str | None) -> datetime | None:
    return None if text is None else _parse_ts(text)


class BreakerRepository:
    """Breaker rows in one store (times are stored as the store's fixed-width UTC text)."""

    def __init__(self, store: FindingsStore) -> None:
        self._store = store

    def write(self, rows: list[BreakerRow]) -> None:
        """Upsert `rows` in one transaction (idempotent: a row is the whole current state)."""
        if not rows:
            return
        store = self._store
        with store._write() as conn:
            for r in rows:
                store._x(
                    conn,
                    _UPSERT,
                    (
                        r.worker_id,
                        r.dependency,
                        r.state,
                        r.failures,
                        r.trips,
                        _ts_or_none(r.opened_at),
                        _ts_or_none(r.next_half_open_at),
                        _ts_or_none(r.updated_at),
                    ),
                )

    def list_rows(self) -> list[BreakerRow]:
        """Every row, by worker id then dependency."""
        store = self._store
        with store._connection() as conn:
            rows = store._x(
                conn,
                "SELECT worker_id, dependency, state, failures, trips, opened_at, next_half_open_at, updated_at "
                "FROM breaker_states ORDER BY worker_id, dependency",
            ).fetchall()
        return [
            BreakerRow(
                worker_id=r[0],
                dependency=r[1],
                state=r[2],
                failures=int(r[3]),
                trips=int(r[4]),
                opened_at=_parse_or_none(r[5]),
                next_half_open_at=_parse_or_none(r[6]),
                updated_at=_parse_ts(r[7]),
            )
            for r in rows
        ]

    def delete_older_than(self, cutoff: datetime) -> int:
        """Delete rows not refreshed since `cutoff`; returns how many."""
        store = self._store
        with store._write() as conn:
            return int(store._x(conn, "DELETE FROM breaker_states WHERE updated_at < ?", (_ts(cutoff),)).rowcount)
