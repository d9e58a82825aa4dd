"""The dead-letter repository: the ``dead_letters`` table (migration 4), reached as
``store.dead_letters``.

The queue's models, states and rules live in `secflow.dead_letters` (the workflows import
them, so that module stays free of the store); this is only how entries are written and
read. States:

  parked     waiting for an operator (a new failure of the same task re-parks it here)
  replaying  `dlq replay` started it again; `replay_workflow_id` says where
  replayed   the replay ended; `replay_outcome` says how (completed, failed, ...)
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from secflow.dead_letters import STATES, DeadLetter, DeadLetterInput, DeadLetterResult, ReplayRecipe
from secflow.store.core import _parse_ts, _require, _ts, _utcnow

if TYPE_CHECKING:
    from secflow.store.core import FindingsStore

__all__ = ["DeadLetterRepository"]

_COLUMNS = (
    "task_id, workflow_id, run_id, stage_id, target, tool, reason, category, message, attempts, "
    "first_failure_at, last_failure_at, replay, state, replayed_at, replay_outcome, replay_workflow_id, error_reason"
)
# The ledger's latest classifier reason for a task (migration 12); a stage-wide task
# (target "") takes the stage's latest.
_LEDGER_REASON = (
    "SELECT reason FROM error_events WHERE assessment_id = ? AND stage_id = ? AND (target = ? OR ? = '') "
    "AND reason IS NOT NULL AND reason <> '' ORDER BY occurred_at DESC, event_id DESC LIMIT 1"
)


class DeadLetterRepository:
    """Dead-letter entries in one store; every write is one transaction."""

    def __init__(self, store: FindingsStore) -> None:
        self._store = store

    def park(self, inp: DeadLetterInput) -> DeadLetterResult:
        """Write the entry, or refresh it: parking the same task twice is one entry.

        A second park (a retried activity, or the task failing again after a replay) keeps
        first_failure_at, moves last_failure_at forward (never back), keeps the highest
        attempt count and the latest message, and puts a replayed entry back to `parked`:
        it failed again, so it needs an operator again.
        """
        store = self._store
        _require("task_id", inp.task_id)
        first, last = _ts(inp.first_failure_at), _ts(inp.last_failure_at)
        replay = inp.replay.model_dump_json() if inp.replay is not None else "null"
        g = store._dialect.greatest
        with store._write() as conn:
            reason = inp.error_reason or self._ledger_reason(conn, inp)
            cursor = store._x(
                conn,
                f"INSERT INTO dead_letters ({_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'parked', NULL, NULL, NULL, ?) "
                "ON CONFLICT (task_id) DO NOTHING",
                (
                    inp.task_id,
                    inp.workflow_id,
                    inp.run_id,
                    inp.stage_id,
                    inp.target,
                    inp.tool,
                    inp.reason,
                    inp.category,
                    inp.message,
                    inp.attempts,
                    first,
                    last,
                    replay,
                    reason,
                ),
            )
            if cursor.rowcount == 1:
                return DeadLetterResult(task_id=inp.task_id, created=True)
            row = store._x(conn, "SELECT last_failure_at, state FROM dead_letters WHERE task_id = ?", (inp.task_id,)).fetchone()
            newer = last > row[0]
            # The same failure parked again (activity retry): refresh counters only. A newer
            # failure of a task that was being replayed: the replay failed, park it again.
            reopen = newer and row[1] != "parked"
            store._x(
                conn,
                f"""
                UPDATE dead_letters SET
                    last_failure_at = {g}(last_failure_at, ?),
                    attempts = {g}(attempts, ?),
                    message = CASE WHEN ? THEN ? ELSE message END,
                    error_reason = CASE WHEN ? AND ? <> '' THEN ? ELSE error_reason END,
                    state = CASE WHEN ? THEN 'parked' ELSE state END,
                    replay_outcome = CASE WHEN ? THEN 'failed' ELSE replay_outcome END
                WHERE task_id = ?
                """,
                (
                    last,
                    inp.attempts,
                    newer,
                    inp.message,
                    newer,
                    reason,
                    reason,
                    reopen,
                    reopen and row[1] == "replaying",
                    inp.task_id,
                ),
            )
        return DeadLetterResult(task_id=inp.task_id, created=False)

    def _ledger_reason(self, conn: Any, inp: DeadLetterInput) -> str:
        row = self._store._x(conn, _LEDGER_REASON, (inp.workflow_id, inp.stage_id, inp.target, inp.target)).fetchone()
        return str(row[0]) if row else ""

    def list_entries(
        self,
        *,
        state: str | None = None,
        workflow_id: str | None = None,
        since: datetime | None = None,
    ) -> list[DeadLetter]:
        """Entries, newest failure first; filtered by state, parked workflow and last failure time."""
        store = self._store
        sql = f"SELECT {_COLUMNS} FROM dead_letters WHERE 1 = 1"
        params: tuple[Any, ...] = ()
        if state is not None:
            if state not in STATES:
                raise ValueError(f"state must be one of {', '.join(STATES)}, got {state!r}")
            sql += " AND state = ?"
            params += (state,)
        if workflow_id is not None:
            sql += " AND workflow_id = ?"
            params += (workflow_id,)
        if since is not None:
            sql += " AND last_failure_at >= ?"
            params += (_ts(since),)
        sql += " ORDER BY last_failure_at DESC, task_id"
        with store._connection() as conn:
            rows = store._x(conn, sql, params).fetchall()
        return [_entry(r) for r in rows]

    def get(self, task_id: str) -> DeadLetter | None:
        store = self._store
        with store._connection() as conn:
            row = store._x(conn, f"SELECT {_COLUMNS} FROM dead_letters WHERE task_id = ?", (task_id,)).fetchone()
        return None if row is None else _entry(row)

    def task_ids(self) -> list[str]:
        """Every entry's task id (for resolving a ref, a prefix of an id's hash)."""
        store = self._store
        with store._connection() as conn:
            return [r[0] for r in store._x(conn, "SELECT task_id FROM dead_letters").fetchall()]

    def marks(self) -> list[tuple[str, str, str, datetime, str]]:
        """(workflow_id, stage_id, target, last_failure_at, state) of every entry."""
        store = self._store
        with store._connection() as conn:
            rows = store._x(conn, "SELECT workflow_id, stage_id, target, last_failure_at, state FROM dead_letters").fetchall()
        return [(r[0], r[1], r[2], _parse_ts(r[3]), r[4]) for r in rows]

    def mark_replaying(self, task_id: str, replay_workflow_id: str, *, claim: bool = False) -> bool:
        """The entry is being replayed in `replay_workflow_id`. False if the entry is gone.

        `claim=True` is a compare-and-set: it only succeeds when the entry is not already
        `replaying`, so two operators replaying at once start one replay, not two.
        """
        store = self._store
        _require("replay_workflow_id", replay_workflow_id)
        sql = (
            "UPDATE dead_letters SET state = 'replaying', replay_workflow_id = ?, replayed_at = ?, replay_outcome = NULL "
            "WHERE task_id = ?"
        )
        if claim:
            sql += " AND state <> 'replaying'"
        with store._write() as conn:
            return bool(store._x(conn, sql, (replay_workflow_id, _ts(_utcnow()), task_id)).rowcount == 1)

    def restore_replay_state(self, entry: DeadLetter, replay_workflow_id: str) -> bool:
        """Undo a claim whose replay could not be started: put back what `entry` had."""
        store = self._store
        with store._write() as conn:
            cursor = store._x(
                conn,
                "UPDATE dead_letters SET state = ?, replay_workflow_id = ?, replayed_at = ?, replay_outcome = ? "
                "WHERE task_id = ? AND replay_workflow_id = ? AND state = 'replaying'",
                (
                    entry.state,
                    entry.replay_workflow_id,
                    _ts(entry.replayed_at) if entry.replayed_at else None,
                    entry.replay_outcome,
                    entry.task_id,
                    replay_workflow_id,
                ),
            )
            return bool(cursor.rowcount == 1)

    def mark_replayed(self, task_id: str, outcome: str, replay_workflow_id: str) -> bool:
        """The replay in `replay_workflow_id` ended with `outcome`.

        Only the replay the entry points at may close it: a stale `--wait` from an older
        replay does not overwrite a newer one. False when nothing was changed.
        """
        store = self._store
        _require("outcome", outcome)
        with store._write() as conn:
            cursor = store._x(
                conn,
                "UPDATE dead_letters SET state = 'replayed', replay_outcome = ?, replayed_at = ? "
                "WHERE task_id = ? AND replay_workflow_id = ? AND state = 'replaying'",
                (outcome, _ts(_utcnow()), task_id, replay_workflow_id),
            )
            return bool(cursor.rowcount == 1)

    def purge(
        self,
        *,
        task_ids: list[str] | None = None,
        replayed: bool = False,
        older_than: datetime | None = None,
    ) -> list[str]:
        """Delete entries; returns the ids deleted (see `secflow.dead_letters.purge`)."""
        if task_ids and replayed:
            raise ValueError("purge takes either ids or replayed=True, not both")
        if not task_ids and not replayed:
            raise ValueError("purge needs ids or replayed=True (unreplayed entries are only purged by id)")
        store = self._store
        with store._write() as conn:
            if task_ids:
                deleted = []
                for task_id in task_ids:
                    if store._x(conn, "DELETE FROM dead_letters WHERE task_id = ?", (task_id,)).rowcount == 1:
                        deleted.append(task_id)
                return deleted
            sql = "SELECT task_id FROM dead_letters WHERE state = 'replayed'"
            params: tuple[Any, ...] = ()
            if older_than is not None:
                sql += " AND last_failure_at < ?"
                params += (_ts(older_than),)
            ids = [r[0] for r in store._x(conn, sql, params).fetchall()]
            for task_id in ids:
                store._x(conn, "DELETE FROM dead_letters WHERE task_id = ? AND state = 'replayed'", (task_id,))
            return ids

    def counts_by_state(self) -> dict[str, int]:
        """Entries per state, every state present (zero included)."""
        store = self._store
        counts = dict.fromkeys(STATES, 0)
        with store._connection() as conn:
            for state, n in store._x(conn, "SELECT state, COUNT(*) FROM dead_letters GROUP BY state").fetchall():
                counts[state] = counts.get(state, 0) + int(n)
        return counts


def _entry(r: tuple[Any, ...]) -> DeadLetter:
    replay = json.loads(r[12]) if r[12] else None
    return DeadLetter(
        task_id=r[0],
        workflow_id=r[1],
        run_id=r[2],
        stage_id=r[3],
        target=r[4],
        tool=r[5],
        reason=r[6],
        category=r[7],
        message=r[8],
        attempts=int(r[9]),
        first_failure_at=_parse_ts(r[10]),
        last_failure_at=_parse_ts(r[11]),
        replay=ReplayRecipe.model_validate(replay) if replay else None,
        state=r[13],
        replayed_at=_parse_ts(r[14]) if r[14] else None,
        replay_outcome=r[15],
        replay_workflow_id=r[16],
        error_reason=r[17] or "",
    )
