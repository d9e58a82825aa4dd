"""The assessment's decisions, as pure functions: no Temporal, no I/O, tested without a server.

- `verdict()`: a stage round's failures + the stage's `on_failure` policy -> what happens next;
- `assessment_outcome()`: the stages' end states -> completed, completed_with_errors, ...;
- `downstream()`, `dependencies_done()`, `failed_required_dependency()`: the stage DAG;
- `intervention_problem()`: whether a human's action may apply now, and if not, why.

The rules are the README's ("Failure policies", "Interventions"); the workflow only acts
on what these return.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from secflow.errors import Category
from secflow.models import TERMINAL_STAGE_STATES, AssessmentOutcome, Decision, ErrorInfo, StageStatus
from secflow.spec import Stage

ACTIONS = ("approve", "reject", "retry_stage", "skip_stage", "abort", "pause", "resume")

VerdictKind = Literal[
    "succeeded", "cancelled", "security", "tolerated", "fallback", "ask_human", "skip", "fail", "dead_letter", "stop"
]


@dataclass(frozen=True)
class RoundOutcome:
    """What one round of a stage over its targets came to."""

    stage_total: int  # targets of the stage (the base of tolerated_failure_percent)
    failed: int  # targets failed or cancelled in this round
    first_error: ErrorInfo | None = None
    security_error: ErrorInfo | None = None
    all_aborted: bool = False  # every failure is the operator's cancel


@dataclass(frozen=True)
class Verdict:
    kind: VerdictKind
    reason: str = ""
    error: ErrorInfo | None = None
    rung: int = -1  # ladder_verdict: the index of the rung that takes over (-1: none)


def verdict(stage: Stage, outcome: RoundOutcome, *, stopping: bool, fallback_used: bool) -> Verdict:
    """Decide what a finished round means for its stage (a single `on_failure` value, as
    before the ladder; runs recorded before `recovery-ladder` replay through this).

    Order matters: a cancel is not a failure; a security violation overrides every policy
    (scope is law); a failure within tolerance is `partial`; then `on_failure`."""
    settled = _settled(stage, outcome, stopping=stopping)
    if settled is not None:
        return settled
    error = outcome.first_error or ErrorInfo(category=Category.INTERNAL.value, message="failed")
    if stage.on_failure == "fallback" and stage.fallback_tool and not fallback_used:
        return Verdict(
            "fallback",
            f"{stage.tool_name} failed ({error.category}: {error.message}); fell back to {stage.fallback_tool}",
            error,
        )
    if stage.on_failure == "await_approval":
        return Verdict("ask_human", "", error)
    if stage.on_failure == "skip":
        return Verdict("skip", f"failed and skipped (on_failure: skip): {error.category}: {error.message}", error)
    return Verdict("fail", f"{error.category}: {error.message}", error)


RUNG_VERDICT: dict[str, VerdictKind] = {
    "fallback": "fallback",
    "await_approval": "ask_human",
    "dead_letter": "dead_letter",
    "fail": "stop",
    "skip": "skip",
}


def ladder_verdict(stage: Stage, outcome: RoundOutcome, *, stopping: bool, position: int) -> Verdict:
    """Like `verdict`, but a failure goes to the ladder's rung at `position` (the first
    rung not tried yet; secflow/ladder.py). The ladder always ends in a terminal rung."""
    settled = _settled(stage, outcome, stopping=stopping)
    if settled is not None:
        return settled
    error = outcome.first_error or ErrorInfo(category=Category.INTERNAL.value, message="failed")
    return rung_verdict(stage, position, error)


def rung_verdict(stage: Stage, position: int, error: ErrorInfo) -> Verdict:
    """What the ladder's rung at `position` does with `error`."""
    ladder = stage.ladder
    position = min(max(position, 0), len(ladder) - 1)
    rung = ladder[position]
    kind = RUNG_VERDICT[rung]
    text = f"{error.category}: {error.message}"
    if kind == "fallback":
        return Verdict(kind, f"{stage.tool_name} failed ({text}); fell back to {stage.fallback_tool}", error, position)
    if kind == "skip":
        return Verdict(kind, f"failed and skipped (on_failure: skip): {text}", error, position)
    return Verdict(kind, text if kind != "ask_human" else "", error, position)


def _settled(stage: Stage, outcome: RoundOutcome, *, stopping: bool) -> Verdict | None:
    """The verdicts no failure policy changes: success, a cancel, a security violation, a
    failure within tolerance. None: the round failed and the policy decides."""
    if outcome.failed == 0:
        return Verdict("succeeded")
    if stopping and not stage.always and outcome.all_aborted:
        return Verdict("cancelled")
    if outcome.security_error is not None:
        return Verdict("security", f"security violation: {outcome.security_error.message}", outcome.security_error)
    error = outcome.first_error or ErrorInfo(category=Category.INTERNAL.value, message="failed")
    total = max(outcome.stage_total, 1)
    percent = 100.0 * outcome.failed / total
    if outcome.failed < total and percent <= stage.tolerated_failure_percent:
        return Verdict(
            "tolerated",
            f"{outcome.failed} of {total} targets failed ({percent:.0f}% <= tolerated "
            f"{stage.tolerated_failure_percent:g}%): {error.message}",
            error,
        )
    return None


def assessment_outcome(
    stop_outcome: AssessmentOutcome | None, stages: Mapping[str, StageStatus]
) -> tuple[AssessmentOutcome, str]:
    """(outcome, reason). A stop decides by itself; otherwise any stage that did not simply
    succeed makes the run `completed_with_errors`, with each such stage named."""
    if stop_outcome:
        return stop_outcome, ""
    degraded = [
        f"{sid}: {st.state}" + (f" ({st.reason})" if st.reason else "")
        for sid, st in stages.items()
        if st.state in ("failed", "skipped", "partial", "unverified", "cancelled") or st.degraded
    ]
    if degraded:
        return "completed_with_errors", "; ".join(degraded)
    return "completed", ""


def downstream(stages: Iterable[Stage], stage_id: str) -> list[str]:
    """Every stage that depends on `stage_id`, directly or not."""
    stages = list(stages)
    found: list[str] = []
    frontier = [stage_id]
    while frontier:
        current = frontier.pop()
        for s in stages:
            if current in s.depends_on and s.id not in found:
                found.append(s.id)
                frontier.append(s.id)
    return found


def dependencies_done(stage: Stage, stages: Iterable[Stage], states: Mapping[str, str]) -> bool:
    deps = set(stage.depends_on)
    if stage.always:
        # A `finally` stage waits for everything that is not itself a finally stage.
        deps |= {s.id for s in stages if not s.always}
    return all(states[d] in TERMINAL_STAGE_STATES for d in deps)


def failed_required_dependency(stage: Stage, stages: Mapping[str, Stage], states: Mapping[str, str]) -> str | None:
    for dep in stage.depends_on:
        if states[dep] == "failed" and stages[dep].criticality == "required":
            return dep
    return None


@dataclass
class InterventionView:
    """What `intervention_problem` needs to know of the running assessment."""

    finished: bool
    stop_reason: str | None
    paused: bool
    stages: list[Stage]
    states: dict[str, str]
    waits: dict[str, str] = field(default_factory=dict)  # stage id -> "approval" | "failure"
    required_approvals: int = 1  # distinct approvers a gate needs (spec `approvals.required`)
    approvals: dict[str, list[str]] = field(default_factory=dict)  # stage id -> who approved its gate so far


def intervention_problem(action: str, d: Decision, view: InterventionView) -> str | None:
    """Why `action` cannot apply now, or None if it can. Shared by signals and updates."""
    malformed = d.payload_problem()  # wrong types, too long, not text: named by field
    if malformed:
        return malformed
    extra = sorted((d.model_extra or {}).keys())
    if extra:
        return f"unknown field(s) {', '.join(extra)}; allowed: stage, by, reason, issued_at, nonce, signature"
    if view.finished:
        return "the assessment has already finished"
    if action in ("abort", "pause", "resume"):
        if view.stop_reason:
            return f"the assessment is already stopping: {view.stop_reason}"
        if action == "pause" and view.paused:
            return "the assessment is already paused"
        if action == "resume" and not view.paused:
            return "the assessment is not paused"
        return None
    ids = [s.id for s in view.stages]
    if not d.stage:
        return f'{action} needs a stage: {{"stage": "<id>"}}; stages: {", ".join(ids)}'
    if d.stage not in ids:
        return f"no stage named {d.stage!r}; stages: {', '.join(ids)}"
    state = view.states[d.stage]
    waiting = view.waits.get(d.stage)
    if action == "approve" and waiting != "approval":
        return f"stage {d.stage!r} is not awaiting approval (it is {state}); approve answers a requires_approval gate"
    given = view.approvals.get(d.stage, [])
    if action == "approve" and view.required_approvals > 1 and d.by in given:
        return (
            f"{d.by or 'this approver'} has already approved stage {d.stage!r} ({len(given)} of "
            f"{view.required_approvals} approvals); the gate needs another approver"
        )
    if action == "reject" and waiting is None:
        return f"stage {d.stage!r} is not awaiting a decision (it is {state})"
    if action == "skip_stage" and waiting is None and state != "pending":
        return f"stage {d.stage!r} cannot be skipped: it is {state} (only pending or waiting stages can)"
    if action == "retry_stage":
        if waiting == "approval":
            return f"stage {d.stage!r} has not run yet: it awaits approval (use approve)"
        if waiting is None:
            if state not in ("failed", "skipped", "cancelled", "partial", "unverified"):
                return (
                    f"stage {d.stage!r} is {state}; only a failed, skipped, cancelled, partial or unverified stage can be retried"
                )
            if view.stop_reason:
                return f"the assessment is stopping ({view.stop_reason}); nothing can be retried"
            busy = [
                s
                for s in downstream(view.stages, d.stage)
                if view.states[s] not in TERMINAL_STAGE_STATES and view.states[s] != "pending"
            ]
            if busy:
                return f"stage {d.stage!r} has dependents still in progress: {', '.join(busy)}"
    return None


def stages_to_rerun(stages: Iterable[Stage], states: Mapping[str, str], stage_id: str) -> list[str]:
    """A retried stage and its finished dependents run again (in that order)."""
    stages = list(stages)
    return [stage_id] + [s for s in downstream(stages, stage_id) if states[s] in TERMINAL_STAGE_STATES]


def timeout_answer(on_wait_timeout: str) -> str:
    """The answer a wait's deadline gives on the stage's behalf."""
    return {"approve": "approve", "reject": "reject", "skip": "skip", "fail": "fail"}[on_wait_timeout]


def outcome_after_failed_cleanup(outcome: AssessmentOutcome) -> AssessmentOutcome:
    """A compensation that failed leaves work for a human, so a run that would have been
    `completed` is `completed_with_errors`; a worse outcome stays as it is."""
    return "completed_with_errors" if outcome == "completed" else outcome
