"""The retry table and the delay function (pure: no server needed)."""

from __future__ import annotations

import random
from datetime import timedelta

from secflow.retries import (
    NON_RETRYABLE_TYPES,
    RETRY_TABLE,
    Backoff,
    next_delay,
    plan_for,
    to_retry_policy,
)
from secflow.tools import RetryClass


def test_table_matches_the_design_brief() -> None:
    expect = {
        RetryClass.HTTP_API: (5, Backoff.EXPONENTIAL),
        RetryClass.ENRICHMENT: (3, Backoff.LINEAR),
        RetryClass.SCANNER: (3, Backoff.EXPONENTIAL),
        RetryClass.FILESYSTEM: (2, Backoff.IMMEDIATE),
        RetryClass.SANDBOX: (1, Backoff.NONE),
    }
    assert {k: (v.max_attempts, v.backoff) for k, v in RETRY_TABLE.items()} == expect


def test_policy_never_retries_the_fatal_categories() -> None:
    policy = to_retry_policy(plan_for(RetryClass.SCANNER))
    assert set(policy.non_retryable_error_types or []) == {"validation", "permanent", "internal", "security", "user_abort"}
    assert set(NON_RETRYABLE_TYPES) == set(policy.non_retryable_error_types or [])
    assert policy.maximum_attempts == 3


def test_sandbox_cannot_be_overridden_into_retrying() -> None:
    plan = plan_for(RetryClass.SANDBOX, max_attempts=5)
    assert plan.max_attempts == 1
    assert next_delay(plan, 1) is None


def test_full_jitter_stays_within_the_exponential_ceiling() -> None:
    plan = plan_for(RetryClass.SCANNER, initial_interval=timedelta(seconds=1), max_attempts=10)
    rng = random.Random(7)
    for attempt in range(1, 9):
        ceiling = min(plan.max_interval.total_seconds(), 2 ** (attempt - 1))
        delays = [next_delay(plan, attempt, rng=rng).total_seconds() for _ in range(200)]
        assert all(0 < d <= ceiling for d in delays)
        # full jitter spreads over the whole interval, not a narrow band
        assert min(delays) < ceiling * 0.2 and max(delays) > ceiling * 0.8


def test_linear_backoff_grows_by_the_initial_interval() -> None:
    plan = plan_for(RetryClass.ENRICHMENT)
    rng = random.Random(1)
    d1 = next_delay(plan, 1, rng=rng).total_seconds()
    d2 = next_delay(plan, 2, rng=rng).total_seconds()
    assert 1.6 <= d1 <= 2.0 and 3.2 <= d2 <= 4.0


def test_retry_after_wins_and_is_capped() -> None:
    plan = plan_for(RetryClass.HTTP_API)
    assert next_delay(plan, 1, retry_after=17) == timedelta(seconds=17)
    assert next_delay(plan, 1, retry_after=10**6) == timedelta(hours=1)
    assert next_delay(plan, 5, retry_after=3) is None, "no delay after the last attempt"


def test_spec_overrides_apply() -> None:
    plan = plan_for(RetryClass.FILESYSTEM, max_attempts=4, backoff=3.0)
    assert plan.max_attempts == 4 and plan.backoff is Backoff.EXPONENTIAL and plan.backoff_coefficient == 3.0
