"""What an assessment acquires and gives back: workspace, scan locks; and its closing count.

All idempotent: each may run twice (a retry after a lost response) with the same effect
as once.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from temporalio import activity

from activities.runner import classified
from secflow.errors import InvalidInputError
from secflow.liveness import workflow_is_gone
from secflow.logging import get_logger
from secflow.models import FinalizeRequest, FindingCounts, LockOutcome, LockRequest, WorkspaceInfo, WorkspaceRequest
from secflow.settings import load_settings
from secflow.store import open_store

# A stage's final state -> the outcome of the errors met in it that are not resolved yet.
_ERROR_OUTCOME = {
    "succeeded": "recovered",
    "partial": "degraded",
    "unverified": "recovered",  # it recovered; its validation failed (recovery_validations says why)
    "failed": "failed",
    "skipped": "skipped",
    "cancelled": "cancelled",
}


def _workspace_path(assessment_id: str) -> Path:
    if not assessment_id or "/" in assessment_id or assessment_id in (".", "..") or "\x00" in assessment_id:
        raise InvalidInputError(f"assessment id {assessment_id!r} cannot name a workspace directory")
    return load_settings().workspaces_dir / assessment_id


@activity.defn(name="create_workspace")
@classified
async def create_workspace(req: WorkspaceRequest) -> WorkspaceInfo:
    path = _workspace_path(req.assessment_id)
    await asyncio.to_thread(path.mkdir, parents=True, exist_ok=True)
    return WorkspaceInfo(path=str(path))


@activity.defn(name="remove_workspace")
@classified
async def remove_workspace(req: WorkspaceRequest) -> None:
    path = _workspace_path(req.assessment_id)
    if path.exists():
        await asyncio.to_thread(shutil.rmtree, path)


@activity.defn(name="acquire_scan_lock")
@classified
async def acquire_scan_lock(req: LockRequest) -> LockOutcome:
    store = open_store()
    result = await asyncio.to_thread(store.acquire_lock, req.target, req.holder)
    if not result.acquired and await workflow_is_gone(activity.client(), result.holder):
        # A terminated (or reset-away) assessment never ran its compensations: its lock
        # is stale. Take it over rather than make every later scan of the host wait.
        get_logger(component="locks").warning(
            "taking over a stale scan lock", target=req.target, stale_holder=result.holder, new_holder=req.holder
        )
        await asyncio.to_thread(store.release_lock, req.target, result.holder)
        result = await asyncio.to_thread(store.acquire_lock, req.target, req.holder)
    return LockOutcome(acquired=result.acquired, holder=result.holder)


@activity.defn(name="release_scan_lock")
@classified
async def release_scan_lock(req: LockRequest) -> LockOutcome:
    released = await asyncio.to_thread(open_store().release_lock, req.target, req.holder)
    return LockOutcome(acquired=False, holder=req.holder, released=released)


@activity.defn(name="finalize_assessment")
@classified
async def finalize_assessment(req: FinalizeRequest) -> FindingCounts:
    store = open_store()
    for stage_id, state in req.stage_outcomes.items():
        outcome = _ERROR_OUTCOME.get(state)
        if outcome:
            await asyncio.to_thread(store.resolve_errors, req.assessment_id, stage_id, None, outcome)
    counts = await asyncio.to_thread(store.count_findings, req.assessment_id)
    return FindingCounts(total=counts.total, by_severity=dict(counts.by_severity))
