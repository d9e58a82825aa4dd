"""The alert_deliveries table (migration 7): one row per delivery the incident workflow asks for.

A delivery is named by (incident, event, tier, channel, sequence) -> `delivery_id`, so a
retried `send_alert` finds its own row: already `sent` (or merged, capped, skipped) means
"done, say so again" and nothing goes out twice. A row is written `pending` before the
message leaves and turned `sent` after; a crash in between leaves it `pending` and the
retry sends again (at least once: receivers can dedupe on the delivery id, which every
channel carries).

Grouping and caps are decided in the same write transaction as the row is inserted, so
two workers deciding at once cannot both take the last slot of a cap or both become the
head of a group:

- merging: a trigger or escalation whose group (`render.group_key`) already has a `sent`
  or `pending` row younger than the channel's cooldown is not sent; that head row's
  `merged_count` goes up by one and the new row is `merged` (its own merged_count is the
  figure it reported). The next message of the group
  that does go out says how many were merged into the previous one.
- capping: a P2-P4 trigger, escalation or summary on a channel that already sent
  `max_per_hour` messages in the last rolling hour is `capped` (counted; the next message
  on the channel says how many were held back). P1 is never capped: a security incident
  that nobody hears about is worse than a noisy hour. Acknowledge and resolve are never
  merged nor capped: they tell people to stop working on something.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from secflow.incidents import AlertRequest, IncidentEvent, Severity
from secflow.store import FindingsStore, _parse_ts, _ts

__all__ = ["Claim", "Delivery", "claim", "delivery_id_for", "external_ref_for", "finish", "get_delivery", "set_external_ref"]

FINAL = ("sent", "merged", "capped", "skipped")
_LIVE = ("sent", "pending")  # rows that count as "went out (or is going out)"
MERGEABLE = (IncidentEvent.TRIGGER, IncidentEvent.ESCALATE)
CAPPABLE = (IncidentEvent.TRIGGER, IncidentEvent.ESCALATE, IncidentEvent.SUMMARY)


def delivery_id_for(req: AlertRequest) -> str:
    raw = "\x1f".join((req.incident.incident_id, req.event.value, str(req.tier), req.channel, str(req.sequence)))
    return hashlib.sha256(raw.encode()).hexdigest()[:40]


@dataclass(frozen=True)
class Delivery:
    delivery_id: str
    dedup_key: str
    channel: str
    event: str
    group_key: str
    status: str
    merged_count: int
    created_at: datetime
    updated_at: datetime
    external_ref: str


@dataclass(frozen=True)
class Claim:
    """What the activity should do: `send` (row is pending), or report `status` as is."""

    delivery: Delivery
    send: bool
    merged_since: int = 0  # merged into the group's previous message (for the text)
    capped_since: int = 0  # capped on the channel since its last message (for the text)
    count: int = 0  # merged: the head's merged_count; capped: capped this hour


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


_COLUMNS = "delivery_id, dedup_key, channel, event, group_key, status, merged_count, created_at, updated_at, external_ref"


def get_delivery(store: FindingsStore, delivery_id: str) -> Delivery | None:
    with store._connection() as conn:
        r = store._x(conn, f"SELECT {_COLUMNS} FROM alert_deliveries WHERE delivery_id = ?", (delivery_id,)).fetchone()
    return _row(r) if r else None


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"  # constants only, never input


def claim(
    store: FindingsStore,
    req: AlertRequest,
    *,
    delivery_id: str,
    group: str,
    cooldown: timedelta,
    max_per_hour: int | None,
    now: datetime | None = None,
) -> Claim:
    """Decide, under the write lock, whether this delivery is sent, merged or capped."""
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
                conn, "UPDATE alert_deliveries SET status = 'pending', updated_at = ? WHERE delivery_id = ?", (stamp, delivery_id)
            )
            merged_since, capped_since = _since(store, conn, channel, group, existing.created_at)
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
                    WHERE channel = ? AND group_key = ? AND status IN {_in(_LIVE)} AND created_at >= ?
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
                f"SELECT COUNT(*) FROM alert_deliveries WHERE channel = ? AND status IN {_in(_LIVE)} AND created_at >= ?",
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
        merged_since, capped_since = _since(store, conn, channel, group, now)
        return Claim(delivery, send=True, merged_since=merged_since, capped_since=capped_since)


def _since(store: FindingsStore, conn: Any, channel: str, group: str, before: datetime) -> tuple[int, int]:
    """(merged into this group's previous message, capped on the channel since its last one)."""
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


def finish(store: FindingsStore, delivery_id: str, status: str, *, external_ref: str | None = None) -> None:
    """Record the outcome: sent / skipped, or failed (a non-retryable error; a later call
    with the same delivery id tries again)."""
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
                conn, "UPDATE alert_deliveries SET status = ?, updated_at = ? WHERE delivery_id = ?", (status, stamp, delivery_id)
            )


def set_external_ref(store: FindingsStore, delivery_id: str, external_ref: str) -> None:
    """Remember what a channel created (a Jira issue key) the moment it exists."""
    stamp = _ts(datetime.now(UTC))
    with store._write() as conn:
        store._x(
            conn,
            "UPDATE alert_deliveries SET external_ref = ?, updated_at = ? WHERE delivery_id = ?",
            (external_ref, stamp, delivery_id),
        )


def external_ref_for(store: FindingsStore, dedup_key: str, channel: str) -> str:
    """What a channel created for an incident before (its Jira issue key), or ''."""
    with store._connection() as conn:
        r = store._x(
            conn,
            """SELECT external_ref FROM alert_deliveries
               WHERE dedup_key = ? AND channel = ? AND external_ref IS NOT NULL AND external_ref <> ''
               ORDER BY created_at LIMIT 1""",
            (dedup_key, channel),
        ).fetchone()
    return r[0] if r else ""
