"""The recovery ladder's records (migration 13), reached as ``store.recovery``:

- the rung that handled each error event last and its outcome (``error_events.rung`` and
  ``error_events.rung_outcome``; secflow/ladder.py says what the rungs are);
- ``recovery_validations``: one row per check of a recovered stage
  (activities/validation.py), so `errors stats` can count validated and failed ones;
- the raw rows of a stage's findings, for the validation to check against the model.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from secflow.store.core import _parse_ts, _require, _ts, _utcnow

if TYPE_CHECKING:
    from secflow.store.core import FindingsStore

__all__ = ["RecoveryRepository", "ValidationRow"]

# An event is still walking the ladder while its rung has no outcome, or only "failed"
# (the next rung takes it over); any other outcome settled it.
_UNSETTLED = "(rung_outcome IS NULL OR rung_outcome = 'failed')"

FINDING_COLUMNS = (
    "fingerprint",
    "tool",
    "rule_id",
    "title",
    "severity",
    "confidence",
    "target",
    "location",
    "cwe",
    "cve",
    "evidence",
    "first_seen",
    "last_seen",
)


class ValidationRow(BaseModel):
    assessment_id: str
    stage_id: str
    check_id: str
    after_rung: str
    passed: bool
    problems: list[str] = Field(default_factory=list)
    findings: int = 0
    checked_at: datetime | None = None


class RecoveryRepository:
    def __init__(self, store: FindingsStore) -> None:
        self._store = store

    def settle(self, assessment_id: str, stage_id: str, target: str | None, rung: str, outcome: str) -> int:
        """Set (rung, outcome) on the stage's (target's) events still walking the ladder;
        returns how many. Idempotent: a settled event keeps its rung, so a retried call
        (or a later call for a rung already past) changes nothing it should not."""
        _require("assessment_id", assessment_id)
        _require("stage_id", stage_id)
        _require("rung", rung)
        _require("outcome", outcome)
        store = self._store
        sql = f"UPDATE error_events SET rung = ?, rung_outcome = ? WHERE assessment_id = ? AND stage_id = ? AND {_UNSETTLED}"
        params: tuple[Any, ...] = (rung, outcome, assessment_id, stage_id)
        if target is not None:
            sql += " AND target = ?"
            params += (target,)
        with store._write() as conn:
            return int(store._x(conn, sql, params).rowcount)

    def stage_finding_rows(self, assessment_id: str, stage_id: str) -> list[dict[str, Any]]:
        """The stage's findings as stored (one dict per row, JSON columns decoded when they
        parse): the validation checks them against the `Finding` model itself."""
        store = self._store
        cols = ", ".join(f"f.{c}" for c in FINDING_COLUMNS)
        sql = (
            f"SELECT {cols} FROM assessment_findings a JOIN findings f ON f.fingerprint = a.fingerprint "
            "WHERE a.assessment_id = ? AND a.stage_id = ? ORDER BY f.fingerprint"
        )
        with store._connection() as conn:
            rows = store._x(conn, sql, (assessment_id, stage_id)).fetchall()
        out = []
        for r in rows:
            row = dict(zip(FINDING_COLUMNS, r, strict=True))
            for key in ("cwe", "cve"):
                try:
                    row[key] = json.loads(row[key])
                except (TypeError, ValueError):
                    pass  # left as stored: the model check reports it
            out.append(row)
        return out

    def findings_elsewhere(self, assessment_id: str, stage_id: str, tools: list[str]) -> int:
        """Findings of the assessment by these tools that another stage reported first (a
        finding links to the first stage that found it): the stage's runs counted them too."""
        if not tools:
            return 0
        store = self._store
        marks = ", ".join("?" for _ in tools)
        sql = (
            "SELECT COUNT(*) FROM assessment_findings a JOIN findings f ON f.fingerprint = a.fingerprint "
            f"WHERE a.assessment_id = ? AND a.stage_id <> ? AND f.tool IN ({marks})"
        )
        with store._connection() as conn:
            row = store._x(conn, sql, (assessment_id, stage_id, *tools)).fetchone()
        return int(row[0]) if row else 0

    def record_validation(self, row: ValidationRow) -> bool:
        """Write one check; True if new (the same check id again changes nothing)."""
        _require("assessment_id", row.assessment_id)
        _require("stage_id", row.stage_id)
        _require("check_id", row.check_id)
        store = self._store
        with store._write() as conn:
            cursor = store._x(
                conn,
                "INSERT INTO recovery_validations (assessment_id, stage_id, check_id, after_rung, passed, problems, "
                "findings, checked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (assessment_id, stage_id, check_id) DO NOTHING",
                (
                    row.assessment_id,
                    row.stage_id,
                    row.check_id,
                    row.after_rung,
                    int(row.passed),
                    json.dumps(row.problems),
                    row.findings,
                    _ts(row.checked_at or _utcnow()),
                ),
            )
            return int(cursor.rowcount) == 1

    def validations(self, since: datetime | None = None, assessment_id: str | None = None) -> list[ValidationRow]:
        """Checks at or after `since` (all if None), of one assessment if given, oldest first."""
        where: list[str] = []
        params: tuple[Any, ...] = ()
        if since is not None:
            where.append("checked_at >= ?")
            params += (_ts(since),)
        if assessment_id is not None:
            where.append("assessment_id = ?")
            params += (assessment_id,)
        sql = (
            "SELECT assessment_id, stage_id, check_id, after_rung, passed, problems, findings, checked_at "
            "FROM recovery_validations" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY checked_at, check_id"
        )
        store = self._store
        with store._connection() as conn:
            rows = store._x(conn, sql, params).fetchall()
        return [
            ValidationRow(
                assessment_id=r[0],
                stage_id=r[1],
                check_id=r[2],
                after_rung=r[3],
                passed=bool(r[4]),
                problems=json.loads(r[5]),
                findings=int(r[6]),
                checked_at=_parse_ts(r[7]),
            )
            for r in rows
        ]
