"""Small helpers for workflow tests: build specs, start assessments, wait for states."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle

from secflow.launch import start_assessment
from secflow.models import AssessmentStatus
from secflow.spec import Spec, validate_spec_data


def own_loopback_host() -> str:
    """A loopback address of this test's own (127.0.0.0/8 all answers locally): scan locks
    are per host, so an assessment another test leaves waiting on 127.0.0.1 cannot hold
    this test's assessment in `waiting_for_lock`. Use with LOOPBACK_SCOPE."""
    n = uuid.uuid4().int
    return f"127.{n % 250 + 1}.{n // 250 % 250 + 1}.{n // 62500 % 250 + 1}"


LOOPBACK_SCOPE = {"allow": ["127.0.0.0/8", "localhost"]}


def make_spec(targets: list[dict[str, str]], stages: list[dict[str, Any]], **extra: Any) -> Spec:
    data = {
        "name": "test",
        "scope": {"allow": ["127.0.0.1", "localhost"]},
        "targets": targets,
        "stages": stages,
        **extra,
    }
    return validate_spec_data(json.loads(json.dumps(data)))


async def start(client: Client, spec: Spec, task_queue: str, workflow_id: str | None = None, **options: Any) -> WorkflowHandle:
    return await start_assessment(
        client, spec, workflow_id=workflow_id or f"t-{uuid.uuid4().hex[:10]}", task_queue=task_queue, requested_by="tests", **options
    )


async def status_of(handle: WorkflowHandle) -> AssessmentStatus:
    return await handle.query("status", result_type=AssessmentStatus)


async def wait_for(
    handle: WorkflowHandle, predicate: Callable[[AssessmentStatus], bool], timeout: float = 60.0
) -> AssessmentStatus:
    deadline = time.monotonic() + timeout
    last: AssessmentStatus | None = None
    while time.monotonic() < deadline:
        last = await status_of(handle)
        try:
            if predicate(last):
                return last
        except KeyError:
            pass  # the assessment has not read its spec's stages yet
        await asyncio.sleep(0.2)
    raise AssertionError(f"condition not reached in {timeout}s; last status: {last.model_dump_json(indent=1) if last else None}")


async def final_status(handle: WorkflowHandle, timeout: float = 120.0) -> AssessmentStatus:
    """The result, whether the workflow returned it or failed with it as details."""
    try:
        result = await asyncio.wait_for(handle.result(), timeout)
        return result if isinstance(result, AssessmentStatus) else AssessmentStatus.model_validate(result)
    except WorkflowFailureError as err:
        cause = err.cause
        details = getattr(cause, "details", None)
        assert details, f"workflow failed without a status: {err}"
        return AssessmentStatus.model_validate(details[0])


async def activity_order(handle: WorkflowHandle) -> list[str]:
    """Activity types in the order they were scheduled, read from the real history."""
    order = []
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            order.append(event.activity_task_scheduled_event_attributes.activity_type.name)
    return order


def target_states(assessment_id: str, stage_id: str) -> dict[str, str]:
    """Per-target outcomes of a stage, as the store holds them (the status keeps only counts)."""
    from secflow.store import open_store

    return {o.target: o.state for o in open_store().list_target_outcomes(assessment_id, stage_id=stage_id, limit=10_000)}
