"""Is a worker polling the queue? Asked before anything that needs one is sent.

An update, a query or a wait on a queue nobody polls just waits: the starter used to hang
without a word, and an `approve` the user gave up on took effect when a worker came back
hours later. So commands that need a worker ask Temporal first (DescribeTaskQueue) and
refuse, sending nothing, when no worker has polled lately.

The server lists a poller for minutes after it was last seen, while a live idle worker
re-polls about once a minute (a long poll), so "polling" means seen within
`POLLER_FRESH_SECONDS`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from secflow import guidance
from starter.temporal_errors import CONNECT_TIMEOUT

if TYPE_CHECKING:
    from temporalio.client import Client

POLLER_FRESH_SECONDS = 90.0
# A worker started a moment ago (`worker.py &` then a command) has not polled yet: ask again
# for this long before refusing, still well inside the 5 s the user waits for an answer.
STARTING_WORKER_GRACE = 3.0


class NoWorker(Exception):
    """No worker is polling the queue; the message says how to start one."""


async def live_pollers(client: Client, task_queue: str) -> int:
    """How many workers polled the queue's workflow tasks within POLLER_FRESH_SECONDS."""
    from temporalio.api.enums.v1 import TaskQueueKind, TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    request = DescribeTaskQueueRequest(
        namespace=client.namespace,
        task_queue=TaskQueue(name=task_queue, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    )
    response = await client.workflow_service.describe_task_queue(request, timeout=timedelta(seconds=CONNECT_TIMEOUT - 1))
    now = datetime.now(UTC)
    fresh = 0
    for poller in response.pollers:
        seen = poller.last_access_time.ToDatetime(tzinfo=UTC) if poller.HasField("last_access_time") else now
        if (now - seen).total_seconds() <= POLLER_FRESH_SECONDS:
            fresh += 1
    return fresh


def no_worker_message(task_queue: str, what: str) -> str:
    return (
        f"no worker is polling task queue {task_queue!r}, so {what}; nothing was sent. "
        f"Start one from the project folder: {guidance.worker_command(task_queue)}"
    )


async def require_worker(client: Client, task_queue: str, what: str) -> None:
    """Raise NoWorker (message: the queue and how to start a worker) unless one polls it
    now or within STARTING_WORKER_GRACE seconds."""
    import asyncio

    loop = asyncio.get_running_loop()
    give_up = loop.time() + STARTING_WORKER_GRACE
    while await live_pollers(client, task_queue) == 0:
        if loop.time() >= give_up:
            raise NoWorker(no_worker_message(task_queue, what))
        await asyncio.sleep(0.5)
