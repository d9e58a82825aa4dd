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

The SQL is the store's delivery repository (`store.deliveries`,
secflow/store/deliveries.py); the functions here are its entry points.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from secflow.incidents import AlertRequest, IncidentEvent

if TYPE_CHECKING:
    from secflow.store import FindingsStore

__all__ = ["Claim", "Delivery", "claim", "delivery_id_for", "external_ref_for", "finish", "get_delivery", "set_external_ref"]

FINAL = ("sent", "merged", "capped", "skipped")
LIVE = ("sent", "pending")  # rows that count as "went out (or is going out)"
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


def get_delivery(store: FindingsStore, delivery_id: str) -> Delivery | None:
    return store.deliveries.get(delivery_id)


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
    return store.deliveries.claim(
        req, delivery_id=delivery_id, group=group, cooldown=cooldown, max_per_hour=max_per_hour, now=now
    )


def finish(store: FindingsStore, delivery_id: str, status: str, *, external_ref: str | None = None) -> None:
    """Record the outcome: sent / skipped, or failed (a non-retryable error; a later call
    with the same delivery id tries again)."""
    store.deliveries.finish(delivery_id, status, external_ref=external_ref)


def set_external_ref(store: FindingsStore, delivery_id: str, external_ref: str) -> None:
    """Remember what a channel created (a Jira issue key) the moment it exists."""
    store.deliveries.set_external_ref(delivery_id, external_ref)


def external_ref_for(store: FindingsStore, dedup_key: str, channel: str) -> str:
    """What a channel created for an incident before (its Jira issue key), or ''."""
    return store.deliveries.external_ref_for(dedup_key, channel)
