"""Audit the history tree of a workflow: how many runs, how many events, the largest payload.

Temporal's limits bite per run (51,200 events, 50 MB of history) and per payload (2 MB;
SecFlow's own budget is 256 KB). An assessment that shards its work into child workflows
and continue-as-new runs has many histories; `audit_tree` walks all of them and says
where the biggest one is, so that a test or a bench can assert the budgets hold at any
target count.

How:
1. list every execution whose `RootWorkflowId` search attribute is the root's id: the root
   itself, its children and grandchildren, and every run of each (continue-as-new and
   retries included);
2. fetch each run's full history;
3. walk every event's protobuf message recursively and take `ByteSize()` of every
   `temporal.api.common.v1.Payload` found. Being generic, the walk covers workflow and
   activity inputs and results, child inputs and results, signals, updates, queries
   recorded in history, heartbeat details, memo, search attributes, headers and the
   details of failures, without a list of event types to keep up to date.

Histories are read as stored: payloads are measured as the server holds them (after any
payload codec), which is what Temporal's limits apply to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from pydantic import BaseModel, Field
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

PAYLOAD_TYPE = "temporal.api.common.v1.Payload"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class PayloadLocation(BaseModel):
    """Where one payload sits: which run, which event, which field of it."""

    bytes: int = Field(description="Payload.ByteSize(): data plus metadata, as stored")
    workflow_id: str
    run_id: str
    event_id: int
    event_type: str = Field(description="e.g. EVENT_TYPE_ACTIVITY_TASK_COMPLETED")
    field: str = Field(
        description="dotted path inside the event, e.g. activity_task_completed_event_attributes.result.payloads[0]"
    )


class RunAudit(BaseModel):
    """One run (one history) of one workflow execution."""

    workflow_id: str
    run_id: str
    workflow_type: str
    status: str = Field(description="RUNNING, COMPLETED, CONTINUED_AS_NEW, FAILED, ...")
    parent_workflow_id: str | None = None
    started_at: datetime | None = None
    event_count: int
    history_bytes: int = Field(description="sum of the events' ByteSize()")
    payload_count: int
    largest_payload: PayloadLocation | None = None


class TreeAudit(BaseModel):
    """Every run under one root, and the figures that Temporal's limits apply to."""

    root_workflow_id: str
    runs: list[RunAudit]
    run_count: int
    max_events: int = Field(description="events of the longest single history")
    max_events_workflow_id: str = ""
    max_events_run_id: str = ""
    total_events: int
    total_history_bytes: int
    largest_payload: PayloadLocation | None = None

    @classmethod
    def of(cls, root_workflow_id: str, runs: list[RunAudit]) -> TreeAudit:
        longest = max(runs, key=lambda r: r.event_count, default=None)
        payloads = [r.largest_payload for r in runs if r.largest_payload is not None]
        return cls(
            root_workflow_id=root_workflow_id,
            runs=runs,
            run_count=len(runs),
            max_events=longest.event_count if longest else 0,
            max_events_workflow_id=longest.workflow_id if longest else "",
            max_events_run_id=longest.run_id if longest else "",
            total_events=sum(r.event_count for r in runs),
            total_history_bytes=sum(r.history_bytes for r in runs),
            largest_payload=max(payloads, key=lambda p: p.bytes, default=None),
        )

    def summary(self) -> str:
        """One line for a bench or a failing assertion."""
        big = self.largest_payload
        where = f"{big.bytes} B in {big.workflow_id} event {big.event_id} {big.event_type} {big.field}" if big else "none"
        return (
            f"{self.run_count} runs, max {self.max_events} events per run, {self.total_events} events in all, "
            f"{self.total_history_bytes} B of history; largest payload: {where}"
        )


async def audit_tree(client: Client, root_workflow_id: str, *, concurrency: int = 8) -> TreeAudit:
    """Audit every run of `root_workflow_id` and of all its descendants.

    Relies on the `RootWorkflowId` search attribute (Temporal server 1.26+ and the dev
    server 1.32). Visibility is eventually consistent: a run that started or closed a
    moment ago may not be listed yet, so callers that need the final tree should audit
    after the root has closed and, if they know how many runs to expect, poll.
    `concurrency` bounds the histories fetched at once.
    """
    query = f"RootWorkflowId = '{_quote(root_workflow_id)}'"
    executions = [wf async for wf in client.list_workflows(query)]
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(wf: Any) -> RunAudit:
        async with gate:
            history = await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
        return audit_run(
            wf.id,
            wf.run_id,
            history.events,
            workflow_type=wf.workflow_type,
            status=wf.status.name if wf.status is not None else "UNKNOWN",
            parent_workflow_id=wf.parent_id,
            started_at=wf.start_time,
        )

    runs = await asyncio.gather(*(one(wf) for wf in executions))
    runs.sort(key=lambda r: (r.workflow_id, r.started_at or _EPOCH))
    return TreeAudit.of(root_workflow_id, list(runs))


def audit_run(
    workflow_id: str,
    run_id: str,
    events: Any,
    *,
    workflow_type: str = "",
    status: str = "UNKNOWN",
    parent_workflow_id: str | None = None,
    started_at: datetime | None = None,
) -> RunAudit:
    """Figures of one history (a sequence of `HistoryEvent` messages)."""
    count = 0
    history_bytes = 0
    payloads = 0
    largest: PayloadLocation | None = None
    for event in events:
        count += 1
        history_bytes += event.ByteSize()
        for size, path in iter_payloads(event):
            payloads += 1
            if largest is None or size > largest.bytes:
                largest = PayloadLocation(
                    bytes=size,
                    workflow_id=workflow_id,
                    run_id=run_id,
                    event_id=event.event_id,
                    event_type=EventType.Name(event.event_type),
                    field=path,
                )
    return RunAudit(
        workflow_id=workflow_id,
        run_id=run_id,
        workflow_type=workflow_type,
        status=status,
        parent_workflow_id=parent_workflow_id,
        started_at=started_at,
        event_count=count,
        history_bytes=history_bytes,
        payload_count=payloads,
        largest_payload=largest,
    )


def iter_payloads(message: Message, path: str = "") -> Iterator[tuple[int, str]]:
    """(ByteSize, dotted field path) of every Payload inside `message`, depth first.

    Only set fields are visited, and branches whose message type can never hold a
    Payload are skipped (decided once per type), so a long history walks quickly.
    """
    if message.DESCRIPTOR.full_name == PAYLOAD_TYPE:
        yield message.ByteSize(), path or "<payload>"
        return
    for field, value in message.ListFields():
        kind = field.message_type
        if kind is None or not _may_hold_payload(kind):
            continue
        name = f"{path}.{field.name}" if path else field.name
        if field.is_repeated and kind.GetOptions().map_entry:
            value_field = kind.fields_by_name["value"]
            if value_field.type != FieldDescriptor.TYPE_MESSAGE:
                continue
            for key in sorted(value, key=str):
                yield from iter_payloads(value[key], f"{name}[{key!r}]")
        elif field.is_repeated:
            for i, item in enumerate(value):
                yield from iter_payloads(item, f"{name}[{i}]")
        else:
            yield from iter_payloads(value, name)


_HOLDS_PAYLOAD: dict[str, bool] = {}


def _may_hold_payload(descriptor: Descriptor) -> bool:
    """Whether a message of this type can contain a Payload at any depth (memoised).

    A full search of the type graph per type asked (types refer to themselves, e.g.
    Failure.cause), so a cached answer is never one computed half-way through a cycle.
    """
    name = descriptor.full_name
    known = _HOLDS_PAYLOAD.get(name)
    if known is None:
        seen: set[str] = set()
        stack = [descriptor]
        known = False
        while stack and not known:
            current = stack.pop()
            if current.full_name == PAYLOAD_TYPE or _HOLDS_PAYLOAD.get(current.full_name):
                known = True
            elif current.full_name not in seen:
                seen.add(current.full_name)
                stack.extend(f.message_type for f in current.fields if f.message_type is not None)
        _HOLDS_PAYLOAD[name] = known
    return known


def _quote(value: str) -> str:
    """A value inside a single-quoted visibility query string."""
    return value.replace("\\", "\\\\").replace("'", "\\'")
