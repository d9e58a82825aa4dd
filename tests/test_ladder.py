"""The recovery ladder against a real dev server and worker: retry -> fallback -> a human ->
the dead-letter queue, each rung written to the error ledger (secflow/ladder.py)."""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.client import Client

from secflow.ladder import ladder_of
from secflow.spec import SpecError
from secflow.store import open_store
from tests.devserver import DevServer
from tests.helpers import final_status, make_spec, start, wait_for
from tests.servers import Reply, ScriptedServer


def ladder_spec(url: str, **stage: Any):
    return make_spec(
        [{"url": url}],
        [
            {
                "id": "headers",
                "kind": "dast",
                "tool": "http_headers",
                "fallback_tool": "http_headers",
                "on_failure": ["fallback", "await_approval", "dead_letter"],
                "retry": {"max_attempts": 2, "initial_interval": "100ms"},
                **stage,
            }
        ],
    )


def rungs(assessment_id: str, stage_id: str = "headers") -> set[tuple[str | None, str | None]]:
    return {(e.rung, e.rung_outcome) for e in open_store().list_errors(assessment_id) if e.stage_id == stage_id}


async def eventually(check: Any, timeout: float = 20.0) -> None:
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.1)


def test_single_values_keep_their_meaning_as_ladders() -> None:
    assert ladder_of("fail") == ("dead_letter",)
    assert ladder_of("skip") == ("skip",)
    assert ladder_of("await_approval") == ("await_approval", "dead_letter")
    assert ladder_of("fallback") == ("fallback", "dead_letter")
    assert ladder_of(["fallback", "await_approval"]) == ("fallback", "await_approval", "dead_letter")
    assert ladder_of(["await_approval", "skip"]) == ("await_approval", "skip")


@pytest.mark.parametrize("single", ["fail", "skip", "await_approval", "fallback"])
def test_the_ladder_decides_like_the_single_value_did(single: str) -> None:
    """Each single value, walked as its ladder, takes the decisions the pre-ladder policy
    took: the first failure, and (for fallback) the failure of the fallback round."""
    from secflow.models import ErrorInfo
    from workflows.assessment import policy

    fields: dict[str, Any] = {"on_failure": single}
    if single == "fallback":
        fields["fallback_tool"] = "http_headers"
    stage = make_spec([{"url": "http://127.0.0.1:1/"}], [{"id": "s", "kind": "dast", "tool": "http_headers", **fields}]).stages[0]
    failed = policy.RoundOutcome(stage_total=1, failed=1, first_error=ErrorInfo(category="transient", message="boom"))
    same = {"fallback": "fallback", "ask_human": "ask_human", "skip": "skip", "fail": "dead_letter"}
    old = policy.verdict(stage, failed, stopping=False, fallback_used=False)
    new = policy.ladder_verdict(stage, failed, stopping=False, position=0)
    assert same[old.kind] == new.kind and old.reason == new.reason
    if single == "fallback":
        old = policy.verdict(stage, failed, stopping=False, fallback_used=True)
        new = policy.ladder_verdict(stage, failed, stopping=False, position=new.rung + 1)
        assert (old.kind, new.kind) == ("fail", "dead_letter")
    ok = policy.RoundOutcome(stage_total=1, failed=0)
    assert policy.ladder_verdict(stage, ok, stopping=False, position=0).kind == "succeeded"


@pytest.mark.parametrize(
    ("on_failure", "fallback_tool", "expected"),
    [
        (["fallback", "ask_a_friend"], "http_headers", "stages[0].on_failure[1]: unknown rung 'ask_a_friend'"),
        (["await_approval", "await_approval"], None, "stages[0].on_failure[1]: rung 'await_approval' appears twice"),
        (["dead_letter", "await_approval"], None, "stages[0].on_failure[1]: rung 'await_approval' comes after the terminal rung 'dead_letter'"),
        (["fallback", "dead_letter"], None, "stages[0].on_failure[0]: rung fallback needs a fallback_tool"),
        ([], None, "stages[0].on_failure: must be one of"),
        ("retry_forever", None, "stages[0].on_failure: unknown policy 'retry_forever'"),
    ],
)
def test_bad_ladders_are_refused_with_field_paths(on_failure: Any, fallback_tool: str | None, expected: str) -> None:
    stage: dict[str, Any] = {"id": "headers", "kind": "dast", "tool": "http_headers", "on_failure": on_failure}
    if fallback_tool:
        stage["fallback_tool"] = fallback_tool
    with pytest.raises(SpecError) as caught:
        make_spec([{"url": "http://127.0.0.1:1/"}], [stage])
    assert expected in str(caught.value), str(caught.value)


async def test_fallback_fails_then_a_human_retries(client: Client, worker: str, server: DevServer) -> None:
    state = {"healthy": False}
    target = ScriptedServer(lambda n, path: Reply(200) if state["healthy"] else Reply(500))
    try:
        handle = await start(client, ladder_spec(target.url), worker)
        waiting = await wait_for(handle, lambda s: s.awaiting == ["headers"], timeout=60)
        st = waiting.stages["headers"]
        assert st.state == "awaiting_intervention" and st.rung == "human"
        assert [(s.rung, s.outcome) for s in st.ladder] == [("retry", "failed"), ("fallback", "failed")]
        assert len(target.requests) == 4, "two attempts of the tool, two of the fallback"
        # every error so far was last handled by the failed fallback (written as the wait begins)
        await eventually(lambda: rungs(handle.id) == {("fallback", "failed")})
        state["healthy"] = True
        server.cli(
            "workflow", "signal", "--workflow-id", handle.id, "--name", "retry_stage",
            "--input", '{"stage": "headers", "by": "erin"}',
        )
        status = await final_status(handle)
    finally:
        target.close()
    st = status.stages["headers"]
    assert st.state == "partial" and st.degraded, st
    assert [(s.rung, s.outcome) for s in st.ladder] == [("retry", "failed"), ("fallback", "failed"), ("human", "recovered")]
    assert rungs(handle.id) == {("human", "recovered")}
    assert st.validation is not None and st.validation.passed and st.validation.after == "human", st.validation
    assert st.findings > 0
    checks = open_store().recovery.validations(assessment_id=handle.id)
    assert [(c.stage_id, c.after_rung, c.passed) for c in checks] == [("headers", "human", True)]


async def test_nobody_answers_until_the_deadline_then_dead_letter(client: Client, worker: str) -> None:
    target = ScriptedServer([Reply(500)])
    try:
        spec = ladder_spec(target.url, wait_timeout="1s", criticality="optional")
        handle = await start(client, spec, worker)
        status = await final_status(handle)
    finally:
        target.close()
    st = status.stages["headers"]
    assert st.state == "failed"
    assert [(s.rung, s.outcome) for s in st.ladder] == [
        ("retry", "failed"),
        ("fallback", "failed"),
        ("human", "failed"),
        ("dead_letter", "parked"),
    ]
    assert rungs(handle.id) == {("dead_letter", "parked")}
    parked = [e for e in open_store().dead_letters.list_entries(workflow_id=handle.id)]
    assert len(parked) == 1 and parked[0].stage_id == "headers"
    assert status.outcome == "completed_with_errors"
    assert any(i.via == "timeout" for i in status.interventions)


async def test_a_fail_rung_stops_without_parking(client: Client, worker: str) -> None:
    target = ScriptedServer([Reply(500)])
    try:
        spec = ladder_spec(target.url, on_failure=["fallback", "fail"], criticality="optional")
        handle = await start(client, spec, worker)
        status = await final_status(handle)
    finally:
        target.close()
    st = status.stages["headers"]
    assert st.state == "failed"
    assert [(s.rung, s.outcome) for s in st.ladder] == [("retry", "failed"), ("fallback", "failed"), ("fail", "failed")]
    assert rungs(handle.id) == {("fail", "failed")}
    assert open_store().dead_letters.list_entries(workflow_id=handle.id) == []


async def test_the_ladder_walks_per_round_of_a_sharded_stage(client: Client, worker: str) -> None:
    """Past INLINE_TARGETS each round runs in a StageTargets child; the parent decides the
    rungs after each child reports, and each rung's round is a child of its own."""
    from secflow.models import INLINE_TARGETS
    from tests.servers import GOOD_HEADERS

    state = {"healthy": False}

    def script(n: int, path: str) -> Reply:
        return Reply(500) if path == "/p7" and not state["healthy"] else Reply(200, GOOD_HEADERS)

    target = ScriptedServer(script)
    try:
        urls = [{"url": f"{target.url}p{i}"} for i in range(INLINE_TARGETS + 1)]
        spec = make_spec(
            urls,
            [{"id": "headers", "kind": "dast", "tool": "http_headers", "fallback_tool": "http_headers",
              "on_failure": ["fallback", "await_approval", "dead_letter"], "retry": {"max_attempts": 1}}],
        )
        handle = await start(client, spec, worker)
        waiting = await wait_for(handle, lambda s: s.awaiting == ["headers"], timeout=300)
        assert [(s.rung, s.outcome) for s in waiting.stages["headers"].ladder] == [("retry", "failed"), ("fallback", "failed")]
        state["healthy"] = True
        from secflow.models import Decision

        await handle.execute_update("retry_stage", Decision(stage="headers", by="erin"), result_type=str)
        status = await final_status(handle)
    finally:
        target.close()
    st = status.stages["headers"]
    assert st.state == "partial" and st.rounds == 3, st
    assert [(s.rung, s.outcome) for s in st.ladder] == [("retry", "failed"), ("fallback", "failed"), ("human", "recovered")]
    for n in (1, 2, 3):
        child = client.get_workflow_handle(f"{handle.id}/headers/round-{n}")
        assert (await child.describe()).status is not None
    ledger = [e for e in open_store().list_errors(handle.id) if e.stage_id == "headers"]
    assert {e.target for e in ledger} == {f"{target.url}p7"}
    assert {(e.rung, e.rung_outcome) for e in ledger} == {("human", "recovered")}
    assert st.validation is not None and st.validation.passed
