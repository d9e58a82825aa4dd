"""`park_dead_letter`: write an unrecoverable task to the dead-letter queue.

Idempotent: the entry is keyed by the input's deterministic task id, so a retried
activity (or a workflow replaying its history) refreshes the one entry instead of adding
another. The message is redacted again here, whatever the caller did: the DLQ is read
by operators and fed into alerts.
"""

from __future__ import annotations

import asyncio

from temporalio import activity

from activities.runner import classified
from secflow import metrics
from secflow.dead_letters import DeadLetterInput, DeadLetterResult, park
from secflow.logging import get_logger
from secflow.redaction import redact
from secflow.store import open_store


async def park_dead_letter_now(inp: DeadLetterInput) -> DeadLetterResult:
    """The activity's body, callable outside a worker (the starter, tests)."""
    clean = inp.model_copy(update={"message": redact(inp.message)})
    result = await asyncio.to_thread(park, open_store(), clean)
    log = get_logger(component="dlq", workflow_id=inp.workflow_id, stage=inp.stage_id, target=inp.target)
    if result.created:
        metrics.record_dead_letter(inp.reason, inp.category)
        log.warning("task parked in the dead-letter queue", task_id=inp.task_id, reason=inp.reason, category=inp.category)
    else:
        log.info("dead-letter entry refreshed", task_id=inp.task_id, reason=inp.reason)
    return result


@activity.defn(name="park_dead_letter")
@classified
async def park_dead_letter(inp: DeadLetterInput) -> DeadLetterResult:
    return await park_dead_letter_now(inp)
