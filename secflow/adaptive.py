"""Adaptive retries: a stage's attempts and backoff chosen from the recovery record.

Opt-in per stage (`retry: {adaptive: true}`; docs/adaptive.md). Before each round of such
a stage the assessment asks the `choose_retry_plan` activity (activities/adaptive.py),
which reads the record (`secflow.error_stats.load_strategies`: per tool and dependency,
the attempt at which retries succeeded and how long recovery took) and calls
`choose_plan` here. The answer is recorded in the workflow's history, so a replay uses
the same plan whatever the record says by then (rule 1).

The choice, for the stage's tool:
* below `min_samples` known results (recoveries + exhausted runs) for every dependency
  of the tool, the stage keeps the table's plan (with its spec overrides);
* else, of the dependencies with enough samples, the one needing the most attempts
  decides (the plan must suffice for the worst one the tool calls): attempts = its p95
  needed attempt + 1; the initial interval such that the expected waits of the retries
  that p95 recovery took add up to its median time to recovery (`adapt_plan`); both
  clamped to the retry class's bounds (`secflow.retries.ADAPTIVE_BOUNDS`), attempts also
  to the spec's own `max_attempts` when it gives one.
Every choice carries its reason in one line, e.g.
"sca/osv: 6 attempts, backoff 2s (p95 success attempt 5 over 40 recoveries)".
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field

from secflow.error_stats import StrategyStats
from secflow.retries import AdaptiveBounds, RetryPlan, adapt_plan, adaptive_bounds
from secflow.spec import Stage

__all__ = [
    "ADAPTIVE_PATCH",
    "ADAPTIVE_WINDOW",
    "DEFAULT_MIN_SAMPLES",
    "AdaptiveChoice",
    "AdaptiveRequest",
    "adaptive_request",
    "choose_plan",
]

ADAPTIVE_PATCH = "adaptive-retries"  # workflow.patched id of the plan selection
DEFAULT_MIN_SAMPLES = 20
# How far back the record is read: recent behaviour is what the next run will meet.
ADAPTIVE_WINDOW = timedelta(days=30)


class AdaptiveRequest(BaseModel):
    """Which plan should this stage round's tool run with? (small: no record travels)"""

    model_config = ConfigDict(extra="forbid")

    assessment_id: str
    stage_id: str
    tool: str
    base: RetryPlan  # the table's plan with the spec's overrides: the answer below the sample minimum
    bounds: AdaptiveBounds
    min_samples: int = Field(DEFAULT_MIN_SAMPLES, ge=1)


class AdaptiveChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plan: RetryPlan
    adapted: bool  # False: the table's plan
    tool: str
    dependency: str = ""  # whose record decided ("" when none did)
    samples: int = 0
    reason: str


def adaptive_request(assessment_id: str, stage: Stage, tool: str) -> AdaptiveRequest | None:
    """What to ask before a round of `stage` running `tool`; None unless the stage opted in."""
    if stage.retry is None or not stage.retry.adaptive:
        return None
    return AdaptiveRequest(
        assessment_id=assessment_id,
        stage_id=stage.id,
        tool=tool,
        base=stage.retry_plan(tool),
        bounds=adaptive_bounds(stage.retry_class(tool), max_attempts=stage.retry.max_attempts),
        min_samples=stage.retry.min_samples or DEFAULT_MIN_SAMPLES,
    )


def _secs(value: timedelta) -> str:
    seconds = value.total_seconds()
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    return f"{seconds:.3g}s"


def _table(req: AdaptiveRequest, why: str) -> AdaptiveChoice:
    plan = req.base
    return AdaptiveChoice(
        plan=plan,
        adapted=False,
        tool=req.tool,
        reason=f"{req.tool}: table plan, {plan.max_attempts} attempts, backoff {_secs(plan.initial_interval)} ({why})",
    )


def choose_plan(req: AdaptiveRequest, record: list[StrategyStats]) -> AdaptiveChoice:
    """The plan for `req.tool` from `record` (pure; see the module docstring)."""
    if req.bounds.max_attempts <= 1:
        return _table(req, "one attempt at most: never retried, so never adapted")
    mine = [s for s in record if s.tool == req.tool]
    ready = [s for s in mine if s.samples >= req.min_samples and s.attempts_needed_p95 is not None]
    if not ready:
        most = max(mine, key=lambda s: s.samples, default=None)
        if most is None:
            return _table(req, "no recoveries recorded")
        return _table(req, f"{most.samples} samples for {req.tool}/{most.dependency}, adapting needs {req.min_samples}")
    pick = max(ready, key=lambda s: (s.attempts_needed_p95 or 0, s.samples, s.dependency))
    p95 = pick.attempts_needed_p95
    assert p95 is not None
    ttr = pick.time_to_recovery_median_seconds
    plan = adapt_plan(req.base, req.bounds, success_attempt_p95=p95, recovery_seconds=ttr)
    evidence = f"p95 success attempt {p95} over {pick.retry_recoveries} recoveries"
    if pick.retries_exhausted:
        evidence += f" and {pick.retries_exhausted} exhausted"
    if ttr is not None:
        evidence += f", median time to recovery {ttr:.3g}s"
    clamped = []
    if plan.max_attempts != p95 + 1:
        clamped.append(f"attempts {req.bounds.min_attempts}..{req.bounds.max_attempts}")
    if plan.initial_interval in (req.bounds.min_initial_interval, req.bounds.max_initial_interval):
        clamped.append(f"backoff {_secs(req.bounds.min_initial_interval)}..{_secs(req.bounds.max_initial_interval)}")
    if clamped:
        evidence += "; clamped to " + ", ".join(clamped)
    return AdaptiveChoice(
        plan=plan,
        adapted=True,
        tool=req.tool,
        dependency=pick.dependency,
        samples=pick.samples,
        reason=f"{req.tool}/{pick.dependency}: {plan.max_attempts} attempts, backoff {_secs(plan.initial_interval)} ({evidence})",
    )
