"""secflow.history_audit against a real dev server: every run of a tree, the largest payload.

The tree (tests/support_history_audit_workflow.py) has a child workflow, a continue-as-new
in the root and in the child, and one ~100 KB activity result, so the walk must follow
RootWorkflowId across runs and children and find that payload inside a generic event.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.enums.v1 import EventType
from temporalio.api.failure.v1 import ApplicationFailureInfo, Failure
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client
from temporalio.worker import Worker

from secflow.history_audit import TreeAudit, audit_run, audit_tree, iter_payloads
from tests.support_history_audit_workflow import ACTIVITIES, BIG_PAYLOAD_CHARS, WORKFLOWS, AuditRootWorkflow, TreeInput


async def _audit_when_listed(client: Client, root_id: str, runs: int, timeout: float = 20.0) -> TreeAudit:
    """Visibility lags a little behind history: poll until every run is listed."""
    deadline = time.monotonic() + timeout
    while True:
        audit = await audit_tree(client, root_id)
        if audit.run_count >= runs or time.monotonic() > deadline:
            return audit
        await asyncio.sleep(0.2)


async def test_audit_finds_every_run_and_the_big_payload(client: Client, task_queue: str) -> None:
    root_id = f"audit-{uuid.uuid4().hex[:8]}"
    leaf_id = f"{root_id}-leaf"
    async with Worker(client, task_queue=task_queue, workflows=WORKFLOWS, activities=ACTIVITIES):
        result = await client.execute_workflow(
            AuditRootWorkflow.run, TreeInput(leaf_id=leaf_id), id=root_id, task_queue=task_queue
        )
    assert result == f"{leaf_id}:{BIG_PAYLOAD_CHARS}".upper()

    audit = await _audit_when_listed(client, root_id, runs=4)
    assert audit.run_count == 4, audit.summary()
    by_id: dict[str, list] = {}
    for run in audit.runs:
        by_id.setdefault(run.workflow_id, []).append(run)
    assert sorted(by_id) == sorted([root_id, leaf_id])
    assert len(by_id[root_id]) == 2 and len(by_id[leaf_id]) == 2
    assert {r.workflow_type for r in by_id[root_id]} == {"AuditRootWorkflow"}
    assert {r.workflow_type for r in by_id[leaf_id]} == {"AuditLeafWorkflow"}
    assert sorted(r.status for r in by_id[root_id]) == ["COMPLETED", "CONTINUED_AS_NEW"]
    assert sorted(r.status for r in by_id[leaf_id]) == ["COMPLETED", "CONTINUED_AS_NEW"]
    assert all(r.parent_workflow_id == root_id for r in by_id[leaf_id])
    assert len({r.run_id for r in audit.runs}) == 4

    # Event counts are the histories' own, and the tree figures add up.
    for run in audit.runs:
        history = await client.get_workflow_handle(run.workflow_id, run_id=run.run_id).fetch_history()
        assert run.event_count == len(history.events) > 0
    assert audit.total_events == sum(r.event_count for r in audit.runs)
    assert audit.max_events == max(r.event_count for r in audit.runs)
    assert audit.total_history_bytes > BIG_PAYLOAD_CHARS

    # The big payload: the activity result in the leaf's second run, nowhere else.
    big = audit.largest_payload
    assert big is not None, audit.summary()
    assert BIG_PAYLOAD_CHARS < big.bytes < BIG_PAYLOAD_CHARS + 1_000
    assert big.workflow_id == leaf_id
    leaf_completed = next(r for r in by_id[leaf_id] if r.status == "COMPLETED")
    assert big.run_id == leaf_completed.run_id
    assert big.event_type == "EVENT_TYPE_ACTIVITY_TASK_COMPLETED"
    assert big.field == "activity_task_completed_event_attributes.result.payloads[0]"
    history = await client.get_workflow_handle(leaf_id, run_id=big.run_id).fetch_history()
    event = next(e for e in history.events if e.event_id == big.event_id)
    assert event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
    assert event.activity_task_completed_event_attributes.result.payloads[0].ByteSize() == big.bytes
    # every other run's largest payload is small
    for run in audit.runs:
        if run.run_id != big.run_id:
            assert run.largest_payload is None or run.largest_payload.bytes < 2_000, run
    assert str(big.bytes) in audit.summary()


def test_walk_reaches_payloads_in_maps_and_nested_failures() -> None:
    """Payloads hidden in a failure's cause chain and in the memo map are found too."""
    blob = Payload(metadata={"encoding": b"json/plain"}, data=b'"' + b"y" * 5000 + b'"')
    event = HistoryEvent(event_id=7, event_type=EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED)
    attrs = event.workflow_execution_failed_event_attributes
    attrs.failure.CopyFrom(
        Failure(
            message="outer",
            cause=Failure(message="inner", application_failure_info=ApplicationFailureInfo(details=Payloads(payloads=[blob]))),
        )
    )
    started = HistoryEvent(event_id=1, event_type=EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED)
    started.workflow_execution_started_event_attributes.memo.fields["note"].CopyFrom(Payload(data=b"small"))
    found = {path: size for size, path in iter_payloads(event)}
    assert found == {"workflow_execution_failed_event_attributes.failure.cause.application_failure_info.details.payloads[0]": blob.ByteSize()}
    assert [p for _, p in iter_payloads(started)] == ["workflow_execution_started_event_attributes.memo.fields['note']"]

    run = audit_run("wf", "run", [started, event], workflow_type="T")
    assert run.event_count == 2 and run.payload_count == 2
    assert run.largest_payload is not None and run.largest_payload.event_id == 7
    assert run.largest_payload.event_type == "EVENT_TYPE_WORKFLOW_EXECUTION_FAILED"
