"""The assessment's decisions as pure functions: no server, no workflow."""

from __future__ import annotations

from typing import Any

import pytest

from secflow.models import Decision, ErrorInfo, StageStatus
from secflow.spec import Stage
from workflows.assessment import policy
from workflows.assessment.policy import InterventionView, RoundOutcome, verdict


def stage(**fields: Any) -> Stage:
    return Stage.model_validate({"id": "s", "kind": "dast", "tool": "http_headers", **fields})


ERR = ErrorInfo(category="transient", message="connection refused")
SEC = ErrorInfo(category="security", message="10.0.0.1 is outside scope.allow")


def test_no_failures_succeeds() -> None:
    assert verdict(stage(), RoundOutcome(stage_total=10, failed=0), stopping=False, fallback_used=False).kind == "succeeded"


def test_aborted_targets_while_stopping_cancel_the_stage_but_not_an_always_stage() -> None:
    outcome = RoundOutcome(stage_total=10, failed=3, all_aborted=True)
    assert verdict(stage(), outcome, stopping=True, fallback_used=False).kind == "cancelled"
    assert verdict(stage(always=True), outcome, stopping=True, fallback_used=False).kind == "fail"


def test_security_overrides_every_policy() -> None:
    for on_failure in ("skip", "await_approval", "fail"):
        v = verdict(
            stage(on_failure=on_failure, options={"tolerated_failure_percent": 100}),
            RoundOutcome(stage_total=10, failed=1, first_error=ERR, security_error=SEC),
            stopping=False,
            fallback_used=False,
        )
        assert v.kind == "security" and v.error == SEC


def test_tolerated_failure_percent_is_of_the_stage_total_and_never_all() -> None:
    s = stage(options={"tolerated_failure_percent": 20})
    assert verdict(s, RoundOutcome(stage_total=10, failed=2, first_error=ERR), stopping=False, fallback_used=False).kind == "tolerated"
    assert verdict(s, RoundOutcome(stage_total=10, failed=3, first_error=ERR), stopping=False, fallback_used=False).kind == "fail"
    everything = stage(options={"tolerated_failure_percent": 100})
    assert verdict(everything, RoundOutcome(stage_total=4, failed=4, first_error=ERR), stopping=False, fallback_used=False).kind == "fail"


@pytest.mark.parametrize(
    ("fields", "fallback_used", "expected"),
    [
        ({"on_failure": "fallback", "fallback_tool": "http_headers"}, False, "fallback"),
        ({"on_failure": "fallback", "fallback_tool": "http_headers"}, True, "fail"),
        ({"on_failure": "await_approval"}, False, "ask_human"),
        ({"on_failure": "skip"}, False, "skip"),
        ({"on_failure": "fail"}, False, "fail"),
    ],
)
def test_on_failure_policies(fields: dict[str, Any], fallback_used: bool, expected: str) -> None:
    v = verdict(stage(**fields), RoundOutcome(stage_total=1, failed=1, first_error=ERR), stopping=False, fallback_used=fallback_used)
    assert v.kind == expected
    assert v.error == ERR


def test_outcome_names_every_stage_that_did_not_simply_succeed() -> None:
    stages = {
        "a": StageStatus(state="succeeded"),
        "b": StageStatus(state="partial", reason="2 of 10 targets failed"),
        "c": StageStatus(state="succeeded", degraded=True),
    }
    outcome, reason = policy.assessment_outcome(None, stages)
    assert outcome == "completed_with_errors"
    assert "b: partial (2 of 10 targets failed)" in reason and "c: succeeded" in reason
    assert policy.assessment_outcome(None, {"a": StageStatus(state="succeeded")}) == ("completed", "")
    assert policy.assessment_outcome("cancelled", stages) == ("cancelled", "")


def test_dag_helpers() -> None:
    a, b, c = stage(id="a"), stage(id="b", depends_on=["a"]), stage(id="c", depends_on=["b"])
    report = stage(id="report", kind="report", tool="report", always=True)
    stages = [a, b, c, report]
    assert policy.downstream(stages, "a") == ["b", "c"]
    states = {"a": "failed", "b": "pending", "c": "pending", "report": "pending"}
    assert policy.dependencies_done(b, stages, states)
    assert not policy.dependencies_done(report, stages, states), "an always stage waits for every other stage"
    assert policy.failed_required_dependency(b, {s.id: s for s in stages}, states) == "a"
    assert policy.stages_to_rerun(stages, {"a": "failed", "b": "skipped", "c": "pending", "report": "pending"}, "a") == ["a", "b"]


def _view(**fields: Any) -> InterventionView:
    gate = stage(id="gate", requires_approval=True)
    after = stage(id="after", depends_on=["gate"])
    base: dict[str, Any] = {
        "finished": False,
        "stop_reason": None,
        "paused": False,
        "stages": [gate, after],
        "states": {"gate": "awaiting_approval", "after": "pending"},
        "waits": {"gate": "approval"},
    }
    return InterventionView(**{**base, **fields})


def test_what_a_human_may_answer_now() -> None:
    ok = policy.intervention_problem
    assert ok("approve", Decision(stage="gate"), _view()) is None
    assert "not awaiting approval" in (ok("approve", Decision(stage="after"), _view()) or "")
    assert "no stage named" in (ok("approve", Decision(stage="nope"), _view()) or "")
    assert "needs a stage" in (ok("retry_stage", Decision(), _view()) or "")
    assert "awaits approval (use approve)" in (ok("retry_stage", Decision(stage="gate"), _view()) or "")
    assert ok("skip_stage", Decision(stage="after"), _view()) is None, "a pending stage can be skipped"
    assert "already finished" in (ok("abort", Decision(), _view(finished=True)) or "")
    assert "not paused" in (ok("resume", Decision(), _view()) or "")
    assert "already paused" in (ok("pause", Decision(), _view(paused=True)) or "")
    assert "unknown field(s) stagee" in (ok("approve", Decision.model_validate({"stagee": "gate"}), _view()) or "")
    running = _view(states={"gate": "failed", "after": "running"}, waits={})
    assert "dependents still in progress: after" in (ok("retry_stage", Decision(stage="gate"), running) or "")


def test_deadline_answers() -> None:
    assert [policy.timeout_answer(x) for x in ("approve", "reject", "skip", "fail")] == ["approve", "reject", "skip", "fail"]
