"""A small workflow tree for tests/test_history_audit.py (workflows must live in a module).

    AuditRootWorkflow round 0 --child--> AuditLeafWorkflow round 0
                                              | continue-as-new
                                         AuditLeafWorkflow round 1 --activity--> big_result (~100 KB)
    AuditRootWorkflow round 0 ... continue-as-new
    AuditRootWorkflow round 1 --activity--> small_result

Four runs under one root; the one large payload is the result of `big_result`, recorded
in the leaf's second run as ACTIVITY_TASK_COMPLETED.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow

BIG_PAYLOAD_CHARS = 100_000


@dataclass
class TreeInput:
    round: int = 0
    leaf_id: str = ""


@activity.defn
async def big_result(size: int) -> str:
    return "x" * size


@activity.defn
async def small_result(text: str) -> str:
    return text.upper()


@workflow.defn
class AuditLeafWorkflow:
    @workflow.run
    async def run(self, inp: TreeInput) -> int:
        if inp.round == 0:
            workflow.continue_as_new(TreeInput(round=1))
        data = await workflow.execute_activity(big_result, BIG_PAYLOAD_CHARS, start_to_close_timeout=timedelta(seconds=30))
        return len(data)


@workflow.defn
class AuditRootWorkflow:
    @workflow.run
    async def run(self, inp: TreeInput) -> str:
        if inp.round == 0:
            size = await workflow.execute_child_workflow(AuditLeafWorkflow.run, TreeInput(), id=inp.leaf_id)
            workflow.continue_as_new(TreeInput(round=1, leaf_id=f"{inp.leaf_id}:{size}"))
        return await workflow.execute_activity(small_result, inp.leaf_id, start_to_close_timeout=timedelta(seconds=30))


WORKFLOWS: list[type] = [AuditRootWorkflow, AuditLeafWorkflow]
ACTIVITIES: list[Callable[..., Any]] = [big_result, small_result]
