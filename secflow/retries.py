"""The one retry table: defaults per stage kind, overridable per stage, turned into Temporal.

Temporal's RetryPolicy decides *whether* another attempt happens (attempt cap,
non-retryable categories). *When* it happens is decided by the activity that failed, via
`ApplicationError(next_retry_delay=...)`, so that full jitter, linear backoff and a
server's `Retry-After` all go through one function, `next_delay`.
"""

from __future__ import annotations

import random
from datetime import timedelta
from enum import Enum

from pydantic import BaseModel, ConfigDict
from temporalio.common import RetryPolicy

from secflow.errors import Category
from secflow.tools import RetryClass

NON_RETRYABLE_TYPES: tuple[str, ...] = (
    Category.VALIDATION.value,
    Category.PERMANENT.value,
    Category.INTERNAL.value,
    Category.SECURITY.value,
    Category.USER_ABORT.value,
)

# A server asking us to wait longer than this is treated as an outage, not a pause.
MAX_RETRY_AFTER = timedelta(hours=1)


class Backoff(str, Enum):
    EXPONENTIAL = "exponential"
    LINEAR = "linear"
    IMMEDIATE = "immediate"
    NONE = "none"


class RetryPlan(BaseModel):
    """A stage's effective retry settings; travels in activity inputs (small, JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int
    backoff: Backoff
    initial_interval: timedelta
    backoff_coefficient: float
    max_interval: timedelta


# Design brief, "Retry defaults": HTTP API 5 exponential, CVE enrichment 3 linear,
# scanners 3 exponential, file-system 2 immediate, exploit/PoC sandbox 1 (never retried).
RETRY_TABLE: dict[RetryClass, RetryPlan] = {
    RetryClass.HTTP_API: RetryPlan(
        max_attempts=5,
        backoff=Backoff.EXPONENTIAL,
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        max_interval=timedelta(seconds=60),
    ),
    RetryClass.ENRICHMENT: RetryPlan(
        max_attempts=3,
        backoff=Backoff.LINEAR,
        initial_interval=timedelta(seconds=2),
        backoff_coefficient=1.0,
        max_interval=timedelta(seconds=30),
    ),
    RetryClass.SCANNER: RetryPlan(
        max_attempts=3,
        backoff=Backoff.EXPONENTIAL,
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        max_interval=timedelta(seconds=30),
    ),
    RetryClass.FILESYSTEM: RetryPlan(
        max_attempts=2,
        backoff=Backoff.IMMEDIATE,
        initial_interval=timedelta(milliseconds=100),
        backoff_coefficient=1.0,
        max_interval=timedelta(milliseconds=100),
    ),
    RetryClass.SANDBOX: RetryPlan(
        max_attempts=1,
        backoff=Backoff.NONE,
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=1.0,
        max_interval=timedelta(seconds=1),
    ),
}

# Which row a stage kind uses when its tool does not say otherwise.
KIND_RETRY_CLASS: dict[str, RetryClass] = {
    "discovery": RetryClass.SCANNER,
    "sast": RetryClass.SCANNER,
    "dast": RetryClass.SCANNER,
    "sca": RetryClass.HTTP_API,
    "secrets": RetryClass.SCANNER,
    "enrich": RetryClass.ENRICHMENT,
    "report": RetryClass.FILESYSTEM,
    "ticket": RetryClass.HTTP_API,
    "notify": RetryClass.HTTP_API,
    "cleanup": RetryClass.FILESYSTEM,
}

# Compensations retry on their own policy: they must get through short outages, and a
# cleanup that still fails goes to a human instead of blocking forever.
COMPENSATION_PLAN = RetryPlan(
    max_attempts=5,
    backoff=Backoff.EXPONENTIAL,
    initial_interval=timedelta(milliseconds=500),
    backoff_coefficient=2.0,
    max_interval=timedelta(seconds=10),
)

# The workflow's own bookkeeping in the store (spec summary, target batches, outcomes,
# dead letters, finalize): a store outage of a few seconds must not fail a stage whose
# scans succeeded; a longer one surfaces as a transient error for the stage's policy.
STORE_PLAN = RetryPlan(
    max_attempts=8,
    backoff=Backoff.EXPONENTIAL,
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    max_interval=timedelta(seconds=10),
)

# The incident workflow's calls: planning its alerts (a routing-file read) and sending one
# alert on one channel (each alert activity already retries HTTP inside its attempt).
INCIDENT_PLANNING_PLAN = RetryPlan(
    max_attempts=5,
    backoff=Backoff.EXPONENTIAL,
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    max_interval=timedelta(seconds=100),
)
ALERT_SEND_PLAN = RetryPlan(
    max_attempts=4,
    backoff=Backoff.EXPONENTIAL,
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    max_interval=timedelta(seconds=200),
)


def plan_for(
    retry_class: RetryClass,
    *,
    max_attempts: int | None = None,
    initial_interval: timedelta | None = None,
    backoff: float | None = None,
    max_interval: timedelta | None = None,
) -> RetryPlan:
    """The table's row for `retry_class` with a spec's overrides applied.

    Sandbox launches stay at one attempt whatever the spec says: re-running an exploit
    is never safe to do automatically (the spec validator also refuses the override).
    """
    base = RETRY_TABLE[retry_class]
    if retry_class is RetryClass.SANDBOX:
        return base
    updates: dict[str, object] = {}
    if max_attempts is not None:
        updates["max_attempts"] = max_attempts
    if initial_interval is not None:
        updates["initial_interval"] = initial_interval
    if backoff is not None:
        updates["backoff_coefficient"] = backoff
        if backoff > 1.0 and base.backoff is not Backoff.EXPONENTIAL:
            updates["backoff"] = Backoff.EXPONENTIAL
    if max_interval is not None:
        updates["max_interval"] = max_interval
    return base.model_copy(update=updates)


def to_retry_policy(plan: RetryPlan) -> RetryPolicy:
    """Temporal's view of a plan: the cap and the categories it must never retry."""
    return RetryPolicy(
        initial_interval=plan.initial_interval,
        backoff_coefficient=max(plan.backoff_coefficient, 1.0),
        maximum_interval=max(plan.max_interval, plan.initial_interval),
        maximum_attempts=plan.max_attempts,
        non_retryable_error_types=list(NON_RETRYABLE_TYPES),
    )


def next_delay(
    plan: RetryPlan,
    attempt: int,
    *,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> timedelta | None:
    """Delay before the attempt after `attempt` (1-based), or None when none will follow.

    Exponential backoff uses full jitter (uniform between 0 and the capped exponential),
    which spreads a thundering herd of retries after an outage; linear backoff grows by
    `initial_interval` per attempt with a little jitter; a `Retry-After` from the server
    wins over both, because the server knows when it will be ready.
    """
    if attempt >= plan.max_attempts or plan.backoff is Backoff.NONE:
        return None
    if retry_after is not None and retry_after >= 0:
        return min(timedelta(seconds=retry_after), MAX_RETRY_AFTER)
    rng = rng or random.Random()
    initial = plan.initial_interval.total_seconds()
    cap = max(plan.max_interval.total_seconds(), initial)
    if plan.backoff is Backoff.IMMEDIATE:
        seconds = initial
    elif plan.backoff is Backoff.LINEAR:
        seconds = min(cap, initial * attempt) * rng.uniform(0.8, 1.0)
    else:
        ceiling = min(cap, initial * plan.backoff_coefficient ** (attempt - 1))
        seconds = rng.uniform(0.0, ceiling)
    # Temporal treats a zero delay as "use the policy", so keep a floor of 10 ms.
    return timedelta(seconds=max(seconds, 0.01))
