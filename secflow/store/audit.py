"""The decisions audit trail: the ``decisions_audit`` table (migration 11), reached as
``store.audit``.

Every human decision sent to an assessment, accepted or not, with who sent it, when, the
fingerprint of the key it was signed with and why it was refused. The store keeps it after
Temporal's retention has dropped the workflow's history. The record's model and the rules
of who writes which row live in `secflow.approvals` and docs/approvals.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from secflow.approvals import DecisionRecord
from secflow.store.core import _parse_ts, _require, _ts

if TYPE_CHECKING:
    from secflow.store.core import FindingsStore

__all__ = ["AuditRepository"]

_COLUMNS = (
    "workflow_id, entry_id, run_id, recorded_by, via, action, stage_id, decided_by, reason, issued_at, nonce, "
    "key_fingerprint, signed, accepted, outcome, decided_at"
)


class AuditRepository:
    """Audit rows in one store; a row is written once and never changed."""

    def __init__(self, store: FindingsStore) -> None:
        self._store = store

    def record(self, entry: DecisionRecord) -> bool:
        """Write the row; True if it is new. Writing the same (workflow_id, entry_id) again
        (a retried activity, a replayed workflow) changes nothing."""
        store = self._store
        _require("workflow_id", entry.workflow_id)
        _require("entry_id", entry.entry_id)
        with store._write() as conn:
            cursor = store._x(
                conn,
                f"INSERT INTO decisions_audit ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (workflow_id, entry_id) DO NOTHING",
                (
                    entry.workflow_id,
                    entry.entry_id,
                    entry.run_id,
                    entry.recorded_by,
                    entry.via,
                    entry.action,
                    entry.stage,
                    entry.decided_by,
                    entry.reason,
                    entry.issued_at,
                    entry.nonce,
                    entry.key_fingerprint,
                    int(entry.signed),
                    int(entry.accepted),
                    entry.outcome,
                    _ts(entry.decided_at),
                ),
            )
            return bool(cursor.rowcount == 1)

    def list_records(self, workflow_id: str | None = None, *, limit: int = 10_000) -> list[DecisionRecord]:
        """Rows oldest first, of one assessment or of all."""
        store = self._store
        sql = f"SELECT {_COLUMNS} FROM decisions_audit"
        params: tuple[Any, ...] = ()
        if workflow_id is not None:
            sql += " WHERE workflow_id = ?"
            params = (workflow_id,)
        sql += " ORDER BY decided_at, workflow_id, entry_id LIMIT ?"
        params += (limit,)
        with store._connection() as conn:
            rows = store._x(conn, sql, params).fetchall()
        return [_record(r) for r in rows]


def _record(row: Any) -> DecisionRecord:
    return DecisionRecord(
        workflow_id=row[0],
        entry_id=row[1],
        run_id=row[2],
        recorded_by=row[3],
        via=row[4],
        action=row[5],
        stage=row[6],
        decided_by=row[7],
        reason=row[8],
        issued_at=row[9],
        nonce=row[10],
        key_fingerprint=row[11],
        signed=bool(row[12]),
        accepted=bool(row[13]),
        outcome=row[14],
        decided_at=_parse_ts(row[15]),
    )
