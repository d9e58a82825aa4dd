"""Test-only worker process: the REAL bookkeeping calls, with a slow first attempt.

Run by tests/test_kills.py as ``python -c "...main()"`` (imported, so the workflow
sandbox sees this module by its name), then SIGKILLed. The workflow calls `workflows.assessment.calls.make_workspace` / `.finalize`, so the
timeouts and retry policies under test are the product's. The activities registered
under the real names are the real ones, wrapped by the real `@classified` (whose
background heartbeat is what is tested), except that while ``activity.info().attempt`` is
at most ``SECFLOW_TEST_HOLD_ATTEMPTS`` they first write ``<SECFLOW_TEST_MARKER_DIR>/
<activity>-<attempt>`` and then hold, standing in for a large store write that is still
running when the worker dies.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():
    from activities.resources import create_workspace, finalize_assessment
    from activities.runner import classified
    from secflow.models import FinalizeRequest, FindingCounts, WorkspaceInfo, WorkspaceRequest
    from secflow.settings import load_settings
    from secflow.temporal_client import connect
    from workflows.assessment import calls


class KillProbe(BaseModel):
    assessment_id: str
    call: str  # "make_workspace" or "finalize"


async def _hold_if_asked() -> None:
    info = activity.info()
    if info.attempt > int(os.environ.get("SECFLOW_TEST_HOLD_ATTEMPTS", "0")):
        return
    marker = Path(os.environ["SECFLOW_TEST_MARKER_DIR"]) / f"{info.activity_type}-{info.attempt}"
    marker.write_text(str(os.getpid()))
    await asyncio.sleep(3600)  # killed long before this ends


@activity.defn(name="create_workspace")
@classified
async def slow_create_workspace(req: WorkspaceRequest) -> WorkspaceInfo:
    await _hold_if_asked()
    return await create_workspace.__wrapped__(req)  # type: ignore[attr-defined]


@activity.defn(name="finalize_assessment")
@classified
async def slow_finalize_assessment(req: FinalizeRequest) -> FindingCounts:
    await _hold_if_asked()
    return await finalize_assessment.__wrapped__(req)  # type: ignore[attr-defined]


@workflow.defn(name="TestBookkeepingKill")
class BookkeepingKillWorkflow:
    @workflow.run
    async def run(self, probe: KillProbe) -> str:
        if probe.call == "make_workspace":
            return (await calls.make_workspace(WorkspaceRequest(assessment_id=probe.assessment_id))).path
        counts = await calls.finalize(FinalizeRequest(assessment_id=probe.assessment_id))
        return f"total={counts.total}"


async def main() -> None:
    settings = load_settings()
    client = await connect(settings)
    worker = Worker(
        client,
        task_queue=settings.task_queue,
        workflows=[BookkeepingKillWorkflow],
        activities=[slow_create_workspace, slow_finalize_assessment],
    )
    await worker.run()
