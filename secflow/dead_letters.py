"""The dead-letter queue: tasks that ended unrecoverable, parked for an operator.

A task lands here when its retries are exhausted and its stage failed, when a
compensation failed, or on a security violation. Each entry keeps what is needed to
replay it (`ReplayRecipe`): `python -m starter dlq replay ID` re-runs the stage in the
parked workflow when it still waits, or starts a new assessment for just that stage and
target.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = ["DeadLetterInput", "DeadLetterResult", "DeadLetterReason", "ReplayRecipe", "dead_letter_task_id"]

DeadLetterReason = Literal["retries_exhausted", "compensation_failed", "security_violation"]


class ReplayRecipe(BaseModel):
    """Enough of the original spec to run the one stage on the one target again."""

    spec_name: str
    scope: list[str]
    stage: dict[str, Any]  # the spec's Stage, as JSON (dependencies dropped on replay)
    target: dict[str, Any] | None = None  # the spec's Target; None for target-less tools
    task_queue: str = ""


class DeadLetterInput(BaseModel):
    task_id: str  # deterministic (see dead_letter_task_id): parking twice is one entry
    workflow_id: str
    run_id: str
    stage_id: str
    target: str = ""
    tool: str = ""
    reason: DeadLetterReason
    category: str
    message: str  # redacted again by the activity before it is stored
    attempts: int = 1
    first_failure_at: datetime
    last_failure_at: datetime
    replay: ReplayRecipe | None = None  # None for what cannot be replayed (a compensation)
    extra: dict[str, Any] = Field(default_factory=dict)


class DeadLetterResult(BaseModel):
    task_id: str
    created: bool  # False when the entry already existed (a retried activity, a replay)


def dead_letter_task_id(workflow_id: str, run_id: str, stage_id: str, target: str, reason: str) -> str:
    return f"{workflow_id}/{run_id}/{stage_id}/{target or '-'}/{reason}"
