"""The activities behind a sharded stage: the spec by reference, targets by batch, outcomes in the store.

A workflow never holds an assessment's targets: it holds the spec's digest and cursors.
These activities read what one batch needs from the stored spec, write each batch's
per-target outcomes to the store, and park a stage's failed targets in the dead-letter
queue straight from the store. All idempotent: outcomes and dead letters are keyed.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Iterator
from datetime import UTC, datetime

from temporalio import activity

from activities.dlq import park_dead_letter_now
from activities.runner import classified
from secflow.dead_letters import DeadLetterInput, ReplayRecipe, dead_letter_task_id
from secflow.documents import load_spec
from secflow.errors import Category
from secflow.launch import summarize_spec
from secflow.models import (
    WHOLE_STAGE,
    ParkResult,
    ParkStageFailures,
    SpecRef,
    SpecSummary,
    StageRef,
    TargetBatch,
    TargetBatchRequest,
    TargetRef,
    TargetResults,
)
from secflow.redaction import redact
from secflow.spec import Spec, Target
from secflow.store import FindingsStore, TargetOutcome, open_store
from secflow.tools import TOOLS

# One batch's targets stay well under Temporal's payload budget (256 KB) even when the
# targets are long URLs: a batch ends early once its targets' text passes this.
BATCH_TEXT_BUDGET = 128 * 1024
# Outcomes per store write and per page read.
PAGE = 500

_targets_cache: OrderedDict[tuple[str, str], list[Target]] = OrderedDict()
_targets_lock = threading.Lock()


def _targets_for(store: FindingsStore, spec_ref: str, tool: str) -> list[Target]:
    """The tool's targets in spec order, computed once per process and spec."""
    key = (spec_ref, tool)
    with _targets_lock:
        found = _targets_cache.get(key)
        if found is not None:
            _targets_cache.move_to_end(key)
            return found
    spec = load_spec(store, spec_ref)
    targets = spec.targets_for(tool) if TOOLS[tool].target_kinds else []
    with _targets_lock:
        _targets_cache[key] = targets
        while len(_targets_cache) > 16:
            _targets_cache.popitem(last=False)
    return targets


@activity.defn(name="describe_spec")
@classified
async def describe_spec(req: SpecRef) -> SpecSummary:
    spec = await asyncio.to_thread(load_spec, open_store(), req.spec_ref)
    return await asyncio.to_thread(summarize_spec, spec)


def _batch(req: TargetBatchRequest) -> TargetBatch:
    store = open_store()
    targets = _targets_for(store, req.spec_ref, req.tool)
    end = min(len(targets), req.cursor + req.limit)
    failed = _failed_keys(store, req.assessment_id, req.stage_id) if req.only_failed else None
    picked: list[TargetRef] = []
    size = 0
    cursor = req.cursor
    while cursor < end:
        t = targets[cursor]
        if failed is None or t.value in failed:
            size += len(t.value) + 16
            if picked and size > BATCH_TEXT_BUDGET:
                break
            picked.append(TargetRef(value=t.value, kind=t.kind))
        cursor += 1
    return TargetBatch(targets=picked, next_cursor=cursor, exhausted=cursor >= len(targets))


def _failed_pages(store: FindingsStore, assessment_id: str, stage_id: str) -> Iterator[list[TargetOutcome]]:
    """The stage's outcomes that are failed or cancelled, a page at a time (keyset paging)."""
    for state in ("failed", "cancelled"):
        after: tuple[str, str] | None = None
        while True:
            page = store.list_target_outcomes(assessment_id, stage_id=stage_id, state=state, after=after, limit=PAGE)
            if page:
                yield page
            if len(page) < PAGE:
                break
            after = (page[-1].stage_id, page[-1].target)


def _failed_keys(store: FindingsStore, assessment_id: str, stage_id: str) -> set[str]:
    """Targets of the stage whose latest outcome is failed or cancelled.

    Spec order is not key order, so read every failed outcome of the stage (paged); a
    retry round is the rare path and its failures are what it is about."""
    return {o.target for page in _failed_pages(store, assessment_id, stage_id) for o in page}


@activity.defn(name="load_target_batch")
@classified
async def load_target_batch(req: TargetBatchRequest) -> TargetBatch:
    return await asyncio.to_thread(_batch, req)


@activity.defn(name="record_target_results")
@classified
async def record_target_results(req: TargetResults) -> int:
    now = datetime.now(UTC)
    outcomes = [
        TargetOutcome(
            assessment_id=req.assessment_id,
            stage_id=req.stage_id,
            target=r.target,
            tool=r.tool,
            state=r.state,
            attempts=r.attempts,
            findings=r.findings,
            error_category=r.category,
            error_message=redact(r.message),
            updated_at=now,
        )
        for r in req.results
    ]
    return await asyncio.to_thread(open_store().record_target_outcomes, outcomes)


@activity.defn(name="count_stage_targets")
@classified
async def count_stage_targets(req: StageRef) -> dict[str, int]:
    counts = await asyncio.to_thread(open_store().count_target_outcomes, req.assessment_id)
    return counts.get(req.stage_id, {})


def _recipe(spec: Spec, stage_id: str, target: str, tool: str, task_queue: str) -> ReplayRecipe:
    stage = spec.stage(stage_id)
    targetless = not TOOLS[tool].target_kinds
    match = None if targetless else next((t for t in spec.targets if t.value == target), None)
    return ReplayRecipe(
        spec_name=spec.name,
        scope=list(spec.scope.allow),
        stage=stage.model_dump(mode="json", exclude_defaults=True),
        target=match.model_dump(mode="json", exclude_none=True) if match is not None else None,
        task_queue=task_queue,
        spec_targets=[t.model_dump(mode="json", exclude_none=True) for t in spec.targets] if targetless else [],
    )


async def _park_failures(req: ParkStageFailures) -> int:
    store = open_store()
    spec = await asyncio.to_thread(load_spec, store, req.spec_ref)
    parked = 0
    pages = _failed_pages(store, req.assessment_id, req.stage_id)
    while (page := await asyncio.to_thread(next, pages, None)) is not None:
        for o in page:
            if o.error_category == Category.USER_ABORT.value:
                continue
            if req.categories and o.error_category not in req.categories:
                continue
            at = o.updated_at or datetime.now(UTC)
            await park_dead_letter_now(
                DeadLetterInput(
                    task_id=dead_letter_task_id(
                        req.assessment_id, req.run_id, req.stage_id, "" if o.target == WHOLE_STAGE else o.target, req.reason
                    ),
                    workflow_id=req.assessment_id,
                    run_id=req.run_id,
                    stage_id=req.stage_id,
                    target="" if o.target == WHOLE_STAGE else o.target,
                    tool=o.tool,
                    reason=req.reason,
                    category=o.error_category or Category.INTERNAL.value,
                    message=o.error_message,
                    attempts=max(o.attempts, 1),
                    first_failure_at=at,
                    last_failure_at=at,
                    replay=_recipe(spec, req.stage_id, o.target, o.tool, req.task_queue),
                )
            )
            parked += 1
            activity.heartbeat(parked)
    return parked


@activity.defn(name="park_stage_failures")
@classified
async def park_stage_failures(req: ParkStageFailures) -> ParkResult:
    return ParkResult(parked=await _park_failures(req))
