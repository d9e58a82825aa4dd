"""A test-only workflow that runs the alert activities the way the incident workflow does:
`plan_alerts` per severity, then `send_alert` per request (all at once, or in order) with a
real Temporal retry policy, reporting each channel's result or failure separately.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from secflow.incidents import AlertPlan, AlertRequest, AlertResult, PlanRequest, Severity


class FanoutInput(BaseModel):
    requests: list[AlertRequest] = Field(default_factory=list)
    plan: list[Severity] = Field(default_factory=list)
    sequential: bool = False
    max_attempts: int = 3


class FanoutOutcome(BaseModel):
    channel: str
    result: AlertResult | None = None
    error_type: str = ""
    error: str = ""
    non_retryable: bool = False


class FanoutResult(BaseModel):
    plans: list[AlertPlan] = Field(default_factory=list)
    outcomes: list[FanoutOutcome] = Field(default_factory=list)


@workflow.defn
class AlertFanoutWorkflow:
    @workflow.run
    async def run(self, inp: FanoutInput) -> FanoutResult:
        plans = []
        for severity in inp.plan:
            plans.append(
                await workflow.execute_activity(
                    "plan_alerts", PlanRequest(severity=severity), result_type=AlertPlan,
                    start_to_close_timeout=timedelta(seconds=10),
                )
            )
        policy = RetryPolicy(
            initial_interval=timedelta(milliseconds=100), backoff_coefficient=1.0, maximum_attempts=inp.max_attempts
        )

        async def one(req: AlertRequest) -> FanoutOutcome:
            try:
                result = await workflow.execute_activity(
                    "send_alert", req, result_type=AlertResult,
                    start_to_close_timeout=timedelta(seconds=15), retry_policy=policy,
                )
                return FanoutOutcome(channel=req.channel, result=result)
            except ActivityError as err:
                cause = err.cause
                if isinstance(cause, ApplicationError):
                    return FanoutOutcome(
                        channel=req.channel, error_type=cause.type or "", error=cause.message, non_retryable=cause.non_retryable
                    )
                return FanoutOutcome(channel=req.channel, error_type=type(cause).__name__, error=str(cause))

        if inp.sequential:
            outcomes = [await one(r) for r in inp.requests]
        else:
            outcomes = list(await asyncio.gather(*(one(r) for r in inp.requests)))
        return FanoutResult(plans=plans, outcomes=outcomes)
