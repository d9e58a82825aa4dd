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

# Bookkeeping on the filesystem (workspace, scan locks, final reports): the FILESYSTEM
# class's quick retries with as many attempts as the store's, so worker kills alone (each
# one a lost attempt) do not fail an assessment. Errors a retry cannot fix are
# non-retryable by category and stop at the first attempt whatever this says.
BOOKKEEPING_FILESYSTEM_PLAN = RetryPlan(
    max_attempts=STORE_PLAN.max_attempts,
    backoff=Backoff.IMMEDIATE,
    initial_interval=timedelta(milliseconds=100),
    backoff_coefficient=1.0,
    max_interval=timedelta(milliseconds=100),
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


# --- adaptive retries (opt-in per stage: `retry: {adaptive: true}`, docs/adaptive.md) -------


class AdaptiveBounds(BaseModel):
    """How far an adaptive plan may move from its class's row of the table.

    An adaptive plan never leaves these, whatever the record says: a dependency that has
    been recovering at attempt 9 does not earn a scanner 9 attempts, and a record of
    instant recoveries does not turn backoff off.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_attempts: int
    max_attempts: int
    min_initial_interval: timedelta
    max_initial_interval: timedelta


# The table's row sits inside each range; sandbox launches never adapt (one attempt, always).
ADAPTIVE_BOUNDS: dict[RetryClass, AdaptiveBounds] = {
    RetryClass.HTTP_API: AdaptiveBounds(
        min_attempts=2,
        max_attempts=10,
        min_initial_interval=timedelta(milliseconds=100),
        max_initial_interval=timedelta(seconds=30),
    ),
    RetryClass.ENRICHMENT: AdaptiveBounds(
        min_attempts=2,
        max_attempts=6,
        min_initial_interval=timedelta(milliseconds=200),
        max_initial_interval=timedelta(seconds=30),
    ),
    RetryClass.SCANNER: AdaptiveBounds(
        min_attempts=2,
        max_attempts=6,
        min_initial_interval=timedelta(milliseconds=200),
        max_initial_interval=timedelta(seconds=30),
    ),
    RetryClass.FILESYSTEM: AdaptiveBounds(
        min_attempts=2,
        max_attempts=4,
        min_initial_interval=timedelta(milliseconds=50),
        max_initial_interval=timedelta(seconds=1),
    ),
    RetryClass.SANDBOX: AdaptiveBounds(
        min_attempts=1,
        max_attempts=1,
        min_initial_interval=timedelta(seconds=1),
        max_initial_interval=timedelta(seconds=1),
    ),
}


def adaptive_bounds(retry_class: RetryClass, *, max_attempts: int | None = None) -> AdaptiveBounds:
    """The class's bounds; a spec's own `max_attempts` is a ceiling the record cannot pass."""
    bounds = ADAPTIVE_BOUNDS[retry_class]
    if max_attempts is None or max_attempts >= bounds.max_attempts:
        return bounds
    ceiling = max(max_attempts, 1)
    return bounds.model_copy(update={"max_attempts": ceiling, "min_attempts": min(bounds.min_attempts, ceiling)})


def expected_wait(plan: RetryPlan, retries: int, initial: float | None = None) -> float:
    """Expected seconds waited over `retries` retries under `plan` (its initial interval,
    or `initial`). Mirrors `next_delay`: full jitter waits half its capped exponential
    ceiling on average, linear about 0.9 x the capped attempt x interval, immediate one
    interval."""
    x = plan.initial_interval.total_seconds() if initial is None else initial
    cap = max(plan.max_interval.total_seconds(), x)
    total = 0.0
    for i in range(1, max(retries, 0) + 1):
        if plan.backoff is Backoff.EXPONENTIAL:
            total += min(cap, x * plan.backoff_coefficient ** (i - 1)) / 2
        elif plan.backoff is Backoff.LINEAR:
            total += 0.9 * min(cap, x * i)
        elif plan.backoff is Backoff.IMMEDIATE:
            total += x
    return total


def adapt_plan(base: RetryPlan, bounds: AdaptiveBounds, *, success_attempt_p95: int, recovery_seconds: float | None) -> RetryPlan:
    """The plan the record asks for, clamped to `bounds` (pure; the caller checked the sample).

    Attempts: the attempt by which 95 % of recoveries had succeeded, plus one for margin.
    Backoff: the initial interval whose expected waits, over the retries that p95 recovery
    took (within the plan), add up to the median time to recovery: retries spread over the
    time recovery usually takes instead of bunching before it or dawdling after it.
    """
    attempts = min(max(success_attempt_p95 + 1, bounds.min_attempts), bounds.max_attempts)
    updates: dict[str, object] = {"max_attempts": attempts}
    if recovery_seconds is not None and base.backoff is not Backoff.NONE:
        retries = max(min(success_attempt_p95, attempts) - 1, 1)
        low = bounds.min_initial_interval.total_seconds()
        high = bounds.max_initial_interval.total_seconds()
        # expected_wait grows with the initial interval: bisect within the bounds
        for _ in range(60):
            mid = (low + high) / 2
            low, high = (mid, high) if expected_wait(base, retries, mid) < recovery_seconds else (low, mid)
        initial = timedelta(seconds=round((low + high) / 2, 3))
        updates["initial_interval"] = initial
        updates["max_interval"] = max(base.max_interval, initial)
    return base.model_copy(update=updates)
