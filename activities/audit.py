"""`record_decision`: write one human decision, accepted or not, to the audit trail.

Idempotent: the row is keyed by (workflow id, entry id), which the workflow chose
deterministically (the nonce of an accepted signed decision, or an id from its seeded
random), so a retried activity or a replayed workflow writes one row. The free texts (the
decision's reason, the refusal) are redacted here: the trail is read by people.
"""

from __future__ import annotations

import asyncio

from temporalio import activity

from activities.runner import classified
from secflow.approvals import DecisionRecord, DecisionRecorded
from secflow.logging import get_logger
from secflow.redaction import redact
from secflow.store import open_store


async def record_decision_now(entry: DecisionRecord) -> DecisionRecorded:
    """The activity's body, callable outside a worker (the starter records its own refusals)."""
    clean = entry.model_copy(update={"reason": redact(entry.reason), "outcome": redact(entry.outcome)})
    created = await asyncio.to_thread(open_store().audit.record, clean)
    log = get_logger(component="audit", workflow_id=entry.workflow_id, stage=entry.stage)
    if created and not entry.accepted:
        log.warning("decision refused", action=entry.action, by=entry.decided_by, via=entry.via, reason=clean.outcome)
    elif created:
        log.info("decision recorded", action=entry.action, by=entry.decided_by, via=entry.via)
    return DecisionRecorded(created=created)


@activity.defn(name="record_decision")
@classified
async def record_decision(entry: DecisionRecord) -> DecisionRecorded:
    return await record_decision_now(entry)
