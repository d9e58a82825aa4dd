"""The one activity of adaptive retries: read the recovery record, choose a stage's plan.

Called by the assessment before each round of a stage with `retry: {adaptive: true}`;
its answer lands in the workflow's history, so the workflow stays deterministic while
the record keeps changing (secflow/adaptive.py). Read-only, hence idempotent.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from temporalio import activity

from activities.runner import classified
from secflow.adaptive import ADAPTIVE_WINDOW, AdaptiveChoice, AdaptiveRequest, choose_plan
from secflow.error_stats import load_strategies
from secflow.logging import get_logger
from secflow.store import open_store


@activity.defn(name="choose_retry_plan")
@classified
async def choose_retry_plan(req: AdaptiveRequest) -> AdaptiveChoice:
    since = datetime.now(UTC) - ADAPTIVE_WINDOW
    record = await asyncio.to_thread(load_strategies, open_store(), since, tools={req.tool})
    choice = choose_plan(req, record)
    # One structured line per choice, adapted or not: why this stage runs with this plan.
    get_logger(assessment_id=req.assessment_id, stage=req.stage_id, tool=req.tool).info(
        "adaptive retry plan",
        adapted=choice.adapted,
        dependency=choice.dependency or None,
        samples=choice.samples,
        max_attempts=choice.plan.max_attempts,
        initial_interval_seconds=choice.plan.initial_interval.total_seconds(),
        reason=choice.reason,
    )
    return choice
