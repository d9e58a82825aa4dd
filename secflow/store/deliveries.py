"""The alert-delivery repository: the ``alert_deliveries`` table (migration 7), reached as
``store.deliveries``.

What a delivery is, and the merging and capping rules, are told in
`secflow.alerting.deliveries`; this module decides them in the write transaction that
inserts the row, so two workers deciding at once cannot both take the last slot of a cap
or both become the head of a group.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from secflow.alerting.deliveries import CAPPABLE, FINAL, LIVE, MERGEABLE, Claim, Delivery
from secflow.incidents import AlertRequest, Severity
from secflow.store.core import _parse_ts, _ts

if TYPE_CHECKING:
    from secflow.store.core import FindingsStore

__all__ = ["DeliveryRepository"]

_COLUMNS = "delivery_id, dedup_key, channel, event, group_key, status, merged_count, created_at, updated_at, external_ref"


def _row(r: Any) -> Delivery:
    return Delivery(
        delivery_id=r[0],
        dedup_key=r[1],
        channel=r[2],
        event=r[3],
        group_key=r[4],
        status=r[5],
        merged_count=int(r[6]),
        created_at=_parse_ts(r[7]),
        updated_at=_parse_ts(r[8]),
        external_ref=r[9] or "",
    )


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"  # constants only, never input


class DeliveryRepository:
    """Alert deliveries in one store."""

    def __init__(self, store: FindingsStore) -> None:
        self._store = store

    def get(self, delivery_id: str) -> Delivery | None:
        store = self._store
        with store._connection() as conn:
            r = store._x(conn, f"SELECT {_COLUMNS} FROM alert_deliveries WHERE delivery_id = ?", (delivery_id,)).fetchone()
        return _row(r) if r else None

    def claim(
        self,
        req: AlertRequest,
        *,
        delivery_id: str,
        group: str,
        cooldown: timedelta,
        max_per_hour: int | None,
        now: datetime | None = None,
    ) -> Claim:
        """Decide, under the write lock, whether this delivery is sent, merged or capped."""
        store = self._store
        now = now or datetime.now(UTC)
        stamp = _ts(now)
        channel = req.channel
        with store._write() as conn:
            r = store._x(conn, f"SELECT {_COLUMNS} FROM alert_deliveries WHERE delivery_id = ?", (delivery_id,)).fetchone()
            if r is not None:
                existing = _row(r)
                if existing.status in FINAL:
                    return Claim(existing, send=False, count=existing.merged_count)
                # pending (an attempt died mid-send) or failed: send again.
                store._x(
                    conn,
                    "UPDATE alert_deliveries SET status = 'pending', updated_at = ? WHERE delivery_id = ?",
                    (stamp, delivery_id),
                )
                merged_since, capped_since = self._since(conn, channel, group, existing.created_at)
                return Claim(existing, send=True, merged_since=merged_since, capped_since=capped_since)

            def insert(status: str, count: int = 0) -> Delivery:
                # A merged or capped row keeps the count it reported, so a retried call
                # answers with the same figure.
                store._x(
                    conn,
                    f"INSERT INTO alert_deliveries ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                    (delivery_id, req.incident.dedup_key, channel, req.event.value, group, status, count, stamp, stamp),
                )
                return Delivery(delivery_id, req.incident.dedup_key, channel, req.event.value, group, status, count, now, now, "")

            if req.event in MERGEABLE and cooldown.total_seconds() > 0:
                head = store._x(
                    conn,
                    f"""SELECT delivery_id, merged_count FROM alert_deliveries
                        WHERE channel = ? AND group_key = ? AND status IN {_in(LIVE)} AND created_at >= ?
                        ORDER BY created_at DESC LIMIT 1""",
                    (channel, group, _ts(now - cooldown)),
                ).fetchone()
                if head is not None:
                    count = int(head[1]) + 1
                    store._x(
                        conn,
                        "UPDATE alert_deliveries SET merged_count = ?, updated_at = ? WHERE delivery_id = ?",
                        (count, stamp, head[0]),
                    )
                    return Claim(insert("merged", count), send=False, count=count)

            if max_per_hour is not None and req.event in CAPPABLE and req.incident.severity is not Severity.P1:
                hour_ago = _ts(now - timedelta(hours=1))
                used = store._x(
                    conn,
                    f"SELECT COUNT(*) FROM alert_deliveries WHERE channel = ? AND status IN {_in(LIVE)} AND created_at >= ?",
                    (channel, hour_ago),
                ).fetchone()[0]
                if int(used) >= max_per_hour:
                    capped = store._x(
                        conn,
                        "SELECT COUNT(*) FROM alert_deliveries WHERE channel = ? AND status = 'capped' AND created_at >= ?",
                        (channel, hour_ago),
                    ).fetchone()[0]
                    count = int(capped) + 1  # this one included
                    return Claim(insert("capped", count), send=False, count=count)

            delivery = insert("pending")
            merged_since, capped_since = self._since(conn, channel, group, now)
            return Claim(delivery, send=True, merged_since=merged_since, capped_since=capped_since)

    def _since(self, conn: Any, channel: str, group: str, before: datetime) -> tuple[int, int]:
        """(merged into this group's previous message, capped on the channel since its last one)."""
        store = self._store
        stamp = _ts(before)
        prev = store._x(
            conn,
            """SELECT merged_count FROM alert_deliveries
               WHERE channel = ? AND group_key = ? AND status = 'sent' AND created_at < ?
               ORDER BY created_at DESC LIMIT 1""",
            (channel, group, stamp),
        ).fetchone()
        last_sent = store._x(
            conn,
            "SELECT MAX(created_at) FROM alert_deliveries WHERE channel = ? AND status = 'sent' AND created_at < ?",
            (channel, stamp),
        ).fetchone()[0]
        capped = store._x(
            conn,
            "SELECT COUNT(*) FROM alert_deliveries WHERE channel = ? AND status = 'capped' AND created_at > ? AND created_at < ?",
            (channel, last_sent or "", stamp),
        ).fetchone()[0]
        return (int(prev[0]) if prev else 0), int(capped)

    def finish(self, delivery_id: str, status: str, *, external_ref: str | None = None) -> None:
        """Record the outcome: sent / skipped, or failed (a later claim of the same id tries again)."""
        store = self._store
        stamp = _ts(datetime.now(UTC))
        with store._write() as conn:
            if external_ref:
                store._x(
                    conn,
                    "UPDATE alert_deliveries SET status = ?, external_ref = ?, updated_at = ? WHERE delivery_id = ?",
                    (status, external_ref, stamp, delivery_id),
                )
            else:
                store._x(
                    conn,
                    "UPDATE alert_deliveries SET status = ?, updated_at = ? WHERE delivery_id = ?",
                    (status, stamp, delivery_id),
                )

    def set_external_ref(self, delivery_id: str, external_ref: str) -> None:
        """Remember what a channel created (a Jira issue key) the moment it exists."""
        store = self._store
        stamp = _ts(datetime.now(UTC))
        with store._write() as conn:
            store._x(
                conn,
                "UPDATE alert_deliveries SET external_ref = ?, updated_at = ? WHERE delivery_id = ?",
                (external_ref, stamp, delivery_id),
            )

    def external_ref_for(self, dedup_key: str, channel: str) -> str:
        """What a channel created for an incident before (its Jira issue key), or ''."""
        store = self._store
        with store._connection() as conn:
            r = store._x(
                conn,
                """SELECT external_ref FROM alert_deliveries
                   WHERE dedup_key = ? AND channel = ? AND external_ref IS NOT NULL AND external_ref <> ''
                   ORDER BY created_at LIMIT 1""",
                (dedup_key, channel),
            ).fetchone()
        return str(r[0]) if r else ""
