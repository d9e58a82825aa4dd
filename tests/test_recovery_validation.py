"""Recovery validation (secflow/recovery.py, activities/validation.py): after a stage
recovers, its findings are checked against the store and the model and what failed is
probed; a failed check makes the stage `unverified`, opens an incident and shows in the
report. Against a real dev server, worker, store and loopback stand-ins."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.validation import validate_recovery
from secflow.findings import Finding, Severity
from secflow.incidents import IncidentStatus
from secflow.recovery import RecoveryValidationRequest
from secflow.store import open_store
from tests.helpers import final_status, make_spec, start
from tests.servers import Reply, ScriptedServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def retried_spec(url: str):
    return make_spec(
        [{"url": url}],
        [
            {"id": "headers", "kind": "dast", "tool": "http_headers", "criticality": "optional", "on_failure": "skip",
             "retry": {"max_attempts": 3, "initial_interval": "100ms"}},
            {"id": "report", "kind": "report", "always": True, "options": {"formats": ["md", "json"]}},
        ],
    )


async def test_a_retried_success_is_validated(client: Client, worker: str) -> None:
    target = ScriptedServer([Reply(500), Reply(200)])  # the first attempt fails, then healthy
    try:
        handle = await start(client, retried_spec(target.url), worker)
        status = await final_status(handle)
    finally:
        target.close()
    st = status.stages["headers"]
    assert st.state == "succeeded" and status.outcome == "completed", st
    assert st.validation is not None and st.validation.passed and st.validation.after == "retry", st.validation
    assert [(s.rung, s.outcome) for s in st.ladder] == [("retry", "recovered")]
    ledger = [e for e in open_store().list_errors(handle.id) if e.stage_id == "headers"]
    assert [(e.attempt, e.rung, e.rung_outcome, e.outcome) for e in ledger] == [(1, "retry", "recovered", "recovered")]
    checks = open_store().recovery.validations(assessment_id=handle.id)
    assert [(c.after_rung, c.passed, c.findings) for c in checks] == [("retry", True, st.findings)]
    assert st.findings > 0
    assert len(target.requests) == 3, "two attempts and the health probe"


async def test_a_target_still_down_for_the_probe_leaves_the_stage_unverified(client: Client, worker: str) -> None:
    # attempt 1 fails, attempt 2 succeeds, the health probe after it finds the target down
    target = ScriptedServer([Reply(500), Reply(200), Reply(503)])
    try:
        handle = await start(client, retried_spec(target.url), worker)
        status = await final_status(handle)
    finally:
        target.close()
    st = status.stages["headers"]
    assert st.state == "unverified", st
    assert status.outcome == "completed_with_errors"
    assert st.validation is not None and not st.validation.passed
    assert any("health probe of target" in p and "503" in p for p in st.validation.problems), st.validation.problems
    assert status.stages["report"].state == "succeeded", "dependents of an unverified stage still run"

    (incident_id,) = status.incidents
    incident = await client.get_workflow_handle(incident_id).query("incident", result_type=IncidentStatus)
    assert incident.reason == "recovery_unverified" and incident.stage_id == "headers"

    md = Path(status.stages["report"].outputs["md"]).read_text()
    assert "unverified" in md and "validation after retry FAILED" in md, md
    assert "recovered (retry: recovered)" in md, "the errors table names the rung that handled each error"
    report = json.loads(Path(status.stages["report"].outputs["json"]).read_text())
    assert "validation after retry FAILED" in json.dumps(report)

    checks = open_store().recovery.validations(assessment_id=handle.id)
    assert [(c.after_rung, c.passed) for c in checks] == [("retry", False)]

    # errors stats counts the check and shows the rungs
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "starter", "errors", "stats", "--all", "--json"],
        cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    assert stats["validations"]["failed"] >= 1 and stats["validations"]["validated"] >= 0
    assert stats["by_rung"].get("retry: recovered", 0) >= 1, stats["by_rung"]


async def test_a_planted_duplicate_fails_the_check() -> None:
    store = open_store()
    assessment = f"dup-{uuid.uuid4().hex[:8]}"
    good = Finding.new(tool="http_headers", rule_id="missing-csp", title="no CSP", severity=Severity.LOW,
                       target="http://127.0.0.1:1/", location="/")
    store.upsert_findings(assessment, "headers", [good])
    # the same finding under another fingerprint: what a resume that re-derived ids would leave
    planted = good.model_copy(update={"fingerprint": "0" * 64})
    store.upsert_findings(assessment, "headers", [planted])
    # and a finding of another tool linked to the stage
    stray = Finding.new(tool="bandit", rule_id="B101", title="assert", severity=Severity.LOW, target="/src", location="a.py:1")
    store.upsert_findings(assessment, "headers", [stray])
    # reported by another stage first (a finding links to its first stage): it counts as kept
    first_elsewhere = Finding.new(tool="http_headers", rule_id="missing-hsts", title="no HSTS", severity=Severity.LOW,
                                  target="http://127.0.0.1:1/", location="/")
    store.upsert_findings(assessment, "earlier", [first_elsewhere])

    req = RecoveryValidationRequest(
        assessment_id=assessment, stage_id="headers", check_id="c1", after="resume",
        tools=["http_headers"], reported_findings=5,
    )
    result = await ActivityEnvironment().run(validate_recovery, req)
    problems = "\n".join(result.problems)
    assert not result.passed
    assert "duplicate finding: http_headers missing-csp" in problems, problems
    assert "its fingerprint is not its identity's" in problems
    assert "produced by 'bandit'" in problems
    assert "1 finding(s) the tool runs counted are missing from the store (4 of 5)" in problems
    (row,) = store.recovery.validations(assessment_id=assessment)
    assert not row.passed and row.after_rung == "resume" and row.findings == 3


async def test_a_dead_letter_replay_is_validated(client: Client, worker: str) -> None:
    from secflow.dead_letters import ref_for
    from secflow.models import AssessmentStatus

    state = {"healthy": False}
    target = ScriptedServer(lambda n, path: Reply(200) if state["healthy"] else Reply(500))
    try:
        spec = make_spec(
            [{"url": target.url}],
            [{"id": "headers", "kind": "dast", "tool": "http_headers", "criticality": "optional",
              "on_failure": ["dead_letter"], "retry": {"max_attempts": 1}}],
        )
        handle = await start(client, spec, worker)
        failed = await final_status(handle)
        assert failed.stages["headers"].state == "failed"
        (entry,) = open_store().dead_letters.list_entries(workflow_id=handle.id)
        state["healthy"] = True  # the operator brings the service back, then replays
        out = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "starter", "dlq", "replay", ref_for(entry.task_id), "--wait"],
            cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=120,
        )
    finally:
        target.close()
    assert out.returncode == 0, out.stdout + out.stderr
    replayed = open_store().dead_letters.get(entry.task_id)
    assert replayed is not None and replayed.replay_workflow_id
    status = await final_status(client.get_workflow_handle(replayed.replay_workflow_id, result_type=AssessmentStatus))
    st = status.stages["headers"]
    assert st.state == "succeeded" and st.validation is not None, st
    assert (st.validation.after, st.validation.passed) == ("replay", True), st.validation
    checks = open_store().recovery.validations(assessment_id=replayed.replay_workflow_id)
    assert [(c.after_rung, c.passed) for c in checks] == [("replay", True)]
